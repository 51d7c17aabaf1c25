"""The heartbeat's fast path under a real gunicorn: what it keeps between requests (its own
Redis connection, the database connection) behaves as for any request.

The fast path sends its HSET on a connection of its own, kept open between requests
(homepot.redis_clients.send_one), and answers in front of Django's handler, sending the
request signals itself (monitoring_app.api.heartbeat_fast); these tests check what a kept
connection could get wrong: a Redis restarted under it, CONN_MAX_AGE, and a database
connection the server dropped."""

import contextlib
import datetime
import socket
import subprocess
import tempfile
import time
import uuid

import pytest
import redis
from django.db import connection
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import Gunicorn, call, free_port

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = "/api/v1/agent/heartbeat"
APP_NAME = f"homepot-hb-served-{uuid.uuid4().hex[:8]}"  # this module's gunicorn connections


def _database_url() -> str:
    db = connection.settings_dict
    login = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{login}@{host}/{db['NAME']}?application_name={APP_NAME}"


def _start_redis(port: int) -> subprocess.Popen:
    """A Redis of this test's own that keeps nothing on disk (a restart empties it)."""
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        + ["--dir", tempfile.gettempdir()],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.05)  # polling a starting server


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


@contextlib.contextmanager
def _server(**env):
    server = Gunicorn(
        {
            "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
            "DATABASE_URL": _database_url(),
            "HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS": "0",  # every heartbeat asks PostgreSQL
            "HOMEPOT_DEVICES_IDENTITY_SECONDS": "0",  # (these tests are about its connection)
            "LOG_LEVEL": "ERROR",
            **env,
        },
        workers=1,
        threads=1,  # one worker, one thread: every request meets the same kept connections
    )
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


def _online_terminal():
    """A terminal online and last seen two minutes ago: its heartbeat only moves last_seen,
    which goes to the Redis buffer."""
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    Device.objects.filter(pk=device.pk).update(last_seen=timezone.now() - datetime.timedelta(minutes=2))
    device.secret = device_credential_issue(actor=None, device=device)[1]
    return device


def _heartbeat(server, device) -> int:
    return call(server.port, "POST", HEARTBEAT, {}, {"Authorization": f"Device {device.secret}"}).status


def _last_seen(device):
    return Device.objects.get(pk=device.pk).last_seen


def test_heartbeats_are_buffered_again_at_once_after_redis_restarts():
    port, prefix = free_port(), f"homepot:seen:test-{uuid.uuid4().hex}:"
    key = prefix + connection.settings_dict["NAME"]
    first, second = _online_terminal(), _online_terminal()
    before = _last_seen(second)
    redis_server = _start_redis(port)
    try:
        env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": prefix}
        with _server(**env) as server:
            assert _heartbeat(server, first) == 200
            assert redis.Redis(port=port).hkeys(key) == [str(first.pk).encode()]

            _stop(redis_server)
            redis_server = _start_redis(port)  # empty: nothing was kept on disk

            # The worker's kept connection is dead; the heartbeat must notice, reconnect and
            # buffer, not give up on the buffer (and write every row directly for a while).
            assert _heartbeat(server, second) == 200
            assert redis.Redis(port=port).hkeys(key) == [str(second.pk).encode()]
            assert _last_seen(second) == before  # the row waits for the flush
    finally:
        _stop(redis_server)


def _server_backends() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APP_NAME])
        return sorted(pid for (pid,) in cursor.fetchall())


def _backends_when_settled(expected_count: int) -> list[int]:
    # A closed connection's backend leaves pg_stat_activity a moment after the client hung up.
    deadline = time.monotonic() + 10
    while len(backends := _server_backends()) != expected_count and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's view of its connections
    return backends


def test_with_conn_max_age_0_each_heartbeat_closes_its_database_connection():
    device = _online_terminal()
    with _server(CONN_MAX_AGE="0") as server:
        for _ in range(3):
            assert _heartbeat(server, device) == 200
            assert _backends_when_settled(0) == []


def test_a_kept_database_connection_is_reused_and_replaced_when_the_server_drops_it():
    device = _online_terminal()
    with _server(CONN_MAX_AGE="60") as server:
        assert _heartbeat(server, device) == 200
        [kept] = _backends_when_settled(1)
        assert _heartbeat(server, device) == 200
        assert _server_backends() == [kept]  # the same connection served the next heartbeat

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [kept])
        _backends_when_settled(0)
        assert _heartbeat(server, device) == 200  # a fresh connection, not a 503
        [fresh] = _backends_when_settled(1)
        assert fresh != kept
