#!/usr/bin/env python3
"""Benchmark what rolling out in waves costs, side by side with the same job without waves.

On a scratch database (default `homepot_bench_waves`; dropped and created) with a fleet of
--devices devices (50 per site, `manage.py create_fleet`), each round creates two jobs over
every site, one plain and one with a canary of --canary devices and waves 1/10/50/100 %,
in alternating order, and times for each:
  - materialise: `deliveries_materialise` (the INSERT ... SELECT; with waves, the window
    functions that assign each device its wave);
  - claim: the dispatcher's claim of one batch (`dispatch._claim_batch`, batch size 2,000,
    FOR UPDATE SKIP LOCKED, rolled back), repeated; for the waved job in its canary and in
    its last (largest) wave;
  - gate: `rollout.wave_numbers` on the largest wave (once per dispatch pass, not per batch);
  - and the plain job once more with the (job, wave, status, id) index dropped: what that
    index, which waves need, costs every job's materialise.
The two jobs' deliveries are deleted after each round (the jobs stay, scheduled). Reported:
medians over the rounds, min-max spread, and the ratios waves / plain.

    .venv/bin/python bench/bench_waves.py [--devices 100000] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_create_fleet import command_env, drop_database, machine, manage, recreate_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = 20
WAVE_INDEX = "jobs_delivery_job_wave"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_waves", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--canary", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def claim_ms(job, wave: int) -> float:
    """Median milliseconds of claiming one batch of `wave` (rolled back each time)."""
    from django.db import transaction

    from jobs_app import dispatch

    times = []
    for _ in range(CLAIMS):
        with transaction.atomic():
            started = time.perf_counter()
            rows = dispatch._claim_batch(job, wave, 0)
            times.append((time.perf_counter() - started) * 1000)
            assert rows, "the claim found nothing to claim"
            transaction.set_rollback(True)
    return statistics.median(times)


def one_round(sites, canary: int, plain_first: bool) -> dict:
    from django.db import connection
    from django.utils import timezone

    from jobs_app import services
    from jobs_app.models import Delivery, Job
    from jobs_app.services import rollout

    def create(waves: bool):
        policy = {"rollout_canary": canary, "rollout_waves": [1, 10, 50, 100]} if waves else {}
        # Scheduled far ahead: job_create enqueues no dispatcher; the bench drives each step.
        return services.job_create(
            actor=None,
            site=sites[0],
            extra_sites=sites[1:],
            action="update_config",
            payload={"tax": 0.2},
            scheduled_at=timezone.now() + datetime.timedelta(days=1),
            **policy,
        )

    out = {}
    for waves in [False, True] if plain_first else [True, False]:
        job = create(waves)
        key = "waves" if waves else "plain"
        out[f"{key}_materialise_s"] = timed(lambda job=job: services.deliveries_materialise(job.pk))
        job.refresh_from_db()
        out[f"{key}_claim_first_wave_ms"] = claim_ms(job, 0)
        if waves:
            last = job.wave_count - 1
            Job.objects.filter(pk=job.pk).update(wave_open=last)
            out["waves_claim_last_wave_ms"] = claim_ms(job, last)
            out["waves_gate_check_ms"] = (
                timed(lambda job=job, last=last: rollout.wave_numbers(job.pk, last)) * 1000
            )
            out["wave_sizes"] = [
                Delivery.objects.filter(job=job, wave=w).count() for w in range(job.wave_count)
            ]
            out["canary_distinct_sites"] = (
                Delivery.objects.filter(job=job, wave=0).values("site_id").distinct().count()
            )
        # The job row stays (its audit rows name it); its 100,000 deliveries go.
        Delivery.objects.filter(job=job)._raw_delete(Delivery.objects.db)
    # What the waves' index costs every job, waves or not: the plain job again without it.
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {WAVE_INDEX}")
    job = create(False)
    out["plain_without_wave_index_materialise_s"] = timed(lambda: services.deliveries_materialise(job.pk))
    Delivery.objects.filter(job=job)._raw_delete(Delivery.objects.db)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX {WAVE_INDEX} ON jobs_app_delivery (job_id, wave, status, id)")
    return out


def summarise(rounds: list[dict]) -> dict:
    summary = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        if isinstance(values[0], (list, int)):
            summary[key] = values[0]
            continue
        summary[key] = {
            "median": round(statistics.median(values), 4),
            "min": round(min(values), 4),
            "max": round(max(values), 4),
        }
    median = {k: v["median"] for k, v in summary.items() if isinstance(v, dict)}
    summary["ratio_materialise_waves_to_plain"] = round(
        median["waves_materialise_s"] / median["plain_materialise_s"], 2
    )
    summary["ratio_claim_canary_to_plain"] = round(
        median["waves_claim_first_wave_ms"] / median["plain_claim_first_wave_ms"], 2
    )
    summary["ratio_claim_last_wave_to_plain"] = round(
        median["waves_claim_last_wave_ms"] / median["plain_claim_first_wave_ms"], 2
    )
    summary["ratio_materialise_plain_with_to_without_wave_index"] = round(
        median["plain_materialise_s"] / median["plain_without_wave_index_materialise_s"], 2
    )
    summary["per_round_ratios_materialise"] = [
        round(r["waves_materialise_s"] / r["plain_materialise_s"], 2) for r in rounds
    ]
    return summary


def main() -> None:
    args = parse_args()
    env = command_env(args.database)
    recreate_database(args.database)
    manage(env, "migrate", "--no-input", "-v", "0")
    sites = max(1, args.devices // args.devices_per_site)
    manage(
        env,
        "create_fleet",
        "--sites",
        str(sites),
        "--devices-per-site",
        str(args.devices_per_site),
        "-v",
        "0",
    )
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection

    from sites_app.models import Site

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    site_rows = list(Site.objects.order_by("pk"))
    rounds = [one_round(site_rows, args.canary, plain_first=n % 2 == 0) for n in range(args.rounds)]
    connection.close()
    result = {
        "machine": machine(),
        "devices": sites * args.devices_per_site,
        "sites": sites,
        "canary": args.canary,
        "waves": [1, 10, 50, 100],
        "rounds": args.rounds,
        **summarise(rounds),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.keep:
        drop_database(args.database)


if __name__ == "__main__":
    main()
