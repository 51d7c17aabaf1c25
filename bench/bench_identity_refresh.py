"""What the identities' refresh costs at fleet size (devices_app.services.device_identities_refresh).

    python bench/bench_identity_refresh.py                        # 100,000 devices, 5 runs
    python bench/bench_identity_refresh.py --reuse --rounds 7 --json refresh.json

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_refresh; DROPPED unless
     `--reuse`), migrates it, runs `manage.py create_fleet --sites N --devices-per-site 50
     --site-prefix bench` and gives every device a credential (as bench_ingest.py does);
     every device is then online and last seen 60 s ago (all in use: the refresh's worst case);
  2. starts a Redis of its own (`--redis-port`, no persistence), so its CPU is the refresh's;
  3. runs the refresh `--rounds` times (the first on an empty Redis), each measured as the
     beat's worker would run it: wall time, this process's CPU (the worker's), the CPU of its
     PostgreSQL backend and of the Redis server (from /proc), entries written per second, and
     PostgreSQL's shared buffers read (pg_stat_database);
  4. for comparison, the other way to find what to refresh: SCAN Redis for the credential
     entries, PTTL each (pipelined), and read the credentials of those about to expire from
     PostgreSQL by hash (`key_hash = ANY(...)`), without writing: what discovery alone costs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import cpu_seconds, start_redis  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_refresh", help="Scratch database (dropped!).")
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--redis-port", type=int, default=6410)
    parser.add_argument("--reuse", action="store_true", help="Keep and reuse an existing database.")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def _start_redis(port: int) -> subprocess.Popen:
    return start_redis(port, "--save", "", "--appendonly", "no", purpose="refresh")


def _backend():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _blocks():
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT blks_hit + blks_read, blks_read FROM pg_stat_database WHERE datname = current_database()"
        )
        return cursor.fetchone()


def measure(run, redis_pid: int) -> dict:
    backend = _backend()
    blocks_before = _blocks()
    cpu_before, pg_before, redis_before = time.process_time(), cpu_seconds(backend), cpu_seconds(redis_pid)
    start = time.perf_counter()
    outcome = run()
    wall = time.perf_counter() - start
    cpu, pg, rd = (
        time.process_time() - cpu_before,
        cpu_seconds(backend) - pg_before,
        cpu_seconds(redis_pid) - redis_before,
    )
    time.sleep(1.1)  # the backend reports its block counts at most every second
    blocks_after = _blocks()
    written = outcome.get("written", 0)
    return {
        **outcome,
        "wall_s": round(wall, 3),
        "worker_cpu_s": round(cpu, 3),
        "postgres_cpu_s": round(pg, 3),
        "redis_cpu_s": round(rd, 3),
        "entries_per_s": round(written / wall) if written else None,
        "shared_blocks": blocks_after[0] - blocks_before[0],
        "blocks_read_from_disk": blocks_after[1] - blocks_before[1],
    }


def discovery_by_scan(batch: int) -> dict:
    """The alternative: find the entries about to expire in Redis, then read them by hash."""
    from django.conf import settings
    from django.db import connection

    from devices_app import identity_store

    client = identity_store.refresh_client()
    threshold_ms = int(settings.HOMEPOT_DEVICES_IDENTITY_SECONDS * 1000 / 2)
    found = expiring = 0
    pending = []

    def read(hashes):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.id, d.id, d.status FROM devices_app_devicecredential c JOIN devices_app_device d "
                "ON d.id = c.device_id WHERE c.key_hash = ANY(%s) AND c.revoked_at IS NULL",
                [hashes],
            )
            return len(cursor.fetchall())

    prefix = identity_store.credential_key("")
    keys = []
    for key in client.scan_iter(match=prefix + "*", count=batch):
        keys.append(key)
        if len(keys) == batch:
            found, expiring = _check(client, keys, prefix, threshold_ms, pending, found, expiring)
            keys = []
            if len(pending) >= batch:
                read(pending)
                pending = []
    if keys:
        found, expiring = _check(client, keys, prefix, threshold_ms, pending, found, expiring)
    if pending:
        read(pending)
    return {"entries_scanned": found, "about_to_expire": expiring}


def _check(client, keys, prefix, threshold_ms, pending, found, expiring):
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    for key, left in zip(keys, pipe.execute(), strict=True):
        found += 1
        if 0 < left < threshold_ms:
            expiring += 1
            pending.append(key.decode()[len(prefix) :])
    return found, expiring


def main() -> None:
    from bench.bench_create_fleet import command_env, machine, manage, recreate_database

    args = parse_args()
    env = command_env(args.database)
    redis_server = _start_redis(args.redis_port)
    env["REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
    env["HOMEPOT_MONITORING_HEALTH_REDIS_URL"] = env["REDIS_URL"]
    env.pop("CELERY_BROKER_URL", None)
    if not args.reuse:
        recreate_database(args.database)
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(
            env,
            "create_fleet",
            "--sites",
            str(args.sites),
            "--devices-per-site",
            "50",
            "--site-prefix",
            "bench",
        )
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
    import django

    django.setup()
    from django.db import connection

    from bench.bench_ingest import issue_credentials
    from devices_app.models import DeviceCredential
    from devices_app.services import device_identities_refresh

    if not DeviceCredential.objects.exists():
        issue_credentials()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE devices_app_device SET status = 'online', last_seen = now() - interval '60 seconds'"
        )
        cursor.execute("VACUUM ANALYZE devices_app_device")
        cursor.execute("VACUUM ANALYZE devices_app_devicecredential")
    results = {"devices": None, "batch": args.batch, "runs": [], "scan": []}
    try:
        for round_number in range(args.rounds):
            outcome = measure(
                lambda: device_identities_refresh(batch_size=args.batch).as_dict(), redis_server.pid
            )
            results["devices"] = outcome["devices"]
            outcome["round"] = round_number
            results["runs"].append(outcome)
            print(f"refresh {json.dumps(outcome)}", flush=True)
            scan = measure(lambda: discovery_by_scan(args.batch), redis_server.pid)
            results["scan"].append(scan)
            print(f"scan    {json.dumps(scan)}", flush=True)
            print(f"load {os.getloadavg()}", flush=True)
    finally:
        redis_server.terminate()
        redis_server.wait()
    results["machine"] = machine()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
