"""The credential's identity, shared in Redis by every web process and host, so a terminal's
steady heartbeat needs no PostgreSQL query: one Redis script call looks the credential up
and, in the same round trip, notes the heartbeat in the seen buffer (monitoring_app.seen_buffer).

Three kinds of entries, per database (a demo, a test run and production may share one Redis):

- `<prefix><db>:c:<credential hash>` -> `"<credential pk>|<device pk>|<last use, epoch s>"`,
  what the credential is. Deleted in effect on commit of a revocation, rotation or deletion of
  the device: replaced by a tombstone `-` for the whole bound, so a request that read
  PostgreSQL before the revocation committed cannot write the entry back (fills never
  overwrite a tombstone).
- `<prefix><db>:d:<device pk>` -> `"<status>|<site pk>|<device type>|<device_id>"`, what the
  heartbeat reads of its device. Replaced by a short tombstone (TOMBSTONE_SECONDS) on commit
  of an operator's change of these fields (status, site, type, id), a deletion, or a CSV
  import. An entry whose status the heartbeat would change (offline, unknown) is never
  answered from: that request reads PostgreSQL and writes the entry again after its own write.
- `<prefix><db>:s:<device pk>` -> the device's last sighting, in ms of Redis's clock (`TIME`:
  one clock for every host). Advanced by the script when it notes a heartbeat; set by a fill
  to the `last_seen` PostgreSQL holds (or this request wrote), never moved back.

The sweep and the sightings. The sweep marks an online device offline when its row's
`last_seen` is older than the offline threshold T (expected interval + grace), and it writes
nothing to Redis. Instead the script answers a heartbeat only if the device's sighting is
younger than T - M (M: HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS); an older or missing one
sends the request to PostgreSQL, which sets a device it finds offline online and records
the transition. Why a device the sweep marked cannot go on being answered as online:

- Every sighting stands for a heartbeat already noted: in the seen buffer (the script HSETs
  it in the same call), in the row (a fill writes the `last_seen` it read or wrote), or, for a
  request's buffered note, a device whose row was seen within T - M (monitoring_app.ingest
  ._sweep_may_be_judging: an older row gets its heartbeat written to the row, under its lock).
- The sweep takes its moment `now` before it flushes the buffer, and marks a device only if
  everything flushed for it is older than now - T. A heartbeat whose note missed the flush
  comes after `now`: if the device is marked, that heartbeat's previous sighting is older than
  T (less the clocks' skew), so the script refuses it and it goes to PostgreSQL. By induction
  no heartbeat after the flush is answered from Redis until one went through PostgreSQL.
- That PostgreSQL request, if it read the row before the sweep committed (still online, last
  seen long ago), writes its heartbeat to the row rather than the buffer: its `FOR UPDATE`
  waits for the sweep and then finds the device offline, sets it online and records the
  transition; or it commits first, and the sweep's lock re-reads the row and leaves it.
- A heartbeat answered from Redis while the sweep runs: its sighting is young, so the
  previous heartbeat was flushed by this sweep or is younger than the flush, and either way
  the row is not older than now - T: the sweep does not mark it.
- Clocks: sightings are compared with Redis's clock only; `last_seen` and the sweep's `now`
  come from the hosts' clocks. M must cover the largest skew between two hosts plus the time a
  request takes from reading its clock to noting the heartbeat (default 30 s of the default
  T = 180 s). A Redis clock stepped back by X makes sightings look X younger: X must stay
  below M too.
- The sweep's "resumed" grace only makes it mark fewer devices; it changes nothing above.
- What is not covered: the sweep's flush failing to reach Redis (it then judges rows without
  the buffered heartbeats, as before), and hosts of the previous release during a rolling
  deploy (they answer without the sighting rule). Both are bounded by the entries' expiry.

The bound: every entry expires HOMEPOT_DEVICES_IDENTITY_SECONDS after the PostgreSQL read
that wrote it (use never extends it). That is how long a revocation or status change whose
invalidation could not reach Redis (Redis unreachable at that moment) may go unseen by the
heartbeat and the health report. When Redis is reachable the invalidation is at commit.
(A request's fill counts the bound from its write, a few ms after its read; the refresh
below counts it from before its read.)

The refresh. Without it a steady terminal misses once per bound (every 5th heartbeat at 60 s
and 300 s), each miss a PostgreSQL read in the request. Every
HOMEPOT_DEVICES_IDENTITY_REFRESH_SECONDS beat rewrites the credential and device entries of
the devices seen within the offline threshold (devices_app.services
.device_identities_refresh: pages of devices by pk, one statement each, one pipelined round
trip of script calls each). Why the bound and the invalidations hold as above:

- The bound. Before each page's PostgreSQL read the refresh takes Redis's clock, r (`TIME`);
  the read begins after that answer, so r <= read. The script gives each entry the expiry
  r + bound (`PX r + bound - now`, Redis's clock), hence no later than the read + the bound;
  an entry that would outlive that (written by a later read) is left as it is. Use still
  extends nothing.
- Tombstones win. A revocation, rotation, deletion or operator's change committing after the
  read writes its tombstone on commit. If it comes before the script call, the script finds
  it and writes neither entry; if after, it replaces what the script wrote. The script
  writes nothing later than r + TOMBSTONE_SECONDS / 2, so a device's tombstone (which lives
  TOMBSTONE_SECONDS from a commit after r) is still there when it runs; a credential's lives
  the whole bound.
- Nothing is resurrected. The read returns usable credentials only: the entry of a credential
  PostgreSQL shows revoked, rotated or deleted is never written by the refresh and expires
  within its own bound; one revoked within the bound gets its tombstone again (a
  revocation whose tombstone could not reach Redis at commit is then refused from the next
  refresh on). A device whose fields changed gets what PostgreSQL holds now.
- Sightings. The refresh writes no sighting and notes nothing in the seen buffer: "The sweep
  and the sightings" reasons with sightings only, so it holds unchanged. A refreshed entry of
  a device the sweep marked is not answered from (its sighting is old).
- Redis away or failing: the run stops (logged); the entries keep the expiry they had, and
  the next beat does the whole work again. A Redis clock stepped back by X during a run makes
  that page's entries live X longer: X must stay below M, as for the sightings.

Only a device whose entry says online, maintenance or error, and which was sighted within
T - M, is answered from Redis (its heartbeat changes nothing but `last_seen`); any other
status, an old or missing sighting, a missing or tombstoned entry, or Redis away sends the
request to PostgreSQL as before (devices_app.services.device_identity, with the per-process
memory of devices_app.credential_cache as the fallback while Redis is away), after which the
entries are written.

A single health report whose stream lives in this Redis is appended by the same script call
(`StreamEntry`, monitoring_app.ingest.health_report_buffered): the script reads the identity,
moves the sighting, notes the seen buffer and XADDs the report, or, answering None, writes
nothing at all.

Standalone Redis only: the script reads the device entry, whose name it learns from the
credential entry (not declared in KEYS, which Redis Cluster would refuse).
"""

import datetime
import functools
import hashlib
import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices_app.choices import DeviceStatus
from homepot import hot_path
from homepot.redis_clients import pack, redis_client, send_one

logger = logging.getLogger(__name__)

_TIMEOUT = 0.3  # seconds: a request waits no longer for Redis
RETRY_AFTER_SECONDS = 10
TOMBSTONE_SECONDS = 10  # far longer than a request's PostgreSQL read to its fill
FORGET_CHUNK = 1000  # keys per command when many devices change at once (a CSV import)
TOMBSTONE = b"-"
# Statuses a heartbeat leaves as they are (monitoring_app.ingest: online, and the two an
# operator sets): only these are answered from Redis.
_ANSWERED = (DeviceStatus.ONLINE, DeviceStatus.MAINTENANCE, DeviceStatus.ERROR)

_down_until = 0.0  # monotonic time before which this process does not try Redis again

# KEYS[1] the credential entry, KEYS[2] the seen buffer's hash; ARGV[1] this database's key
# prefix, ARGV[2] the seen buffer's value ("" notes nothing), ARGV[3] how old (ms) a sighting
# may be and still be answered from, ARGV[4] the sighting's expiry (s). Returns nil (ask
# PostgreSQL) or {credential entry, device entry, ms since the sighting}. A sighting advances
# only with a note: it then stands for a heartbeat the next flush writes to the row.
# With a health report to append (StreamEntry): KEYS[3] the health stream, ARGV[5] the oldest
# recorded use (epoch s) that needs no new record, ARGV[6] and ARGV[7] the entry around the
# device's pk. A credential whose use must be recorded (a PostgreSQL write) returns nil
# before anything is written; else the note, the sighting and the XADD, and XLEN is returned
# fourth. An error after the note (the XADD refused) leaves the note: the device was heard.
_LOOKUP_LUA = """
local c = redis.call('GET', KEYS[1])
if not c or c == '-' then return false end
local pk = string.match(c, '^[^|]*|([^|]*)|')
if not pk then return false end
local d = redis.call('GET', ARGV[1] .. 'd:' .. pk)
if not d or d == '-' then return false end
local status = string.match(d, '^([^|]*)|')
if STATUS_NOT_ANSWERED then return false end
local sighting = tonumber(redis.call('GET', ARGV[1] .. 's:' .. pk))
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if not sighting or now - sighting > tonumber(ARGV[3]) then return false end
if KEYS[3] then
    local used = tonumber(string.match(c, '|([^|]*)$'))
    if not used or used < tonumber(ARGV[5]) or ARGV[2] == '' then return false end
end
if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[2], pk, ARGV[2])
    redis.call('SET', ARGV[1] .. 's:' .. pk, now, 'EX', ARGV[4])
    sighting = now
end
if KEYS[3] then
    redis.call('XADD', KEYS[3], '*', 'd', ARGV[6] .. pk .. ARGV[7])
    return {c, d, tostring(now - sighting), redis.call('XLEN', KEYS[3])}
end
return {c, d, tostring(now - sighting)}
""".replace("STATUS_NOT_ANSWERED", " and ".join(f"status ~= '{status}'" for status in _ANSWERED))
_LOOKUP_SHA = hashlib.sha1(_LOOKUP_LUA.encode()).hexdigest()  # noqa: S324 (Redis's script id)

# KEYS[1] the credential entry, KEYS[2] the device entry, KEYS[3] the seen buffer's hash,
# KEYS[4] the device's sighting; ARGV: the entries' values, the bound, the device's pk, the
# seen buffer's value ("" notes nothing), and how long ago (ms) the device was last seen as
# far as PostgreSQL or this request's own write or note knows ("": leave the sighting as it
# is). The note is written whatever the entries (the caller read the device from PostgreSQL
# just now); neither entry is written over a tombstone (a revocation or change committed
# since that read). A sighting only moves forward: the one there stands for a heartbeat
# noted already.
_FILL_LUA = """
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[4], ARGV[5]) end
if redis.call('GET', KEYS[1]) == '-' or redis.call('GET', KEYS[2]) == '-' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if ARGV[6] ~= '' then
    local clock = redis.call('TIME')
    local seen = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) - tonumber(ARGV[6])
    local kept = tonumber(redis.call('GET', KEYS[4]))
    if not kept or kept < seen then redis.call('SET', KEYS[4], seen, 'EX', ARGV[3]) end
end
return 1
"""
_FILL_SHA = hashlib.sha1(_FILL_LUA.encode()).hexdigest()  # noqa: S324 (Redis's script id)


@hot_path.setting_derived
def _url() -> str:
    return settings.REDIS_URL


@hot_path.setting_derived
def _key_prefix() -> str:
    return settings.HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX


def _prefix() -> str:
    return f"{_key_prefix()}{hot_path.database_name()}:"


def credential_key(key_hash: str) -> str:
    return f"{_prefix()}c:{key_hash}"


def device_key(device_pk: int) -> str:
    return f"{_prefix()}d:{device_pk}"


def sighting_key(device_pk: int) -> str:
    return f"{_prefix()}s:{device_pk}"


@hot_path.setting_derived
def sighting_fresh_for() -> datetime.timedelta:
    """How long after its last sighting a device's heartbeat may still be answered from
    Redis: the sweep's offline threshold less HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS. Older,
    the sweep may have marked it offline, and the heartbeat goes to PostgreSQL."""
    from monitoring_app.sweep import offline_after

    return offline_after() - datetime.timedelta(seconds=settings.HOMEPOT_DEVICES_SIGHTING_MARGIN_SECONDS)


def enabled() -> bool:
    """Whether requests read identities from Redis: a bound above 0, Redis configured, and
    PostgreSQL (the seen buffer the heartbeat notes into needs it too)."""
    return _enabled_by_settings() and hot_path.on_postgresql()


@hot_path.setting_derived
def _enabled_by_settings() -> bool:
    return bool(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS > 0 and settings.REDIS_URL)


@hot_path.setting_derived
def _lookup_limits() -> tuple[str, str]:
    """lookup()'s ARGV[3] and ARGV[4]: how old (ms) a sighting may be, the sighting's expiry (s)."""
    fresh_ms = str(max(0, int(sighting_fresh_for().total_seconds() * 1000)))
    return fresh_ms, str(int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS))


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


@dataclass
class StreamEntry:
    """A health report for lookup() to append to the health stream in its own script call
    (the stream in the identities' Redis): the stream's key, the entry around the device's pk
    (monitoring_app.health_buffer.encode_around_device). `depth`: the stream's length after
    the append, set by lookup() when it appended."""

    key: str
    head: bytes
    tail: bytes
    depth: int | None = None


def lookup(
    key_hash: str,
    *,
    note_key: str = "",
    note_value: str = "",
    stream_entry: StreamEntry | None = None,
    used_since: datetime.datetime | None = None,
):
    """The identity stored for this credential hash (devices_app.services.DeviceIdentity,
    `last_seen` its sighting), or None: not stored, tombstoned, a status the heartbeat would
    change, not sighted within sighting_fresh_for() (the sweep may have marked it offline),
    or Redis away. With `note_value`, the same script call HSETs it into `note_key` under
    the device's pk (the heartbeat's seen buffer) when, and only when, it returns an identity.
    With `stream_entry` (and a note), the same call also appends the entry to its stream and
    sets its `depth`, when, and only when, it returns an identity, which it does only for a
    credential whose use was recorded at or after `used_since` (else None and nothing
    written: the caller records the use the usual way). Never raises for Redis."""
    if not available():
        return None
    fresh_ms, expiry = _lookup_limits()
    keys = (credential_key(key_hash), note_key or "-")
    args = (_prefix(), note_value, fresh_ms, expiry)
    if stream_entry is not None:
        keys = (*keys, stream_entry.key)
        args = (*args, f"{used_since.timestamp():.0f}", stream_entry.head, stream_entry.tail)
    try:
        reply = _run_script(_LOOKUP_SHA, _LOOKUP_LUA, (str(len(keys)), *keys, *args))
    except redis.RedisError as exc:
        _went_down(exc)
        return None
    if reply is None:
        return None
    if stream_entry is not None:
        stream_entry.depth = reply.pop()
    return _identity(*reply)


def _identity(credential: bytes, device: bytes, seen_ago: bytes):
    credential_pk, device_pk, last_used = credential.split(b"|", 2)
    status, site_pk, device_type, device_id = device.decode().split("|", 3)
    last_used_at = datetime.datetime.fromtimestamp(float(last_used), datetime.UTC) if last_used else None
    # The sighting as this host's time: a heartbeat noted since, or one PostgreSQL held.
    last_seen = timezone.now() - datetime.timedelta(milliseconds=int(seen_ago))
    row = (int(credential_pk), last_used_at, int(device_pk), device_id, status, last_seen, int(site_pk))
    return _device_identity_class()((*row, device_type))


@functools.cache
def _device_identity_class():
    # Imported on first use (devices_app.services imports this module); kept, because an
    # import statement in the function cost a microsecond on every heartbeat.
    from devices_app.services import DeviceIdentity

    return DeviceIdentity


def _run_script(sha: str, lua: str, args: tuple):
    """EVALSHA on the kept connection; EVAL once when Redis does not know the script yet (a
    new or restarted Redis). Raises redis.RedisError."""
    try:
        return send_one(_url(), _TIMEOUT, pack("EVALSHA", sha, *args))
    except redis.exceptions.NoScriptError:
        return send_one(_url(), _TIMEOUT, pack("EVAL", lua, *args))


def fill(
    key_hash: str,
    identity,
    *,
    note_key: str = "",
    note_value: str = "",
    seen_at: datetime.datetime | None = None,
) -> bool:
    """Store `identity` (just read from PostgreSQL, or just written by this request) for the
    bound, unless a tombstone says it changed since, with its `last_seen` (or `seen_at`, when
    given) as the device's sighting (None: the sighting is left as it is). That time must be
    what PostgreSQL holds, or a heartbeat this request wrote to the row, buffered, or notes
    here for a device the sweep could not be judging (monitoring_app.ingest). With
    `note_value`, the same script call HSETs it into `note_key` under the device's pk (the
    heartbeat's seen buffer) in any case. True when Redis took the call (so the note is
    written); never raises for Redis."""
    if not available():
        return False
    credential_value, device_value = credential_entry(identity), device_entry(identity)
    seconds = str(int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS))
    keys = (credential_key(key_hash), device_key(identity.pk), note_key or "-", sighting_key(identity.pk))
    seen_ago = _ms_since(seen_at or identity.last_seen)
    args = ("4", *keys, credential_value, device_value, seconds, str(identity.pk), note_value, seen_ago)
    try:
        _run_script(_FILL_SHA, _FILL_LUA, args)
    except redis.RedisError as exc:
        _went_down(exc)
        return False
    return True


def credential_entry(identity) -> str:
    """The credential entry's value for `identity` (devices_app.services.DeviceIdentity)."""
    last_used = f"{identity.last_used_at.timestamp():.0f}" if identity.last_used_at else ""
    return f"{identity.credential_pk}|{identity.pk}|{last_used}"


def device_entry(identity) -> str:
    """The device entry's value for `identity`."""
    return f"{identity.status}|{identity.site_id}|{identity.device_type}|{identity.device_id}"


def _ms_since(moment: datetime.datetime | None) -> str:
    # An age, not a time: Redis dates the sighting by its own clock (one clock for all hosts).
    if moment is None:
        return ""
    return str(max(0, int((timezone.now() - moment).total_seconds() * 1000)))


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
    TOMBSTONE_SECONDS: their next request reads PostgreSQL (an operator's change, an import).
    The sweep needs none: see "The sweep and the sightings" above."""
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


# --- the refresh (beat: devices_app.tasks.refresh_identities) -------------------------------

# How long after the Redis time taken before its PostgreSQL read a refresh may still write
# what it read: half a device tombstone's life, so a change that committed after the read
# finds its tombstone still there when the write comes (see "The refresh" above).
REFRESH_WRITE_WITHIN_MS = TOMBSTONE_SECONDS * 1000 // 2
REFRESH_TIMEOUT = 5.0  # seconds: a beat task, not a request, may wait longer for Redis

# KEYS[1] the credential entry, KEYS[2] the device entry; ARGV[1] and ARGV[2] their values,
# ARGV[3] Redis's time (ms) taken before the PostgreSQL read the values come from, ARGV[4]
# the bound (ms), ARGV[5] the latest Redis time (ms) at which they may still be written.
# Returns 1 (written, or an entry from a later read kept), 0 (a tombstone: nothing written)
# or -1 (too late: nothing written). Each entry expires at ARGV[3] + ARGV[4], which is no
# later than its read + the bound; an entry that would outlive that (written by a later
# read) is left as it is, so a refresh never replaces a fresher read with an older one.
_REFRESH_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if now > tonumber(ARGV[5]) then return -1 end
if redis.call('GET', KEYS[1]) == '-' or redis.call('GET', KEYS[2]) == '-' then return 0 end
local left = tonumber(ARGV[3]) + tonumber(ARGV[4]) - now
if left < 1 then return -1 end
if redis.call('PTTL', KEYS[1]) < left then redis.call('SET', KEYS[1], ARGV[1], 'PX', left) end
if redis.call('PTTL', KEYS[2]) < left then redis.call('SET', KEYS[2], ARGV[2], 'PX', left) end
return 1
"""
_REFRESH_SHA = hashlib.sha1(_REFRESH_LUA.encode()).hexdigest()  # noqa: S324 (Redis's script id)


@dataclass
class RefreshPage:
    """What one PostgreSQL read of the refresh found, ready for refresh_write(): `read_at_ms`,
    Redis's clock (ms) taken before that read began; `identities`, (credential hash,
    services.DeviceIdentity) of the usable credentials; `revoked`, the hashes of credentials
    of the same devices revoked within the bound."""

    read_at_ms: int
    identities: list
    revoked: list


@dataclass
class RefreshCounts:
    """What refresh_write() did: entries rewritten (or found fresher), skipped for a
    tombstone, skipped as too late, and revoked credentials tombstoned."""

    written: int = 0
    tombstoned: int = 0
    late: int = 0
    revoked: int = 0

    def add(self, other: "RefreshCounts") -> None:
        self.written += other.written
        self.tombstoned += other.tombstoned
        self.late += other.late
        self.revoked += other.revoked


def refresh_client() -> redis.Redis:
    return redis_client(_url(), REFRESH_TIMEOUT)


def redis_time_ms(client: redis.Redis) -> int:
    """Redis's clock (ms): the one clock every entry's expiry and every sighting is read by.
    Raises redis.RedisError."""
    seconds, microseconds = client.time()
    return seconds * 1000 + microseconds // 1000


def refresh_prepare(client: redis.Redis) -> None:
    """Load the refresh's script (once per run: a pipeline cannot fall back to EVAL)."""
    client.script_load(_REFRESH_LUA)


def refresh_write(client: redis.Redis, page: RefreshPage) -> RefreshCounts:
    """Rewrite the page's entries in one pipelined round trip of script calls, each expiring
    the bound after `page.read_at_ms` (never over a tombstone, never later than
    REFRESH_WRITE_WITHIN_MS after it), and tombstone its revoked credentials for the bound.
    Writes no sighting and no note. A repeat is safe. Raises redis.RedisError."""
    counts = RefreshCounts()
    if not page.identities and not page.revoked:
        return counts
    bound_ms = int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS) * 1000
    deadline_ms = page.read_at_ms + REFRESH_WRITE_WITHIN_MS
    pipe = client.pipeline(transaction=False)
    for key_hash, identity in page.identities:
        keys = (credential_key(key_hash), device_key(identity.pk))
        values = (credential_entry(identity), device_entry(identity))
        pipe.evalsha(_REFRESH_SHA, 2, *keys, *values, page.read_at_ms, bound_ms, deadline_ms)
    # A revocation whose tombstone could not reach Redis at commit is caught here, a refresh
    # interval later, instead of when the entry expires. A tombstone is always safe to write.
    for key_hash in page.revoked:
        pipe.set(
            credential_key(key_hash), TOMBSTONE, ex=max(1, int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS))
        )
    replies = pipe.execute()
    for reply in replies[: len(page.identities)]:
        if reply == 1:
            counts.written += 1
        elif reply == 0:
            counts.tombstoned += 1
        else:
            counts.late += 1
    counts.revoked = len(page.revoked)
    return counts
