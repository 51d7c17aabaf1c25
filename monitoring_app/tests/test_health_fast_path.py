"""Health reports answered in front of Django (monitoring_app.api.heartbeat_fast, wired in
homepot.wsgi), like the heartbeat: stored exactly as the DRF view stores them, everything the
path does not recognise handed to Django, which gives the API's errors. And the heartbeat
whose Redis identity expired: one PostgreSQL read, then identity and sighting in one call.

Requests go through `homepot.wsgi.application`, the object gunicorn serves, in this process."""

import datetime
import json

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app import identity_store
from devices_app.choices import DeviceStatus
from devices_app.models import Device, DeviceCredential
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.redis_clients import pack, send_many
from homepot.wsgi import application
from monitoring_app import health_buffer, seen_buffer
from monitoring_app.models import HealthCheck
from monitoring_app.tests.test_health_buffer import own_redis  # noqa: F401 (fixture)
from monitoring_app.tests.test_heartbeat_fast_path import wsgi_post

HEALTH = "/api/v1/agent/health"
BATCH = "/api/v1/agent/health/batch"
HEARTBEAT = "/api/v1/agent/heartbeat"


def _terminal(**fields) -> Device:
    """An online device seen a minute ago, with its credential (`.secret`)."""
    device = DeviceFactory(status=DeviceStatus.ONLINE, **fields)
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - datetime.timedelta(minutes=1))
    device.secret = device_credential_issue(actor=None, device=device)[1]
    return device


def _send(device, path, body):
    return wsgi_post(path, json.dumps(body).encode(), HTTP_AUTHORIZATION=f"Device {device.secret}")


def _django_calls(monkeypatch) -> list:
    """The requests handed on to Django's handler (the fast path did not answer them)."""
    calls, django_app = [], application.django_app

    def counted(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return django_app(environ, start_response)

    monkeypatch.setattr(application, "django_app", counted)
    return calls


@pytest.mark.django_db
def test_a_buffered_report_skips_django_and_the_drain_stores_what_the_view_would(own_redis, monkeypatch):  # noqa: F811
    device = _terminal()
    calls = _django_calls(monkeypatch)
    stamp = timezone.now() - datetime.timedelta(seconds=3)
    body = {"status": "degraded", "timestamp": stamp.isoformat(), "cpu_percent": 71, "app_version": "7.3.0"}

    with CaptureQueriesContext(connection) as queries:
        first = _send(device, HEALTH, body)  # the identity read from PostgreSQL, then stored
    with CaptureQueriesContext(connection) as steady:
        second = _send(device, HEALTH, {**body, "cpu_percent": 72})

    assert calls == []
    assert (first.status_code, first.json()) == (second.status_code, second.json()) == (201, {"stored": 1})
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-frame-options"] == "DENY"
    # The first reads the credential (and records its first use); the steady one asks nothing.
    assert not any("healthcheck" in query["sql"] for query in queries.captured_queries)
    assert len(steady) == 0
    assert not HealthCheck.objects.exists()  # acknowledged from the stream

    assert health_buffer.drain(wait=True) == 2
    checks = list(HealthCheck.objects.filter(device=device).order_by("metrics__cpu_percent"))
    assert [c.metrics for c in checks] == [
        {"cpu_percent": 71.0, "app_version": "7.3.0"},
        {"cpu_percent": 72.0, "app_version": "7.3.0"},
    ]
    assert checks[0].checked_at == stamp
    device.refresh_from_db()
    assert (device.health_status, device.app_version) == ("degraded", "7.3.0")


@pytest.mark.django_db
def test_a_batch_skips_django_too(own_redis, monkeypatch):  # noqa: F811
    device = _terminal()
    calls = _django_calls(monkeypatch)
    now = timezone.now()
    reports = [
        {
            "status": "healthy",
            "cpu_percent": i,
            "timestamp": (now - datetime.timedelta(seconds=i)).isoformat(),
        }
        for i in range(30)
    ]

    answer = _send(device, BATCH, {"reports": reports})

    assert (answer.status_code, answer.json(), calls) == (201, {"stored": 30}, [])
    assert health_buffer.drain(wait=True) == 30
    assert HealthCheck.objects.filter(device=device).count() == 30


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (HEALTH, {"status": "healthy", "cpu_percent": 150}, "cpu_percent"),
        (HEALTH, {"status": "fine"}, "status"),
        (HEALTH, {"status": "healthy", "timestamp": "2020-01-01T00:00:00Z"}, "timestamp"),
        (HEALTH, {"status": "healthy", "colour": "red"}, "colour"),
        (
            BATCH,
            {"reports": [{"status": "healthy"}, {"status": "healthy", "device_id": "not-mine"}]},
            "reports",
        ),
    ],
)
def test_bad_input_gets_the_apis_400_naming_the_field_and_nothing_is_kept(own_redis, path, body, field):  # noqa: F811
    device = _terminal()

    answer = _send(device, path, body)

    assert answer.status_code == 400
    assert field in json.dumps(answer.json())
    assert health_buffer.drain(wait=True) == 0
    assert not HealthCheck.objects.exists()


@pytest.mark.django_db
def test_a_bad_credential_gets_the_apis_401(own_redis):  # noqa: F811
    device = _terminal()
    device.secret = "hpd_not-a-credential"

    answer = _send(device, HEALTH, {"status": "healthy"})

    assert answer.status_code == 401
    assert not HealthCheck.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_reports_acknowledged_on_this_path_survive_a_redis_kill_and_the_next_ones_are_kept_too(
    own_redis,  # noqa: F811
):
    """The stream is written on a connection this process keeps between requests: after
    Redis is killed and restarted, that connection is found dead and replaced, the reports
    acknowledged before are still there, and those sent after are acknowledged and kept."""
    devices = [_terminal() for _ in range(3)]
    for cpu in (1, 2):
        for device in devices:
            assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": cpu}).status_code == 201

    own_redis.kill()
    own_redis.start()  # replays its append-only file
    for device in devices:
        assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 3}).status_code == 201

    assert health_buffer.drain(wait=True) == 9
    for device in devices:
        stored = HealthCheck.objects.filter(device=device).values_list("metrics__cpu_percent", flat=True)
        assert sorted(stored) == [1, 2, 3]


@pytest.mark.django_db
def test_a_heartbeat_whose_identity_expired_reads_postgresql_once_and_writes_no_row():
    """The miss of a steady terminal (its entries expired): one query (the credential), then
    the identity stored and the heartbeat noted in the buffer; the device row is not written
    (the flush does it), and the next heartbeat is answered from Redis again."""
    device = _terminal()
    DeviceCredential.objects.filter(device=device).update(last_used_at=timezone.now())  # recorded
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    key_hash = DeviceCredential.hash_key(device.secret)
    client.delete(identity_store.credential_key(key_hash), identity_store.device_key(device.pk))
    client.hdel(seen_buffer.key(), str(device.pk))
    seen_before = Device.objects.get(pk=device.pk).last_seen

    with CaptureQueriesContext(connection) as queries:
        answer = wsgi_post(HTTP_AUTHORIZATION=f"Device {device.secret}")

    assert answer.status_code == 200 and answer.json()["status"] == "online"
    assert len(queries) == 1 and queries[0]["sql"].startswith("SELECT")
    assert Device.objects.get(pk=device.pk).last_seen == seen_before  # not written: buffered
    assert client.hexists(seen_buffer.key(), str(device.pk))
    assert client.exists(identity_store.credential_key(key_hash), identity_store.device_key(device.pk)) == 2
    with CaptureQueriesContext(connection) as queries:
        assert wsgi_post(HTTP_AUTHORIZATION=f"Device {device.secret}").status_code == 200
    assert len(queries) == 0


def test_several_commands_in_one_round_trip_leave_the_kept_connection_in_step():
    """An error reply among them is raised once every reply is read: the next call's answers
    are its own."""
    url, key = django_settings.REDIS_URL, f"test-send-many-{id(object())}"
    try:
        with pytest.raises(redis.ResponseError):
            send_many(url, 0.3, [pack("SET", key, "text"), pack("INCR", key), pack("GET", key)])
        assert send_many(url, 0.3, [pack("GET", key), pack("STRLEN", key)]) == [b"text", 4]
    finally:
        redis.Redis.from_url(url).delete(key)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (lambda s: s.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS - 30, True),  # just ahead, within skew
        (lambda s: s.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS + 30, False),  # beyond the skew
        (lambda s: -s.HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS * 3600 + 60, True),  # old, still kept
        (lambda s: -s.HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS * 3600 - 60, False),  # too old
    ],
)
def test_the_device_clock_is_judged_at_its_edges_as_the_serializer_judges_it(
    own_redis,  # noqa: F811
    settings,
    monkeypatch,
    offset,
    accepted,
):
    device = _terminal()
    stamp = (timezone.now() + datetime.timedelta(seconds=offset(settings))).isoformat()
    calls = _django_calls(monkeypatch)

    single = _send(device, HEALTH, {"status": "healthy", "timestamp": stamp})
    batch = _send(
        device, BATCH, {"reports": [{"status": "healthy"}, {"status": "healthy", "timestamp": stamp}]}
    )

    if accepted:
        assert (single.status_code, batch.status_code, calls) == (201, 201, [])
        assert health_buffer.drain(wait=True) == 3
    else:
        assert (single.status_code, batch.status_code) == (400, 400)
        assert "timestamp" in json.dumps(single.json()) and "reports.1.timestamp" in json.dumps(batch.json())
        assert len(calls) == 2  # the DRF view words the refusal
        assert health_buffer.drain(wait=True) == 0
