"""Retention: health history older than HOMEPOT_MONITORING_RETENTION_DAYS is removed.

Deleted in small batches, each its own short transaction, so no lock is held long and the
ingest keeps writing meanwhile. Device rows (the latest state) and alerts are never touched.
The dashboard's rollup (FleetSnapshot) goes after SNAPSHOT_KEEP_DAYS.
"""

import datetime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from monitoring_app.choices import AuditEvent
from monitoring_app.rollup import SNAPSHOT_KEEP_DAYS
from monitoring_app.services import audit_record


def _prune_batches(table: str, column: str, cutoff: datetime.datetime, batch_size: int) -> int:
    """Delete rows of `table` whose `column` is before `cutoff`, `batch_size` at a time, each
    batch its own short transaction. Returns how many were deleted."""
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"""DELETE FROM {table} WHERE id IN (
                        SELECT id FROM {table} WHERE {column} < %s LIMIT %s)""",  # noqa: S608 (fixed names)
                [cutoff, batch_size],
            )
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total


def health_history_prune(
    *, now: datetime.datetime | None = None, days: int | None = None, batch_size: int | None = None
) -> int:
    """Delete HealthCheck rows checked before now - `days` (and connectivity transitions
    older than that), `batch_size` at a time (`DELETE ... WHERE id IN (SELECT id ... LIMIT
    n)`, served by the time indexes), and write ONE audit row (health.pruned) with the
    counts. Returns the number of health checks deleted. Safe to repeat.
    """
    days = settings.HOMEPOT_MONITORING_RETENTION_DAYS if days is None else days
    batch_size = batch_size or settings.HOMEPOT_MONITORING_PRUNE_BATCH
    cutoff = (now or timezone.now()) - datetime.timedelta(days=days)
    total = _prune_batches("monitoring_app_healthcheck", "checked_at", cutoff, batch_size)
    transitions = _prune_batches("monitoring_app_devicestatuschange", "changed_at", cutoff, batch_size)
    # The chart rollup has its own, shorter age: the charts show at most 7 days.
    snapshot_cutoff = (now or timezone.now()) - datetime.timedelta(days=SNAPSHOT_KEEP_DAYS)
    snapshots = _prune_batches("monitoring_app_fleetsnapshot", "bucket_at", snapshot_cutoff, batch_size)
    audit_record(
        event_type=AuditEvent.HEALTH_PRUNED,
        description=f"Pruned {total} health checks and {transitions} status changes older than {days} days",
        new_values={
            "deleted": total,
            "status_changes_deleted": transitions,
            "snapshots_deleted": snapshots,
            "older_than": cutoff.isoformat(),
            "retention_days": days,
        },
    )
    return total
