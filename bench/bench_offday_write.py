"""What the off-day record's trigger (monitoring_app.offday) costs the ingest's writes.

    python bench/bench_offday_write.py --database homepot_latest3_soak --rounds 4 --batches 200

The same writes with the trigger and without it (dropped for the run's "off" turns and put
back, in alternation, `--rounds` times), in one process through the ingest's own functions:

  - `batch`: batches of 50 reports of one device checked in the past minute (the batch API's
    and the drain's path: ingest.health_reports_store in a transaction: one multi-row INSERT
    and one set-based UPDATE of the device), each batch another device;
  - `single`: one report a statement (ingest.health_reports_record, no buffer: the INSERT
    and the device UPDATE in one statement, autocommit);
  - `late`: the same batches checked yesterday (written now: every row off its day, so every
    row fires the trigger and is recorded).

Per kind and turn: reports per second, and CPU per report of this process and of its
PostgreSQL backend (from /proc: the figures the machine's load moves least). The history is
written to (today's and yesterday's partitions) and the record rows stay; the trigger is
installed again at the end whatever happens (its start moves to the last id, as a migration's
would: rows written while it was off are not recorded).
Connection: PGHOST/PGPORT/PGUSER (defaults: 127.0.0.1, 5432, postgres).
"""

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import machine, setup_django  # noqa: E402
from bench.harness import cpu_seconds  # noqa: E402

BATCH = 50


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=200, help="Batches of 50 per kind and turn.")
    parser.add_argument("--singles", type=int, default=1000, help="Single reports per turn.")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def trigger(on: bool) -> None:
    from django.db import connection, transaction

    from monitoring_app import offday

    with transaction.atomic(), connection.cursor() as cursor:
        if on:
            # As the migration does: rows written while it was off are older than its start.
            offday.offday_trigger_install(cursor)
        else:
            cursor.execute(f"DROP TRIGGER IF EXISTS {offday.TRIGGER} ON {offday.HEALTH_TABLE}")


def backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def turn(kind: str, args, device_pks: list[int], offset: int) -> dict:
    from django.db import transaction
    from django.utils import timezone

    from monitoring_app.ingest import HealthReport, health_reports_record, health_reports_store

    pid = backend_pid()
    now = timezone.now()
    count = args.singles if kind == "single" else args.batches * BATCH
    checked = now - (datetime.timedelta(days=1) if kind == "late" else datetime.timedelta(seconds=60))
    start, cpu, db_cpu = time.perf_counter(), time.process_time(), cpu_seconds(pid)
    if kind == "single":
        for n in range(count):
            pk = device_pks[(offset + n) % len(device_pks)]
            health_reports_record(device_reports=[(pk, HealthReport(status="healthy", checked_at=checked))])
    else:
        for b in range(args.batches):
            pk = device_pks[(offset + b) % len(device_pks)]
            reports = [
                (pk, now, HealthReport(status="healthy", checked_at=checked + datetime.timedelta(seconds=i)))
                for i in range(BATCH)
            ]
            with transaction.atomic():
                health_reports_store(device_reports=reports)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    db_cpu = cpu_seconds(pid) - db_cpu
    return {
        "kind": kind,
        "reports": count,
        "per_s": round(count / wall),
        "python_us": round(cpu / count * 1e6, 1),
        "db_us": round(db_cpu / count * 1e6, 1),
    }


def main() -> None:
    args = parse_args()
    setup_django(args.database)
    from devices_app.models import Device
    from monitoring_app.models import HealthCheckOffDay

    device_pks = list(Device.objects.order_by("pk").values_list("pk", flat=True)[:20_000])
    results, offset = [], 0
    try:
        for round_number in range(args.rounds):
            # The order of on and off alternates by round, so neither always runs first.
            for on in (True, False) if round_number % 2 == 0 else (False, True):
                trigger(on)
                for kind in ("batch", "single", "late"):
                    records = HealthCheckOffDay.objects.count()
                    measured = turn(kind, args, device_pks, offset)
                    offset += args.batches if kind != "single" else measured["reports"]
                    measured.update(
                        round=round_number + 1,
                        trigger=on,
                        recorded=HealthCheckOffDay.objects.count() - records,
                    )
                    results.append(measured)
                    print(json.dumps(measured), flush=True)
    finally:
        trigger(True)
    summary = {}
    for kind in ("batch", "single", "late"):
        for on in (True, False):
            rows = [r for r in results if r["kind"] == kind and r["trigger"] == on]
            summary[f"{kind} trigger {'on' if on else 'off'}"] = {
                key: statistics.median(r[key] for r in rows) for key in ("per_s", "python_us", "db_us")
            }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "results": results, "summary": summary}, indent=1)
        )


if __name__ == "__main__":
    main()
