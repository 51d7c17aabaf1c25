"""The credential's identity kept in Redis (devices_app.identity_store): a steady heartbeat
needs no PostgreSQL query, and nothing a heartbeat must obey is missed because of it.

Revocations, rotations, deletions and status changes reach Redis when they commit; a change
whose invalidation could not reach Redis is seen once the entry expires (the bound,
HOMEPOT_DEVICES_IDENTITY_SECONDS); with Redis away, heartbeats are answered from PostgreSQL.
Requests go through the doors terminals and operators use: the WSGI application gunicorn
serves (the heartbeat's fast path), the API client (the DRF views) and the admin's API.
Invalidations run on commit, so each change is made inside
`django_capture_on_commit_callbacks(execute=True)`, as a real commit would run them."""

import datetime
import time

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from devices_app import identity_store
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import free_port
from monitoring_app import seen_buffer
from monitoring_app.models import DeviceStatusChange, MonitoringState
from monitoring_app.sweep import sweep_offline
from monitoring_app.tasks import flush_heartbeats
from monitoring_app.tests.test_heartbeat_fast_path import wsgi_post
from monitoring_app.tests.test_heartbeat_served import _start_redis, _stop

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"
HEALTH = "/api/v1/agent/health"
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there


def _terminal(status=DeviceStatus.ONLINE):
    device = DeviceFactory(status=status)
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - datetime.timedelta(minutes=2))
    device.secret = device_credential_issue(actor=None, device=device)[1]
    return device


def _beat(device, secret=None):
    """A heartbeat through the fast path (homepot.wsgi, what gunicorn serves); falls through
    to the DRF view for anything it does not answer, as in production."""
    return wsgi_post(HTTP_AUTHORIZATION=f"Device {secret or device.secret}")


def _agent(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device.secret}")
    return client


def _revoke_with_redis_away(device, settings, django_capture_on_commit_callbacks, caplog) -> None:
    """The device's credential revoked while Redis is unreachable from the revoking process:
    its entry stays in Redis (the failure is logged), as the documented bound allows."""
    reachable = settings.REDIS_URL
    settings.REDIS_URL = NOWHERE
    with django_capture_on_commit_callbacks(execute=True):
        device_credential_revoke(actor=None, device=device)
    settings.REDIS_URL = reachable
    assert "Could not invalidate 1 identity entries" in caplog.text


def _operator(admin_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _stored(device) -> bool:
    return redis.Redis.from_url(django_settings.REDIS_URL).exists(identity_store.device_key(device.pk)) == 1


def test_a_steady_heartbeat_reads_the_identity_from_redis_and_asks_postgresql_nothing():
    device = _terminal()
    assert _beat(device).status_code == 200  # first: read from PostgreSQL, stored in Redis
    assert _stored(device)

    with CaptureQueriesContext(connection) as queries:
        answer = _beat(device)

    assert answer.status_code == 200
    assert (answer.json()["device_id"], answer.json()["status"]) == (device.device_id, "online")
    assert len(queries) == 0
    # Noted in the heartbeat buffer by the same script call, and written by the flush.
    assert str(device.pk).encode() in redis.Redis.from_url(django_settings.REDIS_URL).hkeys(seen_buffer.key())
    flush_heartbeats()
    assert timezone.now() - Device.objects.get(pk=device.pk).last_seen < datetime.timedelta(seconds=5)


def test_the_api_clients_heartbeat_and_health_report_use_the_same_entries():
    device = _terminal()
    agent = _agent(device)
    assert agent.post(HEARTBEAT, {}, format="json").status_code == 200

    with CaptureQueriesContext(connection) as queries:
        assert agent.post(HEARTBEAT, {}, format="json").status_code == 200
    assert len(queries) == 0


@pytest.mark.parametrize("door", ["fast path", "api client"])
def test_a_credential_revoked_through_the_api_is_refused_at_once(
    door, admin_user, django_capture_on_commit_callbacks
):
    device = _terminal()
    assert _beat(device).status_code == 200 and _beat(device).status_code == 200  # stored, then used

    with django_capture_on_commit_callbacks(execute=True):
        assert (
            _operator(admin_user).delete(f"/api/v1/devices/{device.device_id}/credential").status_code == 204
        )

    status = _beat(device).status_code if door == "fast path" else _agent(device).post(HEARTBEAT).status_code
    assert status == 401
    assert _agent(device).post(HEALTH, {"status": "healthy"}, format="json").status_code == 401


def test_a_rotated_credential_old_refused_new_accepted(admin_user, django_capture_on_commit_callbacks):
    device = _terminal()
    assert _beat(device).status_code == 200 and _beat(device).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        answer = _operator(admin_user).post(f"/api/v1/devices/{device.device_id}/credential")
    assert answer.status_code in (200, 201)
    new_secret = answer.json()["credential"]

    assert _beat(device).status_code == 401
    assert _beat(device, new_secret).status_code == 200
    assert _beat(device, new_secret).status_code == 200  # from Redis now


def test_a_deleted_device_is_refused(admin_user, django_capture_on_commit_callbacks):
    device = _terminal()
    assert _beat(device).status_code == 200 and _beat(device).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        assert _operator(admin_user).delete(f"/api/v1/devices/{device.device_id}").status_code == 204

    assert _beat(device).status_code == 401


def test_a_revocation_that_could_not_reach_redis_holds_until_the_bound_then_refuses(
    settings, django_capture_on_commit_callbacks, caplog
):
    """Redis unreachable from the revoking process at commit: the stored entry may answer
    for at most HOMEPOT_DEVICES_IDENTITY_SECONDS after it was written, never longer."""
    settings.HOMEPOT_DEVICES_IDENTITY_SECONDS = 1
    device = _terminal()
    assert _beat(device).status_code == 200
    stored_at = time.monotonic()

    _revoke_with_redis_away(device, settings, django_capture_on_commit_callbacks, caplog)

    answer = _beat(device).status_code
    if time.monotonic() < stored_at + 1:  # a slow machine may already be past the bound
        assert answer == 200  # the documented staleness, not a wish
    time.sleep(max(0.0, stored_at + 1.05 - time.monotonic()))  # the bound itself is waited for
    assert _beat(device).status_code == 401


def test_an_operators_maintenance_reaches_the_next_heartbeat(admin_user, django_capture_on_commit_callbacks):
    device = _terminal()
    assert _beat(device).json()["status"] == "online"

    with django_capture_on_commit_callbacks(execute=True):
        answer = _operator(admin_user).patch(
            f"/api/v1/devices/{device.device_id}", {"status": "maintenance"}, format="json"
        )
    assert answer.status_code == 200

    assert _beat(device).json()["status"] == "maintenance"
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.MAINTENANCE


def _identity_entries() -> dict[bytes, bytes]:
    """Every identity key this test's database has in Redis, with its value."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    names = sorted(client.scan_iter(match=f"{identity_store._prefix()}*"))
    return dict(zip(names, client.mget(names), strict=True)) if names else {}


def test_a_device_the_sweep_marked_offline_is_set_online_by_its_next_heartbeat(
    settings, django_capture_on_commit_callbacks
):
    """The sweep writes nothing to Redis; the device's identity stays there saying online,
    and its next heartbeat still reaches PostgreSQL, because it was not sighted within the
    offline threshold less the margin (devices_app.identity_store, "The sweep and the
    sightings"). A 2 s threshold, so the silence is real time, as in production."""
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 1
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 1
    settings.HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS = 0.5
    devices = [_terminal() for _ in range(3)]
    for device in devices:
        assert _beat(device).status_code == 200  # read from PostgreSQL, stored in Redis
        with CaptureQueriesContext(connection) as queries:
            assert _beat(device).json()["status"] == "online"
        assert len(queries) == 0  # answered from Redis, noted in the seen buffer
    time.sleep(2.2)  # silent past the threshold
    now = timezone.now()  # monitoring has been running for a day (not a resume)
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={"last_sweep_at": now, "resumed_at": now - datetime.timedelta(days=1)},
    )
    stored = _identity_entries()

    with django_capture_on_commit_callbacks(execute=True):
        assert sweep_offline().marked_offline == 3

    assert _identity_entries() == stored  # no tombstone, no key of any device written
    device = devices[0]
    assert stored[identity_store.device_key(device.pk).encode()].startswith(b"online|")
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.OFFLINE

    answer = _beat(device)

    assert answer.json()["status"] == "online"
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE
    came_back = DeviceStatusChange.objects.filter(device=device, new_status=DeviceStatus.ONLINE)
    assert came_back.get().old_status == DeviceStatus.OFFLINE
    with CaptureQueriesContext(connection) as queries:
        assert _beat(device).json()["status"] == "online"
    assert len(queries) == 0  # and its next heartbeat is answered from Redis again


def test_a_heartbeat_sighted_recently_is_answered_from_redis_through_a_sweep(
    settings, django_capture_on_commit_callbacks
):
    """A device that keeps reporting is neither marked by the sweep nor sent to PostgreSQL."""
    device = _terminal()
    assert _beat(device).status_code == 200 and _beat(device).status_code == 200
    now = timezone.now()
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={"last_sweep_at": now, "resumed_at": now - datetime.timedelta(days=1)},
    )

    with django_capture_on_commit_callbacks(execute=True):
        sweep_offline()

    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE
    with CaptureQueriesContext(connection) as queries:
        assert _beat(device).json()["status"] == "online"
    assert len(queries) == 0


def test_a_terminal_back_from_a_silence_is_written_to_its_row_at_once():
    """Its row says it was last seen longer ago than a sweep tolerates: the heartbeat is not
    left in the buffer (a sweep running now could miss it) but written, under the row's lock."""
    device = _terminal()
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - datetime.timedelta(minutes=10))

    assert _beat(device).json()["status"] == "online"

    assert timezone.now() - Device.objects.get(pk=device.pk).last_seen < datetime.timedelta(seconds=5)
    assert str(device.pk).encode() not in redis.Redis.from_url(django_settings.REDIS_URL).hkeys(
        seen_buffer.key()
    )


def test_an_entry_that_says_offline_is_never_answered_from_redis():
    """A status the heartbeat changes (offline -> online) is always decided in PostgreSQL,
    whatever Redis says."""
    device = _terminal(status=DeviceStatus.OFFLINE)
    assert _agent(device).post(HEARTBEAT, {}, format="json").status_code == 200  # stored as it was read

    with CaptureQueriesContext(connection) as queries:
        assert _beat(device).json()["status"] == "online"
    assert len(queries) >= 1  # read from PostgreSQL, not from the entry


def test_with_redis_away_heartbeats_and_reports_are_answered_from_postgresql(settings, monkeypatch):
    monkeypatch.setattr(seen_buffer, "_down_until", 0.0)
    device = _terminal()
    assert _beat(device).status_code == 200
    settings.REDIS_URL = NOWHERE

    answer = _beat(device)
    report = _agent(device).post(HEALTH, {"status": "degraded"}, format="json")

    assert answer.status_code == 200 and answer.json()["status"] == "online"
    assert report.status_code == 201
    device.refresh_from_db()
    assert timezone.now() - device.last_seen < datetime.timedelta(seconds=5)  # written directly
    assert device.health_status == "degraded"


def test_after_a_redis_restart_the_script_is_loaded_again_and_entries_refilled(settings, monkeypatch):
    """A restarted Redis (of this test's own, keeping nothing on disk) knows no script and no
    entry: the next heartbeat still succeeds (through PostgreSQL), and the one after is
    answered from Redis again."""
    monkeypatch.setattr(seen_buffer, "_down_until", 0.0)
    port = free_port()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    own = _start_redis(port)
    try:
        device = _terminal()
        assert _beat(device).status_code == 200 and _beat(device).status_code == 200
        _stop(own)
        own = _start_redis(port)  # empty

        assert _beat(device).status_code == 200
        with CaptureQueriesContext(connection) as queries:
            assert _beat(device).status_code == 200
        assert len(queries) == 0
    finally:
        _stop(own)


def test_an_import_that_moves_a_device_reaches_its_entry(admin_user, django_capture_on_commit_callbacks):
    """Site and type are read from the entry (a gateway reports for the devices of its own
    site): a CSV import that changes them reaches Redis on commit."""
    device = _terminal()
    assert _beat(device).status_code == 200 and _stored(device)
    other_site = DeviceFactory().site
    csv = (
        f"device_id,name,site_id,device_type\n{device.device_id},{device.name},{other_site.site_id},gateway\n"
    )

    with django_capture_on_commit_callbacks(execute=True):
        answer = _operator(admin_user).generic(
            "POST", "/api/v1/devices/import?dry_run=false", csv.encode(), content_type="text/csv"
        )
    assert answer.status_code == 200, answer.content

    client = redis.Redis.from_url(django_settings.REDIS_URL)
    assert client.get(identity_store.device_key(device.pk)) == identity_store.TOMBSTONE
    assert _beat(device).status_code == 200  # read from PostgreSQL meanwhile
