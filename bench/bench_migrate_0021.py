"""Migration 0021 on a copy of a filled database whose DEFAULT partition holds rows, while
single health reports arrive: how long it takes, and what the ingest sees meanwhile.

    python bench/bench_migrate_0021.py --source homepot_retention_base --database homepot_retention_mig \
        --stray-day 2026-12-03 --stray-modulo 4 --json mig.json

1. copies `--source` (a database at migration 0020, filled by bench_history_soak.py
   --fill-only) into `--database` (CREATE DATABASE ... TEMPLATE, STRATEGY FILE_COPY; dropped
   first if it exists);
2. puts one row in `--stray-modulo` of `--stray-day` into the DEFAULT partition, as a scheduler
   down for that day would have left them: the day is detached, those rows INSERTed back
   through the parent (no partition of theirs: they land in the DEFAULT partition), the
   detached table dropped;
3. with `--ingest-threads` threads recording single health reports (the service the agent
   API calls, in this process), runs `manage.py migrate monitoring_app` of this tree in a
   child process, sampling pg_stat_activity every 20 ms (who waited on a lock);
4. checks that every stray row is in its day partition and the DEFAULT partition is gone.

The copy is dropped unless `--keep`.
"""

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import admin_connect, command_env, drop_database, setup_django  # noqa: E402
from bench.bench_history_soak import HEALTH, IngestLoad, LockWatch, _device_pks  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="A filled database at migration 0020 (not changed).")
    parser.add_argument("--database", required=True, help="The copy (dropped first!).")
    parser.add_argument("--stray-day", type=datetime.date.fromisoformat, required=True)
    parser.add_argument("--stray-modulo", type=int, default=4, help="One row in this many goes to DEFAULT.")
    parser.add_argument("--ingest-threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def copy_database(source: str, target: str) -> None:
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{target}" TEMPLATE "{source}" STRATEGY FILE_COPY')


def make_strays(day: datetime.date, modulo: int) -> int:
    """Rows of `day` into the DEFAULT partition, as before 0021 with no partition for that day."""
    from django.db import connection

    name = f"{HEALTH}_p{day:%Y%m%d}"
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE {HEALTH} DETACH PARTITION "{name}"')
        cursor.execute(f'INSERT INTO {HEALTH} SELECT * FROM "{name}" WHERE id %% %s = 0', [modulo])  # noqa: S608
        strays = cursor.rowcount
        cursor.execute(f'DROP TABLE "{name}"')
        cursor.execute(f"ANALYZE {HEALTH}_default")
    return strays


def main() -> None:
    args = parse_args()
    copy_database(args.source, args.database)
    setup_django(args.database)
    from django.db import connection, connections

    results: dict = {"stray_day": str(args.stray_day)}
    results["strays"] = make_strays(args.stray_day, args.stray_modulo)
    pks = _device_pks()
    with IngestLoad("health", pks, args.ingest_threads) as before:
        time.sleep(3)
    results["ingest_before"] = before.summary()
    with IngestLoad("health", pks, args.ingest_threads) as during:
        time.sleep(1)
        with LockWatch(0) as watch:
            start = time.perf_counter()
            child = subprocess.run(  # noqa: S603 (manage.py, fixed arguments)
                [sys.executable, str(ROOT / "manage.py"), "migrate", "monitoring_app", "--noinput"],
                cwd=ROOT,
                env=command_env(args.database),
                capture_output=True,
                text=True,
            )
            results["migrate_seconds"] = round(time.perf_counter() - start, 2)
        time.sleep(1)
    results["migrate_output"] = child.stdout[-600:] + child.stderr[-1500:]
    results["ingest_during_migration"] = during.summary()
    results["locks_during_migration"] = watch.summary()
    day_partition = f"{HEALTH}_p{args.stray_day:%Y%m%d}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{HEALTH}_default"])
        results["default_partition_left"] = cursor.fetchone()[0]
        cursor.execute(f'SELECT count(*) FROM "{day_partition}"')  # noqa: S608
        results["rows_in_day_partition"] = cursor.fetchone()[0]
    connections.close_all()
    if not args.keep:
        drop_database(args.database)
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
