"""Where one burst alert evaluation's time goes, statement by statement, on a prepared
1,000,000-device database (`bench_sweep_trials.py <root> <db> prepare`).

    python bench/profile_eval.py <code root> <database> [--explain PLANS_FILE] [--cprofile FILE]

Runs the sweep (51,000 devices offline), then `alerts_evaluate` past the offline threshold
with every SQL statement timed (wall ms, and CPU ms of the PostgreSQL backend from /proc),
then resets the database as a trial does. `--explain PLANS_FILE`: each statement's plan with
ANALYZE and BUFFERS too, written to PLANS_FILE, through auto_explain at NOTICE level (the
statements run once, as the code runs them; their timings then include the
instrumentation). `--cprofile FILE`: the evaluation's
Python side under cProfile (by process time), saved to FILE and its top printed.
"""

import argparse
import cProfile
import datetime
import json
import os
import pstats
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sweep_trials import T0, backend_cpu_ms, reset, setup  # noqa: E402


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("database")
    parser.add_argument("--explain", metavar="PLANS_FILE", help="write every statement's plan there")
    parser.add_argument("--cprofile")
    args = parser.parse_args()
    setup(os.path.abspath(args.root), args.database)
    from django.conf import settings
    from django.db import connection

    from monitoring_app.alerts import alerts_evaluate
    from monitoring_app.models import MonitoringState
    from monitoring_app.sweep import sweep_offline

    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={
            "last_sweep_at": T0 - datetime.timedelta(seconds=30),
            "resumed_at": T0 - datetime.timedelta(days=1),
        },
    )
    swept = sweep_offline(now=T0)
    print(f"swept {swept.marked_offline}", file=sys.stderr)
    pid = _backend_pid()
    notices: list[str] = []
    if args.explain:
        with connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_analyze = on",
                "auto_explain.log_buffers = on",
                "auto_explain.log_wal = on",
                "auto_explain.log_timing = on",
                "auto_explain.log_nested_statements = on",
                "auto_explain.log_level = notice",
            ):
                cursor.execute(f"SET {setting}")
        connection.connection.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    statements = []

    def timing(execute, sql, params, many, context):
        cpu, start = _cpu_of(pid), time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(
                {
                    "ms": round((time.perf_counter() - start) * 1000, 1),
                    "db_cpu_ms": round(_cpu_of(pid) - cpu),
                    "sql": re.sub(r"\s+", " ", sql)[:110],
                }
            )

    later = T0 + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS + 60)
    profiler = cProfile.Profile(time.process_time) if args.cprofile else None
    cpu_before, own_before, start = backend_cpu_ms(), time.process_time(), time.perf_counter()
    with connection.execute_wrapper(timing):
        if profiler:
            profiler.enable()
        result = alerts_evaluate(now=later)
        if profiler:
            profiler.disable()
    out = {
        "evaluate_ms": round((time.perf_counter() - start) * 1000),
        "evaluate_db_cpu_ms": backend_cpu_ms() - cpu_before,
        "evaluate_py_cpu_ms": round((time.process_time() - own_before) * 1000),
        "opened": len(result.opened),
    }
    print(json.dumps(out))
    for row in statements:
        print(f"{row['ms']:9.1f} ms {row['db_cpu_ms']:6d} cpu  {row['sql']}")
    if profiler:
        profiler.dump_stats(args.cprofile)
        pstats.Stats(args.cprofile).sort_stats("cumulative").print_stats(35)
        pstats.Stats(args.cprofile).sort_stats("tottime").print_stats(25)
    if notices:
        with open(args.explain, "w") as out_file:
            out_file.write("\n\n".join(notices))
    if args.explain:
        with connection.cursor() as cursor:
            cursor.execute("SET auto_explain.log_min_duration = -1")
    reset(connection)


if __name__ == "__main__":
    main()
