import django_filters

from homepot.api.filters import StrictIsoDateTimeFilter
from monitoring_app.choices import AlertKind, AlertSeverity, AuditEvent, HealthStatus
from monitoring_app.models import Alert, AuditLog, HealthCheck


class AuditLogFilter(django_filters.FilterSet):
    """Filters of the audit list and its CSV export; each is backed by an index."""

    event_type = django_filters.MultipleChoiceFilter(choices=AuditEvent.choices)
    actor = django_filters.NumberFilter(field_name="actor_id")
    site = django_filters.CharFilter(field_name="site_ref", help_text="The site's business id.")
    device = django_filters.CharFilter(field_name="device_ref", help_text="The device's business id.")
    job = django_filters.NumberFilter(field_name="job_id")
    since = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditLog
        fields = ["event_type", "actor", "site", "device", "job", "since", "until"]


class AlertFilter(django_filters.FilterSet):
    """Filters of the alert list; the site and device filters are backed by indexes."""

    state = django_filters.ChoiceFilter(
        choices=[("open", "Open (not resolved)"), ("acknowledged", "Acknowledged"), ("resolved", "Resolved")],
        method="filter_state",
        help_text="open: not resolved (acknowledged or not).",
    )
    kind = django_filters.ChoiceFilter(choices=AlertKind.choices)
    severity = django_filters.ChoiceFilter(choices=AlertSeverity.choices)
    site = django_filters.CharFilter(field_name="site__site_id", help_text="The site's business id.")
    device = django_filters.CharFilter(field_name="device__device_id", help_text="The device's business id.")
    since = StrictIsoDateTimeFilter(field_name="opened_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["state", "kind", "severity", "site", "device", "since"]

    def filter_state(self, queryset, name, value):
        if value == "open":
            return queryset.filter(resolved_at__isnull=True)
        if value == "acknowledged":
            return queryset.filter(resolved_at__isnull=True, acknowledged_at__isnull=False)
        return queryset.filter(resolved_at__isnull=False)


class HealthCheckFilter(django_filters.FilterSet):
    """Filters of the health history. Each is served by an index: (device, -checked_at) and
    (status, -id) on the history, the devices' site indexes for `site`, and (-checked_at)
    for the time window."""

    device = django_filters.CharFilter(field_name="device__device_id", help_text="The device's business id.")
    site = django_filters.CharFilter(field_name="device__site__site_id", help_text="The site's business id.")
    status = django_filters.MultipleChoiceFilter(choices=HealthStatus.choices)
    since = StrictIsoDateTimeFilter(field_name="checked_at", lookup_expr="gte")
    until = StrictIsoDateTimeFilter(field_name="checked_at", lookup_expr="lt")

    class Meta:
        model = HealthCheck
        fields = ["device", "site", "status", "since", "until"]
