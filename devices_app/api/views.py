from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from devices_app import services
from devices_app.api.serializers import (
    DeviceCredentialSerializer,
    DeviceImportSerializer,
    DeviceSerializer,
    device_row_representation,
)
from devices_app.filters import DeviceFilterSet
from devices_app.imports import devices_import
from devices_app.models import Device
from devices_app.selectors import (
    DEVICE_EXPORT_COLUMNS,
    device_export_rows,
    device_list,
    device_page,
    device_page_rows,
)
from homepot.api.pagination import CursorPagination
from homepot.api.parsers import CSVTextParser
from homepot.api.views import ServiceModelViewSet, csv_import_response, csv_import_schema
from homepot.csv_export import XLSX_CONTENT_TYPE, csv_response, xlsx_response
from monitoring_app.services import audited_atomic


@extend_schema_view(
    list=extend_schema(
        summary="List devices",
        description="Devices at the sites you may see, in keyset (cursor) pages: follow `next`. "
        "Pages cost the same however deep you go; there is no total count.",
    ),
    retrieve=extend_schema(summary="Get a device by its device_id"),
    create=extend_schema(
        summary="Register a device",
        description="`site_id` is the site's internal id (as returned by POST /sites) or its business id. "
        "The answer carries the device's `credential`, shown only this once.",
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
    permission_model = Device  # the model of device_page and device_list, for ModelPermissions

    def get_queryset(self):
        if self.action == "list":
            return device_page(user=self.request.user)
        return device_list(user=self.request.user)

    def site_of(self, instance):
        return instance.site

    def list(self, request, *args, **kwargs):
        # Plain rows, not model instances, then the serializer's own answer for each
        # (devices_app.api.serializers.device_row_representation); the cursor reads its
        # position from the row as it would from an instance.
        zone = timezone.get_current_timezone()
        # In UTC (the setting; nothing activates another zone per request) PostgreSQL writes
        # the times' text; in any other zone they are formatted here as before.
        utc = getattr(zone, "key", None) == "UTC"
        queryset = self.filter_queryset(self.get_queryset())
        rows = self.paginate_queryset(device_page_rows(queryset, times_as_utc_text=utc))
        return self.get_paginated_response([device_row_representation(row, zone) for row in rows])

    @extend_schema(
        summary="Export devices as CSV",
        description="The devices the list would answer (same filters, search and scope), every one "
        "of them, as a streamed CSV file. A bad filter answers 400 before anything is sent.",
        responses={(200, "text/csv"): OpenApiTypes.STR},
        filters=True,
    )
    @action(detail=False, methods=["get"], url_path="export", pagination_class=None)
    def export(self, request):
        # filter_queryset validates every parameter now: a bad one is a 400, not a cut file.
        queryset = self.filter_queryset(self.get_queryset())
        return csv_response(list(DEVICE_EXPORT_COLUMNS), device_export_rows(queryset), "homepot-devices.csv")

    @extend_schema(
        summary="Export devices as an Excel workbook",
        description="The same devices as GET /devices/export, as an .xlsx workbook (one sheet, the "
        "CSV's columns). A bad filter answers 400.",
        responses={(200, XLSX_CONTENT_TYPE): OpenApiTypes.BINARY},
        filters=True,
    )
    @action(
        detail=False, methods=["get"], url_path="export/xlsx", url_name="export-xlsx", pagination_class=None
    )
    def export_xlsx(self, request):
        queryset = self.filter_queryset(self.get_queryset())
        return xlsx_response(
            list(DEVICE_EXPORT_COLUMNS), device_export_rows(queryset), "homepot-devices.xlsx"
        )

    @csv_import_schema(
        "devices",
        "columns device_id, name, site_id; optional device_type, ip_address, mac_address, "
        "firmware_version, push_channel",
        DeviceImportSerializer,
        "A site manager may name only their own sites. Imported devices get no credential: issue one each.",
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        url_name="import",
        parser_classes=[MultiPartParser, CSVTextParser],
        filter_backends=[],
        pagination_class=None,
    )
    def import_csv(self, request):
        return csv_import_response(request, devices_import, DeviceImportSerializer)

    def create_object(self, data):
        return services.device_create(actor=self.request.user, **data)

    def perform_create(self, serializer):
        created = self.create_object(serializer.validated_data)
        serializer.instance = self._fresh(created)
        self._issued_secret = created.issued_secret

    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        response.data["credential"] = self._issued_secret
        return response

    @extend_schema(
        methods=["POST"],
        summary="Issue a new credential for a device (the old one stops working)",
        request=None,
        responses={201: DeviceCredentialSerializer},
    )
    @extend_schema(
        methods=["DELETE"], summary="Revoke a device's credential", request=None, responses={204: None}
    )
    @action(detail=True, methods=["post", "delete"])
    @audited_atomic()
    def credential(self, request, device_id=None):
        device = self.get_object()
        if request.method == "DELETE":
            services.device_credential_revoke(actor=request.user, device=device)
            return Response(status=status.HTTP_204_NO_CONTENT)
        issued, raw_key = services.device_credential_issue(actor=request.user, device=device)
        body = {
            "device_id": device.device_id,
            "key_prefix": issued.key_prefix,
            "credential": raw_key,
            "created_at": issued.created_at,
        }
        return Response(DeviceCredentialSerializer(body).data, status=status.HTTP_201_CREATED)

    def update_object(self, instance, data):
        return services.device_update(actor=self.request.user, device=instance, **data)

    def delete_object(self, instance):
        services.device_delete(actor=self.request.user, device=instance)
