"""The kept Redis connections of the request paths (homepot.redis_clients) and what those paths
read of the database configuration (homepot.hot_path)."""

import signal
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from homepot import hot_path, redis_clients
from homepot.redis_clients import pack, send_one
from monitoring_app.tests.test_health_buffer import OwnRedis


class Interrupted(BaseException):
    """What a worker's timeout signal or a KeyboardInterrupt raises in the middle of a call."""


def test_a_call_stopped_before_its_reply_leaves_nothing_for_the_next_call_to_read(monkeypatch):
    """The reply left unread would otherwise be the next request's answer (another
    credential's identity): the connection is dropped, and the next call gets its own."""
    url = settings.REDIS_URL
    assert send_one(url, 0.3, pack("PING")) == b"PONG"  # the kept connection

    def interrupted(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(redis_clients, "_receive", interrupted)
    with pytest.raises(Interrupted):
        send_one(url, 0.3, pack("ECHO", "first"))  # sent; its reply never read
    monkeypatch.undo()

    assert send_one(url, 0.3, pack("ECHO", "second")) == b"second"
    assert send_one(url, 0.3, pack("ECHO", "third")) == b"third"


def test_a_kept_connection_the_server_closed_is_replaced_and_the_command_sent_once_more():
    url = settings.REDIS_URL
    assert send_one(url, 0.3, pack("CLIENT", "SETNAME", "kept-by-test")) == b"OK"
    admin = redis.Redis.from_url(url)
    assert admin.client_kill_filter(_id=_client_id(admin, "kept-by-test"), skipme=True) == 1

    assert send_one(url, 0.3, pack("ECHO", "after")) == b"after"


def test_a_hung_redis_costs_a_call_its_timeout_and_its_late_reply_is_never_read(tmp_path):
    """The kept connections time out in the kernel (SO_RCVTIMEO): a stopped server makes the
    call fail within its timeout, and once the server runs again the next call gets its own
    reply, not the one the server owed the call that gave up."""
    server = OwnRedis(tmp_path, durable=False)
    server.start()
    try:
        assert send_one(server.url, 0.3, pack("PING")) == b"PONG"  # the connection is kept
        server.process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            send_one(server.url, 0.3, pack("ECHO", "owed"))
        assert 0.25 <= time.monotonic() - started < 1.5
        server.process.send_signal(signal.SIGCONT)

        assert send_one(server.url, 0.3, pack("ECHO", "next")) == b"next"
        assert send_one(server.url, 0.3, pack("ECHO", "after")) == b"after"
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.kill()


def _client_id(admin: redis.Redis, name: str) -> int:
    return next(int(client["id"]) for client in admin.client_list() if client.get("name") == name)


@pytest.mark.django_db
def test_the_hot_path_reads_the_connections_own_database_name_and_vendor():
    # Under pytest the database was renamed to the test database in place: the name read
    # without the connection lookup must follow.
    assert hot_path.database_name() == connection.settings_dict["NAME"]
    assert hot_path.database_name().startswith("test_")
    assert hot_path.on_postgresql() is (connection.vendor == "postgresql")


def test_replies_are_read_as_redis_py_reads_them():
    """The kept connections parse replies themselves (redis_clients._read_replies): every
    shape the request paths meet comes back as redis-py gives it."""
    url = settings.REDIS_URL
    admin = redis.Redis.from_url(url)
    admin.delete("redis-clients-test:stream", "redis-clients-test:big")
    script = "return {KEYS[1], 7, false, {ARGV[1]}}"
    assert send_one(url, 0.3, pack("EVAL", script, "1", "k", "v")) == [b"k", 7, None, [b"v"]]
    assert send_one(url, 0.3, pack("EVAL", "return false", "0")) is None
    assert send_one(url, 0.3, pack("EVAL", "return redis.status_reply('FINE')", "0")) == b"FINE"
    entry_id, depth = redis_clients.send_many(
        url,
        0.3,
        [pack("XADD", "redis-clients-test:stream", "*", "d", "x"), pack("XLEN", "redis-clients-test:stream")],
    )
    assert entry_id.count(b"-") == 1 and depth == 1
    big = b"\xff" * 300_000  # several reads of the socket for one reply
    assert send_one(url, 0.3, pack("SET", "redis-clients-test:big", big)) == b"OK"
    assert send_one(url, 0.3, pack("GET", "redis-clients-test:big")) == big
    admin.delete("redis-clients-test:stream", "redis-clients-test:big")


def test_an_error_reply_is_raised_as_redis_py_raises_it_and_the_connection_stays_in_step():
    url = settings.REDIS_URL
    with pytest.raises(redis.exceptions.NoScriptError):
        send_one(url, 0.3, pack("EVALSHA", "0" * 40, "0"))
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        redis_clients.send_many(url, 0.3, [pack("ECHO", "before"), pack("ECHO"), pack("ECHO", "after")])
    assert send_one(url, 0.3, pack("ECHO", "next")) == b"next"
