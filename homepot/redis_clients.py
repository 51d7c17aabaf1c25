"""Redis clients for the request paths that talk to Redis themselves (login rate limits, the
heartbeat buffer): one per URL and timeout, made once per process.

Short timeouts: a hung Redis must not hold a request (and a worker) for long; each caller
decides what to do without Redis.
"""

import functools
import os
import threading

import redis

_dedicated = threading.local()


@functools.lru_cache(maxsize=8)
def redis_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


def send_one(url: str, timeout: float, packed: bytes):
    """Send one packed command (see `pack`) on this thread's own connection to `url`, kept
    open between requests, and return the reply; raises redis.RedisError as the client would.
    Only for commands that are safe to repeat: one that failed on a connection kept from an
    earlier request (the server restarted since) is sent once more on a fresh connection.

    For a command sent on every request (the heartbeat's HSET): redis-py's client checks a
    connection out of its pool, wraps the call in its retry machinery and parses the reply
    through several layers, which cost three times the command itself (0.044 against 0.015 ms
    of CPU per HSET, measured). A timeout is not retried: a hung Redis must not hold the
    request, the caller decides what to do without it.
    """
    return send_many(url, timeout, [packed])[0]


def send_many(url: str, timeout: float, packed_commands: list[bytes]) -> list:
    """send_one for several commands in one round trip (a pipeline without MULTI): their
    replies in order. An error reply raises (redis.ResponseError) after every reply was read,
    so the kept connection stays in step. The same rule of repeating on a fresh connection
    applies: a command that is not safe to repeat may then run twice, never zero times."""
    connection = _connection(url, timeout)
    reused = connection._sock is not None
    try:
        return _exchange(connection, packed_commands)
    except redis.ConnectionError:
        # On a kept connection: the server restarted or dropped it since (its EOF is read
        # as the reply), so start afresh once. redis-py has disconnected it already.
        if not reused:
            raise
        connection.disconnect()  # safe to repeat
    return _exchange(connection, packed_commands)


def _exchange(connection: redis.Connection, packed_commands: list[bytes]) -> list:
    """Send the commands and read every reply. Anything that stops it half way (a timeout,
    a signal, a broken socket) disconnects: a reply left unread would otherwise be read by the
    next request as its own (another credential's identity). So a kept connection is always
    in step, and needs no check before it is used (a poll per call, 4 µs, measured)."""
    try:
        connection.send_packed_command(packed_commands, check_health=False)
        replies, error = [], None
        for _ in packed_commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:  # a whole reply, read: still in step
                error = error or exc
    except BaseException:
        connection.disconnect()
        raise
    if error is not None:
        raise error
    return replies


def pack(*parts: str | bytes) -> bytes:
    """A command in Redis's wire format (RESP), ready for send_one."""
    encoded = [part.encode() if isinstance(part, str) else part for part in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded)


def _connection(url: str, timeout: float) -> redis.Connection:
    # Per thread (gthread workers), and never a connection inherited across a fork: its socket
    # is the parent's.
    connections = getattr(_dedicated, "connections", None)
    if connections is None or _dedicated.pid != os.getpid():
        connections = _dedicated.connections = {}
        _dedicated.pid = os.getpid()
    connection = connections.get((url, timeout))
    if connection is None:
        pool = redis_client(url, timeout).connection_pool
        connection = connections[(url, timeout)] = pool.connection_class(**pool.connection_kwargs)
    return connection
