"""Retention: health history older than HOMEPOT_MONITORING_RETENTION_DAYS is removed.

On PostgreSQL the history tables are partitioned by day (monitoring_app.partitions): every
day partition wholly before the cutoff is detached, CONCURRENTLY when the task runs it (in
autocommit): the ingest's INSERTs and device UPDATEs neither wait for it nor make it wait,
and a detach interrupted half-way is finished by the next run. A day only partly past the
cutoff is kept until it is wholly past (so up to one day more than the retention is kept).
On a database that still has a DEFAULT partition (before migration 0021) its few rows are
deleted in batches. The detached days' files are removed afterwards by
history_partitions_reclaim (the task runs it right after; the hourly maintenance catches up),
which takes seconds per day on a disk that discards freed blocks but blocks nobody. A plain
table (SQLite, or PostgreSQL not yet converted) is deleted from in small batches, each its
own short transaction, so no lock is held long and the ingest keeps writing meanwhile.
Device rows (the latest state) and alerts are never touched. The dashboard's rollup
(FleetSnapshot, and its chain totals FleetTotalSnapshot) goes after SNAPSHOT_KEEP_DAYS.
"""

import datetime

from django.conf import settings
from django.utils import timezone

from homepot.db.batches import delete_in_batches
from monitoring_app import offday, partitions
from monitoring_app.choices import AuditEvent
from monitoring_app.rollup import SNAPSHOT_KEEP_DAYS
from monitoring_app.services import audit_record


def _prune_history(
    history: partitions.HistoryTable, cutoff: datetime.datetime, batch_size: int, dropped: list[str]
) -> int:
    """Remove `history`'s rows before `cutoff`: whole day partitions detached where it is
    partitioned (their names appended to `dropped`), then batched DELETEs of what is left (the
    DEFAULT partition, or the whole plain table). Returns how many rows went (partitions:
    counted by the statistics, see history_partitions_detach_before)."""
    total = 0
    table = history.table
    if partitions.is_partitioned(table):
        for part in partitions.history_partitions_detach_before(history, cutoff=cutoff):
            dropped.append(part.name)
            total += part.rows
        if not partitions.has_default_partition(history):
            return total  # every row is in a day partition (since migration 0021)
        table = history.default_partition
    return total + _prune_batches(table, history.time_column, cutoff, batch_size)


def _prune_batches(table: str, column: str, cutoff: datetime.datetime, batch_size: int) -> int:
    """Delete rows of `table` whose `column` is before `cutoff`, `batch_size` at a time, each
    batch its own short transaction. Returns how many were deleted."""
    return delete_in_batches(
        f"""DELETE FROM {table} WHERE id IN (
                SELECT id FROM {table} WHERE {column} < %s LIMIT %s)""",  # noqa: S608 (fixed names)
        [cutoff],
        batch_size,
    )


def health_history_prune(
    *, now: datetime.datetime | None = None, days: int | None = None, batch_size: int | None = None
) -> int:
    """Remove HealthCheck rows checked before now - `days` (and connectivity transitions
    older than that): whole day partitions detached on PostgreSQL (their files are left to
    history_partitions_reclaim, called by the task after this), else `batch_size` at a time
    (`DELETE ... WHERE id IN (SELECT id ... LIMIT n)`, served by the time indexes), and write
    ONE audit row (health.pruned) with the counts and the partitions dropped. Returns the
    number of health checks removed. Safe to repeat.
    """
    days = settings.HOMEPOT_MONITORING_RETENTION_DAYS if days is None else days
    batch_size = batch_size or settings.HOMEPOT_MONITORING_PRUNE_BATCH
    cutoff = (now or timezone.now()) - datetime.timedelta(days=days)
    dropped: list[str] = []
    total = _prune_history(partitions.HEALTH, cutoff, batch_size, dropped)
    # After the rows: a record goes only once its row has (the API's pages rely on the rest).
    offday_records = offday.offday_records_prune(before=cutoff, batch_size=batch_size)
    transitions = _prune_history(partitions.STATUS_CHANGES, cutoff, batch_size, dropped)
    # The chart rollup has its own, shorter age: the charts show at most 7 days.
    snapshot_cutoff = (now or timezone.now()) - datetime.timedelta(days=SNAPSHOT_KEEP_DAYS)
    snapshots = _prune_batches("monitoring_app_fleetsnapshot", "bucket_at", snapshot_cutoff, batch_size)
    _prune_batches("monitoring_app_fleettotalsnapshot", "bucket_at", snapshot_cutoff, batch_size)
    audit_record(
        event_type=AuditEvent.HEALTH_PRUNED,
        description=f"Pruned {total} health checks and {transitions} status changes older than {days} days",
        new_values={
            "deleted": total,
            "status_changes_deleted": transitions,
            "snapshots_deleted": snapshots,
            "offday_records_deleted": offday_records,
            "older_than": cutoff.isoformat(),
            "retention_days": days,
            "partitions_dropped": dropped,
        },
    )
    return total


def history_reclaim() -> list[str]:
    """Drop the day tables retention detached, returning the disk space (both history
    tables); the names dropped. No audit row: the retention that detached them wrote it."""
    dropped = []
    for history in partitions.HISTORY_TABLES:
        if partitions.supported():
            dropped += partitions.history_partitions_reclaim(history)
    return dropped
