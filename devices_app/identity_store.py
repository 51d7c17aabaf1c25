"""The credential's identity, shared in Redis by every web process and host, so a terminal's
steady heartbeat needs no PostgreSQL query: one Redis script call looks the credential up
and, in the same round trip, notes the heartbeat in the seen buffer (monitoring_app.seen_buffer).

Two kinds of entries, per database (a demo, a test run and production may share one Redis):

- `<prefix><db>:c:<credential hash>` -> `"<credential pk>|<device pk>|<last use, epoch s>"`,
  what the credential is. Deleted in effect on commit of a revocation, rotation or deletion of
  the device: replaced by a tombstone `-` for the whole bound, so a request that read
  PostgreSQL before the revocation committed cannot write the entry back (fills never
  overwrite a tombstone).
- `<prefix><db>:d:<device pk>` -> `"<status>|<site pk>|<device type>|<device_id>"`, what the
  heartbeat reads of its device. Replaced by a short tombstone (TOMBSTONE_SECONDS) on commit
  of every change of these fields: an operator's update (status, site, type, id), a deletion,
  a CSV import, and the sweep marking devices offline. An entry whose status the heartbeat
  would change (offline, unknown) is never answered from: that request reads PostgreSQL and
  writes the entry again after its own write.

The bound: every entry expires HOMEPOT_DEVICES_IDENTITY_SECONDS after the PostgreSQL read
that wrote it (use never extends it). That is how long a revocation or status change whose
invalidation could not reach Redis (Redis unreachable at that moment) may go unseen by the
heartbeat and the health report. When Redis is reachable the invalidation is at commit.

Only a device whose entry says online, maintenance or error is answered from Redis (its
heartbeat changes nothing but `last_seen`); any other status, a missing or tombstoned
entry, or Redis away sends the request to PostgreSQL as before (devices_app.services
.device_identity, with the per-process memory of devices_app.credential_cache as the
fallback while Redis is away), after which the entries are written.

Standalone Redis only: the script reads the device entry, whose name it learns from the
credential entry (not declared in KEYS, which Redis Cluster would refuse).
"""

import datetime
import hashlib
import logging
import time

import redis
from django.conf import settings
from django.db import connection, transaction

from devices_app.choices import DeviceStatus
from homepot.redis_clients import pack, redis_client, send_one

logger = logging.getLogger(__name__)

_TIMEOUT = 0.3  # seconds: a request waits no longer for Redis
RETRY_AFTER_SECONDS = 10
TOMBSTONE_SECONDS = 10  # far longer than a request's PostgreSQL read to its fill
FORGET_CHUNK = 1000  # keys per command when many devices change at once (the sweep)
TOMBSTONE = b"-"
# Statuses a heartbeat leaves as they are (monitoring_app.ingest: online, and the two an
# operator sets): only these are answered from Redis.
_ANSWERED = (DeviceStatus.ONLINE, DeviceStatus.MAINTENANCE, DeviceStatus.ERROR)

_down_until = 0.0  # monotonic time before which this process does not try Redis again

# KEYS[1] the credential entry, KEYS[2] the seen buffer's hash; ARGV[1] the device entries'
# prefix, ARGV[2] the seen buffer's value ("" notes nothing). Returns nil (ask PostgreSQL) or
# {credential entry, device entry}.
_LOOKUP_LUA = """
local c = redis.call('GET', KEYS[1])
if not c or c == '-' then return false end
local pk = string.match(c, '^[^|]*|([^|]*)|')
if not pk then return false end
local d = redis.call('GET', ARGV[1] .. pk)
if not d or d == '-' then return false end
local status = string.match(d, '^([^|]*)|')
if STATUS_NOT_ANSWERED then return false end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[2], pk, ARGV[2]) end
return {c, d}
""".replace("STATUS_NOT_ANSWERED", " and ".join(f"status ~= '{status}'" for status in _ANSWERED))
_LOOKUP_SHA = hashlib.sha1(_LOOKUP_LUA.encode()).hexdigest()  # noqa: S324 (Redis's script id)

# KEYS[1] the credential entry, KEYS[2] the device entry, KEYS[3] the seen buffer's hash;
# ARGV: their values, the bound, the device's pk and the seen buffer's value ("" notes
# nothing). The note is written whatever the entries (the caller read the device from
# PostgreSQL just now); neither entry is written over a tombstone (a revocation or change
# committed since that read).
_FILL_LUA = """
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[5]) end
if redis.call('GET', KEYS[1]) == '-' or redis.call('GET', KEYS[2]) == '-' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""
_FILL_SHA = hashlib.sha1(_FILL_LUA.encode()).hexdigest()  # noqa: S324 (Redis's script id)


def _url() -> str:
    return settings.REDIS_URL


def _prefix() -> str:
    return f"{settings.HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX}{connection.settings_dict['NAME']}:"


def credential_key(key_hash: str) -> str:
    return f"{_prefix()}c:{key_hash}"


def device_key(device_pk: int) -> str:
    return f"{_prefix()}d:{device_pk}"


def enabled() -> bool:
    """Whether requests read identities from Redis: a bound above 0, Redis configured, and
    PostgreSQL (the seen buffer the heartbeat notes into needs it too)."""
    return bool(
        settings.HOMEPOT_DEVICES_IDENTITY_SECONDS > 0
        and settings.REDIS_URL
        and connection.vendor == "postgresql"
    )


def available() -> bool:
    return enabled() and time.monotonic() >= _down_until


def _went_down(exc: Exception) -> None:
    global _down_until
    _down_until = time.monotonic() + RETRY_AFTER_SECONDS
    logger.warning(
        "Credential identities unavailable in Redis, reading PostgreSQL for %d s: %s",
        RETRY_AFTER_SECONDS,
        exc,
    )


def lookup(key_hash: str, *, note_key: str = "", note_value: str = ""):
    """The identity stored for this credential hash (devices_app.services.DeviceIdentity,
    `last_seen` None), or None: not stored, tombstoned, a status the heartbeat would change,
    or Redis away. With `note_value`, the same script call HSETs it into `note_key` under
    the device's pk (the heartbeat's seen buffer) when, and only when, it returns an identity.
    Never raises for Redis."""
    if not available():
        return None
    args = ("2", credential_key(key_hash), note_key or "-", device_key(""), note_value)
    try:
        reply = _run_script(_LOOKUP_SHA, _LOOKUP_LUA, args)
    except redis.RedisError as exc:
        _went_down(exc)
        return None
    if reply is None:
        return None
    return _identity(*reply)


def _identity(credential: bytes, device: bytes):
    from devices_app.services import DeviceIdentity

    credential_pk, device_pk, last_used = credential.decode().split("|", 2)
    status, site_pk, device_type, device_id = device.decode().split("|", 3)
    last_used_at = datetime.datetime.fromtimestamp(float(last_used), datetime.UTC) if last_used else None
    return DeviceIdentity(
        (int(credential_pk), last_used_at, int(device_pk), device_id, status, None, int(site_pk), device_type)
    )


def _run_script(sha: str, lua: str, args: tuple):
    """EVALSHA on the kept connection; EVAL once when Redis does not know the script yet (a
    new or restarted Redis). Raises redis.RedisError."""
    try:
        return send_one(_url(), _TIMEOUT, pack("EVALSHA", sha, *args))
    except redis.exceptions.NoScriptError:
        return send_one(_url(), _TIMEOUT, pack("EVAL", lua, *args))


def fill(key_hash: str, identity, *, note_key: str = "", note_value: str = "") -> bool:
    """Store `identity` (just read from PostgreSQL, or just written by this request) for the
    bound, unless a tombstone says it changed since. With `note_value`, the same script call
    HSETs it into `note_key` under the device's pk (the heartbeat's seen buffer) in any case.
    True when Redis took the call (so the note is written); never raises for Redis."""
    if not available():
        return False
    last_used = f"{identity.last_used_at.timestamp():.0f}" if identity.last_used_at else ""
    credential_value = f"{identity.credential_pk}|{identity.pk}|{last_used}"
    device_value = f"{identity.status}|{identity.site_id}|{identity.device_type}|{identity.device_id}"
    seconds = str(int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS))
    keys = (credential_key(key_hash), device_key(identity.pk), note_key or "-")
    args = ("3", *keys, credential_value, device_value, seconds, str(identity.pk), note_value)
    try:
        _run_script(_FILL_SHA, _FILL_LUA, args)
    except redis.RedisError as exc:
        _went_down(exc)
        return False
    return True


# --- invalidation (on commit) --------------------------------------------------------------


def forget_credentials_on_commit(key_hashes) -> None:
    """When the current transaction commits, tombstone these credentials' entries for the
    whole bound (a revocation, a rotation, a deletion)."""
    names = [f"c:{key_hash}" for key_hash in key_hashes]
    if names:
        prefix = _prefix()
        transaction.on_commit(lambda: _tombstone(prefix, names, settings.HOMEPOT_DEVICES_IDENTITY_SECONDS))


def forget_devices_on_commit(device_pks) -> None:
    """When the current transaction commits, tombstone these devices' entries for
    TOMBSTONE_SECONDS: their next request reads PostgreSQL. Keys are built chunk by chunk
    (the sweep may pass every device it marked offline)."""
    pks = list(device_pks)
    if pks:
        prefix = _prefix()
        transaction.on_commit(lambda: _tombstone(prefix, pks, TOMBSTONE_SECONDS, kind="d:"))


def _tombstone(prefix: str, names: list, seconds: float, *, kind: str = "") -> None:
    # Whatever this process thinks of Redis's health: an invalidation is always attempted.
    if not (settings.REDIS_URL and settings.HOMEPOT_DEVICES_IDENTITY_SECONDS > 0):
        return
    client = redis_client(_url(), timeout=_TIMEOUT)
    ttl = max(1, int(seconds))
    try:
        for start in range(0, len(names), FORGET_CHUNK):
            pipe = client.pipeline(transaction=False)
            for name in names[start : start + FORGET_CHUNK]:
                pipe.set(f"{prefix}{kind}{name}", TOMBSTONE, ex=ttl)
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning(
            "Could not invalidate %d identity entries in Redis; they expire within %d s: %s",
            len(names),
            settings.HOMEPOT_DEVICES_IDENTITY_SECONDS,
            exc,
        )
