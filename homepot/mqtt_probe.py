"""A readiness probe for the MQTT broker that speaks MQTT: CONNECT, wait for CONNACK,
DISCONNECT. A TCP connection alone says only that something listens on the port; a broker
that is wedged, overloaded or refusing our login still accepts TCP.

MQTT 3.1.1 (protocol level 4) is enough to ask "would you let us in?" and its CONNACK is two
fixed bytes, so no client library (and no network thread) is needed for a probe that runs on
every readiness check.
"""

import contextlib
import secrets
import socket
import struct
import time

CONNACK = 0x20
_CONNECT = 0x10
_DISCONNECT = b"\xe0\x00"
_CLEAN_SESSION, _PASSWORD, _USERNAME = 0x02, 0x40, 0x80


class BrokerRefused(Exception):
    """The broker answered CONNACK with a non-zero return code (4: bad user name or
    password, 5: not authorised, ...)."""

    def __init__(self, code: int):
        super().__init__(f"CONNACK return code {code}")
        self.code = code


class BrokerSilent(OSError):
    """The broker accepted the connection but did not answer CONNECT properly in time."""


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    # MQTT's variable-length integer: 7 bits a byte, the high bit says "more follows".
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 5) -> bytes:
    flags = _CLEAN_SESSION
    payload = _string(client_id)
    if username is not None:
        flags |= _USERNAME
        payload += _string(username)
        if password is not None:
            flags |= _PASSWORD
            payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([_CONNECT]) + _remaining_length(len(body)) + body


def _read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerSilent("no CONNACK in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(data))
        except TimeoutError as exc:
            raise BrokerSilent("no CONNACK in time") from exc
        if not chunk:
            raise BrokerSilent("the broker closed the connection before CONNACK")
        data += chunk
    return data


def probe(host: str, port: int, *, timeout: float, username: str | None = None, password: str | None = None):
    """Log in to the broker and out again, all within `timeout` seconds. Returns None when
    the broker accepted; raises OSError (unreachable or silent) or BrokerRefused. Writes
    nothing: a clean session with a random client id leaves no state on the broker."""
    deadline = time.monotonic() + timeout
    client_id = "homepot-readyz-" + secrets.token_hex(6)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(connect_packet(client_id, username, password))
        header = _read_exactly(sock, 4, deadline)
        if header[0] != CONNACK or header[1] != 2:
            raise BrokerSilent(f"unexpected answer to CONNECT: {header!r}")
        if header[3] != 0:
            raise BrokerRefused(header[3])
        # We were let in; how the goodbye goes does not matter.
        with contextlib.suppress(OSError):
            sock.sendall(_DISCONNECT)
