"""Filter sets for job and delivery lists (API)."""

import django_filters
from django.db.models import Subquery

from devices_app.models import Device
from homepot.api.filters import StrictIsoDateTimeFilter
from jobs_app.choices import DeliveryStatus, JobAction, JobStatus
from jobs_app.models import Delivery, Job
from sites_app.selectors import sites_by_reference


class JobFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=JobStatus.choices)
    site = django_filters.CharFilter(method="filter_site", help_text="The site's business id or internal id.")
    action = django_filters.ChoiceFilter(choices=JobAction.choices)
    creator = django_filters.CharFilter(
        field_name="created_by__username", help_text="The creator's username."
    )
    created_after = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    device = django_filters.CharFilter(
        method="filter_device", help_text="Jobs with a delivery to this device (its device_id)."
    )

    class Meta:
        model = Job
        fields = ["status", "site", "action", "creator", "created_after", "created_before", "device"]

    def filter_site(self, queryset, name, value):
        return queryset.filter(site=Subquery(sites_by_reference(value).values("pk")[:1]))

    def filter_device(self, queryset, name, value):
        device = Device.objects.filter(device_id=value).values("pk")[:1]
        job_ids = Delivery.objects.filter(device=Subquery(device)).values("job_id")
        return queryset.filter(pk__in=job_ids)


class DeliveryFilterSet(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=DeliveryStatus.choices)

    class Meta:
        model = Delivery
        fields = ["status"]
