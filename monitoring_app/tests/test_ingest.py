"""The agent's ingest: heartbeats and health reports, through the API a device calls."""

import datetime

import pytest
import redis
from django.conf import settings
from django.core.signals import request_finished
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device, DeviceCredential
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from monitoring_app import health_buffer
from monitoring_app.models import DeviceStatusChange, HealthCheck
from monitoring_app.tasks import flush_heartbeats
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"
HEALTH = "/api/v1/agent/health"
BATCH = "/api/v1/agent/health/batch"


def device_client(device) -> APIClient:
    _, secret = device_credential_issue(actor=None, device=device)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    client.secret = secret
    return client


@pytest.fixture(autouse=True, params=["direct", "buffered"])
def health_path(request, settings):
    """Every test here runs twice: reports written by the request itself (no buffer), and
    reports taken by the Redis buffer, drained by the real drain as each request finishes
    (what the beat task does a moment later). The rules a user sees must be the same."""
    settings.HOMEPOT_MONITORING_BUFFER_HEALTH = request.param == "buffered"
    if request.param == "buffered":
        # The shared test Redis keeps nothing on disk; the buffer's rules are what is tested here
        # (its durability gate is tested in test_health_buffer.py).
        settings.HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY = "assume"
        request_finished.connect(_drain, dispatch_uid="test-drain")
        yield request.param
        request_finished.disconnect(dispatch_uid="test-drain")
    else:
        yield request.param


def _drain(**kwargs):
    health_buffer.drain(wait=True)


@pytest.fixture
def device():
    return DeviceFactory(status=DeviceStatus.OFFLINE, last_seen=None)


@pytest.fixture
def agent(device):
    return device_client(device)


def ago(**kwargs) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**kwargs)


# --- Heartbeat ----------------------------------------------------------------------------


def test_a_heartbeat_marks_the_device_online_by_the_server_clock_and_records_the_transition(agent, device):
    response = agent.post(HEARTBEAT, {}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "online"
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert timezone.now() - device.last_seen < datetime.timedelta(seconds=5)
    assert device.connectivity_changed_at is not None
    change = DeviceStatusChange.objects.get()
    assert (change.device, change.old_status, change.new_status, change.reason) == (
        device,
        "offline",
        "online",
        "report",
    )


def test_the_device_timestamp_is_kept_but_last_seen_is_the_servers(agent, device):
    stamp = ago(seconds=90)
    agent.post(HEARTBEAT, {"timestamp": stamp.isoformat()}, format="json")

    device.refresh_from_db()
    assert device.reported_at == stamp
    assert device.last_seen > stamp + datetime.timedelta(seconds=60)


def test_heartbeats_within_the_touch_window_do_not_rewrite_the_row(
    agent, device, django_assert_max_num_queries
):
    agent.post(HEARTBEAT, {}, format="json")
    first = Device.objects.get(pk=device.pk).last_seen

    agent.post(HEARTBEAT, {}, format="json")

    assert Device.objects.get(pk=device.pk).last_seen == first  # not written again
    assert DeviceStatusChange.objects.count() == 1


def test_a_stale_last_seen_is_refreshed(agent, device):
    agent.post(HEARTBEAT, {}, format="json")
    Device.objects.filter(pk=device.pk).update(last_seen=ago(seconds=45))

    agent.post(HEARTBEAT, {}, format="json")
    flush_heartbeats()  # the beat task: buffered heartbeats of online devices reach the rows

    assert timezone.now() - Device.objects.get(pk=device.pk).last_seen < datetime.timedelta(seconds=5)
    assert DeviceStatusChange.objects.count() == 1  # already online: no second transition


def test_a_heartbeat_costs_a_bounded_number_of_queries(agent, django_assert_max_num_queries):
    agent.post(HEARTBEAT, {}, format="json")
    with django_assert_max_num_queries(5):
        agent.post(HEARTBEAT, {}, format="json")


def test_a_repeated_heartbeat_is_one_query_and_answers_the_devices_state(agent, device):
    agent.post(HEARTBEAT, {}, format="json")  # first contact: the row and the credential's use are written

    with CaptureQueriesContext(connection) as queries:
        response = agent.post(HEARTBEAT, {}, format="json")

    assert len(queries) == 1  # the credential, its device and its site, together
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"device_id", "status", "server_time", "next_report_in"}
    assert (body["device_id"], body["status"], body["next_report_in"]) == (device.device_id, "online", 60)
    assert abs(parse_datetime(body["server_time"]) - timezone.now()) < datetime.timedelta(seconds=30)


def test_the_credentials_use_is_recorded_at_most_every_15_minutes(agent, device, isolated_identity_store):
    credential = DeviceCredential.objects.get(device=device, revoked_at__isnull=True)

    agent.post(HEARTBEAT, {}, format="json")
    first_use = DeviceCredential.objects.get(pk=credential.pk).last_used_at
    agent.post(HEARTBEAT, {}, format="json")

    assert first_use is not None
    assert DeviceCredential.objects.get(pk=credential.pk).last_used_at == first_use
    DeviceCredential.objects.filter(pk=credential.pk).update(last_used_at=ago(minutes=16))
    # The identity stored in Redis carries the last use it read; it is read again once the
    # entry expires (HOMEPOT_DEVICES_IDENTITY_SECONDS), which this stands for.
    _expire_identities(isolated_identity_store)
    agent.post(HEARTBEAT, {}, format="json")
    assert DeviceCredential.objects.get(pk=credential.pk).last_used_at > first_use


def _expire_identities(prefix: str) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def test_maintenance_is_kept_when_the_device_reports(agent, device):
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.MAINTENANCE)

    agent.post(HEARTBEAT, {}, format="json")
    flush_heartbeats()

    device.refresh_from_db()
    assert device.status == DeviceStatus.MAINTENANCE
    assert device.last_seen is not None
    assert not DeviceStatusChange.objects.exists()


# --- Clock abuse ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [HEARTBEAT, HEALTH])
def test_a_timestamp_in_the_future_is_refused_and_nothing_is_stored(agent, device, url):
    body = {"timestamp": (timezone.now() + datetime.timedelta(days=365)).isoformat(), "status": "healthy"}
    if url == HEARTBEAT:
        body.pop("status")

    assert_error(agent.post(url, body, format="json"), 400, field="timestamp")

    device.refresh_from_db()
    assert device.last_seen is None and device.status == DeviceStatus.OFFLINE
    assert not HealthCheck.objects.exists()


def test_a_small_clock_skew_is_accepted(agent, device):
    ahead = timezone.now() + datetime.timedelta(seconds=60)
    assert (
        agent.post(HEALTH, {"status": "healthy", "timestamp": ahead.isoformat()}, format="json").status_code
        == 201
    )


def test_a_timestamp_far_in_the_past_is_refused(agent):
    body = {"status": "healthy", "timestamp": ago(days=30).isoformat()}
    assert_error(agent.post(HEALTH, body, format="json"), 400, field="timestamp")
    assert not HealthCheck.objects.exists()


def test_an_old_device_clock_never_keeps_a_device_online(agent, device, settings):
    """Whatever the device claims, last_seen is the server's time of the request."""
    agent.post(HEARTBEAT, {"timestamp": (timezone.now() + datetime.timedelta(seconds=250)).isoformat()})
    device.refresh_from_db()
    assert device.last_seen <= timezone.now()


# --- Health reports -------------------------------------------------------------------------


FULL_REPORT = {
    "status": "degraded",
    "response_time_ms": 230,
    "cpu_percent": 71.5,
    "memory_percent": 64,
    "disk_percent": 12.25,
    "app_version": "7.3.0",
    "firmware_version": "4.2.2",
    "error_message": "Receipt printer paper low",
    "metrics": {"transactions_today": 341, "queue": [1, 2]},
}


def test_a_health_report_is_stored_as_history_and_as_the_latest_state(agent, device):
    response = agent.post(HEALTH, FULL_REPORT, format="json")

    assert response.status_code == 201, response.content
    check = HealthCheck.objects.get()
    assert (check.device, check.status, check.response_time_ms) == (device, "degraded", 230)
    assert check.error_message == "Receipt printer paper low"
    assert check.metrics["cpu_percent"] == 71.5 and check.metrics["extra"]["transactions_today"] == 341
    device.refresh_from_db()
    assert (device.health_status, device.app_version, device.firmware_version) == (
        "degraded",
        "7.3.0",
        "4.2.2",
    )
    assert device.status == DeviceStatus.ONLINE
    assert device.last_health_at and device.health_changed_at


# Transactional: inside the test's transaction the write would run in a savepoint (so that a
# missing day partition can be created and the statement retried); a request is in autocommit.
@pytest.mark.django_db(transaction=True)
def test_a_single_health_report_is_one_statement_after_the_lookup(
    agent, device, django_assert_num_queries, health_path
):
    if health_path == "buffered":
        pytest.skip("the buffered twin: test_a_buffered_health_report_writes_no_sql_in_the_request")
    agent.post(HEALTH, FULL_REPORT, format="json")  # first contact: the credential's use is recorded

    # The credential lookup, then history + latest state in one statement (its own
    # transaction: no BEGIN/COMMIT round trips).
    with django_assert_num_queries(2):
        response = agent.post(HEALTH, {**FULL_REPORT, "status": "unhealthy"}, format="json")

    assert response.status_code == 201
    assert HealthCheck.objects.filter(device=device).count() == 2
    device.refresh_from_db()
    assert device.health_status == "unhealthy"


def test_a_change_of_health_is_written_even_inside_the_touch_window(agent, device):
    agent.post(HEALTH, {"status": "healthy"}, format="json")
    agent.post(HEALTH, {"status": "unhealthy"}, format="json")

    device.refresh_from_db()
    assert device.health_status == "unhealthy"
    assert HealthCheck.objects.count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "status"),
        ({"status": "great"}, "status"),
        ({"status": "healthy", "cpu_percent": 140}, "cpu_percent"),
        ({"status": "healthy", "memory_percent": "lots"}, "memory_percent"),
        ({"status": "healthy", "disk_percent": -1}, "disk_percent"),
        ({"status": "healthy", "response_time_ms": -5}, "response_time_ms"),
        ({"status": "healthy", "app_version": 7}, "app_version"),
        ({"status": "healthy", "firmware_version": "x" * 65}, "firmware_version"),
        ({"status": "healthy", "metrics": [1, 2]}, "metrics"),
        ({"status": "healthy", "metrics": {"blob": "x" * 5000}}, "metrics"),
        ({"status": "healthy", "metrics": {"nul": "a\x00b"}}, "metrics"),
        ({"status": "healthy", "error_message": "a\x00b"}, "error_message"),
        ({"status": "healthy", "timestamp": "yesterday-ish"}, "timestamp"),
        ({"status": "healthy", "cpu": 10}, "cpu"),
    ],
)
def test_bad_health_reports_answer_400_naming_the_field_and_store_nothing(agent, device, body, field):
    assert_error(agent.post(HEALTH, body, format="json"), 400, field=field)

    assert not HealthCheck.objects.exists()
    device.refresh_from_db()
    assert device.last_seen is None and device.health_status == ""


def test_a_body_that_is_not_an_object_is_a_400(agent):
    response = agent.post(HEALTH, [1, 2], format="json")
    assert response.status_code == 400
    assert not HealthCheck.objects.exists()


# --- Batches --------------------------------------------------------------------------------


def test_a_catch_up_batch_stores_every_report_and_keeps_the_newest_as_latest(agent, device):
    reports = [
        {"status": "unhealthy", "timestamp": ago(minutes=30).isoformat()},
        {"status": "healthy", "timestamp": ago(minutes=1).isoformat(), "app_version": "7.4.0"},
        {"status": "degraded", "timestamp": ago(minutes=10).isoformat()},
    ]
    response = agent.post(BATCH, {"reports": reports}, format="json")

    assert response.status_code == 201, response.content
    assert response.json() == {"stored": 3}
    assert HealthCheck.objects.filter(device=device).count() == 3
    device.refresh_from_db()
    assert (device.health_status, device.app_version) == ("healthy", "7.4.0")


def test_an_older_report_after_a_newer_one_does_not_overwrite_the_latest_health(agent, device):
    agent.post(HEALTH, {"status": "healthy", "timestamp": ago(seconds=5).isoformat()}, format="json")
    agent.post(
        BATCH, {"reports": [{"status": "unhealthy", "timestamp": ago(hours=1).isoformat()}]}, format="json"
    )

    device.refresh_from_db()
    assert device.health_status == "healthy"
    assert HealthCheck.objects.count() == 2


def test_a_batch_with_one_bad_report_names_it_and_stores_nothing(agent, device):
    reports = [{"status": "healthy"}, {"status": "healthy", "cpu_percent": 101}]

    assert_error(agent.post(BATCH, {"reports": reports}, format="json"), 400, field="reports.1.cpu_percent")
    assert not HealthCheck.objects.exists()


def test_a_batch_is_bounded(agent, settings):
    settings.HOMEPOT_MONITORING_BATCH_MAX_REPORTS = 3
    body = {"reports": [{"status": "healthy"}] * 4}
    assert_error(agent.post(BATCH, body, format="json"), 400, field="reports")
    assert_error(agent.post(BATCH, {"reports": []}, format="json"), 400, field="reports")


def test_a_gateway_reports_for_the_devices_of_its_own_site(django_assert_max_num_queries):
    site = SiteFactory()
    gateway = DeviceFactory(site=site, device_type=DeviceType.GATEWAY)
    tills = DeviceFactory.create_batch(3, site=site, status=DeviceStatus.OFFLINE)
    client = device_client(gateway)
    reports = [{"device_id": till.device_id, "status": "healthy"} for till in tills]

    with django_assert_max_num_queries(12):
        response = client.post(BATCH, {"reports": reports}, format="json")

    assert response.status_code == 201, response.content
    assert set(Device.objects.filter(pk__in=[t.pk for t in tills]).values_list("status", flat=True)) == {
        "online"
    }
    assert HealthCheck.objects.count() == 3


def test_a_gateway_cannot_report_for_another_sites_device():
    gateway = DeviceFactory(device_type=DeviceType.GATEWAY)
    elsewhere = DeviceFactory()
    body = {"reports": [{"device_id": elsewhere.device_id, "status": "unhealthy"}]}

    assert_error(device_client(gateway).post(BATCH, body, format="json"), 400, field="reports.0.device_id")
    assert not HealthCheck.objects.exists()


def test_a_terminal_cannot_report_for_a_neighbour():
    till = DeviceFactory()
    neighbour = DeviceFactory(site=till.site)
    body = {"reports": [{"device_id": neighbour.device_id, "status": "unhealthy"}]}

    assert_error(device_client(till).post(BATCH, body, format="json"), 400, field="reports.0.device_id")
    assert not HealthCheck.objects.exists()


# --- Credential misuse ----------------------------------------------------------------------


@pytest.mark.parametrize("url", [HEARTBEAT, HEALTH, BATCH])
@pytest.mark.parametrize("header", [None, "Device hpd_not-a-real-one", "Device", "Bearer hpd_x"])
def test_missing_or_wrong_credentials_get_401(url, header, device):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.post(url, {"status": "healthy"}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401
    assert not HealthCheck.objects.exists()


def test_a_revoked_credential_gets_401(agent, device):
    device_credential_revoke(actor=None, device=device)
    assert agent.post(HEARTBEAT, {}, format="json").status_code == 401


@pytest.mark.parametrize("url", [HEARTBEAT, HEALTH, BATCH])
def test_an_operator_token_opens_no_agent_endpoint(url, admin_user, device):
    manager = token_client(admin_user)
    SiteMembershipFactory(user=admin_user, site=device.site, role=MembershipRole.MANAGER)

    response = manager.post(url, {"status": "healthy"}, format="json")

    assert response.status_code == 401
    assert not HealthCheck.objects.exists()


def test_a_device_clock_running_ahead_does_not_freeze_its_health(agent, device):
    """A heartbeat stamped a few minutes ahead (within the allowed skew) must not make the
    next health reports, stamped by the server, look older than the latest one."""
    ahead = timezone.now() + datetime.timedelta(seconds=240)
    agent.post(HEARTBEAT, {"timestamp": ahead.isoformat()}, format="json")
    agent.post(HEALTH, {"status": "healthy"}, format="json")
    agent.post(HEALTH, {"status": "unhealthy"}, format="json")

    device.refresh_from_db()
    assert device.health_status == "unhealthy"
    assert device.reported_at == ahead
