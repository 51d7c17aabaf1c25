from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from homepot.api.pagination import PageNumberPagination
from homepot.api.parsers import CSVTextParser
from homepot.api.permissions import IsAuthenticatedSiteReader
from homepot.api.views import ServiceModelViewSet, csv_import_response, csv_import_schema
from homepot.csv_export import XLSX_CONTENT_TYPE, csv_response, xlsx_response
from sites_app import services
from sites_app.api.serializers import (
    SiteHealthSerializer,
    SiteImportSerializer,
    SiteMaintenanceSerializer,
    SiteSerializer,
)
from sites_app.filters import SiteFilterSet
from sites_app.imports import sites_import
from sites_app.selectors import (
    SITE_EXPORT_COLUMNS,
    attach_health,
    site_export_rows,
    site_health,
    site_health_devices,
    site_list,
    site_maintenance,
)


@extend_schema_view(
    list=extend_schema(summary="List sites", description="Sites you may see, with their device counts."),
    retrieve=extend_schema(summary="Get a site by its site_id"),
    create=extend_schema(summary="Create a site", description="Administrators only."),
    update=extend_schema(summary="Replace a site's fields"),
    partial_update=extend_schema(summary="Change some of a site's fields"),
    destroy=extend_schema(
        summary="Delete a site",
        description="Administrators only. A site that still has devices answers 409: move or "
        "delete its devices first, or mark it inactive.",
    ),
)
class SiteViewSet(ServiceModelViewSet):
    """Sites of the chain, addressed by their business id (`/sites/site-123`)."""

    serializer_class = SiteSerializer
    filterset_class = SiteFilterSet
    pagination_class = PageNumberPagination  # a chain has hundreds of sites, not millions
    search_fields = ["site_id", "name", "location"]
    ordering_fields = ["site_id", "name", "created_at"]
    ordering = ["site_id"]
    ordering_tiebreaker = "pk"
    lookup_field = "site_id"

    def get_queryset(self):
        return site_list(user=self.request.user)

    # Health is counted for the sites answered, after filtering and pagination (one
    # GROUP BY over the page's devices), never for every site the caller has.
    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        return attach_health(list(page)) if page is not None else None

    def get_object(self):
        return attach_health([super().get_object()])[0]

    def _fresh(self, obj):
        return attach_health([super()._fresh(obj)])[0]

    @extend_schema(
        summary="A site's health",
        description="Online/offline and health counts of the site's devices, a health percentage and a "
        "status (healthy, degraded, down), with the devices behind them, worst first.",
        responses=SiteHealthSerializer,
    )
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def health(self, request, site_id=None):
        site = self.get_object()
        devices, truncated = site_health_devices(site)
        body = {"site_id": site.site_id, "name": site.name, **site_health(site)}
        body.update(devices=devices, devices_truncated=truncated)
        return Response(SiteHealthSerializer(body).data)

    def site_of(self, instance):
        return instance

    @extend_schema(
        methods=["GET"],
        summary="A site's maintenance windows",
        description="The site's weekly maintenance windows and blackout dates (in its own time zone), "
        "whether a window is open now and when the next one opens. Jobs that keep to maintenance "
        "windows reach the site's devices only inside a window.",
        responses=SiteMaintenanceSerializer,
    )
    @extend_schema(
        methods=["PUT"],
        summary="Replace a site's maintenance windows",
        description="Administrators and the site's managers. The whole schedule is replaced: send "
        "every window and blackout the site keeps (empty lists: no restriction). Audited as "
        "site.updated.",
        request=SiteMaintenanceSerializer,
        responses=SiteMaintenanceSerializer,
    )
    @action(
        detail=True,
        methods=["get", "put"],
        url_path="maintenance",
        pagination_class=None,
        filter_backends=[],
        # Managers run their stores' trading hours (the service checks the site's change
        # scope); reading needs only what reading the site needs.
        permission_classes=[IsAuthenticatedSiteReader],
    )
    def maintenance(self, request, site_id=None):
        site = self.get_object()
        if request.method == "PUT":
            serializer = SiteMaintenanceSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            services.site_maintenance_set(actor=request.user, site=site, **serializer.validated_data)
        return Response(SiteMaintenanceSerializer(site_maintenance(site)).data)

    @extend_schema(
        summary="Export sites as CSV",
        description="The sites the list would answer (same filters, search and scope), every one of "
        "them, as a streamed CSV file. A bad filter answers 400 before anything is sent.",
        responses={(200, "text/csv"): OpenApiTypes.STR},
        filters=True,
    )
    @action(detail=False, methods=["get"], url_path="export", pagination_class=None)
    def export(self, request):
        queryset = self.filter_queryset(self.get_queryset())
        return csv_response(SITE_EXPORT_COLUMNS, site_export_rows(queryset), "homepot-sites.csv")

    @extend_schema(
        summary="Export sites as an Excel workbook",
        description="The same sites as GET /sites/export, as an .xlsx workbook (one sheet, the CSV's "
        "columns). A bad filter answers 400.",
        responses={(200, XLSX_CONTENT_TYPE): OpenApiTypes.BINARY},
        filters=True,
    )
    @action(
        detail=False, methods=["get"], url_path="export/xlsx", url_name="export-xlsx", pagination_class=None
    )
    def export_xlsx(self, request):
        queryset = self.filter_queryset(self.get_queryset())
        return xlsx_response(SITE_EXPORT_COLUMNS, site_export_rows(queryset), "homepot-sites.xlsx")

    @csv_import_schema(
        "sites",
        "columns site_id, name; optional description, location, region, timezone, is_active",
        SiteImportSerializer,
        "Administrators only.",
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
        return csv_import_response(request, sites_import, SiteImportSerializer)

    def create_object(self, data):
        return services.site_create(actor=self.request.user, **data)

    def update_object(self, instance, data):
        return services.site_update(actor=self.request.user, site=instance, **data)

    def delete_object(self, instance):
        services.site_delete(actor=self.request.user, site=instance)
