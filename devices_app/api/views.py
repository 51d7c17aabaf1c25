from drf_spectacular.utils import extend_schema, extend_schema_view

from devices_app import services
from devices_app.api.serializers import DeviceSerializer
from devices_app.filters import DeviceFilterSet
from devices_app.selectors import device_list
from homepot.api.pagination import CursorPagination
from homepot.api.views import ServiceModelViewSet


@extend_schema_view(
    list=extend_schema(
        summary="List devices",
        description="Devices at the sites you may see, in keyset (cursor) pages: follow `next`. "
        "Pages cost the same however deep you go; there is no total count.",
    ),
    retrieve=extend_schema(summary="Get a device by its device_id"),
    create=extend_schema(
        summary="Register a device",
        description="`site_id` is the site's internal id (as returned by POST /sites) or its business id.",
    ),
    update=extend_schema(summary="Replace a device's fields"),
    partial_update=extend_schema(summary="Change some of a device's fields (or move it to another site)"),
    destroy=extend_schema(summary="Delete a device (its audit history is kept)"),
)
class DeviceViewSet(ServiceModelViewSet):
    """Devices of the fleet, addressed by their business id (`/devices/pos-terminal-009`)."""

    serializer_class = DeviceSerializer
    filterset_class = DeviceFilterSet
    pagination_class = CursorPagination
    search_fields = ["device_id", "name", "mac_address", "ip_address"]
    # Only unique, indexed, non-null fields: what keyset pagination needs to stay exact and
    # fast. (created_at is neither indexed nor unique: a bulk import stamps thousands of
    # rows with one time, and id already follows creation order.)
    ordering_fields = ["id", "device_id"]
    ordering = ["id"]
    lookup_field = "device_id"

    def get_queryset(self):
        return device_list(user=self.request.user)

    def site_of(self, instance):
        return instance.site

    def create_object(self, data):
        return services.device_create(actor=self.request.user, **data)

    def update_object(self, instance, data):
        return services.device_update(actor=self.request.user, device=instance, **data)

    def delete_object(self, instance):
        services.device_delete(actor=self.request.user, device=instance)
