"""Filter sets for device lists (API; the admin may share them).

Every filter here is backed by an index on the devices table (see Device.Meta.indexes),
so a filtered page of a million-device fleet stays an index range scan; the status, which is
in no index, through DeviceQuerySet.with_status (list order, or the rollup's sites).
"""

import django_filters
from django.db.models import Subquery

from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device
from homepot.api.filters import StrictIsoDateTimeFilter
from sites_app.selectors import sites_by_reference

_SITE_HELP = "The site's business id (site-003) or internal id (3)."


class DeviceFilterSet(django_filters.FilterSet):
    site = django_filters.CharFilter(method="filter_site", help_text=_SITE_HELP)
    site_id = django_filters.CharFilter(method="filter_site", help_text=f"Same as `site`. {_SITE_HELP}")
    device_type = django_filters.ChoiceFilter(choices=DeviceType.choices)
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices, method="filter_status")
    firmware_version = django_filters.CharFilter(help_text="Exact firmware version, e.g. 4.2.1.")
    last_seen_after = StrictIsoDateTimeFilter(
        field_name="last_seen", lookup_expr="gte", help_text="Seen at or after this ISO 8601 time."
    )
    last_seen_before = StrictIsoDateTimeFilter(
        field_name="last_seen", lookup_expr="lt", help_text="Last seen before this ISO 8601 time."
    )

    class Meta:
        model = Device
        fields = ["site", "site_id", "device_type", "status", "firmware_version"]

    def filter_site(self, queryset, name, value):
        # `site_id = (SELECT id FROM sites WHERE ... LIMIT 1)`: PostgreSQL evaluates the
        # subquery once and then reads that site's rows through the (site, device_type, id)
        # index (a few hundred at most, sorted by id for the cursor).
        # An unknown site matches nothing (it is not an error: the value is well-formed).
        site_pk = sites_by_reference(value).values("pk")[:1]
        return queryset.filter(site=Subquery(site_pk))

    def filter_status(self, queryset, name, value):
        # No index has the status (the sweep's mass change stays a HOT update): a common status
        # is checked on the rows in list order, a rare one on the rows of the sites the
        # per-site rollup names (DeviceQuerySet.with_status).
        return queryset.with_status(value)
