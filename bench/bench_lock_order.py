"""What locking device rows in id order costs the sweep and the heartbeat flush (issue 13):
the statements before (plain UPDATE, locks in plan order) and after (an ORDER BY id FOR UPDATE
subquery first), alternating, each under EXPLAIN (ANALYZE, BUFFERS, WAL) in a transaction
that is rolled back, with a VACUUM of the touched tables between runs.

    python bench/bench_lock_order.py <database> [rounds]

`<database>` prepared by `bench/bench_sweep_trials.py . <database> prepare` (1,000,000
devices, 51,000 of them silent for an hour). Per run: execution ms (load-dependent: compare
before/after of the same round only), shared buffers touched, WAL records (one per heap row
and index entry written, and one per row lock: the load-independent measure). The sweep at
the burst (51,000 rows marked offline), the sweep in steady state (nothing to mark), and one
flush chunk of 5,000 heartbeats spread over the whole table.
"""

import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sweep_trials import T0, setup  # noqa: E402

OLD_SWEEP_SQL = """
WITH gone AS (
    UPDATE devices_app_device SET status = %(offline)s, connectivity_changed_at = %(now)s
    WHERE status = %(online)s AND (last_seen < %(cutoff)s OR last_seen IS NULL)
    RETURNING id
)
INSERT INTO monitoring_app_devicestatuschange
    (device_id, old_status, new_status, reason, changed_at)
SELECT id, %(online)s, %(offline)s, %(reason)s, %(now)s FROM gone
"""

OLD_FLUSH_SQL = """
UPDATE devices_app_device d SET
    last_seen = GREATEST(d.last_seen, to_timestamp(v.seen)),
    reported_at = CASE
        WHEN v.reported IS NOT NULL
             AND (d.reported_at IS NULL OR to_timestamp(v.reported) >= d.reported_at)
        THEN to_timestamp(v.reported) ELSE d.reported_at END
FROM unnest(%s::bigint[], %s::float8[], %s::float8[]) AS v (id, seen, reported)
WHERE d.id = v.id
"""

VACUUM = ("VACUUM devices_app_device", "VACUUM monitoring_app_devicestatuschange")


def explain(cursor, sql: str, params) -> dict:
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql, params)
    (plan,) = cursor.fetchone()
    top, node = plan[0], plan[0]["Plan"]
    return {
        "ms": round(top["Execution Time"]),
        "buffers": sum(node.get(f"Shared {k} Blocks", 0) for k in ("Hit", "Read", "Dirtied", "Written")),
        "wal_records": node.get("WAL Records", 0),
    }


def rolled_back(statements) -> list[dict]:
    """Each (sql, params) explained in one transaction that is then rolled back."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        figures = [explain(cursor, sql, params) for sql, params in statements]
        transaction.set_rollback(True)
    with connection.cursor() as cursor:
        for sql in VACUUM:
            cursor.execute(sql)
    return figures


def sweep_params(now: datetime.datetime) -> dict:
    from devices_app.choices import DeviceStatus
    from monitoring_app.choices import ConnectivityReason
    from monitoring_app.sweep import offline_after

    return {
        "offline": DeviceStatus.OFFLINE,
        "online": DeviceStatus.ONLINE,
        "now": now,
        "cutoff": now - offline_after(),
        "reason": ConnectivityReason.SWEEP,
    }


def flush_chunk() -> tuple[list, list, list]:
    """5,000 heartbeats spread over the table, as a flush chunk of a whole fleet meets them."""
    from django.db import connection

    from monitoring_app.seen_buffer import FLUSH_CHUNK

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM devices_app_device WHERE id %% 200 = 0 ORDER BY id LIMIT %s", [FLUSH_CHUNK]
        )
        ids = [row[0] for row in cursor.fetchall()]
    stamp = (T0 + datetime.timedelta(seconds=5)).timestamp()
    return ids, [stamp] * len(ids), [stamp] * len(ids)


def one_round(version: str, chunk) -> dict:
    from monitoring_app.seen_buffer import FLUSH_SQL
    from monitoring_app.sweep import SWEEP_SQL

    sweep_sql = SWEEP_SQL if version == "after" else OLD_SWEEP_SQL
    burst, steady = rolled_back(
        [(sweep_sql, sweep_params(T0)), (sweep_sql, sweep_params(T0 + datetime.timedelta(seconds=30)))]
    )
    ids, seen, reported = chunk
    flush_params = [ids, ids, seen, reported] if version == "after" else [ids, seen, reported]
    (flush,) = rolled_back([(FLUSH_SQL if version == "after" else OLD_FLUSH_SQL, flush_params)])
    return {"version": version, "sweep_burst": burst, "sweep_steady": steady, "flush_5000": flush}


def main() -> None:
    database = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    setup(os.getcwd(), database)
    chunk = flush_chunk()
    for number in range(rounds):
        order = ("before", "after") if number % 2 == 0 else ("after", "before")
        for version in order:
            print(json.dumps({"round": number, **one_round(version, chunk)}), flush=True)


if __name__ == "__main__":
    main()
