"""Health history by day: PostgreSQL declarative partitioning of the tables that grow with the
fleet times time (health checks, connectivity transitions).

Each table is `PARTITION BY RANGE` on its time column, one partition per UTC day
(`<table>_p20261204`), plus a DEFAULT partition (`<table>_default`) so that an INSERT never
fails for want of a partition: a report stamped just past midnight, a device clock at the
allowed skew, a catch-up batch from three days ago, or a scheduler that was down longer than
the days created ahead all land somewhere. The beat task (`history_partitions_maintain`, hourly)
creates the days ahead and moves whatever the DEFAULT partition caught into a day partition of
its own, so the DEFAULT partition stays (nearly) empty and retention can drop whole days.

The database's primary key is (id, time) because PostgreSQL requires the partition key in
every unique index; ids still come from one sequence, so they stay unique in practice and
the Django model keeps `id` as its primary key (the admin cannot register a model with a
composite primary key in Django 5.2; docs/operations.md "History partitions").

On SQLite, and on a PostgreSQL database not yet converted (`manage.py partition_history`),
the tables are plain and every function here is a no-op that says so; callers fall back to
what they did before (retention deletes in batches).
"""

import datetime
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import OperationalError, ProgrammingError, connection, transaction

DAY = datetime.timedelta(days=1)
# What leaves partition DDL to the next run: lock_timeout (OperationalError), or another run
# that created the same name first (ProgrammingError).
_RETRY_LATER = (OperationalError, ProgrammingError)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HistoryTable:
    table: str
    time_column: str

    @property
    def default_partition(self) -> str:
        return f"{self.table}_default"

    @property
    def unpartitioned(self) -> str:
        """The old plain table while `partition_history` copies it (then dropped)."""
        return f"{self.table}_unpartitioned"

    def day_partition(self, day: datetime.date) -> str:
        return f"{self.table}_p{day:%Y%m%d}"


HEALTH = HistoryTable("monitoring_app_healthcheck", "checked_at")
STATUS_CHANGES = HistoryTable("monitoring_app_devicestatuschange", "changed_at")
HISTORY_TABLES = (HEALTH, STATUS_CHANGES)


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime.datetime | None  # None: the DEFAULT partition
    upper: datetime.datetime | None


def _utc_day_start(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)


def supported(using_connection=None) -> bool:
    return (using_connection or connection).vendor == "postgresql"


def is_partitioned(table: str, cursor=None) -> bool:
    """Whether `table` is a partitioned parent (False on SQLite and for plain tables)."""
    if not supported():
        return False
    with _cursor(cursor) as cur:
        cur.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cur.fetchone()
    return bool(row) and row[0] == "p"


class _cursor:
    """Use the given cursor, or open (and close) one."""

    def __init__(self, cursor):
        self.given = cursor

    def __enter__(self):
        self.own = None if self.given is not None else connection.cursor()
        return self.given if self.given is not None else self.own.__enter__()

    def __exit__(self, *exc):
        if self.own is not None:
            self.own.__exit__(*exc)


def partitions(history: HistoryTable, cursor=None) -> list[Partition]:
    """The partitions of `history` with their bounds, oldest first, DEFAULT last."""
    with _cursor(cursor) as cur:
        cur.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s)
            """,
            [history.table],
        )
        rows = cur.fetchall()
    found = []
    for name, bound in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None))
            continue
        # "FOR VALUES FROM ('2026-12-04 00:00:00+00') TO ('2026-12-05 00:00:00+00')"
        lower_text, upper_text = bound.split("'")[1], bound.split("'")[3]
        found.append(
            Partition(
                name,
                datetime.datetime.fromisoformat(lower_text),
                datetime.datetime.fromisoformat(upper_text),
            )
        )
    return sorted(found, key=lambda p: (p.lower is None, p.lower or datetime.datetime.min))


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _set_lock_timeout(cursor) -> None:
    """DDL on the parent waits for its lock at most this long (then this run gives up and the
    next one retries): a waiting ACCESS EXCLUSIVE request queues every ingest behind it."""
    cursor.execute(
        "SET LOCAL lock_timeout = %s", [f"{settings.HOMEPOT_MONITORING_PARTITION_LOCK_TIMEOUT_MS}ms"]
    )


def _day_partition_add(history: HistoryTable, day: datetime.date, cursor) -> str:
    """Create `day`'s partition and attach it (inside the caller's transaction), moving the
    rows of that day the DEFAULT partition holds into it first.

    Created detached, with a CHECK that proves its range, then ATTACHed: ATTACH takes only
    SHARE UPDATE EXCLUSIVE on the parent (the ingest keeps writing) and skips the scan the
    CHECK already proves; the DEFAULT partition is locked and scanned, which is cheap as long
    as it only holds strays.
    """
    name = history.day_partition(day)
    lower, upper = _utc_day_start(day), _utc_day_start(day + DAY)
    table, col, default = (
        _quote(history.table),
        _quote(history.time_column),
        _quote(history.default_partition),
    )
    part = _quote(name)
    check = _quote(f"{name}_range")
    # First, so that no stray of that day reaches the DEFAULT partition between the move and
    # the ATTACH (which would then refuse); ATTACH takes this lock on it anyway.
    cursor.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
    cursor.execute(f"CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"ALTER TABLE {part} ADD CONSTRAINT {check} CHECK ({col} IS NOT NULL AND {col} >= %s AND {col} < %s)",
        [lower, upper],
    )
    cursor.execute(
        f"""WITH moved AS (DELETE FROM {default} WHERE {col} >= %s AND {col} < %s RETURNING *)
            INSERT INTO {part} SELECT * FROM moved""",  # noqa: S608 (fixed names)
        [lower, upper],
    )
    cursor.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {part} FOR VALUES FROM (%s) TO (%s)", [lower, upper]
    )
    cursor.execute(f"ALTER TABLE {part} DROP CONSTRAINT {check}")
    return name


@dataclass
class MaintainReport:
    created: list[str]
    moved_days: list[str]
    skipped: list[str]  # tables not partitioned (SQLite, or not converted yet)
    reclaimed: list[str] = field(default_factory=list)  # detached days dropped (a retention's leftovers)


def history_partitions_maintain(
    *, now: datetime.datetime | None = None, days_ahead: int | None = None
) -> MaintainReport:
    """Create the day partitions from yesterday to `days_ahead` days ahead that are missing,
    and give every day the DEFAULT partition caught a partition of its own (its rows moved).

    Each partition in its own short transaction with a lock timeout; a run that times out
    leaves the rest to the next run (hourly). Safe to repeat and to run twice at once (the
    second's CREATE fails on the name and is skipped). Also drops the days a retention run
    detached but did not get to drop (history_partitions_reclaim). No audit row: nothing a
    user owns changes (the retention that detached the days wrote it).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    days_ahead = settings.HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD if days_ahead is None else days_ahead
    today = now.astimezone(datetime.UTC).date()
    report = MaintainReport([], [], [])
    for history in HISTORY_TABLES:
        if not is_partitioned(history.table):
            report.skipped.append(history.table)
            continue
        # First, so that a late stray of a day retention detached gets that day's name back.
        report.reclaimed.extend(history_partitions_reclaim(history))
        wanted = [today + datetime.timedelta(days=n) for n in range(-1, days_ahead + 1)]
        stray_days = _default_partition_days(history)
        for name in history_partitions_create(history, days=set(wanted) | set(stray_days)):
            report.created.append(name)
            day = datetime.datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").date()
            if day in stray_days:
                report.moved_days.append(f"{history.table}:{day.isoformat()}")
    return report


def history_partitions_create(history: HistoryTable, *, days) -> list[str]:
    """Create the partitions of `days` that `history` lacks (see _day_partition_add), each in
    its own transaction; returns the names created. One that cannot get its lock in time is
    skipped (logged), for the next run."""
    existing = {p.name for p in partitions(history)}
    created = []
    for day in sorted(days):
        if history.day_partition(day) in existing:
            continue
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                _set_lock_timeout(cursor)
                created.append(_day_partition_add(history, day, cursor))
        except _RETRY_LATER as exc:
            logger.warning("partition %s of %s not created this time: %s", day, history.table, exc)
    return created


def _default_partition_days(history: HistoryTable) -> list[datetime.date]:
    """The UTC days of the rows in the DEFAULT partition (it only holds strays)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT (({_quote(history.time_column)}) AT TIME ZONE 'UTC')::date "  # noqa: S608
            f"FROM {_quote(history.default_partition)}"
        )
        return [row[0] for row in cursor.fetchall()]


@dataclass
class DroppedPartition:
    name: str
    rows: int  # the statistics' live-row count (see _analyzed_row_count)


def history_partitions_drop_before(
    history: HistoryTable, *, cutoff: datetime.datetime
) -> list[DroppedPartition]:
    """Detach every day partition of `history` wholly before `cutoff` (its upper bound <=
    cutoff), then drop the detached days: history_partitions_detach_before followed by
    history_partitions_reclaim. For callers that want the disk back before they return; the
    retention itself only detaches (see health_history_prune)."""
    dropped = history_partitions_detach_before(history, cutoff=cutoff)
    history_partitions_reclaim(history, cutoff=cutoff)
    return dropped


def history_partitions_detach_before(
    history: HistoryTable, *, cutoff: datetime.datetime
) -> list[DroppedPartition]:
    """Take every day partition of `history` wholly before `cutoff` (its upper bound <=
    cutoff) out of the history: from then on no query sees its rows. A day only partly past
    the cutoff is kept until it is wholly past, so up to one day more than the retention is
    kept. Milliseconds whatever the day holds: the files stay (history_partitions_reclaim
    removes them later; removing them is what takes seconds, about 1 s a GB on a disk that
    discards freed blocks).

    Each DETACH is its own transaction, so the ACCESS EXCLUSIVE lock it needs on the parent is
    held for milliseconds. Its wait for that lock is bounded by
    HOMEPOT_MONITORING_RETENTION_LOCK_TIMEOUT_MS, because while it waits every ingest INSERT
    queues behind it; it is retried up to HOMEPOT_MONITORING_RETENTION_ATTEMPTS times (a
    long read of the history holds the lock it needs), then left for the next run.

    The row count recorded is the statistics collector's live-row count of the partition
    (exact for an append-only day; see _analyzed_row_count), since counting 72 million rows
    would cost what dropping them saves.
    """
    detached = []
    for part in partitions(history):
        if part.upper is None or part.upper > cutoff:
            continue
        rows = _detach_with_retries(history, part.name)
        if rows is not None:
            detached.append(DroppedPartition(part.name, rows))
    return detached


def _detach_with_retries(history: HistoryTable, name: str) -> int | None:
    """DETACH `name` from `history` under the retention's short lock timeout, a few times;
    its row count, or None if it never got its locks (logged, left for the next run)."""

    def detach(cursor):
        rows = _analyzed_row_count(name, cursor)
        cursor.execute(f"ALTER TABLE {_quote(history.table)} DETACH PARTITION {_quote(name)}")
        return rows

    return _with_retention_retries(detach, what=f"detach {name}")


def _with_retention_retries(step, *, what: str):
    """Run `step(cursor)` in a transaction under HOMEPOT_MONITORING_RETENTION_LOCK_TIMEOUT_MS,
    up to HOMEPOT_MONITORING_RETENTION_ATTEMPTS times; its result, or None if every attempt
    timed out on a lock.

    The timeout is short because while the step waits, whatever wants a conflicting lock
    queues behind it: both DETACH and DROP of a day also lock the device table (the day's
    foreign key gets, or loses, triggers of its own there), which every heartbeat and health
    report UPDATEs. The pause between attempts lets that queue drain."""
    attempts = max(1, settings.HOMEPOT_MONITORING_RETENTION_ATTEMPTS)
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    "SET LOCAL lock_timeout = %s",
                    [f"{settings.HOMEPOT_MONITORING_RETENTION_LOCK_TIMEOUT_MS}ms"],
                )
                return step(cursor)
        except _RETRY_LATER as exc:
            logger.warning("%s: attempt %s of %s: %s", what, attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(min(0.5, 0.05 * attempt))
    return None


def history_partitions_reclaim(
    history: HistoryTable, *, cutoff: datetime.datetime | None = None
) -> list[str]:
    """Drop the day tables of `history` that retention detached (all of them, or those wholly
    before `cutoff`), each in its own transaction: this is where the disk space comes back.

    The file removal holds no lock: PostgreSQL removes the files after the commit has
    released the locks ("since this may take many seconds", xact.c). The DROP itself locks
    the device table briefly (the foreign key's triggers there go with the table), so it
    runs under the retention's lock timeout and retries (_with_retention_retries); a table
    that never gets its locks is left for the next run (the hourly maintenance runs this
    too). Returns the names dropped."""
    dropped = []
    for name in _detached_days_before(history, cutoff):

        def drop(cursor, name=name):
            cursor.execute(f"DROP TABLE {_quote(name)}")
            return name

        if _with_retention_retries(drop, what=f"drop {name}"):
            dropped.append(name)
    return dropped


def _detached_days_before(history: HistoryTable, cutoff: datetime.datetime | None) -> list[str]:
    """Day tables of `history` that are no partition any more (detached by retention) and
    wholly before `cutoff` (any day if None)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT relname FROM pg_class
               WHERE relkind = 'r' AND NOT relispartition AND relname ~ %s
                 AND relnamespace = to_regnamespace(current_schema())""",
            [f"^{history.table}_p[0-9]{{8}}$"],
        )
        names = [row[0] for row in cursor.fetchall()]
    return sorted(
        name
        for name in names
        if cutoff is None
        or _utc_day_start(datetime.datetime.strptime(name[-8:], "%Y%m%d").date()) + DAY <= cutoff
    )


def _analyzed_row_count(name: str, cursor) -> int:
    """The partition's live rows as the statistics collector counts them (inserts minus
    deletes, exact for an append-only day, constant time); if it has none (rows written in
    this very transaction, or statistics reset), the planner's count after an ANALYZE."""
    cursor.execute("SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = to_regclass(%s)", [name])
    row = cursor.fetchone()
    if row and row[0]:
        return row[0]
    cursor.execute(f"ANALYZE {_quote(name)}")
    cursor.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)", [name])
    return cursor.fetchone()[0]


def history_sizes(history: HistoryTable) -> list[tuple[str, int, int]]:
    """(partition, estimated rows, bytes with indexes) of each partition, oldest first."""
    with connection.cursor() as cursor:
        result = []
        for part in partitions(history, cursor):
            cursor.execute(
                """SELECT greatest(reltuples, 0)::bigint, pg_total_relation_size(oid)
                   FROM pg_class WHERE oid = to_regclass(%s)""",
                [part.name],
            )
            rows, size = cursor.fetchone()
            result.append((part.name, rows, size))
    return result


# --- converting a plain table (migration 0016 for small tables; manage.py partition_history) ---


def _days_between(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    return [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]


def history_table_swap(history: HistoryTable, *, now: datetime.datetime | None = None) -> bool:
    """Put a partitioned table in place of the plain `history.table`, in one short
    transaction: the plain table is renamed to `history.unpartitioned` (its indexes and
    sequence too), and an empty partitioned table takes its name, with the same columns,
    CHECK and foreign key constraints, the same indexes (pg_get_indexdef of the old ones),
    primary key (id, time), ids continuing from the old sequence, day partitions from
    yesterday to `days_ahead` days ahead, and the DEFAULT partition. The partitions of the
    old rows' days are attached after that transaction, without stopping the ingest.

    From the commit on, the ingest writes into the new table; the old rows are copied over
    by history_copy_batch. Returns False (and changes nothing) if the table is already
    partitioned or on SQLite. Not for a table with a unique index lacking the time column
    (PostgreSQL refuses it on a partitioned table): raises ValueError, changing nothing.
    """
    if not supported() or is_partitioned(history.table):
        return False
    now = now or datetime.datetime.now(datetime.UTC)
    table, col = history.table, history.time_column
    old = history.unpartitioned
    with transaction.atomic(), connection.cursor() as cursor:
        _set_lock_timeout(cursor)
        cursor.execute(f"LOCK TABLE {_quote(table)} IN ACCESS EXCLUSIVE MODE")
        indexes = _plain_indexes(table, col, cursor)
        cursor.execute(
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname""",
            [table],
        )
        foreign_keys = cursor.fetchall()
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
        old_sequence = cursor.fetchone()[0]
        cursor.execute(
            f"SELECT min({_quote(col)}), max(id) FROM {_quote(table)}"  # noqa: S608 (fixed names)
        )
        oldest, max_id = cursor.fetchone()

        cursor.execute(f"ALTER TABLE {_quote(table)} RENAME TO {_quote(old)}")
        cursor.execute(f"ALTER INDEX IF EXISTS {_quote(table + '_pkey')} RENAME TO {_quote(old + '_pkey')}")
        for name, _definition in indexes:
            cursor.execute(f"ALTER INDEX {_quote(name)} RENAME TO {_quote(name[:50] + '_unpart')}")
        sequence = f"{table}_id_seq"
        if old_sequence:
            cursor.execute(f"ALTER SEQUENCE {old_sequence} RENAME TO {_quote(sequence[:50] + '_unpart')}")
            cursor.execute(f"SELECT last_value FROM {_quote(sequence[:50] + '_unpart')}")  # noqa: S608
            max_id = max(max_id or 0, cursor.fetchone()[0])
        cursor.execute(f"CREATE SEQUENCE {_quote(sequence)}")
        if max_id:
            cursor.execute("SELECT setval(%s, %s)", [sequence, max_id])

        cursor.execute(
            f"""CREATE TABLE {_quote(table)} (LIKE {_quote(old)} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
                PARTITION BY RANGE ({_quote(col)})"""
        )
        cursor.execute(f"ALTER TABLE {_quote(table)} ALTER COLUMN id SET DEFAULT nextval(%s)", [sequence])
        cursor.execute(f"ALTER SEQUENCE {_quote(sequence)} OWNED BY {_quote(table)}.id")
        cursor.execute(
            f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(table + '_pkey')} "
            f"PRIMARY KEY (id, {_quote(col)})"
        )
        for name, definition in foreign_keys:
            cursor.execute(f"ALTER TABLE {_quote(table)} ADD CONSTRAINT {_quote(name)} {definition}")
        for _name, definition in indexes:
            cursor.execute(definition)  # names the table by its name, which is now the new one

        # Only the days the ingest writes to under the lock; the old rows' days after it.
        today = now.astimezone(datetime.UTC).date()
        ahead = today + datetime.timedelta(days=settings.HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD)
        for day in _days_between(today - DAY, ahead):
            cursor.execute(
                f"""CREATE TABLE {_quote(history.day_partition(day))} PARTITION OF {_quote(table)}
                    FOR VALUES FROM (%s) TO (%s)""",
                [_utc_day_start(day), _utc_day_start(day + DAY)],
            )
        cursor.execute(
            f"CREATE TABLE {_quote(history.default_partition)} PARTITION OF {_quote(table)} DEFAULT"
        )
    if oldest:
        # Attached one by one (SHARE UPDATE EXCLUSIVE: the ingest goes on), before the copy
        # fills them.
        history_partitions_create(history, days=_days_between(oldest.astimezone(datetime.UTC).date(), today))
    return True


def _plain_indexes(table: str, time_column: str, cursor) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of `table`'s indexes but its primary key."""
    cursor.execute(
        """SELECT i.relname, pg_get_indexdef(x.indexrelid), x.indisunique,
                  array(SELECT a.attname FROM pg_attribute a
                        WHERE a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey))
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
           WHERE x.indrelid = to_regclass(%s) AND NOT x.indisprimary ORDER BY i.relname""",
        [table],
    )
    result = []
    for name, definition, unique, columns in cursor.fetchall():
        if unique and time_column not in columns:
            raise ValueError(f"{name} is unique without {time_column}: PostgreSQL cannot partition {table}")
        result.append((name, definition))
    return result


def history_copy_batch(history: HistoryTable, *, batch_size: int) -> int:
    """Copy the next `batch_size` rows of the old plain table into the partitioned one,
    newest first (recent history, what people look at, is back first), in one transaction.
    Returns how many were copied; 0 when done (or nothing to copy).

    Resumable without bookkeeping: the old table gets no new rows after the swap, so the
    rows still to copy are those with an id below the smallest old id already copied. A
    crash mid-batch rolls the batch back; a repeat copies nothing twice.
    """
    old = history.unpartitioned
    if not supported() or not _exists(old):
        return 0
    table = _quote(history.table)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT max(id) FROM {_quote(old)}")  # noqa: S608 (fixed names)
        old_max = cursor.fetchone()[0]
        if old_max is None:
            return 0
        cursor.execute(f"SELECT min(id) FROM {table} WHERE id <= %s", [old_max])  # noqa: S608
        copied_from = cursor.fetchone()[0]
        below = old_max + 1 if copied_from is None else copied_from
        cursor.execute(
            f"""INSERT INTO {table} SELECT * FROM {_quote(old)}
                WHERE id < %s ORDER BY id DESC LIMIT %s""",  # noqa: S608 (fixed names)
            [below, batch_size],
        )
        return cursor.rowcount


def history_copy_finish(history: HistoryTable) -> int | None:
    """Drop the old plain table once every one of its rows is in the partitioned table
    (counted on both sides). Returns the number of rows it had, or None if rows are still
    missing (nothing dropped; copy on) or there is no old table."""
    old = history.unpartitioned
    if not supported() or not _exists(old):
        return None
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*), max(id) FROM {_quote(old)}")  # noqa: S608 (fixed names)
        old_count, old_max = cursor.fetchone()
        if old_count:
            cursor.execute(
                f"SELECT count(*) FROM {_quote(history.table)} WHERE id <= %s",  # noqa: S608
                [old_max],
            )
            if cursor.fetchone()[0] < old_count:
                return None
        _set_lock_timeout(cursor)
        # Deferred foreign key checks of rows written in this same transaction (a migration,
        # a test) would refuse the DROP: run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # noqa: pooler - ends with the transaction
        cursor.execute(f"DROP TABLE {_quote(old)}")
    return old_count


def _exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return cursor.fetchone()[0]


def history_partition_all(history: HistoryTable, *, batch_size: int = 50_000) -> int:
    """Swap, copy every row and drop the old table, in the caller's transaction (migration
    0016 does this for small tables). Returns the number of rows copied."""
    history_table_swap(history)
    total = 0
    while copied := history_copy_batch(history, batch_size=batch_size):
        total += copied
    history_copy_finish(history)
    return total
