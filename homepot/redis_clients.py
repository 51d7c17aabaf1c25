"""Redis clients for the request paths that talk to Redis themselves (login rate limits, the
heartbeat buffer): one per URL and timeout, made once per process.

Short timeouts: a hung Redis must not hold a request (and a worker) for long; each caller
decides what to do without Redis.
"""

import functools
import os
import socket
import struct
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
        _send(_socket(connection), packed_commands)
        replies = _read_replies(connection, len(packed_commands))
    except BaseException:
        connection.disconnect()
        raise
    errors = [reply for reply in replies if isinstance(reply, redis.ResponseError)]
    if errors:  # every reply read: still in step
        raise errors[0]
    return replies


def _socket(connection: redis.Connection) -> socket.socket:
    """The connection's socket, connected (redis-py's handshake) and then given its timeout in
    the kernel (SO_RCVTIMEO, SO_SNDTIMEO) instead of Python's: a Python socket timeout makes
    every send and recv a poll() first, two more system calls on each round trip of every
    heartbeat (measured: a quarter of the round trip's CPU in the process)."""
    sock = connection._sock
    if sock is None:
        connection.connect()
        sock = connection._sock
        timeout = connection.socket_timeout
        if timeout:
            seconds = int(timeout)
            interval = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
    return sock


def _send(sock: socket.socket, packed_commands: list[bytes]) -> None:
    try:
        sock.sendall(packed_commands[0] if len(packed_commands) == 1 else b"".join(packed_commands))
    except (BlockingIOError, TimeoutError) as exc:  # the kernel's timeout: EAGAIN
        raise redis.TimeoutError("Timeout writing to socket") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error while writing to socket: {exc}") from exc


def _read_replies(connection: redis.Connection, count: int) -> list:
    """`count` replies read off the connection's socket and parsed here (RESP2 and the RESP3
    that redis-py negotiates): redis-py's parser, through its socket buffer and several layers
    per reply, cost about as much CPU as the rest of a health report's Redis exchange. The
    connection's own buffer is empty between commands (it only reads the handshake's replies
    on connect), so the socket holds exactly these replies. An error reply comes back as its
    redis.ResponseError (the parser's class for it: NoScriptError, ...), not raised."""
    sock, data, replies = connection._sock, b"", []
    while len(replies) < count:
        data += _receive(sock)
        replies, position = [], 0
        try:
            while len(replies) < count:
                reply, position = _parse(data, position, connection)
                if reply is not _PUSH:
                    replies.append(reply)
        except _Incomplete:
            continue
    if position != len(data):  # more than was asked for: out of step, never reused
        raise redis.ConnectionError("Unexpected data after the replies")
    return replies


def _receive(sock) -> bytes:
    try:
        chunk = sock.recv(65536)
    except (BlockingIOError, TimeoutError) as exc:  # the kernel's timeout: EAGAIN
        raise redis.TimeoutError("Timeout reading from socket") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
    if not chunk:
        raise redis.ConnectionError("Connection closed by server.")
    return chunk


class _Incomplete(Exception):
    """The buffer ends inside a reply: read more."""


_PUSH = object()  # an out-of-band RESP3 push (none is asked for on these connections): skipped


def _parse(data: bytes, position: int, connection: redis.Connection):
    """(the reply starting at `position`, the position after it); raises _Incomplete."""
    end = data.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind, line, after = data[position : position + 1], data[position + 1 : end], end + 2
    if kind == b"$" or kind == b"=" or kind == b"!":  # bulk, verbatim or bulk error
        length = int(line)
        if length < 0:
            return None, after
        if len(data) < after + length + 2:
            raise _Incomplete
        value = data[after : after + length]
        if kind == b"=":
            value = value[4:]  # "txt:" or "mkd:"
        elif kind == b"!":
            value = connection._parser.parse_error(value.decode())
        return value, after + length + 2
    if kind == b":" or kind == b"(":
        return int(line), after
    if kind == b"+":
        return line, after
    if kind == b"-":
        return connection._parser.parse_error(line.decode()), after
    if kind == b"*" or kind == b"~" or kind == b">":
        length = int(line)
        if length < 0:
            return None, after
        items = []
        for _ in range(length):
            item, after = _parse(data, after, connection)
            items.append(item)
        return (_PUSH if kind == b">" else items), after
    if kind == b"%":
        pairs = {}
        for _ in range(int(line)):
            name, after = _parse(data, after, connection)
            pairs[name], after = _parse(data, after, connection)
        return pairs, after
    if kind == b"_":
        return None, after
    if kind == b"#":
        return line == b"t", after
    if kind == b",":
        return float(line), after
    raise redis.ConnectionError(f"Unexpected reply type {kind!r}")


def pack(*parts: str | bytes) -> bytes:
    """A command in Redis's wire format (RESP), ready for send_one."""
    packed = [b"*%d\r\n" % len(parts)]
    for part in parts:  # a plain loop: a report packs three commands, a dozen parts each
        if isinstance(part, str):
            part = part.encode()
        packed.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(packed)


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
