"""The API's hot paths through gunicorn: job creation and the device list's first page.

    # once: a kept 100,000-device database (2,000 sites of 50)
    python bench/bench_api_hot.py --database homepot_apihot_100k --create 100000
    # then, before and after side by side (an older checkout exported with `git archive`)
    python bench/bench_api_hot.py --database homepot_apihot_100k --code-root /tmp/base --rounds 3
    python bench/bench_api_hot.py --database homepot_apihot_100k --code-root . --rounds 3

For each round it serves `--code-root` with gunicorn (`--workers` sync workers, the same
database, Redis DB `--redis-db` and a Celery queue of its own that no worker reads, so the
enqueued dispatch passes wait there and are deleted at the end), and drives, with the asyncio
client of bench_ingest at each of `--connections`:

- `hello`: bench_ingest's bare WSGI app (the ceiling of the HTTP stack);
- `jobs_create`: `POST /api/v1/jobs` (restart_pos_app at one of the fleet's sites, in turn)
  as the superuser `bench-admin` with a bearer token;
- `devices_first_page`: `GET /api/v1/devices`, the same user.

Per run: requests/s, p50/p99 latency, errors, and the gunicorn workers' own CPU time per
request (their /proc rusage; unlike the machine's busy time it does not count other
programs sharing the machine). Once per code root, in-process through Django's test client:
the SQL statements one request issues. Prints each run and a JSON summary (`--json`).
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import children_cpu_seconds, start_gunicorn, stop  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True, help="Kept between runs (created by --create).")
    parser.add_argument("--create", type=int, metavar="DEVICES", help="(Re)create the database first.")
    parser.add_argument("--code-root", default=".")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per run.")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=5.0, help="Unmeasured seconds per server.")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--port", type=int, help="gunicorn's port (default: a free one).")
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def create_database(name: str, devices: int) -> None:
    from bench.bench_create_fleet import command_env, manage, recreate_database

    recreate_database(name)
    env = command_env(name)
    manage(env, "migrate", "--noinput")
    manage(env, "create_fleet", "--sites", str(max(1, devices // 50)), "--devices-per-site", "50")


def server_env(args, queue: str) -> dict:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        SECRET_KEY=env.get("SECRET_KEY") or "bench-only",
        HOMEPOT_ENV_FILE="",
        REDIS_URL=f"redis://127.0.0.1:6379/{args.redis_db}",
        CELERY_TASK_DEFAULT_QUEUE=queue,
    )
    return env


def django_setup(code_root: Path, env: dict):
    """Django of `code_root`, in this process: the bench user, its token, the site ids."""
    sys.path.insert(0, str(code_root))
    # Celery's Django fix-up puts the working directory first on sys.path.
    os.chdir(code_root)
    os.environ.update(env, DJANGO_SETTINGS_MODULE="homepot.settings")
    import django

    django.setup()
    from accounts.models import User
    from accounts.services import api_token_issue
    from sites_app.models import Site

    admin, _ = User.objects.get_or_create(
        username="bench-admin",
        defaults={"email": "bench-admin@example.com", "is_staff": True, "is_superuser": True},
    )
    _, raw = api_token_issue(user=admin, name="bench-api-hot", ttl_days=1)
    site_ids = list(Site.objects.order_by("pk").values_list("site_id", flat=True)[:500])
    return raw, site_ids


def job_body(site_id: str) -> dict:
    return {"site_id": site_id, "action": "restart_pos_app", "description": "bench"}


def statements_per_request(token: str, site_ids: list[str]) -> dict:
    """SQL statements of one request of each kind (after one warm-up), in-process."""
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    settings.ALLOWED_HOSTS = ["*"]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    counts = {}
    for name, call in {
        "jobs_create": lambda: client.post(
            "/api/v1/jobs", job_body(site_ids[0]), content_type="application/json"
        ),
        "devices_first_page": lambda: client.get("/api/v1/devices"),
    }.items():
        call()
        with CaptureQueriesContext(connection) as queries:
            response = call()
        assert response.status_code in (200, 201), response.content
        counts[name] = len(queries.captured_queries)
    return counts


def request_bytes(method: str, path: str, token: str | None, body: dict | None = None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    headers = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body is not None:
        headers += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload


def drive(port: int, connections: int, duration: float, make_request, master_pid: int) -> dict:
    from bench.bench_ingest import _one

    latencies, statuses, counter = [], {}, [0]
    deadline = time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < deadline:
            counter[0] += 1
            try:
                latency, status = await _one("127.0.0.1", port, make_request(counter[0]))
            except OSError:
                latency, status = 0.0, 0
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1

    async def run():
        await asyncio.gather(*(worker() for _ in range(connections)))

    cpu_before = children_cpu_seconds(master_pid)
    start = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - start
    cpu = children_cpu_seconds(master_pid) - cpu_before
    ok = sorted(latency for latency in latencies if latency)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "p99_ms": round(ok[max(int(len(ok) * 0.99) - 1, 0)] * 1000, 1) if ok else None,
        "errors": sum(n for status, n in statuses.items() if not 200 <= status < 300),
        "worker_cpu_ms_per_request": round(cpu * 1000 / max(len(latencies), 1), 2),
    }


def main() -> None:
    args = parse_args()
    code_root = Path(args.code_root).resolve()
    json_path = args.json.resolve() if args.json else None
    sys.path.insert(0, str(ROOT))
    if args.create:
        create_database(args.database, args.create)
    queue = f"bench_api_hot_{os.getpid()}"
    env = server_env(args, queue)
    token, site_ids = django_setup(code_root, env)
    results = {"code_root": str(code_root), "statements": statements_per_request(token, site_ids), "runs": {}}
    from django.db import connections

    connections.close_all()
    print("statements per request:", results["statements"], flush=True)
    scenarios = {
        "hello": ("bench.bench_ingest:hello_app", lambda i: request_bytes("GET", "/", None)),
        "jobs_create": (
            "homepot.wsgi",
            lambda i: request_bytes("POST", "/api/v1/jobs", token, job_body(site_ids[i % len(site_ids)])),
        ),
        "devices_first_page": ("homepot.wsgi", lambda i: request_bytes("GET", "/api/v1/devices", token)),
    }
    try:
        for round_number in range(1, args.rounds + 1):
            for name, (app, make_request) in scenarios.items():
                if args.only and name != "hello" and name not in args.only:
                    continue
                server, port = start_gunicorn(
                    app, cwd=code_root, workers=args.workers, env=env, port=args.port
                )
                try:
                    # Each worker's first requests import and build what later ones reuse.
                    drive(port, args.workers, args.warmup, make_request, server.pid)
                    for connections_count in args.connections:
                        outcome = drive(port, connections_count, args.duration, make_request, server.pid)
                        results["runs"].setdefault(f"{name}@{connections_count}", []).append(outcome)
                        label = f"round {round_number} {name:20} c={connections_count:<3}"
                        print(label, json.dumps(outcome), flush=True)
                finally:
                    stop(server)
    finally:
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).delete(queue)
    results["median_rps"] = {
        key: statistics.median(run["rps"] for run in runs) for key, runs in results["runs"].items()
    }
    print(json.dumps(results, indent=2))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
