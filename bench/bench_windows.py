#!/usr/bin/env python3
"""What keeping to maintenance windows costs the dispatcher, side by side with a job that does not.

Builds a scratch fleet (default 100,000 devices in 2,000 sites, `homepot_bench_windows`, **dropped
and recreated**), spreads the sites over 20 time zones, and gives every site a realistic week:
seven windows (one per day) and two blackout periods ahead, so the windows table holds 14,000 rows
and the blackouts 4,000. Then, in this process (the code a worker runs, `dispatch_pass`):

1. `open`: today's window of every site is laid around the site's local now, so every site is
   open; for `--rounds` rounds, one job WITHOUT windows and one WITH windows over every site are
   each materialised and dispatched (alternating which goes first), timing the pass (every batch:
   claim, push, mark sent), the claim statement alone (EXPLAIN ANALYZE, best of 3, with the
   dispatcher's filter) and, for the windowed job, the open-sites statement a pass reads at its
   first batch and every HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS;
2. `half`: today's window of the sites in 10 of the 20 zones moves 6 hours later, so half the
   fleet waits; one windowed job is dispatched (only the open half is sent) and the next-opening
   question the dispatcher asks after the pass (`deliveries_next_offer_at`) and the job page's
   waiting-sites list (`sites_waiting`) are timed.

Usage (PostgreSQL reachable as a superuser via PGHOST/PGPORT/PGUSER):
    .venv/bin/python bench/bench_windows.py
    .venv/bin/python bench/bench_windows.py --sites 2000 --devices-per-site 50 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_create_fleet import command_env, drop_database, machine, manage, recreate_database, setup_django  # noqa: E402

ZONES = [
    "America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
    "America/Anchorage", "Pacific/Honolulu", "America/Sao_Paulo", "Europe/London", "Europe/Paris",
    "Europe/Berlin", "Europe/Madrid", "Europe/Athens", "Africa/Johannesburg", "Asia/Dubai",
    "Asia/Kolkata", "Asia/Singapore", "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland",
]  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_windows", help="Scratch database (dropped!).")
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def build(args) -> None:
    env = command_env(args.database)
    recreate_database(args.database)
    manage(env, "migrate", "--no-input", "-v", "0")
    manage(
        env,
        "create_fleet",
        "--sites",
        str(args.sites),
        "--devices-per-site",
        str(args.devices_per_site),
        "-v",
        "0",
    )


def lay_windows(shift_zones: int = 0, shift_hours: int = 6) -> None:
    """Seven windows a site: today's around its local now (shifted `shift_hours` later in the
    first `shift_zones` zones, so those are closed), 02:00-05:00 on the other six days; and two
    blackouts in the coming months. Set-based, as an operator's import would be."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM sites_app_maintenancewindow")
        cursor.execute("DELETE FROM sites_app_blackoutperiod")
        cursor.execute(
            """
            WITH s AS (
                SELECT id, timezone, now() AT TIME ZONE timezone AS lt,
                       array_position(%s::text[], timezone) <= %s AS shifted
                  FROM sites_app_site)
            INSERT INTO sites_app_maintenancewindow (site_id, weekday, starts, ends)
            SELECT s.id, d,
                   CASE WHEN d = EXTRACT(ISODOW FROM s.lt)
                        THEN CASE WHEN s.shifted THEN (s.lt + (%s - 1) * interval '1 hour')::time
                                  ELSE greatest(s.lt - interval '1 hour', s.lt::date)::time END
                        ELSE time '02:00' END,
                   CASE WHEN d = EXTRACT(ISODOW FROM s.lt)
                        THEN (s.lt + interval '2 hours' + CASE WHEN s.shifted THEN %s * interval '1 hour'
                              ELSE interval '0' END)::time
                        ELSE time '05:00' END
              FROM s, generate_series(1, 7) d
            """,
            [ZONES, shift_zones, shift_hours, shift_hours],
        )
        cursor.execute(
            """
            INSERT INTO sites_app_blackoutperiod (site_id, starts_on, ends_on, reason)
            SELECT id, current_date + k * 30, current_date + k * 30 + 2, 'peak'
              FROM sites_app_site, generate_series(1, 2) k
            """
        )
        cursor.execute(
            "ANALYZE sites_app_maintenancewindow; ANALYZE sites_app_blackoutperiod; ANALYZE sites_app_site"
        )


def new_job(windows: bool):
    from jobs_app import services
    from jobs_app.models import Job
    from sites_app.models import Site

    sites = list(Site.objects.order_by("pk"))
    # Created directly (no dispatcher enqueued): the pass below is the one measured.
    job = Job.objects.create(site=sites[0], action="update_config", within_maintenance_windows=windows)
    job.extra_sites.set(sites[1:])
    services.deliveries_materialise(job.pk)
    return job


def claim_ms(job) -> float:
    from django.db.models import Q
    from django.utils import timezone

    from jobs_app import services
    from jobs_app.choices import DeliveryStatus
    from jobs_app.models import Delivery

    query = (
        Delivery.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(job_id=job.pk, status=DeliveryStatus.PENDING, id__gt=0)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
        .filter(services.WindowGate(job).claim_filter())  # the dispatcher's filter
        .order_by("id")
        .values(
            "id", "site_id", "attempts", "deadline", "created_at", "device__device_id", "device__push_channel"
        )[: job.batch_size]
    )
    from django.db import transaction

    times = []
    for _ in range(3):
        with transaction.atomic():
            plan = query.explain(analyze=True)
        times.append(float(re.search(r"Execution Time: ([\d.]+) ms", plan).group(1)))
    return min(times)


def open_sites_ms() -> float:
    """The set-based open-sites statement alone (what a pass reads every few seconds)."""
    from django.db import connection

    from sites_app import windows

    sql, params = windows.open_sites_sql()
    with connection.cursor() as cursor:
        times = []
        for _ in range(3):
            cursor.execute("EXPLAIN ANALYZE " + sql, params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            times.append(float(re.search(r"Execution Time: ([\d.]+) ms", plan).group(1)))
    return min(times)


def timed_pass(job) -> dict:
    from jobs_app import dispatch

    claim = claim_ms(job)
    started = time.perf_counter()
    result = dispatch.dispatch_pass(job.pk)
    seconds = time.perf_counter() - started
    return {
        "sent": result.sent,
        "batches": result.batches,
        "pass_seconds": round(seconds, 3),
        "ms_per_batch": round(1000 * seconds / max(result.batches, 1), 1),
        "claim_ms": round(claim, 2),
        **({"open_sites_statement_ms": round(open_sites_ms(), 2)} if job.within_maintenance_windows else {}),
    }


def spread(values) -> dict:
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


def main() -> None:
    args = parse_args()
    build(args)
    setup_django(args.database)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("UPDATE sites_app_site SET timezone = (%s::text[])[1 + (id %% 20)]", [ZONES])
    lay_windows()
    rounds = []
    for index in range(args.rounds):
        order = [False, True] if index % 2 == 0 else [True, False]
        measured = {}
        for windows in order:
            measured["with_windows" if windows else "without"] = timed_pass(new_job(windows))
        rounds.append(measured)
        print(json.dumps({"round": index + 1, **measured}), flush=True)

    lay_windows(shift_zones=10)
    from jobs_app import services

    job = new_job(True)
    half = timed_pass(job)
    started = time.perf_counter()
    next_offer = services.deliveries_next_offer_at(job)
    next_offer_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    waiting = services.sites_waiting(job, limit=50)
    waiting_ms = (time.perf_counter() - started) * 1000
    half.update(
        next_offer_at=next_offer.isoformat() if next_offer else None,
        next_offer_ms=round(next_offer_ms, 1),
        sites_waiting_ms=round(waiting_ms, 1),
        sites_waiting_listed=len(waiting),
    )
    print(json.dumps({"half_closed": half}), flush=True)

    ratios_batch = [r["with_windows"]["ms_per_batch"] / r["without"]["ms_per_batch"] for r in rounds]
    ratios_claim = [r["with_windows"]["claim_ms"] / r["without"]["claim_ms"] for r in rounds]
    summary = {
        "sites": args.sites,
        "devices": args.sites * args.devices_per_site,
        "zones": len(ZONES),
        "ms_per_batch_without": spread([r["without"]["ms_per_batch"] for r in rounds]),
        "ms_per_batch_with_windows": spread([r["with_windows"]["ms_per_batch"] for r in rounds]),
        "ratio_per_batch": spread([round(x, 3) for x in ratios_batch]),
        "claim_ms_without": spread([r["without"]["claim_ms"] for r in rounds]),
        "claim_ms_with_windows": spread([r["with_windows"]["claim_ms"] for r in rounds]),
        "ratio_claim": spread([round(x, 3) for x in ratios_claim]),
        "half_closed": half,
        "machine": machine(),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, **summary}, indent=2))
    connection.close()
    if not args.keep:
        drop_database(args.database)


if __name__ == "__main__":
    main()
