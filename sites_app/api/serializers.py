from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from homepot.api.serializers import StrictModelSerializer
from monitoring_app.choices import SiteHealthStatus
from sites_app.models import BlackoutPeriod, MaintenanceWindow, Site
from sites_app.selectors import site_health


class HealthSummarySerializer(serializers.Serializer):
    """Connectivity and health of a set of devices (a site, or all of a user's sites)."""

    total = serializers.IntegerField(help_text="Every device, monitored or not.")
    online = serializers.IntegerField()
    offline = serializers.IntegerField(help_text="Offline or in error.")
    maintenance = serializers.IntegerField(help_text="In maintenance: not monitored, no alerts.")
    healthy = serializers.IntegerField(
        help_text="Online and reporting healthy (or not reporting health yet)."
    )
    degraded = serializers.IntegerField(help_text="Online, reporting degraded.")
    unhealthy = serializers.IntegerField(help_text="Online, reporting unhealthy.")
    health_percentage = serializers.FloatField(
        allow_null=True, help_text="Healthy share of the monitored devices; null when none is monitored."
    )
    status = serializers.ChoiceField(choices=SiteHealthStatus.choices)


@extend_schema_field(HealthSummarySerializer)
class SiteHealthField(serializers.Field):
    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, value):
        return site_health(value)


class SiteSerializer(StrictModelSerializer):
    """A site as the API shows and accepts it. `id` is the internal id devices refer to."""

    device_count = serializers.IntegerField(read_only=True, help_text="How many devices the site has.")
    health = SiteHealthField(help_text="Connectivity and health of the site's devices.")

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
            "health",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]


class SiteHealthDeviceSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    name = serializers.CharField()
    device_type = serializers.CharField()
    status = serializers.CharField()
    health_status = serializers.CharField()
    last_seen = serializers.DateTimeField(allow_null=True)
    last_health_at = serializers.DateTimeField(allow_null=True)
    connectivity_changed_at = serializers.DateTimeField(allow_null=True)


class SiteHealthSerializer(HealthSummarySerializer):
    site_id = serializers.CharField()
    name = serializers.CharField()
    devices = SiteHealthDeviceSerializer(many=True, help_text="The devices behind the numbers, worst first.")
    devices_truncated = serializers.BooleanField(help_text="More devices than listed.")


class SiteImportRowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="The line of the file (the header is line 1).")
    site_id = serializers.CharField()
    field = serializers.CharField(help_text="The column at fault (`file` for the row as a whole).")
    message = serializers.CharField()


class SiteImportOutcomeSerializer(serializers.Serializer):
    row = serializers.IntegerField()
    site_id = serializers.CharField()
    # Not a ChoiceField: the schema has other `action` enums (jobs), and these three words
    # need no enum component of their own.
    action = serializers.CharField(help_text="create, update or skip.")
    fields = serializers.ListField(child=serializers.CharField(), help_text="The fields that change.")


class SiteImportSerializer(serializers.Serializer):
    """What a site import does (dry run) or did (applied)."""

    rows = serializers.IntegerField()
    create = serializers.IntegerField()
    update = serializers.IntegerField()
    skip = serializers.IntegerField()
    error_count = serializers.IntegerField()
    errors = SiteImportRowErrorSerializer(many=True)
    errors_truncated = serializers.BooleanField()
    outcomes = SiteImportOutcomeSerializer(many=True, help_text="The first 200 rows' outcomes.")
    applied = serializers.BooleanField()


class MaintenanceWindowSerializer(StrictModelSerializer):
    """A weekly window in the site's local time. `weekday` is ISO: 1 Monday … 7 Sunday. An
    `ends` at or before `starts` runs past midnight (22:00-02:00); equal: 24 hours."""

    class Meta:
        model = MaintenanceWindow
        fields = ["weekday", "starts", "ends"]


class BlackoutPeriodSerializer(StrictModelSerializer):
    """Local dates (both included) on which none of the site's windows opens."""

    class Meta:
        model = BlackoutPeriod
        fields = ["starts_on", "ends_on", "reason"]

    def validate(self, attrs):
        if attrs["ends_on"] < attrs["starts_on"]:
            raise serializers.ValidationError({"ends_on": "The last date must be on or after the first."})
        return attrs


class SiteMaintenanceSerializer(serializers.Serializer):
    """A site's trading-hours schedule: jobs that keep to maintenance windows reach its
    devices only inside a window, never on a blackout date. No window at all: any time."""

    timezone = serializers.CharField(read_only=True, help_text="The site's time zone; every time is local.")
    maintenance_windows = MaintenanceWindowSerializer(many=True)
    blackouts = BlackoutPeriodSerializer(many=True)
    open_now = serializers.BooleanField(read_only=True, help_text="Inside a window now.")
    next_opening = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="When the next window opens (now when open; null: none in the coming weeks).",
    )
