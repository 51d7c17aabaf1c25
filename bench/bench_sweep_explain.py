"""Load-independent evidence for the sweep and the alert evaluation: EXPLAIN (ANALYZE, BUFFERS)
of their statements on a kept, prepared database, inside ONE transaction that is rolled back.

    python bench/bench_sweep_explain.py <code root> <database>

`<database>` must have been prepared by `bench/bench_sweep_trials.py <root> <database> prepare`
(51,000 devices silent for an hour). In one transaction: the sweep's statement exactly as
`monitoring_app.sweep` runs it (UPDATE ... RETURNING + INSERT of the transitions), its ANALYZE,
then every statement of `monitoring_app.alerts` past the offline threshold, each under
EXPLAIN (ANALYZE, BUFFERS); then the same alert statements again (the steady state, nothing
new to open). Prints per statement: execution ms, trigger ms, rows, shared buffers hit + read
+ dirtied + written, buffers dirtied alone, WAL records, bytes and full-page images (PLANS=1:
every whole plan on stderr; JIT=off: the alert statements without JIT, as `alerts_evaluate`
runs them). Rolled back at the end: the database is unchanged (VACUUM it before the next run:
the rolled-back rows and index entries stay until then).
"""

import contextlib
import datetime
import json
import os
import re
import sys
import time

from bench_sweep_trials import T0, setup

SWEEP_SQL = """
WITH gone AS (
    UPDATE devices_app_device SET status = %(offline)s, connectivity_changed_at = %(now)s
    WHERE status = %(online)s AND (last_seen < %(cutoff)s OR last_seen IS NULL)
    RETURNING id
)
INSERT INTO monitoring_app_devicestatuschange (device_id, old_status, new_status, reason, changed_at)
SELECT id, %(online)s, %(offline)s, %(reason)s, %(now)s FROM gone
"""


def explain(cursor, sql: str, params: dict) -> dict:
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql, params)
    (plan,) = cursor.fetchone()
    if os.environ.get("PLANS"):  # the whole plan, for reading
        print(json.dumps(plan, indent=1), file=sys.stderr)
    top = plan[0]
    node = top["Plan"]
    triggers = sum(t["Time"] for t in top.get("Triggers", []))
    return {
        "ms": round(top["Execution Time"]),
        "rows": node.get("Actual Rows", 0),
        "trigger_ms": round(triggers),
        "buffers": sum(node.get(f"Shared {k} Blocks", 0) for k in ("Hit", "Read", "Dirtied", "Written")),
        # Pages this statement dirtied first: the distinct heap and index pages it wrote.
        "dirtied": node.get("Shared Dirtied Blocks", 0),
        # Every index entry is one WAL record: the load-independent count of the write work.
        # Full-page images (FPI) depend on when the last checkpoint was, so WAL bytes do too.
        "wal_records": node.get("WAL Records", 0),
        "wal_bytes": node.get("WAL Bytes", 0),
        "wal_fpi": node.get("WAL FPI", 0),
    }


def label(sql: str) -> str:
    return re.sub(r"\s+", " ", sql.strip())[:40]


def main() -> None:
    root, database = sys.argv[1], sys.argv[2]
    setup(root, database)
    from django.conf import settings
    from django.db import connection, transaction

    from devices_app.choices import DeviceStatus
    from monitoring_app import alerts
    from monitoring_app.choices import ConnectivityReason
    from monitoring_app.sweep import offline_after

    out = {}
    with transaction.atomic(), connection.cursor() as cursor:
        params = {
            "offline": DeviceStatus.OFFLINE,
            "online": DeviceStatus.ONLINE,
            "now": T0,
            "cutoff": T0 - offline_after(),
            "reason": ConnectivityReason.SWEEP,
        }
        from monitoring_app import sweep

        # SWEEP=code: the code root's own statement (rows locked in id order first, issue 13)
        # instead of the plain UPDATE this bench has always compared.
        sweep_sql = sweep.SWEEP_SQL if os.environ.get("SWEEP") == "code" else SWEEP_SQL
        if os.environ.get("SWEEP") == "code" and hasattr(sweep, "sweep_statement"):
            # Since sweep2: the statement the code picks, under the planner settings it sets.
            with sweep.sweep_planner(cursor):
                sweep_sql = sweep.sweep_statement(cursor, params)
                out["sweep_statement"] = "one pass" if sweep_sql == sweep.SWEEP_SQL else "lock first"
                out["sweep"] = explain(cursor, sweep_sql, params)
        else:
            out["sweep"] = explain(cursor, sweep_sql, params)
        # This transaction's own counts so far: how many of the sweep's updates were HOT (no
        # index entry, the new row version on the same page).
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
            " WHERE relname = 'devices_app_device'"
        )
        out["sweep"]["updated"], out["sweep"]["hot_updated"] = cursor.fetchone()
        start = time.perf_counter()
        if hasattr(sweep, "refresh_statistics"):  # as the sweep of this code root does
            sweep.refresh_statistics(cursor)
        else:
            cursor.execute("ANALYZE devices_app_device (status, connectivity_changed_at, site_id)")
        out["sweep_analyze_ms"] = round((time.perf_counter() - start) * 1000)
        again = {**params, "now": T0 + datetime.timedelta(seconds=30)}
        if "sweep_statement" in out:
            with sweep.sweep_planner(cursor):
                out["sweep_again"] = explain(cursor, sweep.sweep_statement(cursor, again), again)
        else:
            out["sweep_again"] = explain(cursor, sweep_sql, again)
        if os.environ.get("JIT") == "off":  # as alerts_evaluate does since issue 11's sweep work
            cursor.execute("SET LOCAL jit = off")
        later = T0 + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS + 60)
        for round_name, moment in (("burst", later), ("steady", later + datetime.timedelta(seconds=30))):
            alert_params = alerts._params(moment)
            for kind, statements in (("resolve", alerts._RESOLVE_SQL), ("open", alerts._OPEN_SQL)):
                # As alerts_evaluate plans them: since eval3 the opening statements without
                # nested loops and no ANALYZE after a burst; before it, ANALYZE after each.
                planner = (
                    alerts._hash_anti_joins(cursor)
                    if kind == "open" and hasattr(alerts, "_hash_anti_joins")
                    else contextlib.nullcontext()
                )
                with planner:
                    for number, sql in enumerate(statements, 1):
                        figures = explain(cursor, sql, alert_params)
                        out[f"{round_name} {kind} {number}: {label(sql)}"] = figures
                        threshold = getattr(alerts, "ANALYZE_AFTER_CHANGES", None)
                        if threshold is not None and figures["rows"] >= threshold:
                            cursor.execute("ANALYZE monitoring_app_alert")
        transaction.set_rollback(True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
