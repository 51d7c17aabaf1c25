"""Health reports of devices that need no status change, acknowledged once they are in a Redis
Stream and written to PostgreSQL together, so 100,000 terminals reporting every minute do not
become 1,667 commits (WAL flushes) a second.

What a 2xx answer means when a report took this path: Redis has appended it to the stream
(`XADD` returned). It is then exactly as durable as that Redis is configured to be: with
`appendonly yes` and `appendfsync always` (docs/operations.md), the entry is on Redis's disk
before the answer and survives a crash of Redis or of the whole host. The drain writes it to
PostgreSQL exactly once (below). Without Redis (not configured, down, or the stream over its
bound), the report is written to PostgreSQL before the answer, as before the buffer existed.

The drain (`drain`, a beat task every HOMEPOT_MONITORING_HEALTH_DRAIN_SECONDS) reads the
stream from the last entry it committed, inserts the reports in one multi-row INSERT per
chunk, applies each device's newest report to its row in one set-based UPDATE, and stores the
id of the last entry it took in the same transaction (HealthBufferState). Only then are the
entries trimmed from the stream. So:

- a drain killed before its commit leaves everything in Redis and in place: the next drain
  reads the same entries again;
- a drain killed after its commit but before the trim leaves entries that the stored id
  already covers: the next drain skips them. Nothing is inserted twice;
- one drain runs at a time (the state row is locked); an overlapping beat run skips.

The device's `last_seen` does not wait for the drain: a report notes the device in the
heartbeat buffer (monitoring_app.seen_buffer), which the sweep flushes before judging anyone
offline, so an acknowledged report never lets its device be marked offline.
"""

import datetime
import json
import logging
import time

import redis
from django.conf import settings
from django.db import transaction

from homepot import hot_path, metrics
from homepot.redis_clients import pack, redis_client, send_many

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
FULL_RECHECK_SECONDS = 5
CHUNK_ENTRIES = 1000  # stream entries read per drain transaction
CHUNK_REPORTS = 5000  # and at most about this many reports (a batch entry holds up to 500)
_down_until = 0.0  # monotonic time before which this process does not try Redis again
_full_until = 0.0  # likewise while the stream is over its bound
DURABILITY_RECHECK_SECONDS = 60
_durability_checked = (float("-inf"), False)  # (monotonic time, whether Redis fsyncs every write)


_TIMEOUT = 0.3  # seconds: a report waits no longer for Redis


def _client() -> redis.Redis:
    return redis_client(settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL, timeout=_TIMEOUT)


def stream_key() -> str:
    # Per database: a demo, a test run and production may share one Redis.
    return f"{settings.HOMEPOT_MONITORING_HEALTH_KEY_PREFIX}{hot_path.database_name()}"


def enabled() -> bool:
    """PostgreSQL only (the drain's SQL), and only with the heartbeat buffer: that is what
    keeps a buffered report's device from being swept offline before the drain."""
    from monitoring_app import seen_buffer

    return bool(
        settings.HOMEPOT_MONITORING_BUFFER_HEALTH
        and settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL
        and seen_buffer.enabled()
    )


# --- accepting ---------------------------------------------------------------------------


def encode(*, received_at: datetime.datetime, device_reports: list) -> bytes:
    """One stream entry: the server's time of receipt and the (device pk, report) pairs."""
    return json.dumps(
        {
            "t": received_at.isoformat(),
            "r": [[device_pk, *_fields(report)] for device_pk, report in device_reports],
        },
        separators=(",", ":"),
    ).encode()


def encode_around_device(*, received_at: datetime.datetime, report) -> tuple[bytes, bytes]:
    """encode() of ONE report, cut where its device's pk goes: `head + pk + tail` is the
    entry. For a script that learns the pk itself (devices_app.identity_store.lookup with a
    StreamEntry) and appends the report in the same call."""
    head = b'{"t":' + json.dumps(received_at.isoformat()).encode() + b',"r":[['
    tail = b"," + json.dumps(_fields(report), separators=(",", ":")).encode()[1:] + b"]}"
    return head, tail


def _fields(report) -> list:
    return [
        report.status,
        report.checked_at.isoformat(),
        report.response_time_ms,
        report.error_message,
        report.metrics,
        report.app_version,
        report.firmware_version,
    ]


def accepting() -> bool:
    """Whether a report may be appended now: the buffer is on, its Redis neither known to be
    away nor over the bound, and durable (_redis_keeps_what_it_acknowledges). May ask Redis
    for its configuration (once a minute); raises redis.RedisError."""
    if not enabled() or time.monotonic() < max(_down_until, _full_until):
        return False
    return _redis_keeps_what_it_acknowledges()


def shares_redis_with_identities() -> bool:
    """Whether the stream lives in the Redis of the credential identities and the seen buffer
    (the default: HOMEPOT_MONITORING_HEALTH_REDIS_URL is REDIS_URL), so that one script can
    read the identity, note the sighting and append the report (ingest.health_report_buffered)."""
    return settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL == settings.REDIS_URL


def append(*, received_at: datetime.datetime, device_reports: list) -> bool:
    """Append the reports to the stream as one entry. True once Redis has them; False when
    the buffer is off, Redis cannot take them, or the stream is over its bound: the caller
    then writes them to PostgreSQL itself. Never raises for Redis."""
    try:
        if not accepting():
            return False
        key = stream_key()
        entry = encode(received_at=received_at, device_reports=device_reports)
        # On this process's kept connection, both in one round trip (redis_clients.send_many:
        # redis-py's pipeline cost more CPU than the two commands).
        _entry_id, depth = send_many(
            settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL,
            _TIMEOUT,
            [pack("XADD", key, "*", "d", entry), pack("XLEN", key)],
        )
    except redis.RedisError as exc:
        # A timeout can come after Redis appended the entry; the caller then writes the
        # report directly as well, which stores it twice, never zero times (documented).
        went_down(exc)
        return False
    appended(depth)
    return True


def went_down(exc: Exception) -> None:
    """Leave the buffer alone for RETRY_AFTER_SECONDS after a Redis error: reports are
    written directly meanwhile (a request must not wait on a timeout each time)."""
    global _down_until
    _down_until = time.monotonic() + RETRY_AFTER_SECONDS
    logger.warning(
        "Health report buffer unavailable, writing reports directly for %d s: %s",
        RETRY_AFTER_SECONDS,
        exc,
    )


def appended(depth: int) -> None:
    """An entry went in and the stream now holds `depth`: above the bound, the next reports
    go to PostgreSQL until the drain catches up, so a stopped drain cannot fill Redis's memory."""
    global _full_until
    if depth > settings.HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES:
        _full_until = time.monotonic() + FULL_RECHECK_SECONDS
        logger.warning("Health report buffer holds %d entries, writing reports directly", depth)


def _redis_keeps_what_it_acknowledges() -> bool:
    """Whether the health Redis writes every command to its disk before answering
    (`appendonly yes` and `appendfsync always`): only then may a 201 rest on it. A Redis that
    keeps nothing on disk (a cache, a default install) would lose acknowledged reports when it
    restarts, so reports are then written to PostgreSQL instead. Asked once a minute per
    process. Where CONFIG is refused (managed Redis), the operator vouches for it with
    HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY=assume."""
    global _durability_checked
    if settings.HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY == "assume":
        return True
    checked_at, durable_before = _durability_checked
    if time.monotonic() - checked_at < DURABILITY_RECHECK_SECONDS:
        return durable_before
    client = _client()
    try:
        appendonly, appendfsync = _config(client, "appendonly"), _config(client, "appendfsync")
    except redis.ResponseError:  # CONFIG renamed or refused: it cannot be shown here
        appendonly = appendfsync = None
    durable = appendonly == "yes" and appendfsync == "always"
    if not durable and (durable_before or checked_at == float("-inf")):  # once, not every minute
        logger.warning(
            "Health reports are written to PostgreSQL directly: their Redis does not write every "
            "command to disk before answering (appendonly=%s, appendfsync=%s; needs yes and "
            "always, or HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY=assume)",
            appendonly,
            appendfsync,
        )
    _durability_checked = (time.monotonic(), durable)
    return durable


def _config(client: redis.Redis, name: str) -> str | None:
    value = client.config_get(name).get(name)
    return value.decode() if isinstance(value, bytes) else value


# --- draining ----------------------------------------------------------------------------


def drain(*, wait: bool = False, max_seconds: float | None = None) -> int:
    """Write the buffered reports to PostgreSQL (history rows and device rows), chunk by
    chunk, until the stream is empty or `max_seconds` have passed; returns how many reports.

    With `wait`, waits for a drain already running to finish and then drains; without, returns
    0 at once if one is running. Safe to repeat or to run anywhere: see the module docstring."""
    if not enabled():
        return 0
    deadline = time.monotonic() + (max_seconds or settings.HOMEPOT_MONITORING_HEALTH_DRAIN_MAX_SECONDS)
    written = 0
    with metrics.timer(metrics.health_buffer_drain_duration):
        while time.monotonic() < deadline:
            try:
                chunk = _drain_chunk(wait=wait)
            except redis.RedisError as exc:
                logger.warning("Health report buffer unavailable, nothing drained: %s", exc)
                break
            if chunk is None:
                break
            written += chunk
    return written


def _drain_chunk(*, wait: bool) -> int | None:
    """One transaction: the next entries after the stored id, inserted and applied, the id
    moved past them. None when there is nothing to do (or another drain holds the lock)."""
    from monitoring_app.ingest import health_reports_store
    from monitoring_app.models import HealthBufferState

    client, key = _client(), stream_key()
    if not client.xlen(key):
        metrics.health_buffer_depth.set(0)
        return None  # the beat's usual case when idle: no SQL at all
    with transaction.atomic():
        HealthBufferState.objects.get_or_create(stream=key)
        state = HealthBufferState.objects.select_for_update(skip_locked=not wait).filter(stream=key).first()
        if state is None:
            return None  # another drain is at work
        if _stream_was_recreated(client, key, state.drained_id):
            logger.error(
                "Health report stream %s restarts below the drained id %s (Redis lost its data "
                "and its clock is behind): draining it from the start",
                key,
                state.drained_id,
            )
            state.drained_id = "0-0"
        entries = client.xrange(key, min=f"({state.drained_id}", max="+", count=CHUNK_ENTRIES)
        metrics.health_buffer_depth.set(client.xlen(key))
        if not entries:
            return None
        device_reports, last_id = _decode(entries)
        health_reports_store(device_reports=device_reports)
        state.drained_id = last_id
        state.drained_at = datetime.datetime.now(datetime.UTC)
        state.save(update_fields=["drained_id", "drained_at"])
    # After the commit: a drain stopped here leaves entries the stored id already covers.
    try:
        pipe = client.pipeline(transaction=False)
        pipe.xtrim(key, minid=last_id, approximate=False)  # every entry before the last one
        pipe.xdel(key, last_id)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("Drained health reports not trimmed from the stream (skipped next time): %s", exc)
    return len(device_reports)


def _stream_was_recreated(client: redis.Redis, key: str, drained_id: str) -> bool:
    """Stream ids follow Redis's clock and never go back while Redis keeps its data; an id
    behind the stored one means a new stream whose entries would otherwise be skipped."""
    if drained_id == "0-0":
        return False
    try:
        last_generated = client.xinfo_stream(key)["last-generated-id"]
    except redis.ResponseError:  # no such key: nothing buffered
        return False
    return _id_tuple(last_generated) < _id_tuple(drained_id)


def _id_tuple(entry_id) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


def _decode(entries: list) -> tuple[list, str]:
    """The (device pk, received at, report) triples of the first entries, up to about
    CHUNK_REPORTS reports, and the id of the last entry taken."""
    from monitoring_app.ingest import HealthReport

    device_reports, last_id = [], None
    for entry_id, fields in entries:
        payload = json.loads(fields[b"d"])
        received_at = datetime.datetime.fromisoformat(payload["t"])
        for pk, status, checked_at, response_time, error, measured, app, firmware in payload["r"]:
            report = HealthReport(
                status=status,
                checked_at=datetime.datetime.fromisoformat(checked_at),
                response_time_ms=response_time,
                error_message=error,
                metrics=measured,
                app_version=app,
                firmware_version=firmware,
            )
            device_reports.append((pk, received_at, report))
        last_id = entry_id.decode()
        if len(device_reports) >= CHUNK_REPORTS:
            break
    return device_reports, last_id
