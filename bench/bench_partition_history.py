"""`manage.py partition_history` on a copy with millions of rows, with reports arriving.

    python bench/bench_partition_history.py                     # 10,000 devices, 5,000,000 rows
    python bench/bench_partition_history.py --rows 20000000 --batch-size 100000 --json conv.json

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_convert; DROPPED),
     migrates it, creates `--devices` devices, and puts back a PLAIN health table as it was
     before migration 0016 (Django's own CREATE TABLE of the model), filled set-based with
     `--rows` health checks over the last `--days` days;
  2. starts `--ingest-threads` threads sending single health reports through the service
     (health_reports_record) for the whole run;
  3. swaps (timed: the one short exclusive lock), copies `--interrupt-after` batches, stops as
     if interrupted, then runs `manage.py partition_history --batch-size N` to the end (it
     resumes); times each phase and the copy rate;
  4. checks every old row is in the partitioned table exactly once (count and id sum) and
     every acknowledged report too; prints the ingest's rate, worst latency and errors during
     the swap and during the copy.

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import datetime
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import (  # noqa: E402
    command_env,
    drop_database,
    machine,
    manage,
    recreate_database,
    setup_django,
)
from bench.bench_history_soak import COLUMNS, IngestLoad, _device_pks, log  # noqa: E402

HEALTH = "monitoring_app_healthcheck"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_convert", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--interrupt-after", type=int, default=5, help="Batches before the 'interruption'.")
    parser.add_argument("--ingest-threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def plain_health_table() -> None:
    """Replace the (empty) partitioned health table by the plain one migration 0015 left."""
    from django.db import connection

    from monitoring_app.models import HealthCheck

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {HEALTH}")  # its partitions and owned sequence go with it
    with connection.schema_editor() as editor:
        editor.create_model(HealthCheck)


def fill(rows: int, days: int, devices: int) -> float:
    from django.db import connection

    per_device = max(1, rows // devices)
    step = datetime.timedelta(days=days) / per_device
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        chunk = max(1, per_device // 20)
        for k0 in range(0, per_device, chunk):
            cursor.execute(
                f"""INSERT INTO {HEALTH} ({COLUMNS})
                    SELECT d.id, CASE WHEN mod(d.id + k, 50) = 0 THEN 'unhealthy' ELSE 'healthy' END,
                           40 + mod(d.id + k, 400), jsonb_build_object('cpu_percent', mod(d.id + k, 100)),
                           '', now() - %(span)s::interval + k * %(step)s::interval
                    FROM generate_series(%(k0)s::int, %(k1)s::int) k
                    CROSS JOIN (SELECT id FROM devices_app_device) d""",  # noqa: S608 (fixed names)
                {
                    "span": datetime.timedelta(days=days),
                    "step": step,
                    "k0": k0,
                    "k1": min(per_device, k0 + chunk) - 1,
                },
            )
        cursor.execute("SET session_replication_role = origin")
        cursor.execute(f"VACUUM ANALYZE {HEALTH}")
    return time.perf_counter() - start


def fingerprint(below_or_equal: int) -> tuple[int, int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0) FROM {HEALTH} WHERE id <= %s",  # noqa: S608
            [below_or_equal],
        )
        return cursor.fetchone()


def run(args) -> dict:
    from django.core.management import call_command
    from django.db import connection

    from monitoring_app import partitions
    from monitoring_app.models import HealthCheck

    pks = _device_pks()
    plain_health_table()
    log(f"filling {args.rows:,} rows into the plain table")
    results = {"rows": args.rows, "devices": len(pks), "batch_size": args.batch_size}
    results["fill_s"] = round(fill(args.rows, args.days, len(pks)), 1)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT max(id) FROM {HEALTH}")  # noqa: S608 (fixed name)
        old_max = cursor.fetchone()[0]
        cursor.execute(f"SELECT pg_total_relation_size('{HEALTH}')")
        results["plain_table_mb"] = round(cursor.fetchone()[0] / 1024 / 1024)
    before = fingerprint(old_max)
    log(f"plain table: {before[0]:,} rows, {results['plain_table_mb']} MB; converting with reports arriving")

    with IngestLoad("health", pks, args.ingest_threads) as swap_load:
        time.sleep(1)
        start = time.perf_counter()
        partitions.history_table_swap(partitions.HEALTH)
        results["swap_s"] = round(time.perf_counter() - start, 3)
        time.sleep(1)
    results["ingest_during_swap"] = swap_load.summary()

    out = io.StringIO()
    with IngestLoad("health", pks, args.ingest_threads) as copy_load:
        start = time.perf_counter()
        for _ in range(args.interrupt_after):
            partitions.history_copy_batch(partitions.HEALTH, batch_size=args.batch_size)
        results["before_interruption_s"] = round(time.perf_counter() - start, 1)
        resumed = time.perf_counter()
        call_command("partition_history", batch_size=args.batch_size, table=[HEALTH], stdout=out)
        results["resumed_run_s"] = round(time.perf_counter() - resumed, 1)
        results["copy_total_s"] = round(time.perf_counter() - start, 1)
    results["copy_rows_per_s"] = round(before[0] / results["copy_total_s"])
    results["ingest_during_copy"] = copy_load.summary()

    after = fingerprint(old_max)
    results["old_rows_all_there_once"] = after == before
    acknowledged = swap_load.count + copy_load.count
    results["reports_acknowledged"] = acknowledged
    results["reports_stored"] = HealthCheck.objects.filter(id__gt=old_max).count()
    results["partitioned"] = partitions.is_partitioned(HEALTH)
    results["partitions"] = len(partitions.partitions(partitions.HEALTH))
    results["command_tail"] = out.getvalue().strip().splitlines()[-3:]
    return results


def main() -> None:
    args = parse_args()
    recreate_database(args.database)
    env = command_env(args.database)
    log("migrating and creating the fleet")
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "create_fleet",
        "--sites",
        str(max(1, args.devices // 100)),
        "--devices-per-site",
        "100",
        "--site-prefix",
        "conv",
    )
    setup_django(args.database)
    try:
        results = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)
    results["machine"] = machine()
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
