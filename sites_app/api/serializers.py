from rest_framework import serializers

from homepot.api.serializers import StrictModelSerializer
from sites_app.models import Site


class SiteSerializer(StrictModelSerializer):
    """A site as the API shows and accepts it. `id` is the internal id devices refer to."""

    device_count = serializers.IntegerField(read_only=True, help_text="How many devices the site has.")

    class Meta:
        model = Site
        fields = [
            "id",
            "site_id",
            "name",
            "description",
            "location",
            "region",
            "timezone",
            "is_active",
            "device_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]
