"""What the fleet gauges of /metrics cost at fleet size: the devices-by-status and
open-alerts-by-kind counts each monitoring tick takes (monitoring_app.tasks._export_counts),
beside the rest of the tick, on the same database in the same run.

    python bench/bench_fleet_gauges.py                   # 1,000,000 devices (20,000 sites of 50)
    python bench/bench_fleet_gauges.py --devices 100000 --keep

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_gauges; DROPPED),
     migrates it and runs `manage.py create_fleet` as an operator would;
  2. gives the devices the statuses of a working chain (mostly online, some offline, error,
     maintenance, never seen) and VACUUM ANALYZEs the table, as autovacuum would have;
  3. times, in-process, --repeat times each, alternating: the count the tick exports
     (`_export_counts`), the whole steady-state tick (`monitoring_tick`: flush, sweep, alerts,
     snapshot, counts) counting at every tick (HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS=0, as
     before), and the tick as shipped (300: one tick per 5 minutes counts, the others skip);
     prints min / median / max, the ratios, and the plan of the GROUP BY.

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import command_env, drop_database, machine, manage, recreate_database  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_gauges", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--reuse", action="store_true", help="Use the kept database as it is.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


def create(args: argparse.Namespace) -> float:
    recreate_database(args.database)
    env = command_env(args.database)
    manage(env, "migrate", "--noinput")
    start = time.perf_counter()
    sites = max(1, args.devices // args.devices_per_site)
    manage(env, "create_fleet", "--sites", str(sites), "--devices-per-site", str(args.devices_per_site))
    return time.perf_counter() - start


def prepare() -> None:
    """A working chain: 1 device in 50 offline, 1 in 200 in error, 1 in 500 in maintenance,
    1 in 1,000 never seen; the rest online and seen just now (the sweep has nothing to do)."""
    from django.db import connection
    from django.utils import timezone

    from monitoring_app.models import MonitoringState

    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE devices_app_device SET last_seen = %(now)s, connectivity_changed_at = NULL,
                   status = CASE WHEN id %% 1000 = 0 THEN 'unknown' WHEN id %% 500 = 0 THEN 'maintenance'
                                 WHEN id %% 200 = 0 THEN 'error' WHEN id %% 50 = 0 THEN 'offline'
                                 ELSE 'online' END""",
            {"now": now},
        )
        cursor.execute("VACUUM ANALYZE devices_app_device")
    MonitoringState.objects.update_or_create(pk=1, defaults={"last_sweep_at": now, "resumed_at": now})


def summary(samples: list[float]) -> dict:
    return {
        "min": round(min(samples), 1),
        "median": round(statistics.median(samples), 1),
        "max": round(max(samples), 1),
    }


def measure(args: argparse.Namespace) -> dict:
    from django.conf import settings
    from django.db import connection

    from homepot import metrics
    from homepot.redis_clients import redis_client
    from monitoring_app import tasks

    prepare()
    claim = redis_client(settings.REDIS_URL, 1.0)
    claim_key = f"homepot:metrics:device-count:{connection.settings_dict['NAME']}"
    claim.delete(claim_key)
    tasks.monitoring_tick()  # the bucket's snapshot is taken once; later ticks skip it
    counts, every, gated = [], [], []
    for _ in range(args.repeat):
        settings.HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS = 0  # the count at every tick (before)
        start = time.perf_counter()
        tasks._export_counts()
        counts.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        tasks.monitoring_tick()
        every.append((time.perf_counter() - start) * 1000)
        settings.HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS = 300  # once per period (after)
        start = time.perf_counter()
        tasks.monitoring_tick()
        gated.append((time.perf_counter() - start) * 1000)
    claim.delete(claim_key)
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT status, count(id) FROM devices_app_device GROUP BY status"
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    exported = {
        status: metrics.devices.labels(status=status)._value.get()
        for status in ("online", "offline", "error", "maintenance", "unknown")
    }
    return {
        "export_counts_ms": summary(counts),
        "tick_counting_every_tick_ms": summary(every),
        "tick_counting_once_per_300s_ms": summary(gated),
        "count_share_of_tick": round(statistics.median(counts) / statistics.median(every), 3),
        "gated_over_every_tick": round(statistics.median(gated) / statistics.median(every), 3),
        "exported": exported,
        "plan": plan,
    }


def main() -> None:
    args = parse_args()
    created_s = None if args.reuse else create(args)
    os.environ.update(command_env(args.database))
    os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
    import django

    django.setup()
    try:
        results = {
            "devices": args.devices,
            "create_fleet_s": created_s,
            **measure(args),
            "machine": machine(),
        }
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)
    plan = results.pop("plan")
    print(json.dumps(results, indent=2))
    print(plan)
    if args.json:
        args.json.write_text(json.dumps({**results, "plan": plan}, indent=2))


if __name__ == "__main__":
    main()
