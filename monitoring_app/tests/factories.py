import datetime

import factory
from django.utils import timezone

from monitoring_app import partitions
from monitoring_app.choices import AuditEvent, HealthStatus
from monitoring_app.models import AuditLog, DeviceStatusChange, HealthCheck
from monitoring_app.services import append_to_chain


class HealthCheckFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = HealthCheck

    device = factory.SubFactory("devices_app.tests.factories.DeviceFactory")
    status = HealthStatus.HEALTHY
    response_time_ms = 120
    metrics = factory.LazyFunction(lambda: {"cpu_percent": 12.5, "memory_percent": 40.0})
    checked_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # Any day, as the ingest writes it: a missing day partition is created (in the test's
        # transaction, so it goes with it).
        return partitions.history_write(
            lambda: super(HealthCheckFactory, cls)._create(model_class, *args, **kwargs)
        )


class AuditLogFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AuditLog

    event_type = AuditEvent.SITE_UPDATED
    site = factory.SubFactory("sites_app.tests.factories.SiteFactory")
    site_ref = factory.LazyAttribute(lambda a: a.site.site_id)
    description = "Site updated"
    old_values = factory.LazyFunction(lambda: {"name": "Old name"})
    new_values = factory.LazyFunction(lambda: {"name": "New name"})

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # Rows join the hash chain exactly as the application's writers add them.
        return append_to_chain(model_class(*args, **kwargs))


def history_bulk_create(rows) -> list:
    """bulk_create history rows (HealthCheck or DeviceStatusChange) of any days, as a bulk load
    writes them: their day partitions are made first, since the history has no DEFAULT
    partition to catch a row of a day that has none."""
    rows = list(rows)
    model = type(rows[0])
    history = {HealthCheck: partitions.HEALTH, DeviceStatusChange: partitions.STATUS_CHANGES}[model]
    days = {getattr(row, history.time_column).astimezone(datetime.UTC).date() for row in rows}
    partitions.history_days_ensure(history, days)
    return model.objects.bulk_create(rows)
