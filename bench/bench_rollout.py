#!/usr/bin/env python3
"""What deferral and rollback cost at fleet scale, each against a baseline measured side by
side in the same database (a ratio), repeated.

On a scratch database (default `homepot_bench_rollout`, **dropped and recreated**) with a
fleet of `--devices` (50 per site, `manage.py create_fleet`), two jobs over every device are
created and dispatched in-process (eager Celery): `update_config` (whose completions record
`previous_config` and update `Device.config`) and `restart_pos_app` (whose completions record
nothing). Then, `--rounds` times, alternating:

1. a batch of `--batch` device answers through `services.deliveries_apply_events` (what the
   MQTT bridge applies): deferrals against acknowledgements (the baseline), each on its own
   slice of `sent` deliveries;
2. a batch of `completed` results: on the config job (previous configuration recorded, the
   devices' configuration updated) against the restart job (the baseline);

and once: `services.job_rollback` of the config job once every delivery has completed (one
`INSERT ... SELECT` of each device's previous configuration) against
`services.deliveries_materialise` of a new job over the same devices (the baseline).

Each call is timed inside a transaction, so the work it leaves for after commit (the
dispatch pass it asks for, which a worker runs) is not counted on either side.

    .venv/bin/python bench/bench_rollout.py --devices 20000
    .venv/bin/python bench/bench_rollout.py --devices 100000 --rounds 7 --json bench/rollout.json

PostgreSQL as a superuser via PGHOST/PGPORT/PGUSER, as for the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_create_fleet import (  # noqa: E402
    command_env,
    drop_database,
    machine,
    manage,
    recreate_database,
    setup_django,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_rollout", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--batch", type=int, default=500, help="Answers per batch (the bridge's default).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


def timed(function, *args, **kwargs) -> float:
    """Seconds `function` takes, its after-commit work left out: here (eager Celery) that
    would be the dispatch pass a worker runs later, not part of the bridge's batch or of
    the operator's request. The rollups that follow a batch of answers are included."""
    from django.db import transaction

    with transaction.atomic():
        started = time.perf_counter()
        function(*args, **kwargs)
        seconds = time.perf_counter() - started
    return seconds


def spread(ratios: list[float]) -> dict:
    return {
        "median": round(statistics.median(ratios), 2),
        "min": round(min(ratios), 2),
        "max": round(max(ratios), 2),
        "all": [round(r, 2) for r in ratios],
    }


def measure(args: argparse.Namespace) -> dict:
    from django.db import connection

    from jobs_app import services
    from jobs_app.models import Delivery, Job
    from jobs_app.services.answers import ACK, DEFER, RESULT, DeviceEvent
    from sites_app.models import Site

    sites = list(Site.objects.order_by("pk"))
    config = services.job_create(
        actor=None, site=sites[0], extra_sites=sites[1:], action="update_config", payload={"tax": 0.2}
    )
    restart = services.job_create(actor=None, site=sites[0], extra_sites=sites[1:], action="restart_pos_app")

    def sent(job, count):
        return list(
            Delivery.objects.filter(job=job, status="sent")
            .order_by("id")
            .values_list("pk", "device__device_id")[:count]
        )

    def events(rows, kind, **extra):
        return [DeviceEvent(device, pk, kind, **extra) for pk, device in rows]

    defer_ratios, previous_ratios, raw = [], [], []
    for round_number in range(args.rounds):
        defer_rows, ack_rows = sent(config, args.batch), sent(restart, args.batch)
        deferrals = events(defer_rows, DEFER, delay_seconds=60, reason="bench")
        acks = events(ack_rows, ACK)
        # Alternate which goes first, so a warming cache favours neither side.
        if round_number % 2:
            ack_s = timed(services.deliveries_apply_events, acks)
            defer_s = timed(services.deliveries_apply_events, deferrals)
        else:
            defer_s = timed(services.deliveries_apply_events, deferrals)
            ack_s = timed(services.deliveries_apply_events, acks)
        # The deferred ones go back out, so the next round finds `sent` work again.
        Delivery.objects.filter(job=config, status="pending").update(status="sent", next_attempt_at=None)
        done_config = events(
            sent(config, args.batch), RESULT, outcome="completed", previous_config={"tax": 0.1}
        )
        done_restart = events(sent(restart, args.batch), RESULT, outcome="completed")
        if round_number % 2:
            base_s = timed(services.deliveries_apply_events, done_restart)
            prev_s = timed(services.deliveries_apply_events, done_config)
        else:
            prev_s = timed(services.deliveries_apply_events, done_config)
            base_s = timed(services.deliveries_apply_events, done_restart)
        defer_ratios.append(defer_s / ack_s)
        previous_ratios.append(prev_s / base_s)
        raw.append(
            {
                "defer_ms": defer_s * 1000,
                "ack_ms": ack_s * 1000,
                "result_config_ms": prev_s * 1000,
                "result_restart_ms": base_s * 1000,
            }
        )

    # Every remaining delivery of the config job completes (as its devices would report).
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_app_delivery SET status = 'completed', completed_at = now(), "
            "previous_config = '{\"tax\": 0.1}' WHERE job_id = %s AND status <> 'completed'",
            [config.pk],
        )
    Job.objects.filter(pk=config.pk).update(status="completed")
    Job.objects.filter(pk=restart.pk).update(status="cancelled")
    fresh = Job.objects.create(
        site=sites[0], action="update_config", payload={"tax": 0.3}, status="cancelled", batch_size=2000
    )
    fresh.extra_sites.set(sites[1:])
    materialise_s = timed(services.deliveries_materialise, fresh.pk)
    rollback_s = timed(services.job_rollback, actor=None, job=config)
    rollback = Job.objects.get(rollback_of=config)
    return {
        "devices": Delivery.objects.filter(job=config).count(),
        "batch": args.batch,
        "rounds": args.rounds,
        "defer_vs_ack_batch": spread(defer_ratios),
        "result_with_previous_config_vs_without": spread(previous_ratios),
        "batch_ms_median": {key: round(statistics.median(r[key] for r in raw), 1) for key in raw[0]},
        "rollback_seconds": round(rollback_s, 3),
        "rollback_deliveries": Delivery.objects.filter(job=rollback).count(),
        "materialise_same_size_seconds": round(materialise_s, 3),
        "rollback_vs_materialise": round(rollback_s / materialise_s, 2),
    }


def main() -> None:
    args = parse_args()
    sites = max(1, args.devices // args.devices_per_site)
    env = command_env(args.database)
    recreate_database(args.database)
    try:
        manage(env, "migrate", "--no-input", "-v", "0")
        manage(env, "create_fleet", "--sites", str(sites), "--devices-per-site", str(args.devices_per_site))
        os.environ["CELERY_TASK_ALWAYS_EAGER"] = "true"  # dispatch runs here, on commit
        setup_django(args.database)
        results = {"machine": machine(), **measure(args)}
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            drop_database(args.database)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
