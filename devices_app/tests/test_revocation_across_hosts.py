"""No web process keeps device credentials in memory: every agent request looks its
credential up in PostgreSQL (one indexed query), so a revocation made through one host stops
the credential on every other host at its next request. The staleness bound is zero (the
revoking transaction's commit); docs/operations.md, "Several hosts".

Two real gunicorn servers stand for two application hosts (separate processes, each with its
own workers and persistent database connections)."""

import uuid

import pytest
import redis
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import Gunicorn, call

pytestmark = pytest.mark.django_db(transaction=True)

AGENT_ME = "/api/v1/agent/me"
HEARTBEAT = "/api/v1/agent/heartbeat"


def _database_url() -> str:
    db = connection.settings_dict
    login = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{login}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="module")
def two_hosts(django_db_setup):
    """Started once for the module (the servers keep no data; each test makes its own)."""
    buffer_prefix = f"homepot:seen:test-{uuid.uuid4().hex}:"
    env = {
        "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": buffer_prefix,
        "LOG_LEVEL": "ERROR",
    }
    servers = [Gunicorn(env, workers=2, threads=2), Gunicorn(env, workers=2, threads=2)]
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


def _answers(servers, path: str, secret: str, method: str = "GET") -> list[int]:
    # Several requests per host, so every worker (and its kept connection) is likely asked.
    headers = {"Authorization": f"Device {secret}"}
    body = {} if method == "POST" else None
    return [call(server.port, method, path, body, headers).status for server in servers for _ in range(6)]


def test_a_credential_revoked_through_one_host_is_refused_by_every_host_at_once(two_hosts, admin_user):
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {200}
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) <= {200, 204}

    # Revoked by an operator through the API of the first host...
    api = APIClient()
    api.force_authenticate(admin_user)
    assert api.delete(f"/api/v1/devices/{device.device_id}/credential").status_code == 204

    # ...and refused by both hosts, every worker, from the very next request.
    assert set(_answers(two_hosts, AGENT_ME, secret)) == {401}
    assert set(_answers(two_hosts, HEARTBEAT, secret, "POST")) == {401}


def test_a_rotated_credential_works_everywhere_and_the_old_one_nowhere(two_hosts):
    device = DeviceFactory()
    _, old = device_credential_issue(actor=None, device=device)
    assert set(_answers(two_hosts, AGENT_ME, old)) == {200}

    _, new = device_credential_issue(actor=None, device=device)

    assert set(_answers(two_hosts, AGENT_ME, old)) == {401}
    assert set(_answers(two_hosts, AGENT_ME, new)) == {200}
