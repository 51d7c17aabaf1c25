"""The SiteDeviceCount rollup (kept by PostgreSQL triggers) equals a fresh count of the
devices after every kind of write, through the doors that make them; and the fleet summary
read from it answers what counting the devices answers."""

import datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone
from rest_framework.test import APIClient

from devices_app.choices import DeviceStatus
from devices_app.models import Device, SiteDeviceCount
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from monitoring_app.choices import HealthStatus
from monitoring_app.models import MonitoringState
from monitoring_app.selectors import _fleet_counts_from_devices, _fleet_counts_from_rollup
from monitoring_app.tasks import flush_heartbeats
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def fresh_count() -> dict:
    rows = Device.objects.order_by().values_list("site_id", "status", "health_status").annotate(n=Count("*"))
    return {(site, status, health): n for site, status, health, n in rows}


def rollup() -> dict:
    rows = (
        SiteDeviceCount.objects.order_by()
        .values_list("site_id", "status", "health_status")
        .annotate(n=Sum("devices"))
    )
    return {(site, status, health): n for site, status, health, n in rows if n}


def assert_rollup_is_exact():
    assert rollup() == fresh_count()
    assert_since_when_holds()


def assert_since_when_holds():
    """Each rollup row's `undated` is the exact number of its devices without a
    connectivity_changed_at, and its `changed_max` is no earlier than any other's (an upper
    bound: the site-outage alert trusts it to skip reading a store's devices)."""
    rows = (
        Device.objects.order_by()
        .values_list("site_id", "status", "health_status")
        .annotate(
            undated=Count("pk", filter=Q(connectivity_changed_at__isnull=True)),
            newest=Max("connectivity_changed_at"),
        )
    )
    kept = {(r.site_id, r.status, r.health_status): r for r in SiteDeviceCount.objects.filter(devices__gt=0)}
    for site, status, health, undated, newest in rows:
        row = kept[(site, status, health)]
        assert row.undated == undated, (site, status, health)
        if newest is not None:
            assert row.changed_max is not None and row.changed_max >= newest, (site, status, health)


@pytest.fixture
def site():
    return SiteFactory(site_id="site-003")


def test_create_move_and_delete_through_the_api_keep_the_counts_exact(admin_api, site):
    other = SiteFactory(site_id="site-004")
    body = {"device_id": "pos-1", "name": "Till 1", "device_type": "pos_terminal", "site_id": site.pk}
    assert admin_api.post("/devices", body, format="json").status_code == 201
    DeviceFactory.create_batch(3, site=site, status=DeviceStatus.ONLINE, health_status=HealthStatus.DEGRADED)
    assert_rollup_is_exact()

    assert admin_api.patch("/devices/pos-1", {"site_id": "site-004"}, format="json").status_code == 200
    assert rollup()[(other.pk, DeviceStatus.UNKNOWN, "")] == 1
    assert_rollup_is_exact()

    assert admin_api.delete("/devices/pos-1").status_code == 204
    assert (other.pk, DeviceStatus.UNKNOWN, "") not in rollup()
    assert_rollup_is_exact()


def test_create_fleet_counts_every_device_it_inserts():
    call_command("create_fleet", sites=3, devices_per_site=40, stdout=StringIO(), stderr=StringIO())

    assert sum(rollup().values()) == 120
    assert_rollup_is_exact()


def test_heartbeats_health_reports_and_their_buffer_keep_the_counts_exact(site):
    devices = DeviceFactory.create_batch(3, site=site, status=DeviceStatus.OFFLINE, last_seen=None)
    clients = []
    for device in devices:
        _, secret = device_credential_issue(actor=None, device=device)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
        clients.append(client)

    assert clients[0].post("/api/v1/agent/heartbeat", {}, format="json").status_code in (200, 204)
    assert clients[1].post("/api/v1/agent/health", {"status": "unhealthy"}, format="json").status_code in (
        200,
        201,
    )
    assert clients[0].post("/api/v1/agent/heartbeat", {}, format="json").status_code in (200, 204)
    flush_heartbeats()

    counts = rollup()
    assert counts[(site.pk, DeviceStatus.ONLINE, "")] == 1
    assert counts[(site.pk, DeviceStatus.ONLINE, HealthStatus.UNHEALTHY)] == 1
    assert counts[(site.pk, DeviceStatus.OFFLINE, "")] == 1
    assert_rollup_is_exact()


def test_the_sweep_moves_every_silent_device_in_the_counts(settings, site):
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 60
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 120
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )
    silent = now - datetime.timedelta(hours=1)
    DeviceFactory.create_batch(4, site=site, status=DeviceStatus.ONLINE, last_seen=silent)
    DeviceFactory.create_batch(2, site=site, status=DeviceStatus.ONLINE, last_seen=now)
    from monitoring_app.sweep import sweep_offline

    assert sweep_offline(now=now).marked_offline == 4

    assert rollup()[(site.pk, DeviceStatus.OFFLINE, "")] == 4
    assert_rollup_is_exact()


def test_a_rolled_back_write_leaves_the_counts_as_they_were(site):
    from django.db import IntegrityError, transaction

    DeviceFactory(site=site, device_id="pos-1")
    before = rollup()
    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.filter(site=site).update(status=DeviceStatus.ONLINE)
        DeviceFactory(site=site, device_id="pos-1")  # duplicate: the whole block rolls back

    assert rollup() == before
    assert_rollup_is_exact()


def test_the_summary_from_the_rollup_equals_the_summary_counted_from_the_devices(settings):
    """Every status and health, sites down, degraded and healthy: the SQL rule over the rollup
    and site health's Python rule over the devices give the same totals and worst sites."""
    from accounts.tests.factories import UserFactory

    settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION = 0.6
    sites = [SiteFactory() for _ in range(14)]
    for index, status in enumerate(DeviceStatus.values):
        for health in ["", *HealthStatus.values]:
            DeviceFactory.create_batch(1 + index % 3, site=sites[index], status=status, health_status=health)
    DeviceFactory.create_batch(3, site=sites[6], status=DeviceStatus.OFFLINE)  # down: all offline
    DeviceFactory.create_batch(2, site=sites[7], status=DeviceStatus.OFFLINE)  # down: 2 of 3
    DeviceFactory(site=sites[7], status=DeviceStatus.ONLINE)
    DeviceFactory.create_batch(4, site=sites[8], status=DeviceStatus.ONLINE)  # healthy
    DeviceFactory(site=sites[9], status=DeviceStatus.ONLINE, health_status=HealthStatus.DEGRADED)
    admin = UserFactory(is_superuser=True, is_staff=True)

    from_rollup = _fleet_counts_from_rollup(admin)
    from_devices = _fleet_counts_from_devices(admin)

    assert from_rollup == from_devices
    # down: the offline, error and two outage sites; healthy (left out): 8 and the unknown-only one
    assert from_rollup[1] == 4 and len(from_rollup[2]) == 6
