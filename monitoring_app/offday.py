"""Health reports written outside their own day: the record that lets a newest-first read of
the history stop at the newest days without looking at the older ones.

The API lists the history newest first by id (arrival order), and the history is partitioned
by `checked_at` (the device's clock). A page read from the days since a UTC midnight S is
the list's true page only if no row checked before S has a higher id than the page's smallest
one, p. Such a row can only be

- a **late** row: written into a day that had already ended by the database's clock (a
  report up to HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS old, one drained late from the Redis
  buffer, an import), or
- a row written on time whose id is above p although p's own row is in a later day: then
  p's row was written before its day began by the database's clock (an **early** row: a
  device clock ahead, up to the allowed skew, near midnight). Ids come from one sequence
  in the order they are handed out; p's row got its id before that row, so before that row's
  day ended, so before p's own day began.

The trigger `monitoring_health_offday` records both kinds, as they are written, by every
writer (ingest, drain, import, partition moves), in the same transaction as the row, in
`HealthCheckOffDay`. "Late" is decided by clock_timestamp() after the row got its id, "early"
by statement_timestamp() before it did, so a row that races midnight is recorded whichever
way it falls. Rows written on time, in their own day (all but the minutes around midnight
and catch-ups), fire nothing: the trigger's WHEN, plain clock arithmetic, is evaluated per
row (about 0.07 microseconds) and its function never runs. The read (`window_page_proven`)
then asks the record, not the older days: one index probe whatever the days kept.

Rows written before the trigger existed (a database migrated with history, or the rows a
`partition_history` conversion copies over) are not recorded: `HealthCheckOffDaySince`
holds the last id handed out before the trigger, and a page reaching back to it is proven
the old way (monitoring_app.api.views). Retention removes the records whose rows are gone.
"""

import datetime
from functools import reduce
from operator import or_

from django.db import connections, models

from homepot.db.batches import delete_in_batches

# Fixed names (models HealthCheck, HealthCheckOffDay, HealthCheckOffDaySince): migrations
# import this module.
HEALTH_TABLE = "monitoring_app_healthcheck"
RECORD_TABLE = "monitoring_app_healthcheckoffday"
SINCE_TABLE = "monitoring_app_healthcheckoffdaysince"
TRIGGER = "monitoring_health_offday"
# Candidates at most checked one by one against the list's filters; more and the page is
# proven the old way (a day's first seconds after midnight, a mass catch-up).
CANDIDATES_MAX = 50

FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A row copied again (a partition move) is the same fact: recorded once.
    INSERT INTO {RECORD_TABLE} (check_id, device_id, checked_at)
    VALUES (NEW.id, NEW.device_id, NEW.checked_at)
    ON CONFLICT (check_id) DO NOTHING;
    RETURN NULL;
END
$$;
"""  # noqa: S608 (fixed names)
# On the partitioned parent: PostgreSQL clones it onto every partition, present and to come
# (CREATE ... PARTITION OF and ATTACH PARTITION both clone it). The UTC day's start by
# date_bin from a UTC midnight and 24 hours (a UTC day has no DST): plain arithmetic, where
# date_trunc(.., 'UTC') looks the zone up for every row (0.07 against 0.7 microseconds a row
# written on time, docs/performance.md "latest3").
TRIGGER_SQL = f"""
CREATE TRIGGER {TRIGGER} AFTER INSERT ON {{table}} FOR EACH ROW
WHEN (NEW.checked_at < date_bin('1 day', clock_timestamp(), '2000-01-01 00:00:00+00')
      OR NEW.checked_at >= date_bin('1 day', statement_timestamp(), '2000-01-01 00:00:00+00')
                           + interval '24 hours')
EXECUTE FUNCTION {TRIGGER}();
"""


def offday_trigger_install(cursor, *, table: str = HEALTH_TABLE) -> int:
    """Create the recording trigger on `table` (PostgreSQL) and set the id from which rows are
    recorded to the last id handed out before it. The table is locked against writes first
    (SHARE ROW EXCLUSIVE, which CREATE TRIGGER takes anyway), so no row is written between
    the two: a row either has an id at most that one or fires the trigger. Run inside the
    caller's transaction. Returns that id. Safe to repeat (the trigger is replaced)."""
    cursor.execute(f'LOCK TABLE "{table}" IN SHARE ROW EXCLUSIVE MODE')
    cursor.execute(FUNCTION_SQL)
    cursor.execute(f'DROP TRIGGER IF EXISTS {TRIGGER} ON "{table}"')
    cursor.execute(TRIGGER_SQL.format(table=f'"{table}"'))
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [table])
    sequence = cursor.fetchone()[0]
    last = 0
    if sequence:
        cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {sequence}")  # noqa: S608
        last = cursor.fetchone()[0]
    cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table}")  # noqa: S608 (fixed name)
    last = max(last, cursor.fetchone()[0])
    cursor.execute(
        f"""INSERT INTO {SINCE_TABLE} (id, check_id) VALUES (1, %s)
            ON CONFLICT (id) DO UPDATE SET check_id = excluded.check_id""",  # noqa: S608 (fixed name)
        [last],
    )
    return last


def offday_record_suspend(cursor) -> None:
    """Trust the record for no page until offday_trigger_install runs again (a history table
    being converted to partitions: its old rows are copied in unrecorded)."""
    cursor.execute(
        f"""INSERT INTO {SINCE_TABLE} (id, check_id) VALUES (1, 9223372036854775807)
            ON CONFLICT (id) DO UPDATE SET check_id = excluded.check_id"""  # noqa: S608 (fixed name)
    )


def offday_trigger_remove(cursor, *, table: str = HEALTH_TABLE) -> None:
    cursor.execute(f'DROP TRIGGER IF EXISTS {TRIGGER} ON "{table}"')
    cursor.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")


def window_page_proven(
    queryset: models.QuerySet,
    *,
    since: datetime.datetime,
    smallest: int,
    below: int | None = None,
    device_ids: list[int] | None = None,
) -> bool | None:
    """Whether the record proves that no row of `queryset` checked before `since` has an id
    above `smallest` (and below `below`), `smallest` being the id of a row of the list
    checked at or after `since`. True: proven; False: such a row exists; None: the record
    cannot tell (rows older than the trigger, `smallest`'s own row written early, or more
    candidates than CANDIDATES_MAX): the caller looks at the older days instead.

    One statement on the record (its primary key, or (device, id) with `device_ids`, the
    device pks the list is limited to), then, only when it names rows checked
    before `since`, one on the history for exactly those rows (their days alone, by
    `checked_at`), with the list's own filters. Reads nothing else: its cost does not
    depend on the days kept."""
    where, params = ["check_id >= %s"], [smallest]
    if below is not None:
        where.append("check_id < %s")
        params.append(below)
    if device_ids is not None:
        where.append("device_id = ANY(%s)")
        params.append(list(device_ids))
    # One round trip: the candidates, and a (NULL, NULL) row when the record does not cover
    # `smallest` (no start set: never installed; or the row is older than the trigger).
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(
            f"""(SELECT check_id, checked_at FROM {RECORD_TABLE} WHERE {" AND ".join(where)}
                 ORDER BY check_id LIMIT %s)
                UNION ALL
                SELECT NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM {SINCE_TABLE} WHERE check_id < %s)""",  # noqa: S608 (fixed names)
            [*params, CANDIDATES_MAX + 1, smallest],
        )
        found = cursor.fetchall()
    if len(found) > CANDIDATES_MAX or any(check_id in (None, smallest) for check_id, _ in found):
        return None
    older = [
        models.Q(id=check_id, checked_at=checked_at) for check_id, checked_at in found if checked_at < since
    ]
    if not older:
        return True
    return not queryset.filter(reduce(or_, older)).exists()


def offday_records_prune(*, before: datetime.datetime, batch_size: int) -> int:
    """Delete the records of rows checked before `before` that are no longer in the history
    (their day detached or deleted by retention), `batch_size` at a time, each batch its own
    transaction. A record whose row is still there is kept, whatever its age: the read relies
    on it. Returns how many were deleted. Safe to repeat."""
    return delete_in_batches(
        f"""DELETE FROM {RECORD_TABLE} WHERE check_id IN (
                SELECT o.check_id FROM {RECORD_TABLE} o
                WHERE o.checked_at < %s
                  AND NOT EXISTS (SELECT 1 FROM {HEALTH_TABLE} h
                                  WHERE h.id = o.check_id AND h.checked_at = o.checked_at)
                LIMIT %s)""",  # noqa: S608 (fixed names)
        [before],
        batch_size,
    )
