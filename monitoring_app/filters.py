import django_filters

from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog


class AuditLogFilter(django_filters.FilterSet):
    """Filters of the audit list and its CSV export; each is backed by an index."""

    event_type = django_filters.MultipleChoiceFilter(choices=AuditEvent.choices)
    actor = django_filters.NumberFilter(field_name="actor_id")
    site = django_filters.CharFilter(field_name="site_ref", help_text="The site's business id.")
    device = django_filters.CharFilter(field_name="device_ref", help_text="The device's business id.")
    job = django_filters.NumberFilter(field_name="job_id")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditLog
        fields = ["event_type", "actor", "site", "device", "job", "since", "until"]
