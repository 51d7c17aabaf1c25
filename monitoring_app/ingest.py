"""Writes of the agent API: heartbeats and health reports.

The device row carries the latest state; history goes to HealthCheck rows. To keep 100,000
terminals reporting every minute sustainable, a report costs at most one conditional UPDATE
of the device row (skipped when nothing changed and `last_seen` is fresh) plus, for health
reports, one INSERT (one multi-row INSERT for a batch).

The server's clock decides `last_seen`. The device's own timestamp is kept (`reported_at`,
`HealthCheck.checked_at`) once the serializer has refused one in the future or too old.
"""

import datetime
import json
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from devices_app import identity_store
from devices_app.choices import DeviceStatus
from devices_app.models import Device, DeviceCredential
from devices_app.services import device_identity_from_postgres, device_identity_from_redis
from homepot import metrics
from monitoring_app import health_buffer, partitions, seen_buffer
from monitoring_app.choices import ConnectivityReason

# Statuses a report does not override: an operator's maintenance window, and `error`, which
# an operator or an integration sets (the payment module is down) and clears: a heartbeat says
# the device is alive, not that it is fine. Both are set and cleared through the device API.
_KEPT_ON_REPORT = (DeviceStatus.MAINTENANCE, DeviceStatus.ERROR)


@dataclass
class HealthReport:
    """One validated health report (see monitoring_app.api.agent.HealthReportSerializer)."""

    status: str
    checked_at: datetime.datetime
    response_time_ms: int | None = None
    error_message: str = ""
    metrics: dict = field(default_factory=dict)
    app_version: str | None = None
    firmware_version: str | None = None


def _touch_device(
    *,
    device_id: int,
    now: datetime.datetime,
    reported_at: datetime.datetime | None,
    health: HealthReport | None = None,
    store_history: bool = False,
) -> str | None:
    """Record that the device was heard from: at most ONE conditional UPDATE of its row.

    The row is written only when something changes (status back to online, new health,
    versions) or `last_seen` is older than HOMEPOT_MONITORING_TOUCH_SECONDS. A move back to
    online is recorded as a DeviceStatusChange in the same statement. A health report
    older than the latest one on the row (a catch-up batch) leaves the latest health alone.
    Returns the device's status if the row was written, else None. A repeat is harmless.

    With `store_history`, the same statement also inserts `health` as a HealthCheck row: one
    statement, so one round trip and its own transaction, for a single report.
    """
    stale_before = now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_TOUCH_SECONDS)
    params = {
        "id": device_id,
        "now": now,
        "reported_at": reported_at,
        "stale": stale_before,
        "kept": list(_KEPT_ON_REPORT),
        "online": DeviceStatus.ONLINE,
        "reason": ConnectivityReason.REPORT,
        "health": health.status if health else None,
        "health_at": health.checked_at if health else None,
        "app_version": health.app_version if health else None,
        "firmware": health.firmware_version if health else None,
    }
    # `newer`: this health report was measured no earlier than the one the row holds
    # (last_health_at), so a catch-up batch arriving late never hides the current health.
    # The history row is inserted from `prev`, the device row this statement locks: nothing
    # is written for a device deleted meanwhile (the history has no foreign key; see
    # monitoring_app.partitions).
    history = ""
    if store_history:
        history = """
        inserted AS (
            INSERT INTO monitoring_app_healthcheck
                (device_id, status, response_time_ms, metrics, error_message, checked_at)
            SELECT prev.id, %(health)s, %(response_time)s, %(metrics)s::jsonb, %(error)s, %(health_at)s
            FROM prev
        ),"""
        params.update(
            response_time=health.response_time_ms,
            metrics=json.dumps(health.metrics),
            error=health.error_message,
        )
    sql = f"""
        WITH prev AS (
            SELECT id, status, health_status, app_version, firmware_version, last_seen, reported_at,
                   last_health_at
            FROM devices_app_device WHERE id = %(id)s FOR UPDATE
        ),{history}
        decided AS (
            SELECT prev.*,
                   (%(health)s::text IS NOT NULL
                    AND (prev.last_health_at IS NULL
                         OR %(health_at)s::timestamptz >= prev.last_health_at)) AS newer
            FROM prev
        ),
        changed AS (
            UPDATE devices_app_device d SET
                last_seen = %(now)s,
                reported_at = CASE WHEN decided.reported_at IS NULL OR %(reported_at)s::timestamptz
                                        >= decided.reported_at
                                   THEN COALESCE(%(reported_at)s::timestamptz, decided.reported_at)
                                   ELSE decided.reported_at END,
                status = CASE WHEN decided.status = ANY(%(kept)s) THEN decided.status ELSE %(online)s END,
                connectivity_changed_at = CASE
                    WHEN decided.status = ANY(%(kept)s) OR decided.status = %(online)s
                    THEN d.connectivity_changed_at ELSE %(now)s END,
                health_status = CASE WHEN decided.newer THEN %(health)s ELSE d.health_status END,
                health_changed_at = CASE
                    WHEN decided.newer AND d.health_status IS DISTINCT FROM %(health)s THEN %(now)s
                    ELSE d.health_changed_at END,
                last_health_at = CASE WHEN decided.newer THEN %(health_at)s ELSE d.last_health_at END,
                app_version = CASE WHEN decided.newer AND %(app_version)s::text IS NOT NULL
                                   THEN %(app_version)s ELSE d.app_version END,
                firmware_version = CASE WHEN decided.newer AND %(firmware)s::text IS NOT NULL
                                        THEN %(firmware)s ELSE d.firmware_version END
            FROM decided
            WHERE d.id = decided.id AND (
                decided.last_seen IS NULL
                OR decided.last_seen < %(stale)s
                OR NOT (decided.status = ANY(%(kept)s) OR decided.status = %(online)s)
                OR (decided.newer AND (
                    decided.health_status IS DISTINCT FROM %(health)s
                    OR (%(app_version)s::text IS NOT NULL AND decided.app_version <> %(app_version)s)
                    OR (%(firmware)s::text IS NOT NULL AND decided.firmware_version <> %(firmware)s)))
            )
            RETURNING d.id, decided.status AS old_status, d.status AS new_status
        ),
        recorded AS (
            INSERT INTO monitoring_app_devicestatuschange
                (device_id, old_status, new_status, reason, changed_at)
            SELECT id, old_status, new_status, %(reason)s, %(now)s FROM changed
            WHERE old_status <> new_status
        )
        SELECT new_status FROM changed
    """  # noqa: S608 - `history` is fixed SQL with the model's table name; values are parameters
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        return row[0] if row else None


def _touch_device_atomic(**kwargs) -> str | None:
    """_touch_device in a transaction of its own (or the caller's, by a savepoint), run
    again after creating a missing day partition (partitions.history_write)."""

    def touch():
        with transaction.atomic():
            return _touch_device(**kwargs)

    return partitions.history_write(touch)


def _stays_as_it_is(device) -> bool:
    """Whether a report leaves the device's status alone: it is online, or an operator's
    maintenance window keeps it."""
    return device.status in (DeviceStatus.ONLINE, *_KEPT_ON_REPORT)


def _row_is_current(device, now: datetime.datetime) -> bool:
    """Whether a heartbeat would change nothing on `device` as just loaded: its status stays
    and it was seen within the touch window."""
    stale_before = now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_TOUCH_SECONDS)
    return _stays_as_it_is(device) and device.last_seen is not None and device.last_seen >= stale_before


def _sweep_may_be_judging(device, now: datetime.datetime) -> bool:
    """Whether a sweep running now may mark `device` offline: online, and last seen longer
    ago than a Redis sighting may be (devices_app.identity_store.sighting_fresh_for). Its
    heartbeat is then written to the row, under the row's lock, not buffered: a sweep holding
    the row first is waited for and its offline undone (with the transition); a sweep coming
    after finds the device seen. Buffered, the heartbeat could miss the sweep's flush while
    the identity stored after it let the next heartbeats be answered from Redis."""
    if device.status != DeviceStatus.ONLINE:
        return False
    return device.last_seen is None or device.last_seen < now - identity_store.sighting_fresh_for()


def _may_buffer(device, now: datetime.datetime) -> bool:
    """Whether this heartbeat may go to the seen buffer instead of the row: only `last_seen`
    would move, and no sweep may be judging the device. The one rule for both ways a
    heartbeat is buffered (heartbeat_record, and the miss's one script call)."""
    return _stays_as_it_is(device) and not _sweep_may_be_judging(device, now)


def heartbeat_record(*, device, reported_at: datetime.datetime | None = None) -> str:
    """A device says it is alive. Updates its row only if needed (see _touch_device); writes
    no history. Returns the device's status afterwards. Safe to repeat.

    `device` was loaded by this request's authentication a moment ago; when it is already
    online and freshly seen, nothing is written and no transaction is opened at all (a row
    lock alone would cost a WAL flush per heartbeat). When only `last_seen` would move (the
    device is online or in maintenance), the heartbeat goes to the Redis buffer instead
    (monitoring_app.seen_buffer), flushed to the rows together. A sweep that marked the
    device offline in that moment is corrected by its next heartbeat.
    """
    now = timezone.now()
    metrics.HEARTBEAT_ACCEPTED.inc()  # every path below accepts it (pre-bound: no label lookup)
    if _row_is_current(device, now):
        return device.status
    if _may_buffer(device, now) and seen_buffer.note_seen(device.pk, now, reported_at):
        device.last_seen = now  # a cached copy (the heartbeat's) then skips the touch window
        return device.status  # only last_seen moves: it reaches the row with the next flush
    written = _touch_device_atomic(device_id=device.pk, now=now, reported_at=reported_at)
    if written:
        device.status, device.last_seen = written, now
    return device.status


def heartbeat_by_credential(
    *, raw_key: str, reported_at: datetime.datetime | None = None, redis_asked: bool = False
):
    """A heartbeat authenticated by `raw_key` (the fast path's whole work): the device as the
    answer shows it, or None for an unusable credential. Same effect as the credential rule
    followed by heartbeat_record.

    The steady case is ONE Redis script call and no PostgreSQL (heartbeat_from_redis). A
    miss (not stored, or a status the heartbeat changes) reads the credential from
    PostgreSQL; when only `last_seen` would move, ONE more script call stores the identity
    and notes the heartbeat, else heartbeat_record writes the row and the identity as it
    stands after that is stored. `redis_asked`: the caller has just had None from
    heartbeat_from_redis, so Redis is not asked again. Safe to repeat."""
    if not redis_asked:
        identity = heartbeat_from_redis(raw_key=raw_key, reported_at=reported_at)
        if identity is not None:
            return identity
    device = device_identity_from_postgres(raw_key, store=False, process_memory=True)
    if device is None:
        return None
    if _stored_and_noted(raw_key, device, reported_at):
        metrics.HEARTBEAT_ACCEPTED.inc()
        return device
    heartbeat_record(device=device, reported_at=reported_at)
    identity_store.fill(DeviceCredential.hash_key(raw_key), device)
    return device


def heartbeat_from_redis(*, raw_key: str, reported_at: datetime.datetime | None = None):
    """The steady heartbeat, from Redis alone: ONE script call reads the credential's identity
    and notes the heartbeat in the seen buffer (devices_app.identity_store). The device as
    the answer shows it, or None: ask PostgreSQL (heartbeat_by_credential with
    `redis_asked`). Touches no database connection. Safe to repeat."""
    identity = reported_identity(raw_key, reported_at=reported_at)
    if identity is not None:
        metrics.HEARTBEAT_ACCEPTED.inc()
    return identity


def _stored_and_noted(raw_key: str, device, reported_at) -> bool:
    """For a device read from PostgreSQL whose status a heartbeat leaves alone: store its
    identity in Redis and note the heartbeat in the seen buffer in one script call (what
    heartbeat_record followed by identity_store.fill would do in two). False when that
    cannot be done, or must not: a device the sweep may be judging has its heartbeat written
    to the row (heartbeat_record), the caller's longer way."""
    now = timezone.now()
    if not (_may_buffer(device, now) and identity_store.available() and seen_buffer.usable()):
        return False
    note = "" if _row_is_current(device, now) else seen_buffer.entry(now, reported_at)
    key_hash = DeviceCredential.hash_key(raw_key)
    noted_at = now if note else None  # the sighting: this note, else the row's last_seen
    if not identity_store.fill(
        key_hash, device, note_key=seen_buffer.key(), note_value=note, seen_at=noted_at
    ):
        return False
    if note:
        device.last_seen = now
    return True


def reported_identity(raw_key: str, *, reported_at: datetime.datetime | None = None):
    """The device behind `raw_key` if Redis has it and a report would only move its
    `last_seen`, noted as seen (with the device's own clock, `reported_at`, when given) in the
    same round trip, so `last_seen` is now; else None (the caller asks PostgreSQL:
    devices_app.services.device_identity_from_postgres). Records the credential's use as the
    lookups do."""
    if not (identity_store.available() and seen_buffer.usable()):
        return None
    now = timezone.now()
    identity = device_identity_from_redis(
        raw_key, note_key=seen_buffer.key(), note_value=seen_buffer.entry(now, reported_at)
    )
    if identity is not None:
        identity.last_seen = now
    return identity


def one_trip_reports() -> bool:
    """Whether a single health report may take health_report_buffered now: the identities,
    the seen buffer and the health buffer usable, and the stream in the identities' Redis.
    May ask that Redis whether it is durable (health_buffer.accepting, once a minute)."""
    if not (
        identity_store.available() and seen_buffer.usable() and health_buffer.shares_redis_with_identities()
    ):
        return False
    try:
        return health_buffer.accepting()
    except redis.RedisError as exc:
        health_buffer.went_down(exc)
        return False


def health_report_buffered(*, raw_key: str, report: HealthReport, reported_at: datetime.datetime | None):
    """ONE health report of the device behind `raw_key`, in ONE Redis round trip when the
    health stream shares the identities' Redis (health_buffer.shares_redis_with_identities):
    the script that reads the credential's identity notes the device as seen and appends the
    report to the stream, as reported_identity followed by health_reports_record would in
    two. `reported_at`: the device's own clock, when the report gave one (noted with the
    sighting, as reported_identity notes it). Returns the device once Redis holds the
    report (what a 201 rests on); None when nothing was written: the caller takes that
    usual way (the buffer off, away, full or not durable; the identity not in Redis, or its
    device's status would change; a credential whose use is to be recorded). Not
    idempotent: each call appends a report. Only when one_trip_reports() says so."""
    now = timezone.now()
    head, tail = health_buffer.encode_around_device(received_at=now, report=report)
    entry = identity_store.StreamEntry(key=health_buffer.stream_key(), head=head, tail=tail)
    identity = device_identity_from_redis(
        raw_key,
        note_key=seen_buffer.key(),
        note_value=seen_buffer.entry(now, reported_at),
        stream_entry=entry,
    )
    if identity is None:
        return None
    metrics.HEALTH_ACCEPTED.inc()
    health_buffer.appended(entry.depth)
    identity.last_seen = now
    return identity


def health_report_appended(*, device, report: HealthReport) -> bool:
    """ONE health report of `device`, just answered by reported_identity (its status one a
    report keeps, noted as seen in that round trip), appended to the health stream: what
    health_reports_record does for it when the buffer takes it, without its general case
    (several devices, their newest report, their sightings: reported_identity has noted this
    one). True once Redis holds the report (what a 201 rests on); False when the buffer did
    not take it (off, away, full, not durable): the caller then stores it with
    health_reports_record, which writes it to PostgreSQL. Not idempotent."""
    if not health_buffer.append(received_at=timezone.now(), device_reports=[(device.pk, report)]):
        return False
    metrics.HEALTH_ACCEPTED.inc()
    return True


def health_reports_record(
    *, device_reports: list[tuple[int, HealthReport]], devices: dict[int, Device] | None = None
) -> int:
    """Store health reports; returns how many. `device_reports` holds (device pk, validated
    report); `devices` the reporting devices as the request loaded them (status, last_seen).

    When every reporting device keeps its status (online, maintenance, error), the reports go
    to the Redis buffer (monitoring_app.health_buffer: acknowledged once Redis holds them,
    written by the drain) and each device is noted as seen in the heartbeat buffer. Otherwise
    (a device coming back online, no buffer, Redis down) they are written here and now: one
    statement for a single report, else one multi-row INSERT and one set-based UPDATE.
    Not idempotent: each call appends history rows.
    """
    now = timezone.now()
    metrics.HEALTH_ACCEPTED.inc(len(device_reports))
    if devices is not None and _buffered(now=now, device_reports=device_reports, devices=devices):
        return len(device_reports)
    if len(device_reports) == 1:
        # The common case (a terminal's own report): history and latest state in one statement.
        # In autocommit the statement is its own transaction: no BEGIN/COMMIT round trips.
        device_pk, report = device_reports[0]
        partitions.history_write(
            lambda: _touch_device(
                device_id=device_pk, now=now, reported_at=report.checked_at, health=report, store_history=True
            )
        )
        return 1

    def store():
        with transaction.atomic():
            health_reports_store(device_reports=[(pk, now, report) for pk, report in device_reports])

    partitions.history_write(store)
    return len(device_reports)


def _buffered(*, now: datetime.datetime, device_reports: list, devices: dict[int, Device]) -> bool:
    """Hand the reports to the Redis buffer if none of their devices changes status; note the
    devices as seen (the sweep flushes that before judging). False: write them directly."""
    newest = _newest_per_device((pk, now, report) for pk, report in device_reports)
    if not all(_stays_as_it_is(devices[pk]) for pk in newest):
        return False
    if not health_buffer.append(received_at=now, device_reports=device_reports):
        return False
    for pk, (_received_at, report) in newest.items():
        device = devices[pk]
        if _row_is_current(device, now) or seen_buffer.note_seen(pk, now, report.checked_at):
            continue
        # The report is buffered but the sighting could not be: write the row now, so the
        # sweep cannot take the device for silent before the drain.
        _touch_device_atomic(device_id=pk, now=now, reported_at=report.checked_at)
    return True


def _newest_per_device(device_reports) -> dict[int, tuple[datetime.datetime, HealthReport]]:
    """Per device: the latest time of receipt and its newest report by the device's clock."""
    newest: dict[int, tuple[datetime.datetime, HealthReport]] = {}
    for pk, received_at, report in device_reports:
        if pk not in newest:
            newest[pk] = (received_at, report)
            continue
        seen, kept = newest[pk]
        newest[pk] = (max(seen, received_at), report if report.checked_at >= kept.checked_at else kept)
    return newest


def health_reports_store(*, device_reports: list[tuple[int, datetime.datetime, HealthReport]]) -> None:
    """Write (device pk, received at, report) triples in the current transaction: one multi-row
    INSERT of their history and ONE set-based UPDATE of the devices with each one's newest
    report (the rule of _touch_device, for many devices). A device found offline comes back
    online only if it was heard from within the offline threshold (a report drained late
    does not revive a device that has gone silent since). Appends history: not idempotent.

    A missing day partition is created and the two statements run again (in a savepoint of
    the caller's transaction: partitions.history_write). Reports of a device deleted
    meanwhile are dropped: the INSERT takes the lock on each device row that the history's
    foreign key check took (FOR KEY SHARE, in id order) and writes only rows whose device
    is there."""
    if not device_reports:
        return
    partitions.history_write(lambda: _store(device_reports))


def _store(device_reports: list[tuple[int, datetime.datetime, HealthReport]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH v (device_id, status, response_time_ms, metrics, error_message, checked_at) AS (
                SELECT * FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::jsonb[], %s::text[],
                                     %s::timestamptz[])
            ),
            present AS (
                SELECT id FROM devices_app_device WHERE id IN (SELECT device_id FROM v)
                ORDER BY id FOR KEY SHARE
            )
            INSERT INTO monitoring_app_healthcheck
                (device_id, status, response_time_ms, metrics, error_message, checked_at)
            SELECT v.* FROM v JOIN present ON present.id = v.device_id
            """,
            [
                [pk for pk, _at, _r in device_reports],
                [r.status for _pk, _at, r in device_reports],
                [r.response_time_ms for _pk, _at, r in device_reports],
                [json.dumps(r.metrics) for _pk, _at, r in device_reports],
                [r.error_message for _pk, _at, r in device_reports],
                [r.checked_at for _pk, _at, r in device_reports],
            ],
        )
        _touch_devices(cursor, newest=_newest_per_device(device_reports))


def _touch_devices(cursor, *, newest: dict[int, tuple[datetime.datetime, HealthReport]]) -> None:
    from monitoring_app.sweep import offline_after

    now = timezone.now()
    ids = sorted(newest)  # lock rows in id order: two writers never lock crosswise
    cursor.execute(
        """
        WITH v AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(seen)s::timestamptz[], %(health)s::text[],
                                 %(health_at)s::timestamptz[], %(app)s::text[], %(firmware)s::text[])
                AS v (id, seen, health, health_at, app, firmware)
        ),
        prev AS (
            SELECT d.id, d.status, d.health_status, d.app_version, d.firmware_version, d.last_seen,
                   d.reported_at, d.last_health_at, v.seen, v.health, v.health_at, v.app, v.firmware
            FROM devices_app_device d JOIN v ON v.id = d.id
            ORDER BY d.id FOR UPDATE OF d
        ),
        decided AS (
            SELECT prev.*,
                   (prev.last_health_at IS NULL OR prev.health_at >= prev.last_health_at) AS newer,
                   (NOT (prev.status = ANY(%(kept)s) OR prev.status = %(online)s)
                    AND prev.seen >= %(alive_since)s) AS revive
            FROM prev
        ),
        changed AS (
            UPDATE devices_app_device d SET
                last_seen = GREATEST(d.last_seen, x.seen),
                reported_at = CASE WHEN x.reported_at IS NULL OR x.health_at >= x.reported_at
                                   THEN x.health_at ELSE x.reported_at END,
                status = CASE WHEN x.revive THEN %(online)s ELSE d.status END,
                connectivity_changed_at = CASE WHEN x.revive THEN %(now)s
                                               ELSE d.connectivity_changed_at END,
                health_status = CASE WHEN x.newer THEN x.health ELSE d.health_status END,
                health_changed_at = CASE
                    WHEN x.newer AND d.health_status IS DISTINCT FROM x.health THEN %(now)s
                    ELSE d.health_changed_at END,
                last_health_at = CASE WHEN x.newer THEN x.health_at ELSE d.last_health_at END,
                app_version = CASE WHEN x.newer AND x.app IS NOT NULL THEN x.app ELSE d.app_version END,
                firmware_version = CASE WHEN x.newer AND x.firmware IS NOT NULL
                                        THEN x.firmware ELSE d.firmware_version END
            FROM decided x
            WHERE d.id = x.id AND (
                x.last_seen IS NULL
                OR x.last_seen < %(stale)s
                OR x.revive
                OR (x.newer AND (
                    x.health_status IS DISTINCT FROM x.health
                    OR (x.app IS NOT NULL AND x.app_version IS DISTINCT FROM x.app)
                    OR (x.firmware IS NOT NULL AND x.firmware_version IS DISTINCT FROM x.firmware)))
            )
            RETURNING d.id, x.status AS old_status, d.status AS new_status
        )
        INSERT INTO monitoring_app_devicestatuschange
            (device_id, old_status, new_status, reason, changed_at)
        SELECT id, old_status, new_status, %(reason)s, %(now)s FROM changed
        WHERE old_status <> new_status
        """,
        {
            "ids": ids,
            "seen": [newest[pk][0] for pk in ids],
            "health": [newest[pk][1].status for pk in ids],
            "health_at": [newest[pk][1].checked_at for pk in ids],
            "app": [newest[pk][1].app_version for pk in ids],
            "firmware": [newest[pk][1].firmware_version for pk in ids],
            "now": now,
            "alive_since": now - offline_after(),
            "stale": now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_TOUCH_SECONDS),
            "kept": list(_KEPT_ON_REPORT),
            "online": DeviceStatus.ONLINE,
            "reason": ConnectivityReason.REPORT,
        },
    )
