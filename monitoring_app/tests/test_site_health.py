"""Site health (/sites/{id}/health, the site list) and the fleet summary, scoped."""

import datetime

import pytest
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.tests.factories import history_bulk_create
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def device(site, status=DeviceStatus.ONLINE, health="healthy", **kwargs):
    return DeviceFactory(site=site, status=status, health_status=health, last_seen=timezone.now(), **kwargs)


@pytest.fixture
def store():
    """10 devices: 6 online (4 healthy, 1 degraded, 1 unhealthy), 3 offline, 1 in maintenance."""
    site = SiteFactory(site_id="site-store")
    for _ in range(4):
        device(site)
    device(site, health="degraded")
    device(site, health="unhealthy")
    for _ in range(3):
        device(site, status=DeviceStatus.OFFLINE)
    device(site, status=DeviceStatus.MAINTENANCE)
    return site


def member(site, role=MembershipRole.VIEWER):
    user = UserFactory()
    SiteMembershipFactory(user=user, site=site, role=role)
    return token_client(user)


EXPECTED = {
    "total": 10,
    "online": 6,
    "offline": 3,
    "maintenance": 1,
    "healthy": 4,
    "degraded": 1,
    "unhealthy": 1,
    "health_percentage": 44.4,
    "status": "degraded",
}


def test_site_health_counts_and_lists_the_devices_worst_first(store, django_assert_max_num_queries):
    client = member(store)

    with django_assert_max_num_queries(8):
        response = client.get("/sites/site-store/health")

    assert response.status_code == 200, response.content
    body = response.json()
    assert {k: body[k] for k in EXPECTED} == EXPECTED
    assert [d["status"] for d in body["devices"][:3]] == ["offline"] * 3
    assert body["devices"][3]["health_status"] == "unhealthy"
    assert len(body["devices"]) == 10 and body["devices_truncated"] is False


def test_the_site_list_and_detail_carry_the_same_health(store, django_assert_max_num_queries):
    client = member(store)
    for _ in range(3):
        SiteMembershipFactory(user=client.user, site=device(SiteFactory()).site)

    with django_assert_max_num_queries(8):
        listed = client.get("/sites")

    assert listed.status_code == 200
    by_id = {s["site_id"]: s for s in listed.json()["results"]}
    assert by_id["site-store"]["health"] == EXPECTED
    assert client.get("/api/v1/sites/site-store").json()["health"] == EXPECTED


def test_a_site_mostly_offline_is_down_and_an_empty_one_has_no_percentage():
    down = SiteFactory(site_id="site-down")
    device(down, status=DeviceStatus.OFFLINE)
    device(down, status=DeviceStatus.OFFLINE)
    device(down)
    empty = SiteFactory(site_id="site-empty")
    client = member(down)
    SiteMembershipFactory(user=client.user, site=empty)

    assert client.get("/sites/site-down/health").json()["status"] == "down"
    body = client.get("/sites/site-empty/health").json()
    assert (body["total"], body["health_percentage"], body["status"]) == (0, None, "healthy")


def test_another_sites_health_is_a_404_like_a_missing_one(store):
    client = member(SiteFactory())
    hidden = client.get("/sites/site-store/health")
    missing = client.get("/sites/site-nowhere/health")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()


def test_devices_get_no_site_health(store):
    from devices_app.services import device_credential_issue

    _, secret = device_credential_issue(actor=None, device=store.devices.first())
    client = token_client(UserFactory())
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    assert client.get("/sites/site-store/health").status_code in (401, 403)


def test_the_fleet_summary_covers_only_the_callers_sites(store, django_assert_max_num_queries):
    other = SiteFactory(site_id="site-other")
    for _ in range(5):
        device(other, status=DeviceStatus.OFFLINE, connectivity_changed_at=timezone.now())
    client = member(store)

    # Constant: auth, the rollup's totals, its worst down sites and other troubled sites,
    # names, count, alerts.
    with django_assert_max_num_queries(11):
        response = client.get("/api/v1/fleet/summary")

    assert response.status_code == 200, response.content
    body = response.json()
    assert {k: body[k] for k in EXPECTED} == EXPECTED
    assert body["sites"] == 1 and body["sites_down"] == 0
    assert [s["site_id"] for s in body["sites_in_trouble"]] == ["site-store"]


def test_the_fleet_summary_of_an_admin_puts_the_sites_in_most_trouble_first(store, admin_api, settings):
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 0
    other = SiteFactory(site_id="site-other")
    for _ in range(5):
        device(other, status=DeviceStatus.OFFLINE, connectivity_changed_at=timezone.now())
    SiteFactory(site_id="site-fine")
    alerts_evaluate()

    body = admin_api.get("/api/v1/fleet/summary").json()

    assert body["sites"] == 3 and body["sites_down"] == 1
    assert [s["site_id"] for s in body["sites_in_trouble"]] == ["site-other", "site-store"]
    assert body["open_alerts"]["critical"] == 1  # site-other's outage


def test_anonymous_callers_get_no_fleet_summary(api_client):
    assert api_client.get("/api/v1/fleet/summary").status_code == 401


# --- Timelines --------------------------------------------------------------------------------


def test_a_device_timeline_merges_its_history_newest_first(store, django_assert_max_num_queries):
    from monitoring_app.models import DeviceStatusChange
    from monitoring_app.tests.factories import HealthCheckFactory

    till = store.devices.filter(status=DeviceStatus.OFFLINE).first()
    now = timezone.now()
    HealthCheckFactory(device=till, checked_at=now - timezone.timedelta(minutes=10), status="unhealthy")
    DeviceStatusChange.objects.create(
        device=till, old_status="online", new_status="offline", reason="sweep", changed_at=now
    )
    client = member(store)

    with django_assert_max_num_queries(12):
        response = client.get(f"/api/v1/fleet/devices/{till.device_id}/timeline")

    assert response.status_code == 200, response.content
    events = response.json()["events"]
    assert [e["type"] for e in events[:2]] == ["connectivity", "health"]
    assert "online → offline" in events[0]["summary"]


def test_timelines_answer_what_their_serializer_documents_for_every_kind_of_event(store, settings):
    """The timelines are rendered without DRF's fields (monitoring_app.api.fleet.timeline_data):
    the answer must stay what TimelineSerializer gives, for every kind of event."""
    from accounts.tests.factories import AdminUserFactory
    from devices_app.services import device_update
    from jobs_app.tests.factories import JobFactory
    from monitoring_app.api.fleet import TimelineSerializer, timeline_data
    from monitoring_app.models import DeviceStatusChange
    from monitoring_app.selectors import device_timeline, site_timeline
    from monitoring_app.tests.factories import HealthCheckFactory

    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 0
    till = store.devices.filter(status=DeviceStatus.OFFLINE).first()
    now = timezone.now()
    HealthCheckFactory(device=till, checked_at=now - datetime.timedelta(minutes=3), status="unhealthy")
    HealthCheckFactory(
        device=till, checked_at=now - datetime.timedelta(minutes=2), error_message="Drawer «jam»"
    )
    DeviceStatusChange.objects.create(
        device=till, old_status="online", new_status="offline", reason="sweep", changed_at=now
    )
    till.connectivity_changed_at = now - datetime.timedelta(hours=1)
    till.save(update_fields=["connectivity_changed_at"])
    alerts_evaluate()  # "system" events and alerts
    device_update(actor=AdminUserFactory(), device=till, name="Front till")  # an "operator" event
    JobFactory(site=store)

    for events in (device_timeline(device=till), site_timeline(site=store)):
        assert timeline_data(events) == TimelineSerializer({"events": events}).data
    kinds = {e["type"] for e in device_timeline(device=till) + site_timeline(site=store)}
    assert kinds >= {"health", "connectivity", "alert", "system", "operator", "job"}


def test_a_site_timeline_shows_alerts_and_transitions(store, settings):
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 0
    from devices_app.models import Device

    Device.objects.filter(site=store, status=DeviceStatus.OFFLINE).update(
        connectivity_changed_at=timezone.now()
    )
    alerts_evaluate()
    client = member(store)

    events = client.get("/api/v1/fleet/sites/site-store/timeline").json()["events"]

    assert {e["type"] for e in events} >= {"alert", "system"}


def test_timelines_of_another_site_are_404_like_missing_ones(store):
    client = member(SiteFactory())
    till = store.devices.first()
    for hidden, missing in (
        (f"/api/v1/fleet/devices/{till.device_id}/timeline", "/api/v1/fleet/devices/nope/timeline"),
        ("/api/v1/fleet/sites/site-store/timeline", "/api/v1/fleet/sites/nope/timeline"),
    ):
        assert client.get(hidden).status_code == client.get(missing).status_code == 404
        assert client.get(hidden).json() == client.get(missing).json()


# --- A device's timeline read from its newest days (selectors.newest_first) -------------------


def health_history(device, now):
    """60 reports over the past 20 hours and 30 more 3 to 10 days back, newest last; every
    fifth shares its predecessor's time, so the id decides their order."""
    from monitoring_app.models import HealthCheck

    spans = [(datetime.timedelta(minutes=5), datetime.timedelta(hours=20), 60)]
    spans.append((datetime.timedelta(days=3), datetime.timedelta(days=10), 30))
    times = [first + (last - first) * (i - (i % 5 == 4)) / n for first, last, n in spans for i in range(n)]
    history_bulk_create(
        HealthCheck(device=device, status="healthy", error_message=f"r{n}", checked_at=now - ago)
        for n, ago in enumerate(reversed(times))
    )


@pytest.mark.parametrize(
    ("anchor_ago", "narrowed", "reads"),
    [
        # the device row's last report time: the recent window (100 minutes at one report a
        # minute) holds 5 of these reports 20 minutes apart, the day's window all 50
        (datetime.timedelta(minutes=10), True, 2),
        (datetime.timedelta(days=3), True, 1),  # stale: older reports since, still all found
        (-datetime.timedelta(days=30), False, 4),  # a clock far ahead: nothing in the windows
        (None, False, 1),  # never reported (as the device row says)
    ],
)
def test_a_device_timeline_shows_its_newest_fifty_reports_whatever_its_row_says(
    store, anchor_ago, narrowed, reads
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring_app.models import HealthCheck

    till = store.devices.first()
    now = timezone.now()
    health_history(till, now)
    till.last_health_at = None if anchor_ago is None else now - anchor_ago
    till.save(update_fields=["last_health_at"])
    newest = HealthCheck.objects.filter(device=till).order_by("-checked_at", "-id")[:50]

    with CaptureQueriesContext(connection) as queries:
        events = member(store).get(f"/api/v1/fleet/devices/{till.device_id}/timeline").json()["events"]

    assert [e["summary"] for e in events if e["type"] == "health"] == [
        f"Healthy: {c.error_message}" for c in newest
    ]
    table = 'FROM "monitoring_app_healthcheck"'
    health_reads = [q["sql"] for q in queries.captured_queries if table in q["sql"]]
    # Narrowed: the last read bounded. Otherwise every window is tried, then the whole history.
    assert ('"checked_at" >=' in health_reads[-1]) == narrowed
    assert len(health_reads) == reads


def test_a_device_reporting_every_minute_has_its_timeline_read_from_its_last_100_minutes(store):
    """At the expected interval (one report a minute), the 50 newest reports are in the last
    100 minutes: one read from there, not from the day before (which holds 100 more here)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring_app.models import HealthCheck

    till = store.devices.first()
    now = timezone.now()
    history_bulk_create(
        HealthCheck(device=till, status="healthy", error_message=f"r{n}", checked_at=now - n * step)
        for n, step in [(n, datetime.timedelta(minutes=1)) for n in range(1, 71)]
        + [(n, datetime.timedelta(minutes=10)) for n in range(8, 150)]
    )
    till.last_health_at = now - datetime.timedelta(minutes=1)
    till.save(update_fields=["last_health_at"])

    with CaptureQueriesContext(connection) as queries:
        events = member(store).get(f"/api/v1/fleet/devices/{till.device_id}/timeline").json()["events"]

    assert [e["summary"] for e in events] == [f"Healthy: r{n}" for n in range(1, 51)]
    health_reads = [
        q["sql"] for q in queries.captured_queries if 'FROM "monitoring_app_healthcheck"' in q["sql"]
    ]
    bound = (till.last_health_at - datetime.timedelta(minutes=100)).isoformat(sep=" ")
    assert len(health_reads) == 1 and f"\"checked_at\" >= '{bound}'" in health_reads[0]


def test_a_device_timeline_reads_its_connectivity_changes_from_its_last_change_back(store):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring_app.models import DeviceStatusChange

    till = store.devices.first()
    now = timezone.now()
    history_bulk_create(
        DeviceStatusChange(
            device=till,
            old_status="online",
            new_status="offline",
            reason="sweep",
            changed_at=now - datetime.timedelta(minutes=20 * n if n < 55 else 60 * 24 * n),
        )
        for n in range(60)
    )
    till.connectivity_changed_at = now
    till.save(update_fields=["connectivity_changed_at"])
    newest = list(DeviceStatusChange.objects.filter(device=till).order_by("-changed_at", "-id")[:50])

    with CaptureQueriesContext(connection) as queries:
        events = member(store).get(f"/api/v1/fleet/devices/{till.device_id}/timeline").json()["events"]

    changes = [e for e in events if e["type"] == "connectivity"]
    assert [e["at"] for e in changes] == [c.changed_at.isoformat().replace("+00:00", "Z") for c in newest]
    reads = [
        q["sql"] for q in queries.captured_queries if 'FROM "monitoring_app_devicestatuschange"' in q["sql"]
    ]
    assert len(reads) == 1 and '"changed_at" >=' in reads[0]


def test_a_device_timeline_reads_no_connectivity_change_older_than_its_fifty_reports(store):
    """A device that reports often and rarely changes status (most of a fleet): the reports
    fill the timeline, so its connectivity changes are read from the oldest report shown on,
    not from every day kept; the events are those of a read of everything."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from monitoring_app.models import DeviceStatusChange, HealthCheck

    till = store.devices.first()
    now = timezone.now()
    health_history(till, now)
    till.last_health_at = now - datetime.timedelta(minutes=5)
    till.save(update_fields=["last_health_at"])
    fiftieth = HealthCheck.objects.filter(device=till).order_by("-checked_at", "-id")[49].checked_at
    history_bulk_create(
        DeviceStatusChange(
            device=till, old_status="online", new_status="offline", reason="sweep", changed_at=at
        )
        for at in (
            now - datetime.timedelta(minutes=7),  # among the reports: shown
            fiftieth,  # as old as the oldest report shown: read, cut by the merge's order
            fiftieth - datetime.timedelta(seconds=1),  # older than all fifty: never shown
            now - datetime.timedelta(days=6),
        )
    )
    every_event = sorted(
        [(c.checked_at, "health") for c in HealthCheck.objects.filter(device=till)]
        + [(c.changed_at, "connectivity") for c in DeviceStatusChange.objects.filter(device=till)],
        key=lambda event: event[0],
        reverse=True,
    )[:50]

    with CaptureQueriesContext(connection) as queries:
        events = member(store).get(f"/api/v1/fleet/devices/{till.device_id}/timeline").json()["events"]

    assert [(e["at"], e["type"]) for e in events] == [
        (at.isoformat().replace("+00:00", "Z"), kind) for at, kind in every_event
    ]
    assert [e["type"] for e in events].count("connectivity") == 1
    reads = [
        q["sql"] for q in queries.captured_queries if 'FROM "monitoring_app_devicestatuschange"' in q["sql"]
    ]
    # The device row knows no connectivity change: without the reports' bound, the whole history.
    assert till.connectivity_changed_at is None
    assert len(reads) == 1 and '"changed_at" >=' in reads[0]
