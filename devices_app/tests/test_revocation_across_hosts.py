"""A revoked device credential stops working on every host within a documented bound.

Most agent requests look their credential up in PostgreSQL (one indexed query), so a
revocation stops them at the next request everywhere. The heartbeat alone (every terminal,
every minute) may answer from its process's memory of the credential for at most
HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS after reading it (devices_app.credential_cache): a
credential revoked through one process is refused by that process at once and by every other
within that bound. docs/operations.md, "Several hosts".

Real gunicorn servers stand for application hosts (separate processes, each with its own
workers, persistent database connections and credential memory)."""

import time
import uuid

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import Gunicorn, call

pytestmark = pytest.mark.django_db(transaction=True)

AGENT_ME = "/api/v1/agent/me"
HEARTBEAT = "/api/v1/agent/heartbeat"
BOUND_SECONDS = 3.0  # the hosts' HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS


def _database_url() -> str:
    db = connection.settings_dict
    login = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{login}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _hosts(count: int, *, workers: int, threads: int):
    buffer_prefix = f"homepot:seen:test-{uuid.uuid4().hex}:"
    env = {
        "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": buffer_prefix,
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
        keys = list(client.scan_iter(match=buffer_prefix + "*"))
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


def _answers(servers, path: str, secret: str, method: str = "GET") -> list[int]:
    # Several requests per host, so every worker (and its kept connection) is likely asked.
    headers = {"Authorization": f"Device {secret}"}
    body = {} if method == "POST" else None
    return [call(server.port, method, path, body, headers).status for server in servers for _ in range(6)]


def _wait_out_the_bound(since: float) -> None:
    # The documented bound itself is what is waited for, not a save.
    time.sleep(max(0.0, since + BOUND_SECONDS + 0.05 - time.monotonic()))


def test_a_credential_revoked_through_one_host_is_refused_by_every_host_within_the_bound(
    two_hosts, admin_user
):
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {200}  # now remembered

    # Revoked by an operator through the API...
    api = APIClient()
    api.force_authenticate(admin_user)
    assert api.delete(f"/api/v1/devices/{device.device_id}/credential").status_code == 204
    revoked_at = time.monotonic()

    # ...refused at once where no memory is kept, and by every host's heartbeat once the
    # bound has passed.
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {401}
    _wait_out_the_bound(revoked_at)
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {401}


def test_a_rotated_credential_works_everywhere_and_the_old_one_nowhere(two_hosts):
    device = DeviceFactory()
    _, old = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, old)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, old, "POST")) == {200}

    _, new = device_credential_issue(actor=None, device=device)
    rotated_at = time.monotonic()

    assert set(_answers(two_hosts, AGENT_ME, old)) == {401}
    assert set(_answers(two_hosts, AGENT_ME, new)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, new, "POST")) == {200}
    _wait_out_the_bound(rotated_at)
    assert set(_answers(two_hosts, HEARTBEAT, old, "POST")) == {401}


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


def test_another_process_may_answer_from_memory_until_the_bound_then_refuses(one_process_host):
    """The bound is real in both directions: the memory is used (no query per heartbeat),
    and not past the bound."""
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    remembered_at = time.monotonic()
    assert set(_answers(one_process_host, HEARTBEAT, secret, "POST")) == {200}

    device_credential_revoke(actor=None, device=device)  # this test process: not the host
    answers = _answers(one_process_host, HEARTBEAT, secret, "POST")
    if time.monotonic() < remembered_at + BOUND_SECONDS:  # a slow machine may already be past it
        assert set(answers) == {200}

    _wait_out_the_bound(remembered_at)
    assert set(_answers(one_process_host, HEARTBEAT, secret, "POST")) == {401}
