"""The device's status is in no index (migration 0011), so the sweep's mass status change is a
HOT update; the readers by status go through the per-site rollup (DeviceQuerySet.with_status).
Checked through the doors: the API's and the admin's status filter, the sweep, the alerts."""

import datetime
import re
from urllib.parse import parse_qs, urlparse

import pytest
from django.db import connection
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device, SiteDeviceCount
from devices_app.services import device_update
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.models import MonitoringState
from monitoring_app.sweep import sweep_offline
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/devices_app/device/"


@pytest.fixture
def mixed_fleet(db):
    """Four sites: one all online, one with an offline and an error device, one whose only
    offline device came back (its rollup row stays, at 0 devices), one all offline."""
    quiet, mixed, recovered, dark = (SiteFactory(site_id=f"site-{n}") for n in (201, 202, 203, 204))
    DeviceFactory.create_batch(3, site=quiet, status=DeviceStatus.ONLINE)
    DeviceFactory.create_batch(2, site=mixed, status=DeviceStatus.ONLINE)
    DeviceFactory(site=mixed, status=DeviceStatus.OFFLINE)
    DeviceFactory(site=mixed, status=DeviceStatus.ERROR)
    back = DeviceFactory(site=recovered, status=DeviceStatus.OFFLINE)
    Device.objects.filter(pk=back.pk).update(status=DeviceStatus.ONLINE)
    DeviceFactory.create_batch(3, site=dark, status=DeviceStatus.OFFLINE)
    DeviceFactory(site=dark, status=DeviceStatus.MAINTENANCE)
    assert SiteDeviceCount.objects.get(site=recovered, status=DeviceStatus.OFFLINE).devices == 0
    return {"quiet": quiet, "mixed": mixed, "recovered": recovered, "dark": dark}


def expected_ids(status: str) -> list[int]:
    return list(Device.objects.filter(status=status).order_by("id").values_list("id", flat=True))


def walk_api(client, url: str) -> list[str]:
    """Every page of a cursor-paged list, following `next`."""
    seen = []
    while url:
        body = client.get(url).json()
        seen += [row["device_id"] for row in body["results"]]
        url = body["next"] and "/devices?" + urlparse(body["next"]).query
    return seen


@pytest.mark.parametrize("status", DeviceStatus.values)
def test_the_api_status_filter_answers_the_same_devices_as_a_plain_status_filter(
    admin_api, mixed_fleet, status
):
    rows = walk_api(admin_api, f"/devices?status={status}&page_size=2")

    ids = dict(Device.objects.values_list("device_id", "id"))
    assert [ids[device_id] for device_id in rows] == expected_ids(status)


@pytest.mark.parametrize("status", [DeviceStatus.ONLINE, DeviceStatus.OFFLINE, DeviceStatus.ERROR])
def test_the_admin_status_filter_answers_the_same_devices_as_a_plain_status_filter(
    admin_browser, mixed_fleet, status
):
    response = admin_browser.get(CHANGELIST, {"status__exact": status})

    assert response.status_code == 200
    shown = set(response.context["cl"].result_list.values_list("id", flat=True))
    assert shown == set(expected_ids(status))
    assert expected_ids(status), "the fixture has devices in this status"


@pytest.mark.parametrize(
    ("status", "through_rollup"), [(DeviceStatus.ONLINE, False), (DeviceStatus.ERROR, True)]
)
def test_with_statistics_a_common_status_is_read_in_list_order_a_rare_one_by_sites_alike(
    admin_api, mixed_fleet, status, through_rollup, monkeypatch
):
    from devices_app import models

    monkeypatch.setattr(models, "COMMON_STATUS_SHARE", 0.05)  # a 73-device fleet's "rare"
    DeviceFactory.create_batch(60, site=mixed_fleet["quiet"], status=DeviceStatus.ONLINE)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_app_device")  # error: 1 of 73 devices, online 67

    rows = walk_api(admin_api, f"/devices?status={status}&page_size=7")

    ids = dict(Device.objects.values_list("device_id", "id"))
    assert [ids[device_id] for device_id in rows] == expected_ids(status)
    query = str(Device.objects.with_status(status).query)
    assert ('"devices_app_sitedevicecount"' in query) == through_rollup


def test_a_status_filter_reads_only_the_sites_the_rollup_names(admin_api, mixed_fleet):
    # The plan's input: the page's query carries the rollup's site list, so PostgreSQL reads
    # the rows of the two sites with offline devices, not the fleet.
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        rows = walk_api(admin_api, "/devices?status=offline&page_size=50")

    assert len(rows) == 4
    page_sql = next(q["sql"] for q in queries.captured_queries if 'FROM "devices_app_device"' in q["sql"])
    assert '"devices_app_sitedevicecount"' in page_sql


def test_a_device_moved_to_another_status_by_a_service_is_found_there_at_once(admin_api, mixed_fleet):
    # The rollup is kept by the device table's triggers in the writer's own transaction.
    device = Device.objects.filter(site=mixed_fleet["quiet"]).first()
    device_update(actor=None, device=device, status=DeviceStatus.ERROR)

    rows = walk_api(admin_api, "/devices?status=error&page_size=50")

    assert device.device_id in rows


def test_a_managers_status_filter_stays_within_their_sites(mixed_fleet):
    manager = UserFactory()
    SiteMembershipFactory(user=manager, site=mixed_fleet["mixed"], role=MembershipRole.MANAGER)

    rows = walk_api(token_client(manager), "/devices?status=offline&page_size=50")

    expected = Device.objects.filter(site=mixed_fleet["mixed"], status=DeviceStatus.OFFLINE)
    assert sorted(rows) == sorted(expected.values_list("device_id", flat=True))


def test_no_index_of_the_device_table_has_the_status_or_the_connectivity_time():
    # Not in an index's columns, expressions or WHERE: one such index and the sweep's status
    # change is no longer a HOT update (every index gets an entry for every moved device).
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index i WHERE i.indrelid = 'devices_app_device'::regclass"""
        )
        definitions = dict(cursor.fetchall())
    assert "devices_last_seen" in definitions
    moved_columns = re.compile(r"\b(status|connectivity_changed_at)\b")  # not health_status
    offending = {name: sql for name, sql in definitions.items() if moved_columns.search(sql)}
    assert offending == {}


def test_the_device_table_leaves_room_on_its_pages():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'devices_app_device'")
        (options,) = cursor.fetchone()
    assert "fillfactor=50" in options


def test_the_sweeps_status_change_is_a_hot_update(settings):
    # pg_stat_xact_user_tables counts this transaction's own updates (the test's).
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 60
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 120
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )
    site = SiteFactory()
    DeviceFactory.create_batch(
        20, site=site, status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(hours=1)
    )

    def updates() -> tuple[int, int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                " WHERE relname = 'devices_app_device'"
            )
            return cursor.fetchone()

    before = updates()
    assert sweep_offline(now=now).marked_offline == 20
    after = updates()

    assert (after[0] - before[0], after[1] - before[1]) == (20, 20)


def test_a_cursor_page_is_the_next_slice_of_the_same_order(admin_api, mixed_fleet):
    first = admin_api.get("/devices?status=online&page_size=3").json()
    cursor = parse_qs(urlparse(first["next"]).query)["cursor"][0]
    second = admin_api.get("/devices", {"status": "online", "page_size": 3, "cursor": cursor}).json()

    ids = dict(Device.objects.values_list("device_id", "id"))
    got = [ids[row["device_id"]] for row in first["results"] + second["results"]]
    assert got == expected_ids(DeviceStatus.ONLINE)[:6]
