"""The fleet summary, the dashboard and the landing page read rollups (SiteHealthCount, one
row per site kept by triggers; FleetTotalSnapshot, one row per chart point for an admin of
the whole chain). What they show must still be the real fleet: after devices are created,
deleted, go offline in the sweep, come back with a heartbeat, or move site, through the
API and the admin, for an admin and for a store manager who sees only their sites."""

import datetime
import re

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device, SiteHealthCount
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.choices import HealthStatus
from monitoring_app.models import FleetSnapshot, FleetTotalSnapshot, MonitoringState
from monitoring_app.rollup import fleet_snapshot_take
from monitoring_app.sweep import sweep_offline
from monitoring_app.tasks import flush_heartbeats
from sites_app.models import Site
from sites_app.selectors import health_summary
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

SUMMARY = "/api/v1/fleet/summary"
FLEET_PAGE = "/admin/monitoring_app/alert/fleet/"
COUNTED = ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy")


def counted_from_devices(site_pks=None) -> dict:
    """The oracle: the devices themselves, counted in Python by site health's rule."""
    devices = Device.objects.all() if site_pks is None else Device.objects.filter(site__in=site_pks)
    per_site: dict[int, dict] = {}
    for site_id, status, health in devices.values_list("site_id", "status", "health_status"):
        counts = per_site.setdefault(site_id, {f"health_{name}": 0 for name in COUNTED})
        counts["health_total"] += 1
        if status == DeviceStatus.ONLINE:
            counts["health_online"] += 1
            bad = health in (HealthStatus.DEGRADED, HealthStatus.UNHEALTHY)
            counts[f"health_{health}" if bad else "health_healthy"] += 1
        elif status == DeviceStatus.MAINTENANCE:
            counts["health_maintenance"] += 1
        if status in (DeviceStatus.OFFLINE, DeviceStatus.ERROR):
            counts["health_offline"] += 1
    totals = {f"health_{name}": sum(c[f"health_{name}"] for c in per_site.values()) for name in COUNTED}
    summary = health_summary(totals)
    summary["sites_down"] = sum(health_summary(c)["status"] == "down" for c in per_site.values())
    troubled = [site for site, c in per_site.items() if health_summary(c)["status"] != "healthy"]
    summary["in_trouble"] = set(Site.objects.filter(pk__in=troubled).values_list("site_id", flat=True))
    return summary


def assert_summary_is_the_fleet(client, site_pks=None):
    body = client.get(SUMMARY).json()
    expected = counted_from_devices(site_pks)
    for name in (*COUNTED, "health_percentage", "status", "sites_down"):
        assert body[name] == expected[name], name
    shown = [row["site_id"] for row in body["sites_in_trouble"]]
    assert set(shown) <= expected["in_trouble"] and len(shown) == min(10, len(expected["in_trouble"]))
    return body


def table_cells(html: str) -> list[int]:
    row = re.search(r'<table id="fleet-counts">.*?<tbody><tr>(.*?)</tr>', html, re.S).group(1)
    return [int(cell) for cell in re.findall(r"<td>(\d+)</td>", row)]


def client_of_device(device) -> APIClient:
    _, secret = device_credential_issue(actor=None, device=device)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    return client


@pytest.fixture
def chain():
    """Two stores: one a manager runs, one they do not see."""
    mine, theirs = SiteFactory(site_id="site-mine"), SiteFactory(site_id="site-theirs")
    online = {"status": DeviceStatus.ONLINE, "last_seen": timezone.now() + datetime.timedelta(minutes=5)}
    DeviceFactory.create_batch(3, site=mine, health_status=HealthStatus.HEALTHY, **online)
    DeviceFactory(site=mine, health_status=HealthStatus.UNHEALTHY, **online)
    DeviceFactory.create_batch(5, site=theirs, health_status=HealthStatus.DEGRADED, **online)
    return mine, theirs


@pytest.fixture
def manager(chain):
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=chain[0], role=MembershipRole.MANAGER)
    return user


def test_the_summary_follows_every_door_for_the_admin_and_the_manager(settings, admin_api, chain, manager):
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 60
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 120
    mine, theirs = chain
    manager_api = token_client(manager)
    assert_summary_is_the_fleet(admin_api)
    assert_summary_is_the_fleet(manager_api, [mine.pk])

    # Created through the API (not reporting yet) and by the factory (silent for an hour).
    body = {"device_id": "pos-new", "name": "Till", "device_type": "pos_terminal", "site_id": mine.pk}
    assert admin_api.post("/api/v1/devices", body, format="json").status_code == 201
    now = timezone.now()
    silent = DeviceFactory.create_batch(
        4, site=theirs, status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(hours=1)
    )
    assert admin_api.get(SUMMARY).json()["total"] == 14
    assert manager_api.get(SUMMARY).json()["total"] == 5
    assert_summary_is_the_fleet(admin_api)

    # The sweep marks the silent ones offline: their store goes down (4 of 9 is under the
    # default fraction, so make it 0.4 to see "down").
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION = 0.4
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )
    assert sweep_offline(now=now).marked_offline == 4
    summary = assert_summary_is_the_fleet(admin_api)
    assert summary["sites_down"] == 1 and summary["sites_in_trouble"][0]["site_id"] == "site-theirs"
    assert manager_api.get(SUMMARY).json()["sites_down"] == 0
    assert_summary_is_the_fleet(manager_api, [mine.pk])

    # One comes back with a heartbeat (buffered, then flushed as the tick does).
    client_of_device(silent[0]).post("/api/v1/agent/heartbeat", {}, format="json")
    flush_heartbeats()
    assert Device.objects.get(pk=silent[0].pk).status == DeviceStatus.ONLINE
    assert admin_api.get(SUMMARY).json()["offline"] == 3
    assert_summary_is_the_fleet(admin_api)

    # Moved to the manager's store: it leaves one summary and enters the other.
    assert (
        admin_api.patch(
            f"/api/v1/devices/{silent[1].device_id}", {"site_id": "site-mine"}, format="json"
        ).status_code
        == 200
    )
    assert manager_api.get(SUMMARY).json()["offline"] == 1
    assert_summary_is_the_fleet(admin_api)
    assert_summary_is_the_fleet(manager_api, [mine.pk])

    # Deleted.
    assert admin_api.delete(f"/api/v1/devices/{silent[1].device_id}").status_code == 204
    assert admin_api.delete("/api/v1/devices/pos-new").status_code == 204
    assert manager_api.get(SUMMARY).json()["total"] == 4
    assert_summary_is_the_fleet(admin_api)
    assert_summary_is_the_fleet(manager_api, [mine.pk])


def test_the_dashboard_and_landing_page_show_the_fleet_after_admin_writes(admin_browser, chain):
    mine, theirs = chain
    device = DeviceFactory(site=theirs, status=DeviceStatus.ONLINE, health_status=HealthStatus.HEALTHY)
    # Maintenance through the device page's button (the admin's door, audited service).
    admin_browser.post(reverse("admin:devices_app_device_object_action", args=[device.pk, "maintenance-on"]))
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.MAINTENANCE

    html = admin_browser.get(FLEET_PAGE).content.decode()
    expected = counted_from_devices()
    # total, online, offline, error, maintenance, unknown, healthy, degraded, unhealthy, (share), down
    cells = table_cells(html)
    assert cells[0] == expected["total"] == 10
    assert cells[4] == 1  # in maintenance
    assert cells[1] == expected["online"] == 9
    assert (cells[6], cells[7], cells[8]) == (
        expected["healthy"],
        expected["degraded"],
        expected["unhealthy"],
    )
    landing = admin_browser.get("/admin/").content.decode()
    assert "site-theirs" in landing and "site-mine" in landing  # both stores are in trouble


def test_the_manager_dashboard_counts_only_their_sites(client, chain, manager):
    client.force_login(manager)

    cells = table_cells(client.get(FLEET_PAGE).content.decode())

    assert cells[0] == 4 and cells[1] == 4 and cells[8] == 1
    assert "site-theirs" not in client.get("/admin/").content.decode()


def test_the_site_health_rollup_equals_a_fresh_count_after_bulk_writes(chain):
    mine, theirs = chain
    Device.objects.filter(site=theirs).update(status=DeviceStatus.ERROR)
    Device.objects.filter(site=mine, health_status=HealthStatus.HEALTHY).update(health_status="")
    Device.objects.filter(site=mine).update(last_seen=timezone.now())  # no count changes

    rows = {row.site_id: row for row in SiteHealthCount.objects.all()}
    assert (rows[theirs.pk].total, rows[theirs.pk].offline, rows[theirs.pk].error) == (5, 5, 5)
    assert rows[theirs.pk].offline_share == 1.0
    assert (rows[mine.pk].online, rows[mine.pk].healthy, rows[mine.pk].unhealthy) == (4, 3, 1)
    assert rows[mine.pk].offline_share == 0.0
    Device.objects.filter(site=theirs).delete()
    assert SiteHealthCount.objects.get(site=theirs).total == 0
    assert SiteHealthCount.objects.get(site=theirs).offline_share is None


def test_the_admin_chart_reads_the_chain_total_and_the_manager_chart_their_sites(
    client, admin_browser, chain, manager
):
    mine, theirs = chain
    hour_ago = timezone.now() - datetime.timedelta(hours=1)
    fleet_snapshot_take(now=hour_ago)

    total = FleetTotalSnapshot.objects.get()
    assert (total.total, total.online, total.degraded) == (9, 9, 5)
    assert FleetSnapshot.objects.count() == 2
    # The admin's chart draws the total; the manager's their store's row only.
    assert ">9</text>" in admin_browser.get(FLEET_PAGE).content.decode()
    client.force_login(manager)
    assert ">9</text>" not in client.get(FLEET_PAGE).content.decode()


def test_the_admin_summary_query_count_does_not_grow_with_the_sites(admin_api, django_assert_max_num_queries):
    for _ in range(30):
        DeviceFactory.create_batch(2, site=SiteFactory(), status=DeviceStatus.OFFLINE)

    with django_assert_max_num_queries(12):
        body = admin_api.get(SUMMARY).json()

    assert body["sites_down"] == 30 and len(body["sites_in_trouble"]) == 10
