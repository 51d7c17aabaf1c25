"""A single health report in ONE Redis round trip (monitoring_app.ingest.health_report_buffered)
when the health stream lives in the Redis of the credential identities and the seen buffer:
the identity's script notes the sighting and appends the report. Stored as the DRF view
stores it, acknowledged only once that durable Redis holds it, kept across a Redis kill, and
the stream's bound and the credential's use recorded as on the two-Redis way; with two Redis
servers, the report takes two round trips, as before.

Requests go through `homepot.wsgi.application`, the object gunicorn serves, in this process."""

import datetime
import json

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app import identity_store
from devices_app.models import DeviceCredential
from homepot import redis_clients
from monitoring_app import health_buffer, seen_buffer
from monitoring_app.ingest import HealthReport
from monitoring_app.models import HealthCheck
from monitoring_app.tests.test_health_buffer import own_redis, stored_per_device  # noqa: F401 (fixture)
from monitoring_app.tests.test_health_fast_path import HEALTH, _django_calls, _send, _terminal


@pytest.fixture
def one_redis(own_redis, settings, monkeypatch):  # noqa: F811
    """The identities, the seen buffer and the health stream in one durable Redis. The
    process's memory of a stream over its bound starts afresh too."""
    settings.REDIS_URL = own_redis.url
    monkeypatch.setattr(health_buffer, "_full_until", 0.0)
    return own_redis


def _round_trips(monkeypatch) -> list:
    """The Redis round trips made by the request paths (homepot.redis_clients), counted."""
    trips, exchange = [], redis_clients._exchange

    def counted(connection_, packed_commands):
        trips.append(len(packed_commands))
        return exchange(connection_, packed_commands)

    monkeypatch.setattr(redis_clients, "_exchange", counted)
    return trips


@pytest.mark.django_db
def test_a_steady_report_is_one_round_trip_and_the_drain_stores_what_the_view_would(one_redis, monkeypatch):
    device = _terminal()
    calls = _django_calls(monkeypatch)
    stamp = timezone.now() - datetime.timedelta(seconds=3)
    body = {"status": "degraded", "timestamp": stamp.isoformat(), "cpu_percent": 71, "app_version": "7.3.0"}
    assert _send(device, HEALTH, body).status_code == 201  # the identity read from PostgreSQL, then stored

    trips = _round_trips(monkeypatch)
    with CaptureQueriesContext(connection) as queries:
        answer = _send(device, HEALTH, {**body, "cpu_percent": 72, "error_message": "printer \u00e9"})

    assert (answer.status_code, answer.json()) == (201, {"stored": 1})
    assert answer.headers["x-frame-options"] == "DENY"
    assert calls == [] and len(queries) == 0
    assert trips == [1]  # one command: the identity's script, which also appended the report
    client = redis.Redis.from_url(one_redis.url)
    assert client.hexists(seen_buffer.key(), str(device.pk))  # the sighting, for the sweep
    assert not HealthCheck.objects.exists()

    assert health_buffer.drain(wait=True) == 2
    checks = list(HealthCheck.objects.filter(device=device).order_by("metrics__cpu_percent"))
    assert [(c.metrics, c.error_message, c.checked_at) for c in checks] == [
        ({"cpu_percent": 71.0, "app_version": "7.3.0"}, "", stamp),
        ({"cpu_percent": 72.0, "app_version": "7.3.0"}, "printer \u00e9", stamp),
    ]
    device.refresh_from_db()
    assert (device.health_status, device.app_version) == ("degraded", "7.3.0")


@pytest.mark.django_db
def test_with_the_stream_on_its_own_redis_a_report_takes_two_round_trips(own_redis, monkeypatch):  # noqa: F811
    device = _terminal()
    assert _send(device, HEALTH, {"status": "healthy"}).status_code == 201
    trips = _round_trips(monkeypatch)

    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 5}).status_code == 201

    assert trips == [1, 2]  # the identity's script, then XADD + XLEN on the health Redis
    assert health_buffer.drain(wait=True) == 2


@pytest.mark.django_db
def test_with_the_stream_on_its_own_redis_a_steady_report_asks_nothing_of_postgresql_or_django(
    own_redis,  # noqa: F811
    monkeypatch,
):
    device = _terminal()
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 1}).status_code == 201
    stamp = timezone.now()  # newer than the first report's (the server's time of it)
    calls = _django_calls(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        answer = _send(
            device, HEALTH, {"status": "degraded", "timestamp": stamp.isoformat(), "cpu_percent": 2}
        )

    assert (answer.status_code, answer.content) == (201, b'{"stored":1}')
    assert calls == [] and len(queries) == 0
    assert redis.Redis.from_url(identity_store._url()).hexists(seen_buffer.key(), str(device.pk))
    assert health_buffer.drain(wait=True) == 2
    assert stored_per_device([device]) == {device.pk: [1, 2]}
    device.refresh_from_db()
    assert (device.health_status, device.last_health_at) == ("degraded", stamp)


@pytest.mark.django_db
def test_with_the_stream_on_its_own_redis_a_report_it_cannot_take_is_written_before_the_answer(
    own_redis,  # noqa: F811
    settings,
    monkeypatch,
):
    device = _terminal()
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 1}).status_code == 201
    monkeypatch.setattr(health_buffer, "_full_until", 0.0)
    settings.HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES = 1
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 2}).status_code == 201  # over it now
    monkeypatch.setattr(health_buffer, "_full_until", 0.0)  # then drained, say, but away:
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL = "redis://127.0.0.1:1/0"

    for cpu in (3, 4):
        assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": cpu}).status_code == 201

    assert stored_per_device([device]) == {device.pk: [3, 4]}  # in PostgreSQL before the 201s
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL = own_redis.url
    assert health_buffer.drain(wait=True) == 2
    assert stored_per_device([device]) == {device.pk: [1, 2, 3, 4]}  # each once


@pytest.mark.django_db
def test_a_credential_whose_use_is_due_gets_it_recorded_and_its_report_kept_once(one_redis):
    device = _terminal()
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 1}).status_code == 201
    # Its identity in Redis says the credential was last used an hour ago (an entry filled
    # 15 to 20 minutes after the use it carries): the use must be recorded again.
    long_ago = timezone.now() - datetime.timedelta(hours=1)
    DeviceCredential.objects.filter(device=device).update(last_used_at=long_ago)
    client = redis.Redis.from_url(one_redis.url)
    key = identity_store.credential_key(DeviceCredential.hash_key(device.secret))
    credential_pk, device_pk, _used = client.get(key).decode().split("|")
    client.set(key, f"{credential_pk}|{device_pk}|{long_ago.timestamp():.0f}", keepttl=True)

    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 2}).status_code == 201

    assert DeviceCredential.objects.get(device=device).last_used_at > long_ago  # recorded
    assert health_buffer.drain(wait=True) == 2
    assert stored_per_device([device]) == {device.pk: [1, 2]}  # each once


@pytest.mark.django_db
def test_over_the_bound_the_next_reports_are_written_directly(one_redis, settings):
    settings.HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES = 1
    device = _terminal()
    for cpu in (1, 2, 3):
        assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": cpu}).status_code == 201

    # 1 and 2 went in (the second found the stream over its bound); 3 was written at once.
    assert stored_per_device([device]) == {device.pk: [3]}
    assert redis.Redis.from_url(one_redis.url).xlen(health_buffer.stream_key()) == 2
    assert health_buffer.drain(wait=True) == 2
    assert stored_per_device([device]) == {device.pk: [1, 2, 3]}


@pytest.mark.django_db
def test_a_redis_that_keeps_nothing_on_disk_gets_no_report(one_redis, settings, monkeypatch):
    redis.Redis.from_url(one_redis.url).config_set("appendfsync", "everysec")
    device = _terminal()

    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 1}).status_code == 201
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 2}).status_code == 201

    assert stored_per_device([device]) == {device.pk: [1, 2]}  # in PostgreSQL before the 201s
    assert not redis.Redis.from_url(one_redis.url).exists(health_buffer.stream_key())


@pytest.mark.django_db(transaction=True)
def test_reports_acknowledged_in_one_trip_survive_a_redis_kill_and_the_next_ones_are_kept_too(one_redis):
    devices = [_terminal() for _ in range(3)]
    for cpu in (1, 2):
        for device in devices:
            assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": cpu}).status_code == 201

    one_redis.kill()
    one_redis.start()  # replays its append-only file: the reports, identities and sightings
    for device in devices:
        assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 3}).status_code == 201

    assert health_buffer.drain(wait=True) == 9
    assert stored_per_device(devices) == {device.pk: [1, 2, 3] for device in devices}


def test_the_entry_cut_around_the_device_is_the_entry():
    report = HealthReport(
        status="unhealthy",
        checked_at=timezone.now(),
        response_time_ms=12,
        error_message='quote " and \u00e9',
        metrics={"cpu_percent": 1.5, "extra": {"a": [1, None]}},
        app_version=None,
        firmware_version="fw",
    )
    received_at = timezone.now()

    head, tail = health_buffer.encode_around_device(received_at=received_at, report=report)

    whole = health_buffer.encode(received_at=received_at, device_reports=[(4242, report)])
    assert head + b"4242" + tail == whole
    assert json.loads(whole)["r"][0][0] == 4242
