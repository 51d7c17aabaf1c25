"""Heartbeats at the fleet's mix of identity hits and expiries, with the refresh off and on,
beside a bare WSGI hello, through gunicorn (issue 11, "half of a bare hello").

    python bench/bench_identity_mix.py                                  # 3 rounds, 15 s runs
    python bench/bench_identity_mix.py --rounds 5 --bound 10 --refresh-every 4 --json mix.json

The misses arise from expiry, as in a fleet: every entry lives `--bound` seconds
(HOMEPOT_DEVICES_IDENTITY_SECONDS) after the read that wrote it, and the client asks the
`--devices` devices in round-robin, so each device comes back every devices / rate seconds
(about 2 s at 750/s and 1,500 devices: with a 10 s bound, about 1 request in 5 misses,
the ratio of a terminal reporting every 60 s with the 300 s bound). Per round, alternating:

- `hello`: bench_ingest.hello_app, the ceiling of the HTTP stack;
- `expiring`: the identities expire and nothing refreshes them (main's behaviour);
- `refreshed`: the same with the refresh running every `--refresh-every` seconds in a process
  of its own (the beat's worker: `services.device_identities_refresh`), its CPU reported;
- `warm`: the default 300 s bound and no refresh: no entry expires during the run (the
  all-hit case the refresh aims at).

Each run: every device once (the fleet has reported), a bound's worth of load (the entries
written by that pass expire), then `--duration` s measured; misses are
the credential lookups PostgreSQL made (idx_scan of the key_hash index) per request.
Recreates `--database` (DROPPED) and runs its own Redis on `--redis-port` (no persistence).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_identity_refresh import _start_redis  # noqa: E402
from bench.bench_ingest import (  # noqa: E402
    _drive,
    _drive_count,
    _postgres_backend_pids,
    _processes_cpu_seconds,
    _request,
    _worker_pids,
)
from bench.harness import start_gunicorn, stop  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database", default="homepot_bench_refresh_mix", help="Scratch database (dropped!)."
    )
    parser.add_argument("--devices", type=int, default=1500)
    parser.add_argument("--bound", type=int, default=10, help="HOMEPOT_DEVICES_IDENTITY_SECONDS of the runs.")
    parser.add_argument("--refresh-every", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument(
        "--client",
        choices=("lean", "asyncio"),
        default="lean",
        help="bench_ingest's load generator (the lean one by default, as there).",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8210)
    parser.add_argument("--redis-port", type=int, default=6411)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--refresher", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def refresher(every: float) -> None:
    """The beat's task in a loop, until SIGTERM; prints its totals."""
    import django

    django.setup()
    from devices_app.services import device_identities_refresh

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    runs, written, walls = 0, 0, []
    while not stopping:
        started = time.perf_counter()
        outcome = device_identities_refresh()
        walls.append(time.perf_counter() - started)
        runs, written = runs + 1, written + outcome.counts.written
        while not stopping and time.perf_counter() < started + every:
            time.sleep(0.05)
    print(json.dumps({"runs": runs, "written": written, "max_run_s": round(max(walls), 3)}), flush=True)


def _lookups() -> int:
    """Credential lookups PostgreSQL has made by hash (every identity miss makes one)."""
    from django.db import connection

    time.sleep(1.1)  # backends report their counts at most every second
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_indexes "
            "WHERE relname = 'devices_app_devicecredential' AND indexrelname LIKE '%%key_hash%%'"
        )
        return int(cursor.fetchone()[0])


def run_one(name, args, env, make_request, device_count) -> dict:
    from django.db import connection

    from bench.bench_ingest import steady_state
    from homepot.redis_clients import redis_client

    app = "bench.bench_ingest:hello_app" if name == "hello" else "homepot.wsgi"
    redis_client(env["REDIS_URL"], 2.0).flushdb()
    steady_state()
    # `warm`: the default bound, far longer than the run: no entry expires (the all-hit case).
    bound = {"HOMEPOT_DEVICES_IDENTITY_SECONDS": "300"} if name == "warm" else {}
    server, _ = start_gunicorn(app, cwd=ROOT, workers=args.workers, env={**env, **bound}, port=args.port)
    helper = None
    try:
        if name == "refreshed":
            helper = subprocess.Popen(  # noqa: S603 - this script
                [sys.executable, __file__, "--refresher", "--refresh-every", str(args.refresh_every)],
                env={**env, "DJANGO_SETTINGS_MODULE": "homepot.settings"},
                stdout=subprocess.PIPE,
                text=True,
            )
        _drive(args.client, args.port, args.connections, 1.0, make_request)
        if name != "hello":
            _drive_count(args.client, args.port, args.connections, device_count, make_request)
            # A bound's worth of load first: the entries the warm pass wrote expire during it,
            # so the measured run meets the fleet's steady mix, not the warm pass's aftermath.
            _drive(args.client, args.port, args.connections, args.bound, make_request)
        pids, backends = _worker_pids(server), _postgres_backend_pids()
        lookups = _lookups() if name != "hello" else 0
        helper_cpu = _processes_cpu_seconds([helper.pid]) if helper else {}
        outcome = _drive(
            args.client, args.port, args.connections, args.duration, make_request, pids, backends
        )
        if name != "hello":
            outcome["misses_per_request"] = round((_lookups() - lookups) / outcome["requests"], 4)
        if helper:
            spent = _processes_cpu_seconds([helper.pid]).get(helper.pid, 0.0) - helper_cpu.get(
                helper.pid, 0.0
            )
            outcome["refresher_cpu_ms_per_request"] = round(spent * 1000 / outcome["requests"], 3)
    finally:
        if helper:
            helper.send_signal(signal.SIGTERM)
            outcome_line = helper.communicate(timeout=60)[0].strip().splitlines()
            if outcome_line:
                outcome["refresher"] = json.loads(outcome_line[-1])
        stop(server)
        connection.close()
    outcome["load"] = os.getloadavg()[0]
    return outcome


def main() -> None:
    args = parse_args()
    if args.refresher:
        refresher(args.refresh_every)
        return
    from bench.bench_create_fleet import command_env, drop_database, machine, manage, recreate_database

    recreate_database(args.database)
    env = command_env(args.database)
    redis_server = _start_redis(args.redis_port)
    env["REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/0"
    env["HOMEPOT_MONITORING_HEALTH_REDIS_URL"] = env["REDIS_URL"]
    env["HOMEPOT_DEVICES_IDENTITY_SECONDS"] = str(args.bound)
    env.pop("CELERY_BROKER_URL", None)
    try:
        manage(env, "migrate", "--noinput", "-v", "0")
        manage(env, "create_fleet", "--sites", str(max(1, args.devices // 50)), "--devices-per-site", "50")
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
        import django

        django.setup()
        from django.db import connections

        from bench.bench_ingest import issue_credentials

        device_secrets = issue_credentials()
        connections.close_all()
        n = len(device_secrets)

        def heartbeat(i):
            return _request("/api/v1/agent/heartbeat", device_secrets[i % n], {})

        def hello(i):
            return _request("/", None, {})

        results = {"devices": n, "bound_s": args.bound, "refresh_every_s": args.refresh_every, "rounds": []}
        for round_number in range(args.rounds):
            order = ["hello", "expiring", "refreshed", "warm"]
            if round_number % 2:
                order.reverse()
            runs = {}
            for name in order:
                runs[name] = run_one(name, args, env, hello if name == "hello" else heartbeat, n)
                print(f"round {round_number} {name:10} {json.dumps(runs[name])}", flush=True)
            for name in ("expiring", "refreshed", "warm"):
                runs[name]["ratio_to_hello"] = round(runs[name]["rps"] / runs["hello"]["rps"], 3)
            print(
                f"round {round_number}: expiring {runs['expiring']['ratio_to_hello']} "
                f"refreshed {runs['refreshed']['ratio_to_hello']} "
                f"warm {runs['warm']['ratio_to_hello']} of hello",
                flush=True,
            )
            results["rounds"].append(runs)
        for name in ("expiring", "refreshed", "warm"):
            ratios = [runs[name]["ratio_to_hello"] for runs in results["rounds"]]
            results[f"{name}_ratio"] = {
                "min": min(ratios),
                "median": statistics.median(ratios),
                "max": max(ratios),
            }
        results["machine"] = machine()
        print(json.dumps({k: v for k, v in results.items() if k.endswith("_ratio")}, indent=2))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    finally:
        redis_server.terminate()
        redis_server.wait()
        drop_database(args.database)


if __name__ == "__main__":
    main()
