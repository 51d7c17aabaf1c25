"""Filter sets for site lists (API; the admin may share them)."""

import django_filters

from homepot.api.filters import StrictBooleanFilter
from sites_app.models import Site


class SiteFilterSet(django_filters.FilterSet):
    # Both are indexed: `region` on its own, `is_active` leading (is_active, site_id).
    region = django_filters.CharFilter(help_text="Sites in this region (exact match).")
    is_active = StrictBooleanFilter(help_text="true: trading sites; false: closed or inactive ones.")

    class Meta:
        model = Site
        fields = ["region", "is_active"]
