"""History by day: PostgreSQL declarative partitioning of the tables that grow with the
fleet times time (health checks, connectivity transitions).

Each table is `PARTITION BY RANGE` on its time column, one partition per UTC day
(`<table>_p20261204`), and no DEFAULT partition: `DETACH PARTITION ... CONCURRENTLY`, which
retention uses so that it never waits for (nor makes wait) the ingest, is refused while one
exists. An INSERT still never fails for want of a partition: the beat task
(`history_partitions_maintain`, hourly) creates the days ahead, and a write that finds no
partition for its row (a report stamped just past midnight, a device clock at the allowed
skew, a catch-up batch from three days ago, a scheduler down for longer than the days created
ahead) creates that day's partition and runs again (`history_write`). A database made before
migration 0021 had a DEFAULT partition; 0021 moves what it caught into day partitions and
drops it (`history_default_partition_retire`).

The history has no foreign key to the device table (migration 0021): a partition's foreign
key puts triggers of its own on the device table, so creating, detaching or dropping a day
took a SHARE ROW EXCLUSIVE lock there, which every heartbeat and report UPDATE conflicts
with. What the key guaranteed is kept by the writers and a trigger instead (docs/operations.md
"History partitions"): every INSERT of history locks the device row it names (FOR KEY SHARE,
the lock the key's check took, or FOR UPDATE) and writes nothing for a device that is gone,
and deleting devices deletes their history (Django's cascade, plus the trigger
`monitoring_history_device_deleted` for rows a concurrent report committed meanwhile).

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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, ProgrammingError, connection, transaction

from monitoring_app import offday

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
    # A DETACH ... CONCURRENTLY interrupted after its first transaction: invisible to new
    # queries, still a partition until `DETACH ... FINALIZE` (history_partitions_detach_before).
    detach_pending: bool = False


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
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s)
            """,
            [history.table],
        )
        rows = cur.fetchall()
    found = []
    for name, bound, pending in rows:
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, pending))
            continue
        # "FOR VALUES FROM ('2026-12-04 00:00:00+00') TO ('2026-12-05 00:00:00+00')"
        lower_text, upper_text = bound.split("'")[1], bound.split("'")[3]
        found.append(
            Partition(
                name,
                datetime.datetime.fromisoformat(lower_text),
                datetime.datetime.fromisoformat(upper_text),
                pending,
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


def has_default_partition(history: HistoryTable, cursor=None) -> bool:
    """Whether `history` still has its DEFAULT partition (a database before migration 0021)."""
    with _cursor(cursor) as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", [history.default_partition])
        return cur.fetchone()[0]


def _day_partition_add(history: HistoryTable, day: datetime.date, cursor) -> str | None:
    """Create `day`'s partition and attach it (inside the caller's transaction); None if it
    exists already. Where a DEFAULT partition is left (before migration 0021), the rows of
    that day it holds are moved into the new partition first.

    Serialised per table by a transaction-level advisory lock and a re-check of the name, so
    several processes that miss the same day at once create it once, and the others find it.
    Created detached, with a CHECK that proves its range, then ATTACHed: ATTACH takes only
    SHARE UPDATE EXCLUSIVE on the parent, which no INSERT, UPDATE or read conflicts with,
    and skips the scan the CHECK already proves. Without a DEFAULT partition and without a
    foreign key (migration 0021) nothing else is locked.
    """
    name = history.day_partition(day)
    cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [history.table])
    cursor.execute("SELECT relispartition FROM pg_class WHERE oid = to_regclass(%s)", [name])
    found = cursor.fetchone()
    if found and found[0]:
        return None
    if found:
        # A day retention detached and reclaim has not dropped yet: its rows are past the
        # retention, and a late row of that day needs the name back.
        cursor.execute(f"DROP TABLE {_quote(name)}")
    lower, upper = _utc_day_start(day), _utc_day_start(day + DAY)
    table, col = _quote(history.table), _quote(history.time_column)
    part = _quote(name)
    check = _quote(f"{name}_range")
    with_default = has_default_partition(history, cursor)
    if with_default:
        # First, so that no stray of that day reaches the DEFAULT partition between the move
        # and the ATTACH (which would then refuse); ATTACH takes this lock on it anyway.
        cursor.execute(f"LOCK TABLE {_quote(history.default_partition)} IN ACCESS EXCLUSIVE MODE")
    cursor.execute(f"CREATE TABLE {part} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"ALTER TABLE {part} ADD CONSTRAINT {check} CHECK ({col} IS NOT NULL AND {col} >= %s AND {col} < %s)",
        [lower, upper],
    )
    if with_default:
        cursor.execute(
            f"""WITH moved AS (DELETE FROM {_quote(history.default_partition)}
                               WHERE {col} >= %s AND {col} < %s RETURNING *)
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
    and (on a database before migration 0021) give every day the DEFAULT partition caught a
    partition of its own (its rows moved).

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
                if name := _day_partition_add(history, day, cursor):
                    created.append(name)
        except _RETRY_LATER as exc:
            logger.warning("partition %s of %s not created this time: %s", day, history.table, exc)
    return created


def _default_partition_days(history: HistoryTable) -> list[datetime.date]:
    """The UTC days of the rows in the DEFAULT partition (it only holds strays); none when
    there is no DEFAULT partition (since migration 0021)."""
    if not has_default_partition(history):
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT (({_quote(history.time_column)}) AT TIME ZONE 'UTC')::date "  # noqa: S608
            f"FROM {_quote(history.default_partition)}"
        )
        return [row[0] for row in cursor.fetchall()]


# --- writes that find no partition for their row ---------------------------------------------

# PostgreSQL's message when an INSERT's row falls in no partition (SQLSTATE 23514), and the
# DETAIL naming the row's partition key, in the session's time zone (UTC under Django).
_NO_PARTITION = re.compile(r'no partition of relation "(?P<table>[^"]+)" found for row')
_PARTITION_KEY = re.compile(r"Partition key of the failing row contains \([^)]*\) = \((?P<value>[^)]*)\)")
# Each retry creates one day; a multi-row INSERT spanning more missing days than this fails.
MISSING_PARTITION_RETRIES = 8

T = TypeVar("T")


def missing_partition(exc: BaseException) -> tuple[HistoryTable, datetime.date] | None:
    """(history, UTC day) that `exc` says had no partition for a row, or None if `exc` is
    something else."""
    cause = exc.__cause__ or exc
    diag = getattr(cause, "diag", None)
    message = (getattr(diag, "message_primary", None) or str(cause)) if diag else str(cause)
    found = _NO_PARTITION.search(message or "")
    if not found:
        return None
    history = next((h for h in HISTORY_TABLES if h.table == found["table"]), None)
    detail = _PARTITION_KEY.search((getattr(diag, "message_detail", None) or str(cause)) or "")
    if history is None or not detail:
        return None
    value = datetime.datetime.fromisoformat(detail["value"])
    if value.tzinfo is None:  # a session not in UTC would print local time without offset
        return None
    return history, value.astimezone(datetime.UTC).date()


def history_write(write: Callable[[], T]) -> T:
    """Run `write` (statements that INSERT history) and return its result; if an INSERT
    finds no partition for its row, create that day's partition (history_partition_ensure)
    and run `write` again, up to MISSING_PARTITION_RETRIES times.

    Inside a transaction, `write` runs in a savepoint so that the failed INSERT can be rolled
    back alone; in autocommit it runs as it is (a single statement is its own transaction,
    and one that opens its own atomic block is rolled back whole). `write` must therefore be
    safe to run again after a rollback of its own statements, which every caller's is (it
    only writes). The usual case costs nothing more than `write` (no savepoint in autocommit).
    """
    for attempt in range(MISSING_PARTITION_RETRIES + 1):
        try:
            if connection.in_atomic_block:
                with transaction.atomic():
                    return write()
            return write()
        except IntegrityError as exc:
            missing = missing_partition(exc)
            if missing is None or attempt == MISSING_PARTITION_RETRIES:
                raise
            history, day = missing
            logger.warning("no partition of %s for %s: creating it", history.table, day)
            history_partition_ensure(history, day)
    raise AssertionError("unreachable")  # the loop returns or raises


def history_partition_ensure(history: HistoryTable, day: datetime.date) -> bool:
    """Make sure `day`'s partition of `history` exists; True if this call created it.

    On the caller's connection: in autocommit a transaction of its own, committed at once;
    inside the caller's transaction a savepoint, so the new day commits (or rolls back)
    with the caller's rows, and PostgreSQL sees every lock this waits for (a DETACH ...
    CONCURRENTLY waiting for the caller's transaction while this waits for the DETACH is a
    deadlock it detects and breaks, instead of one only a timeout would end). Waits at most
    HOMEPOT_MONITORING_PARTITION_LOCK_TIMEOUT_MS for a lock (the advisory lock of another
    process creating a day, the parent's SHARE UPDATE EXCLUSIVE): then OperationalError, and
    the caller's write fails as it would have (a drain keeps its entries for the next run).
    A day another process created in the same instant counts as there (False).
    """
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('lock_timeout')")
            previous = cursor.fetchone()[0]
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true)",
                [f"{settings.HOMEPOT_MONITORING_PARTITION_LOCK_TIMEOUT_MS}ms"],
            )
            created = _day_partition_add(history, day, cursor) is not None
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])
            return created
    except (ProgrammingError, IntegrityError) as exc:  # the name taken meanwhile
        logger.info("partition %s of %s created by another process: %s", day, history.table, exc)
        return False


def history_days_ensure(history: HistoryTable, days) -> list[str]:
    """history_partition_ensure for each of `days` that `history` lacks (a bulk load of old
    days, where one retry per missing day would not do); the names created. Nothing on a
    table that is not partitioned."""
    if not is_partitioned(history.table):
        return []
    existing = {p.name for p in partitions(history)}
    return [
        history.day_partition(day)
        for day in sorted(set(days))
        if history.day_partition(day) not in existing and history_partition_ensure(history, day)
    ]


def history_day_ensure_on_load(sender, instance, raw=False, **kwargs) -> None:
    """pre_save receiver of the history models: a row saved raw (`loaddata`, whose rows go
    straight to INSERT, past history_write) gets its day partition first. One catalog
    lookup a fixture row; nothing for the app's own saves."""
    if not raw or not supported():
        return
    history = next(h for h in HISTORY_TABLES if h.table == sender._meta.db_table)
    when = getattr(instance, history.time_column)
    if when is None or not is_partitioned(history.table):
        return
    day = when.astimezone(datetime.UTC).date()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [history.day_partition(day)])
        if not cursor.fetchone()[0]:
            history_partition_ensure(history, day)


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
    kept. The files stay (history_partitions_reclaim removes them later; removing them is
    what takes seconds, about 1 s a GB on a disk that discards freed blocks).

    In autocommit and without a DEFAULT partition (since migration 0021), each day goes by
    `DETACH PARTITION ... CONCURRENTLY`: SHARE UPDATE EXCLUSIVE on the parent, which no
    INSERT, UPDATE or read conflicts with, then a wait for the transactions already using
    the history to end (milliseconds for the ingest's), then ACCESS EXCLUSIVE on the old day
    alone, which nobody writes. A detach interrupted after its first step (its wait timed
    out, the worker was killed) leaves the day "detach pending": invisible to new queries,
    finished here by `DETACH ... FINALIZE`, first thing, by the next run. Its wait is bounded
    by HOMEPOT_MONITORING_RETENTION_CONCURRENT_TIMEOUT_MS.

    Inside a transaction block (CONCURRENTLY refuses to run there) or with a DEFAULT
    partition left, a plain DETACH (ACCESS EXCLUSIVE on the parent, which the ingest's
    writes conflict with) under the short lock timeout and retries of
    _with_retention_retries.

    The row count recorded is the statistics collector's live-row count of the partition
    (exact for an append-only day; see _analyzed_row_count), since counting 72 million rows
    would cost what dropping them saves.
    """
    concurrent = not connection.in_atomic_block and not has_default_partition(history)
    detached = []
    # A detach a previous run left pending first: it holds the parent's detach slot.
    for part in sorted(partitions(history), key=lambda p: not p.detach_pending):
        if part.upper is None or (part.upper > cutoff and not part.detach_pending):
            continue
        rows = _detach_concurrently(history, part) if concurrent else _detach_with_retries(history, part.name)
        if rows is not None:
            detached.append(DroppedPartition(part.name, rows))
    return detached


def _detach_concurrently(history: HistoryTable, part: Partition) -> int | None:
    """DETACH `part` CONCURRENTLY (or FINALIZE it if a previous run was interrupted), in
    autocommit; its row count, or None if it did not finish (logged: a day left pending is
    finished by the next run, one never started is detached by it)."""
    table, name = _quote(history.table), _quote(part.name)
    with connection.cursor() as cursor:
        rows = _analyzed_row_count(part.name, cursor)
        cursor.execute("SHOW lock_timeout")
        previous = cursor.fetchone()[0]
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, false)",
            [f"{settings.HOMEPOT_MONITORING_RETENTION_CONCURRENT_TIMEOUT_MS}ms"],
        )
        try:
            if part.detach_pending:
                cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name} FINALIZE")
            else:
                cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name} CONCURRENTLY")
        except _RETRY_LATER as exc:
            logger.warning("detach %s: not finished this run (%s)", part.name, exc)
            return None
        finally:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [previous])
    return rows


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
    queues behind it: a plain DETACH wants ACCESS EXCLUSIVE on the history, which every
    report's INSERT conflicts with (and, while the history still had its foreign key, DETACH
    and DROP also locked the device table, which every heartbeat and report UPDATEs). The
    pause between attempts lets that queue drain."""
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
    released the locks ("since this may take many seconds", xact.c). The DROP locks only the
    detached table (before migration 0021 also the device table, for the foreign key's
    triggers there); it runs under the retention's lock timeout and retries
    (_with_retention_retries) for a reader still holding the detached table; a table
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


# --- the DEFAULT partition of a database made before migration 0021 -------------------------


def history_default_partition_retire(history: HistoryTable) -> list[str]:
    """Move every row the DEFAULT partition of `history` holds into a day partition of its
    own, then detach and drop the DEFAULT partition: what migration 0021 does, online.

    First every day it holds gets its partition (history_partitions_create: one short
    transaction per day, each moving that day's rows; the ingest writes on meanwhile into the
    days that exist). Then one short transaction locks the DEFAULT partition, moves whatever
    arrived since (a day that got no partition of its own during the first pass), detaches
    and drops it. From then on a row with no partition fails its INSERT, which history_write
    answers by creating the day. Returns the partitions created. Safe to repeat (nothing to
    do without a DEFAULT partition) and to interrupt (each transaction is whole).
    """
    if not is_partitioned(history.table) or not has_default_partition(history):
        return []
    created = history_partitions_create(history, days=_default_partition_days(history))
    with transaction.atomic(), connection.cursor() as cursor:
        _set_lock_timeout(cursor)
        default = _quote(history.default_partition)
        cursor.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
        for day in _default_partition_days(history):
            if name := _day_partition_add(history, day, cursor):
                created.append(name)
        cursor.execute(f"ALTER TABLE {_quote(history.table)} DETACH PARTITION {default}")
        cursor.execute(f"DROP TABLE {default}")
    return created


# --- converting a plain table (migration 0016 for small tables; manage.py partition_history) ---


def _days_between(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    return [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]


def history_table_swap(history: HistoryTable, *, now: datetime.datetime | None = None) -> bool:
    """Put a partitioned table in place of the plain `history.table`, in one short
    transaction: the plain table is renamed to `history.unpartitioned` (its indexes and
    sequence too), and an empty partitioned table takes its name, with the same columns,
    CHECK and foreign key constraints, the same indexes (pg_get_indexdef of the old ones),
    primary key (id, time), ids continuing from the old sequence, day partitions from
    yesterday to `days_ahead` days ahead (no DEFAULT partition: history_write creates a
    missing day when a row needs it). The partitions of the
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
        if table == offday.HEALTH_TABLE and _exists(offday.SINCE_TABLE):  # after migration 0022
            # No off-day record on the new table until the old rows are copied in (they would
            # all be recorded): meanwhile the record is trusted for no page
            # (history_copy_finish installs it).
            offday.offday_record_suspend(cursor)

        # Only the days the ingest writes to under the lock; the old rows' days after it.
        today = now.astimezone(datetime.UTC).date()
        ahead = today + datetime.timedelta(days=settings.HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD)
        for day in _days_between(today - DAY, ahead):
            cursor.execute(
                f"""CREATE TABLE {_quote(history.day_partition(day))} PARTITION OF {_quote(table)}
                    FOR VALUES FROM (%s) TO (%s)""",
                [_utc_day_start(day), _utc_day_start(day + DAY)],
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
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # pooler-safe: ends with the transaction
        cursor.execute(f"DROP TABLE {_quote(old)}")
        if history.table == offday.HEALTH_TABLE and _exists(offday.SINCE_TABLE):
            # Recorded from here on; every row so far (copied or written meanwhile) is older.
            offday.offday_trigger_install(cursor, table=history.table)
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
