from drf_spectacular.utils import extend_schema, extend_schema_view

from homepot.api.pagination import PageNumberPagination
from homepot.api.views import ServiceModelViewSet
from sites_app import services
from sites_app.api.serializers import SiteSerializer
from sites_app.filters import SiteFilterSet
from sites_app.selectors import site_list


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

    def site_of(self, instance):
        return instance

    def create_object(self, data):
        return services.site_create(actor=self.request.user, **data)

    def update_object(self, instance, data):
        return services.site_update(actor=self.request.user, site=instance, **data)

    def delete_object(self, instance):
        services.site_delete(actor=self.request.user, site=instance)
