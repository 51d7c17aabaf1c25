#!/usr/bin/env python3
"""Benchmark the fan-out of one job to a whole fleet on PostgreSQL.

For each size (default 10,000 and 100,000 devices, 50 per site) the script
  1. drops and creates a scratch database (default `homepot_bench_fanout`; its contents are
     destroyed) and migrates it, then runs `manage.py create_fleet`;
  2. in a child process (the "worker"), creates one job targeting every site through
     `jobs_app.services.job_create` and runs the dispatcher (`jobs_app.dispatch.dispatch_pass`,
     what the `dispatch_job` Celery task runs) until every delivery is `sent`, recording the
     time from creation to the last `sent`, the queries per batch and the child's peak memory;
  3. in the same database, times the raw SQL cost of the same rows: one
     `INSERT ... SELECT` of a delivery per device for another job, and the ratio.

Usage (from the project root, PostgreSQL reachable as a superuser via PGHOST/PGPORT/PGUSER):
    .venv/bin/python bench/bench_fanout.py
    .venv/bin/python bench/bench_fanout.py --sizes 100000 --batch-size 1000 --json bench/fanout.json
    .venv/bin/python bench/bench_fanout.py --round-trip 500 [--channel mqtt]
Results go to stdout; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_create_fleet import command_env, drop_database, machine, manage, recreate_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_fanout", help="Scratch database (dropped!).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="Devices per run.")
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument(
        "--batch-size", type=int, default=2000, help="The job's rollout batch size (the default's)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    parser.add_argument(
        "--round-trip",
        type=int,
        default=0,
        metavar="N",
        help="Instead: N simulated terminals (simulate_fleet, see --channel) answer one job; "
        "time until `completed` and acknowledgements per second.",
    )
    parser.add_argument(
        "--channel",
        choices=["poll", "mqtt"],
        default="poll",
        help="With --round-trip: terminals polling over HTTP (gunicorn) or answering over MQTT "
        "(the local broker, with `manage.py mqtt_bridge`).",
    )
    parser.add_argument(
        "--bridges",
        type=int,
        default=1,
        help="With --channel mqtt: how many `mqtt_bridge` processes share the events.",
    )
    parser.add_argument("--port", type=int, default=8799, help="Port of the web server for --round-trip.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


# --- the worker side (a child process, so its peak memory is its own) ---------------------------


def child(batch_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")
    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs_app import services
    from jobs_app.models import Delivery
    from sites_app.models import Site

    sites = list(Site.objects.order_by("pk"))
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        # CELERY_TASK_ALWAYS_EAGER (set by the parent): the `dispatch_job` task runs here on
        # commit, the code a worker runs; nothing reaches a broker.
        job = services.job_create(
            actor=None, site=sites[0], extra_sites=sites[1:], action="update_config", batch_size=batch_size
        )
    finished = time.perf_counter()
    sent = Delivery.objects.filter(job=job, status="sent").count()
    batches = math.ceil(sent / batch_size)
    materialise = [
        q for q in queries.captured_queries if q["sql"].startswith("INSERT INTO jobs_app_delivery")
    ]
    print(
        json.dumps(
            {
                "job": job.pk,
                "deliveries_sent": sent,
                "batches": batches,
                "seconds_until_all_sent": round(finished - started, 3),
                "queries_total": len(queries.captured_queries),
                "queries_per_batch": round(len(queries.captured_queries) / max(batches, 1), 2),
                "materialise_ms": round(float(materialise[0]["time"]) * 1000, 1) if materialise else None,
            }
        )
    )


# --- the raw SQL comparison ----------------------------------------------------------------------


def raw_insert_select(env: dict[str, str]) -> float:
    import psycopg

    with psycopg.connect(
        env["DATABASE_URL"].replace("postgres://", "postgresql://"), autocommit=True
    ) as conn:
        job_id = conn.execute(
            "INSERT INTO jobs_app_job (site_id, action, description, payload, priority, status, created_at, "
            "updated_at, segment, batch_size, status_reason) SELECT min(id), 'update_config', 'raw', '{}', "
            "'normal', 'cancelled', now(), now(), '{}', 500, '' FROM sites_app_site RETURNING id"
        ).fetchone()[0]
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(
                "INSERT INTO jobs_app_delivery (job_id, device_id, site_id, status, attempts, last_error, "
                "created_at) SELECT %s, id, site_id, 'sent', 1, '', now() FROM devices_app_device",
                [job_id],
            )
        return time.perf_counter() - started


def run(args: argparse.Namespace, size: int) -> dict:
    sites = max(1, size // args.devices_per_site)
    env = command_env(args.database)
    recreate_database(args.database)
    manage(env, "migrate", "--no-input", "-v", "0")
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
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(  # noqa: S603 (this script, fixed arguments)
            [sys.executable, __file__, "--child", "--batch-size", str(args.batch_size)],
            cwd=ROOT,
            env={**env, "CELERY_TASK_ALWAYS_EAGER": "true"},
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(process.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(err.read()[-3000:])
        measured = json.loads(out.read().strip().splitlines()[-1])
    raw = raw_insert_select(env)
    return {
        "devices": sites * args.devices_per_site,
        "batch_size": args.batch_size,
        **measured,
        "peak_worker_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "raw_insert_select_seconds": round(raw, 3),
        "ratio_to_raw_sql": round(measured["seconds_until_all_sent"] / raw, 1),
    }


def _start(env, *command, reads_banner=True) -> subprocess.Popen:
    """A manage.py command in the background; waits for its first line (it is ready)."""
    process = subprocess.Popen(  # noqa: S603 (fixed arguments)
        [sys.executable, str(ROOT / "manage.py"), *command],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},  # the banner arrives when written
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    if reads_banner:
        process.stdout.readline()
    return process


def round_trip(args: argparse.Namespace) -> dict:
    """One job to N terminals played by `simulate_fleet`: polling gunicorn over HTTP, or
    answering over MQTT through `mqtt_bridge`."""
    import psycopg

    size = args.round_trip
    env = command_env(args.database)
    recreate_database(args.database)
    manage(env, "migrate", "--no-input", "-v", "0")
    sites = max(1, size // args.devices_per_site)
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
    url = env["DATABASE_URL"].replace("postgres://", "postgresql://")
    devices = sites * args.devices_per_site
    if args.channel == "mqtt":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE devices_app_device SET push_channel = 'mqtt'")
        # The bridges (one, as `run.sh` starts it, or several on one shared subscription
        # group of the bench's own) and the MQTT terminals.
        group = f"bench-{os.getpid()}"
        bridges = [
            _start(env, "mqtt_bridge", f"--group={group}", f"--client-id={group}-{n}", "--session-seconds=0")
            for n in range(args.bridges)
        ]
        fleet = _start(
            env, "simulate_fleet", "--channel", "mqtt", "--devices", str(devices), "--work-seconds", "0"
        )
        time.sleep(2)  # let the broker acknowledge every subscription
    else:
        web = subprocess.Popen(  # noqa: S603 (fixed arguments)
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "homepot.wsgi",
                "-w",
                "3",
                "-b",
                f"127.0.0.1:{args.port}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base_url = f"http://127.0.0.1:{args.port}"
        # "Simulating N terminals": credentials issued, polling starts.
        fleet = _start(
            env,
            *("simulate_fleet", "--devices", str(devices), "--base-url", base_url),
            *("--poll-interval", "1", "--work-seconds", "0"),
        )
    try:
        started = time.perf_counter()
        out = subprocess.run(  # noqa: S603 (this script, fixed arguments)
            [sys.executable, __file__, "--child", "--batch-size", str(args.batch_size)],
            cwd=ROOT,
            env={**env, "CELERY_TASK_ALWAYS_EAGER": "true"},
            capture_output=True,
            text=True,
            check=True,
        )
        job = json.loads(out.stdout.strip().splitlines()[-1])["job"]
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                status = conn.execute("SELECT status FROM jobs_app_job WHERE id = %s", [job]).fetchone()[0]
                if status in ("completed", "failed", "paused", "cancelled"):
                    break
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
    finally:
        servers = [fleet, *bridges] if args.channel == "mqtt" else [fleet, web]
        for process in servers:
            process.terminate()
        for process in servers:
            process.wait(timeout=30)
    return {
        "devices": devices,
        "channel": args.channel,
        "bridges": args.bridges if args.channel == "mqtt" else None,
        "final_status": status,
        "seconds_until_completed": round(elapsed, 2),
        "acknowledgements_per_second": round(devices / elapsed, 1),
        # HTTP: ack + result requests; MQTT: ack + result events through the bridge.
        "device_reports_per_second": round(devices * 2 / elapsed, 1),
    }


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.batch_size)
        return
    if args.round_trip:
        try:
            print(json.dumps(round_trip(args), indent=2))
        finally:
            if not args.keep:
                drop_database(args.database)
        return
    results = {"machine": machine(), "runs": []}
    try:
        for size in args.sizes:
            run_result = run(args, size)
            results["runs"].append(run_result)
            print(json.dumps(run_result, indent=2), flush=True)
    finally:
        if not args.keep:
            drop_database(args.database)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
