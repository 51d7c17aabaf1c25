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

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from devices_app.choices import DeviceStatus
from homepot import metrics
from monitoring_app import seen_buffer
from monitoring_app.choices import ConnectivityReason
from monitoring_app.models import HealthCheck

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
    history = ""
    if store_history:
        history = """
        inserted AS (
            INSERT INTO monitoring_app_healthcheck
                (device_id, status, response_time_ms, metrics, error_message, checked_at)
            VALUES (%(id)s, %(health)s, %(response_time)s, %(metrics)s::jsonb, %(error)s, %(health_at)s)
        ),"""
        params.update(
            response_time=health.response_time_ms,
            metrics=json.dumps(health.metrics),
            error=health.error_message,
        )
    sql = f"""
        WITH {history} prev AS (
            SELECT id, status, health_status, app_version, firmware_version, last_seen, reported_at,
                   last_health_at
            FROM devices_app_device WHERE id = %(id)s FOR UPDATE
        ),
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


def _stays_as_it_is(device) -> bool:
    """Whether a report leaves the device's status alone: it is online, or an operator's
    maintenance window keeps it."""
    return device.status in (DeviceStatus.ONLINE, *_KEPT_ON_REPORT)


def _row_is_current(device, now: datetime.datetime) -> bool:
    """Whether a heartbeat would change nothing on `device` as just loaded: its status stays
    and it was seen within the touch window."""
    stale_before = now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_TOUCH_SECONDS)
    return _stays_as_it_is(device) and device.last_seen is not None and device.last_seen >= stale_before


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
    if _stays_as_it_is(device) and seen_buffer.note_seen(device.pk, now, reported_at):
        device.last_seen = now  # a cached copy (the heartbeat's) then skips the touch window
        return device.status  # only last_seen moves: it reaches the row with the next flush
    with transaction.atomic():
        written = _touch_device(device_id=device.pk, now=now, reported_at=reported_at)
    if written:
        device.status, device.last_seen = written, now
    return device.status


def health_reports_record(*, device_reports: list[tuple[int, HealthReport]]) -> int:
    """Store health reports: one multi-row INSERT of HealthCheck history, then one
    conditional UPDATE per reporting device with its newest report (a batch from a gateway
    names a few devices; a terminal catching up names itself once).

    `device_reports` holds (device pk, validated report). Returns how many were stored.
    Not idempotent: each call appends history rows.
    """
    now = timezone.now()
    metrics.HEALTH_ACCEPTED.inc(len(device_reports))
    if len(device_reports) == 1:
        # The common case (a terminal's own report): history and latest state in one statement.
        device_pk, report = device_reports[0]
        _touch_device(
            device_id=device_pk, now=now, reported_at=report.checked_at, health=report, store_history=True
        )
        return 1
    rows = [
        HealthCheck(
            device_id=device_pk,
            status=report.status,
            response_time_ms=report.response_time_ms,
            error_message=report.error_message,
            metrics=report.metrics,
            checked_at=report.checked_at,
        )
        for device_pk, report in device_reports
    ]
    newest: dict[int, HealthReport] = {}
    for device_pk, report in device_reports:
        if device_pk not in newest or report.checked_at >= newest[device_pk].checked_at:
            newest[device_pk] = report
    with transaction.atomic():
        HealthCheck.objects.bulk_create(rows, batch_size=1000)
        # In id order, so two batches touching the same devices lock them in the same order.
        for device_pk in sorted(newest):
            report = newest[device_pk]
            _touch_device(device_id=device_pk, now=now, reported_at=report.checked_at, health=report)
    return len(rows)
