"""Retention: old health history is pruned in batches; latest state and alerts stay."""

import datetime

import pytest
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from monitoring_app import partitions
from monitoring_app.models import Alert, AuditLog, DeviceStatusChange, HealthCheck
from monitoring_app.retention import health_history_prune
from monitoring_app.tasks import prune_health_history
from monitoring_app.tests.factories import HealthCheckFactory

pytestmark = pytest.mark.django_db


def days_ago(days):
    return timezone.now() - datetime.timedelta(days=days)


def test_history_past_retention_is_pruned_in_batches_and_audited_once(
    settings, django_assert_max_num_queries
):
    settings.HOMEPOT_MONITORING_RETENTION_DAYS = 30
    device = DeviceFactory(status=DeviceStatus.ONLINE, health_status="degraded")
    old = HealthCheckFactory.create_batch(7, device=device, checked_at=days_ago(31))
    kept = HealthCheckFactory.create_batch(2, device=device, checked_at=days_ago(29))
    alert = Alert.objects.create(
        site=device.site,
        device=device,
        kind="device_unhealthy",
        severity="warning",
        message="m",
        opened_at=days_ago(40),
        last_seen_at=days_ago(40),
    )

    # 7 rows in batches of 3: 3 + 3 + 1 (each in its own short transaction), one
    # batch of status changes (none), one of chart snapshots (none), one of their chain
    # totals (none), then the audit row;
    # and per history table, whether it is partitioned, its partitions (none past) and
    # detached days left to drop (none); then the 7 rows' off-day records (written now for a
    # day long over: late), 3 + 3 + 1.
    with django_assert_max_num_queries(3 * 3 + 3 + 3 + 3 + 6 + 2 * 3 + 3 * 3):
        deleted = health_history_prune(batch_size=3)

    assert deleted == 7
    assert set(HealthCheck.objects.values_list("pk", flat=True)) == {c.pk for c in kept}
    assert not HealthCheck.objects.filter(pk__in=[c.pk for c in old]).exists()
    assert Device.objects.get(pk=device.pk).health_status == "degraded"
    assert Alert.objects.filter(pk=alert.pk).exists()
    audit = AuditLog.objects.get(event_type="health.pruned")
    assert audit.new_values["deleted"] == 7 and audit.new_values["retention_days"] == 30


def test_the_task_body_prunes_with_the_settings(settings):
    settings.HOMEPOT_MONITORING_RETENTION_DAYS = 7
    HealthCheckFactory(checked_at=days_ago(8))
    recent = HealthCheckFactory(checked_at=days_ago(6))
    for age in (8, 6):
        partitions.history_write(  # the day may have no partition yet: created as the ingest does
            lambda age=age: DeviceStatusChange.objects.create(
                device=recent.device,
                old_status="online",
                new_status="offline",
                reason="sweep",
                changed_at=days_ago(age),
            )
        )

    assert prune_health_history() == 1
    assert DeviceStatusChange.objects.count() == 1
    assert prune_health_history() == 0
    assert HealthCheck.objects.count() == 1
    assert AuditLog.objects.filter(event_type="health.pruned").count() == 2  # one per run
