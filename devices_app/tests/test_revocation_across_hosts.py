"""A revoked device credential stops working on every host, at once or within a documented
bound.

Most agent requests look their credential up in PostgreSQL (one indexed query), so a
revocation stops them at the next request everywhere. Heartbeats and health reports read the
credential's identity from Redis, shared by every host (devices_app.identity_store): the
revocation replaces the entry when it commits, so every host refuses at once; if Redis could
not be reached at that moment, the entry answers until it expires
(HOMEPOT_DEVICES_IDENTITY_SECONDS after it was written). A host whose Redis is away falls
back to its process's memory (devices_app.credential_cache), bounded by
HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS. docs/operations.md, "Several hosts".

Real gunicorn servers stand for application hosts (separate processes, each with its own
workers, persistent database connections and credential memory)."""

import datetime
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from devices_app import identity_store
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import Gunicorn, call
from monitoring_app import seen_buffer
from monitoring_app.models import MonitoringState
from monitoring_app.sweep import sweep_offline

pytestmark = pytest.mark.django_db(transaction=True)

AGENT_ME = "/api/v1/agent/me"
HEARTBEAT = "/api/v1/agent/heartbeat"
BOUND_SECONDS = 3.0  # the hosts' HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS
IDENTITY_SECONDS = 3  # and their HOMEPOT_DEVICES_IDENTITY_SECONDS
NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there
# The hosts and this test process share the Redis identities and the heartbeat buffer.
IDENTITY_PREFIX = f"homepot:identity:test-{uuid.uuid4().hex}:"
SEEN_PREFIX = f"homepot:seen:test-{uuid.uuid4().hex}:"


@pytest.fixture(autouse=True)
def shared_prefixes(settings):
    settings.HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX = IDENTITY_PREFIX
    settings.HOMEPOT_MONITORING_SEEN_KEY_PREFIX = SEEN_PREFIX


def _database_url() -> str:
    db = connection.settings_dict
    login = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{login}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _hosts(count: int, *, workers: int, threads: int, redis_url: str | None = None):
    env = {
        "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url or settings.REDIS_URL,
        "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": SEEN_PREFIX,
        "HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX": IDENTITY_PREFIX,
        "HOMEPOT_DEVICES_IDENTITY_SECONDS": str(IDENTITY_SECONDS),
        "HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS": str(BOUND_SECONDS),
        "LOG_LEVEL": "ERROR",
    }
    servers = [Gunicorn(env, workers=workers, threads=threads) for _ in range(count)]
    try:
        for server in servers:
            server.wait_until_up()
        yield servers
    finally:
        for server in servers:
            server.stop()
        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = [*client.scan_iter(match=SEEN_PREFIX + "*"), *client.scan_iter(match=IDENTITY_PREFIX + "*")]
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="module")
def two_hosts(django_db_setup):
    """Started once for the module (the servers keep no data; each test makes its own)."""
    yield from _hosts(2, workers=2, threads=2)


@pytest.fixture(scope="module")
def one_process_host(django_db_setup):
    """One worker process: every request meets the same credential memory."""
    yield from _hosts(1, workers=1, threads=2)


@pytest.fixture(scope="module")
def host_without_redis(django_db_setup):
    """One worker process whose Redis is away: its own memory is the fallback."""
    yield from _hosts(1, workers=1, threads=2, redis_url=NOWHERE)


def _answers(servers, path: str, secret: str, method: str = "GET") -> list[int]:
    # Several requests per host, so every worker (and its kept connection) is likely asked.
    headers = {"Authorization": f"Device {secret}"}
    body = {} if method == "POST" else None
    return [call(server.port, method, path, body, headers).status for server in servers for _ in range(6)]


def _wait_out_the_bound(since: float) -> None:
    # The documented bound itself is what is waited for, not a save.
    time.sleep(max(0.0, since + BOUND_SECONDS + 0.05 - time.monotonic()))


def test_a_credential_revoked_through_one_host_is_refused_by_every_host_at_once(two_hosts, admin_user):
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {200}  # now in Redis

    # Revoked by an operator through the API (this process, a third host)...
    api = APIClient()
    api.force_authenticate(admin_user)
    assert api.delete(f"/api/v1/devices/{device.device_id}/credential").status_code == 204

    # ...refused at once by every host, heartbeats included.
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {401}
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {401}


def test_a_rotated_credential_works_everywhere_and_the_old_one_nowhere(two_hosts):
    device = DeviceFactory()
    _, old = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, old)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, old, "POST")) == {200}

    _, new = device_credential_issue(actor=None, device=device)

    assert set(_answers(two_hosts, AGENT_ME, old)) == {401}
    assert set(_answers(two_hosts, HEARTBEAT, old, "POST")) == {401}
    assert set(_answers(two_hosts, AGENT_ME, new)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, new, "POST")) == {200}


def test_the_process_that_revokes_refuses_at_once(one_process_host, admin_user):
    [host] = one_process_host
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    _, token = api_token_issue(user=admin_user)
    assert set(_answers(one_process_host, HEARTBEAT, secret, "POST")) == {200}  # remembered

    answer = call(
        host.port,
        "DELETE",
        f"/api/v1/devices/{device.device_id}/credential",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status == 204

    assert set(_answers(one_process_host, HEARTBEAT, secret, "POST")) == {401}


def test_a_revocation_that_cannot_reach_redis_holds_on_every_host_until_the_entry_expires(
    two_hosts, settings
):
    """The bound of the Redis entries is real in both directions: the entry answers (no
    query per heartbeat), and not past HOMEPOT_DEVICES_IDENTITY_SECONDS after it was written."""
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {200}
    stored_at = time.monotonic()  # at the latest

    settings.REDIS_URL = NOWHERE  # this process cannot reach Redis when the revocation commits
    device_credential_revoke(actor=None, device=device)
    answers = _answers(two_hosts, HEARTBEAT, secret, "POST")
    if time.monotonic() < stored_at + IDENTITY_SECONDS - 1:  # a slow machine may be past it
        assert set(answers) == {200}

    time.sleep(max(0.0, stored_at + IDENTITY_SECONDS + 0.05 - time.monotonic()))  # the bound itself
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {401}


def test_without_redis_another_process_may_answer_from_memory_until_the_bound_then_refuses(
    host_without_redis,
):
    """The fallback's bound is real in both directions: the memory is used (no query per
    heartbeat), and not past the bound."""
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    remembered_at = time.monotonic()
    assert set(_answers(host_without_redis, HEARTBEAT, secret, "POST")) == {200}

    device_credential_revoke(actor=None, device=device)  # this test process: not the host
    answers = _answers(host_without_redis, HEARTBEAT, secret, "POST")
    if time.monotonic() < remembered_at + BOUND_SECONDS:  # a slow machine may already be past it
        assert set(answers) == {200}

    _wait_out_the_bound(remembered_at)
    assert set(_answers(host_without_redis, HEARTBEAT, secret, "POST")) == {401}


def test_a_device_the_sweep_marks_offline_elsewhere_is_set_online_by_its_next_heartbeat(two_hosts):
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    _, secret = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {200}  # in Redis as online
    # Then silent for longer than interval + grace, as its row and its Redis sighting both
    # show (the sweep writes nothing to Redis); monitoring has been running for a day.
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(seen_buffer.key())
    seconds, micros = client.time()
    client.set(identity_store.sighting_key(device.pk), (seconds - 600) * 1000 + micros // 1000)
    now = timezone.now()
    Device.objects.filter(pk=device.pk).update(last_seen=now - datetime.timedelta(minutes=10))
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={
            "last_sweep_at": now - datetime.timedelta(seconds=30),
            "resumed_at": now - datetime.timedelta(days=1),
        },
    )

    assert sweep_offline().marked_offline == 1  # this process: a Celery worker on another host
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.OFFLINE

    headers = {"Authorization": f"Device {secret}"}
    answer = call(two_hosts[0].port, "POST", HEARTBEAT, {}, headers)
    assert answer.status == 200
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE
