"""Heartbeats of devices that are already online, collected in Redis and written to the device
rows together, so 100,000 terminals reporting every minute do not become 1,667 row updates
(and commits) a second.

A heartbeat that changes nothing but `last_seen` (the device is online, or in maintenance)
is one `HSET` of its time into a Redis hash; `flush_seen` swaps the hash out atomically and
applies the entries in set-based UPDATEs of 5,000 rows. The sweep flushes before it judges
anyone offline, so a device is never marked offline while its heartbeat waits in the buffer, and
the beat task flushes every HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS. A heartbeat that changes
the device's state (offline → online) never goes through here: it is written at once.

Without Redis (not configured, or down), heartbeats are written directly, as before: the
buffer is an optimisation, never a place where a heartbeat can be lost silently. A flush
that fails leaves its batch in Redis under a `:flushing:` key, named in the `:pending` set,
and taken again next time.
"""

import logging
import time
import uuid

import redis
from django.conf import settings
from django.db import connection, transaction

from homepot import hot_path, metrics
from homepot.redis_clients import pack, redis_client, send_one

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
FLUSH_CHUNK = 5000  # rows per UPDATE (and transaction) when writing the buffer out
_down_until = 0.0  # monotonic time before which this process does not try Redis again


_TIMEOUT = 0.3  # seconds: a heartbeat waits no longer for Redis


def _client() -> redis.Redis:
    return redis_client(settings.REDIS_URL, timeout=_TIMEOUT)


def _key() -> str:
    # Per database: a demo, a test run and production may share one Redis.
    return f"{_key_prefix()}{hot_path.database_name()}"


@hot_path.setting_derived
def _key_prefix() -> str:
    return settings.HOMEPOT_MONITORING_SEEN_KEY_PREFIX


def enabled() -> bool:
    # PostgreSQL only: the flush is PostgreSQL SQL, and runs from Celery beat, which the
    # embedded SQLite demo does not start.
    return _enabled_by_settings() and hot_path.on_postgresql()


@hot_path.setting_derived
def _enabled_by_settings() -> bool:
    return bool(settings.HOMEPOT_MONITORING_BUFFER_HEARTBEATS and settings.REDIS_URL)


def key() -> str:
    """The buffer's hash in Redis (devices_app.identity_store's script writes to it too)."""
    return _key()


def usable() -> bool:
    """Whether a heartbeat may be noted here now (enabled, and Redis not known to be away)."""
    return enabled() and time.monotonic() >= _down_until


def entry(seen_at, reported_at) -> str:
    """The buffered value of one heartbeat (also written by devices_app.identity_store's
    script, in the same call as the credential lookup)."""
    return f"{seen_at.timestamp():.6f}|" + (f"{reported_at.timestamp():.6f}" if reported_at else "")


def note_seen(device_pk: int, seen_at, reported_at) -> bool:
    """Buffer "device `device_pk` was heard from at `seen_at`" (and its own clock, if sent).
    False when the buffer is off or Redis cannot take it: the caller writes the row itself."""
    global _down_until
    if not usable():
        return False
    try:
        send_one(
            settings.REDIS_URL, _TIMEOUT, pack("HSET", _key(), str(device_pk), entry(seen_at, reported_at))
        )
    except redis.RedisError as exc:
        # Leave Redis alone for a while: a heartbeat must not wait on a timeout each time,
        # nor the log repeat the same line for every terminal.
        _down_until = time.monotonic() + RETRY_AFTER_SECONDS
        logger.warning(
            "Heartbeat buffer unavailable, writing device rows directly for %d s: %s",
            RETRY_AFTER_SECONDS,
            exc,
        )
        return False
    return True


def flush_seen() -> int:
    """Write every buffered heartbeat to its device row, in set-based UPDATEs of FLUSH_CHUNK
    rows; returns how many rows.

    `last_seen` only moves forward, and the device's own clock (`reported_at`) likewise; the
    status is not touched (the heartbeat found the device online; the sweep runs after this).
    """
    if not enabled():
        return 0
    with metrics.timer(metrics.heartbeat_buffer_flush_duration):
        return _flush()


def _flush() -> int:
    try:
        batches = _take_batches()
    except redis.RedisError as exc:
        logger.warning("Heartbeat buffer unavailable, nothing flushed: %s", exc)
        return 0
    metrics.heartbeat_buffer_depth.set(sum(len(entries) for _key, entries in batches))
    written = 0
    for flushing_key, entries in batches:
        written += _apply(entries)
        _forget_batch(flushing_key)
    return written


def _pending() -> str:
    # The names of the batches taken and not yet written: a set, so that finding them costs
    # the same however many other keys (100,000 devices' identities) share the Redis.
    return f"{_key()}:pending"


def _take_batches() -> list[tuple[str, dict]]:
    """The live hash, renamed to a private key (atomic: heartbeats arriving meanwhile start a
    new hash) and named in the pending set in the same MULTI, plus any batch a failed flush
    left behind there."""
    client, key = _client(), _key()
    flushing = f"{key}:flushing:{uuid.uuid4().hex}"
    taking = client.pipeline(transaction=True)
    taking.sadd(_pending(), flushing)
    taking.rename(key, flushing)
    taking.execute(raise_on_error=False)  # the rename fails when nothing was buffered since
    names = sorted(name.decode() for name in client.smembers(_pending()))
    return [(name, client.hgetall(name)) for name in names]


def _forget_batch(flushing_key: str) -> None:
    forgetting = _client().pipeline(transaction=True)
    forgetting.delete(flushing_key)
    forgetting.srem(_pending(), flushing_key)
    forgetting.execute()


def _apply(entries: dict) -> int:
    """Write the entries in chunks of FLUSH_CHUNK rows, each its own UPDATE and transaction,
    in device id order: row locks are held for a fraction of a second, not for the whole
    flush (100,000 rows take about 5 s here), and neither two flushes nor a flush and the
    sweep lock crosswise (the chunks ascend, and each locks its rows in id order)."""
    rows = sorted(
        (int(device_pk), *value.decode().partition("|")[::2]) for device_pk, value in entries.items()
    )
    written = 0
    for start in range(0, len(rows), FLUSH_CHUNK):
        chunk = rows[start : start + FLUSH_CHUNK]
        written += _update_chunk(
            ids=[pk for pk, _seen, _reported in chunk],
            seen=[float(seen) for _pk, seen, _reported in chunk],
            reported=[float(reported) if reported else None for _pk, _seen, reported in chunk],
        )
    return written


# The locking subquery fixes the lock order: the UPDATE's join alone locks rows in the order
# its plan meets them (heap order under a hash join), whatever order the ids are in.
FLUSH_SQL = """
UPDATE devices_app_device d SET
    last_seen = GREATEST(d.last_seen, to_timestamp(v.seen)),
    reported_at = CASE
        WHEN v.reported IS NOT NULL
             AND (d.reported_at IS NULL OR to_timestamp(v.reported) >= d.reported_at)
        THEN to_timestamp(v.reported) ELSE d.reported_at END
FROM (
    SELECT id FROM devices_app_device WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE
) AS locked,
unnest(%s::bigint[], %s::float8[], %s::float8[]) AS v (id, seen, reported)
WHERE d.id = locked.id AND v.id = locked.id
"""


def _update_chunk(*, ids, seen, reported) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(FLUSH_SQL, [ids, ids, seen, reported])
        return cursor.rowcount
