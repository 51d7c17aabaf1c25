"""Reads of the health history as the days kept grow: what each request's history statements
touch, and its time, with or without the DEFAULT partition.

    # on a database the history soak filled (bench_history_soak.py --fill-only), same checkout:
    python bench/bench_history_reads.py --database homepot_soak_bench --days 1 8 --rounds 3
    # the same reads on the DEFAULT-less history (detached for the run, attached again after)
    python bench/bench_history_reads.py --database homepot_soak_bench --days 1 8 --no-default

For each round, each size (the history made to hold exactly that many filled days by
detaching and re-attaching whole days, as the soak does) and each read, one warm-up request
and `--repeat` measured ones through Django's and DRF's test clients: wall time, this
thread's CPU time, the SQL statements, and for every statement that reads a history table,
EXPLAIN (ANALYZE, BUFFERS) of it afterwards: shared buffers touched (the figure the machine's
load does not move), planning and execution time, the partitions it scanned.

The reads: a device's timeline (API), a device's latest check (the health list filtered to
the device, one row: API), the admin health-check list over any date as an admin of the chain,
and as a store manager of one site (100 devices) over any date and by default (past 24 h),
and the store manager's API health list. The device rows must know their last report
(`last_health_at`), as the ingest keeps them: `bench_history_soak.py` sets them after a fill.

Run it from the checkout to measure (a copy of this file in another checkout measures that
checkout's code on the same database). Nothing is written to the history.
Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_admin_health_list import StatementTimer, bench_users, explain  # noqa: E402
from bench.bench_create_fleet import machine, setup_django  # noqa: E402
from bench.bench_history_soak import attach_only, filled_days, history_rows, log  # noqa: E402

HISTORY_TABLES = (
    'FROM "monitoring_app_healthcheck"',
    'FROM "monitoring_app_devicestatuschange"',
    "FROM monitoring_app_healthcheckoffday",  # the off-day record the API's proof reads (latest3)
)
READS = (
    "device_timeline",
    "device_latest_api",
    "admin_list_any_date",
    "manager_list_any_date",
    "manager_list_default",
    "manager_api_list",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="Measured requests per read, size and round.")
    parser.add_argument("--reads", nargs="+", default=list(READS), choices=READS)
    parser.add_argument("--no-default", action="store_true", help="Detach the DEFAULT partition for the run.")
    parser.add_argument("--label", default="", help="A name for this run in the output (e.g. before/after).")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--today-reports",
        type=int,
        default=0,
        help="First write this many reports checked in the past minutes for every device the run "
        "will read (through the ingest's batch path), as a fleet reporting every 2 minutes has: "
        "today's window then holds a device's latest check. Writes to the history.",
    )
    return parser.parse_args()


def default_partition(attached: bool) -> None:
    """Detach or re-attach the health history's DEFAULT partition, on a database that still has
    one (it must be empty to detach it safely: nothing here writes)."""
    from django.db import connection

    from monitoring_app import partitions

    name = partitions.HEALTH.default_partition
    present = any(p.lower is None for p in partitions.partitions(partitions.HEALTH))
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        (exists,) = cursor.fetchone()
        # Since monitoring_app 0021 the history has none: there is nothing to re-attach.
        if attached and not present and exists:
            cursor.execute(f'ALTER TABLE {partitions.HEALTH.table} ATTACH PARTITION "{name}" DEFAULT')
        elif not attached and present:
            cursor.execute(f'SELECT count(*) FROM "{name}"')  # noqa: S608 (fixed name)
            if cursor.fetchone()[0]:
                raise SystemExit(f"{name} holds rows: not detaching it")
            cursor.execute(f'ALTER TABLE {partitions.HEALTH.table} DETACH PARTITION "{name}"')


def urls(read: str, device_ids: list[str], rng: random.Random) -> str:
    device = rng.choice(device_ids)
    return {
        "device_timeline": f"/api/v1/fleet/devices/{device}/timeline",
        "device_latest_api": f"/api/v1/health-checks?device={device}&page_size=1",
        "admin_list_any_date": "/admin/monitoring_app/healthcheck/?window=all",
        "manager_list_any_date": "/admin/monitoring_app/healthcheck/?window=all",
        "manager_list_default": "/admin/monitoring_app/healthcheck/",
        "manager_api_list": "/api/v1/health-checks",
    }[read]


def measure(get, url: str) -> dict:
    from django.db import connection

    timer = StatementTimer()
    with connection.execute_wrapper(timer):
        start, start_cpu = time.perf_counter(), time.thread_time()
        response = get(url)
        wall = (time.perf_counter() - start) * 1000
        cpu = (time.thread_time() - start_cpu) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.content[:300]!r}")
    history = [sql for sql, _ in timer.statements if any(t in sql for t in HISTORY_TABLES)]
    explained = [explain(sql) for sql in history if sql.lstrip(" \n(").upper().startswith("SELECT")]
    return {
        "wall_ms": round(wall, 1),
        "cpu_ms": round(cpu, 1),
        "statements": len(timer.statements),
        "history_statements": len(history),
        "buffers": sum(e["buffers"] for e in explained),
        "scans": sum(e["partitions_scanned"] for e in explained),
        "sql_ms": round(sum(e["planning_ms"] + e["execution_ms"] for e in explained), 2),
    }


def run(args) -> dict:
    from django.conf import settings
    from django.test import Client
    from rest_framework.test import APIClient

    from devices_app.models import Device

    settings.DEBUG = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "testserver"]
    admin, manager = bench_users()
    browsers = {"admin": Client(), "manager": Client()}
    browsers["admin"].force_login(admin)
    browsers["manager"].force_login(manager)
    apis = {"admin": APIClient(), "manager": APIClient()}
    apis["admin"].force_authenticate(admin)
    apis["manager"].force_authenticate(manager)
    device_ids = list(Device.objects.order_by("pk").values_list("device_id", flat=True))

    def getter(read):
        who = "manager" if read.startswith("manager") else "admin"
        client = apis[who] if "api" in read or read.startswith("device") else browsers[who]
        return lambda url: client.get(url, HTTP_HOST="localhost")

    filled = filled_days()
    if args.today_reports:
        report_today(args, device_ids)
    default_partition(attached=not args.no_default)
    results = []
    try:
        for round_number in range(args.rounds):
            for days in args.days:
                attach_only(days, filled)
                rows = history_rows()
                for read in args.reads:
                    rng = random.Random(round_number * 100)  # the same devices at every size, before or after
                    get = getter(read)
                    get(urls(read, device_ids, rng))  # warm-up: session, plan cache, the pages read
                    for _ in range(args.repeat):
                        measured = measure(get, urls(read, device_ids, rng))
                        measured.update(round=round_number + 1, days=days, health_rows=rows, read=read)
                        results.append(measured)
                    log(f"round {round_number + 1}, {days} days, {read}: {results[-1]}")
    finally:
        attach_only(max(args.days), filled)
        default_partition(attached=True)
    return {
        "label": args.label,
        "no_default": args.no_default,
        "reads": results,
        "summary": summarize(results),
    }


def report_today(args, device_ids: list[str]) -> None:
    """`--today-reports` reports for each device the rounds will pick (the same choices as
    `urls` makes), written by ingest.health_reports_store, checked 1, 2, ... minutes ago."""
    import datetime

    from django.db import transaction
    from django.utils import timezone

    from devices_app.models import Device
    from monitoring_app.ingest import HealthReport, health_reports_store

    picked = set()
    for round_number in range(args.rounds):
        rng = random.Random(round_number * 100)
        picked.update(rng.choice(device_ids) for _ in range(args.repeat + 1))
    pks = list(Device.objects.filter(device_id__in=picked).values_list("pk", flat=True))
    now = timezone.now()
    reports = [
        (pk, now, HealthReport(status="healthy", checked_at=now - datetime.timedelta(minutes=n + 1)))
        for n in reversed(range(args.today_reports))
        for pk in pks
    ]
    with transaction.atomic():
        health_reports_store(device_reports=reports)
    log(f"wrote {len(reports)} reports of today for {len(pks)} devices")


def summarize(results: list[dict]) -> dict:
    """Per read and size: the medians over every round and request."""
    summary: dict = {}
    for entry in results:
        slot = summary.setdefault(f"{entry['read']} @ {entry['days']} days", {})
        for key in ("wall_ms", "cpu_ms", "statements", "history_statements", "buffers", "scans", "sql_ms"):
            slot.setdefault(key, []).append(entry[key])
    return {
        name: {key: statistics.median(values) for key, values in slot.items()} | {"n": len(slot["wall_ms"])}
        for name, slot in summary.items()
    }


def main() -> None:
    args = parse_args()
    setup_django(args.database)
    results = run(args)
    results["machine"] = machine()
    print(json.dumps(results["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
