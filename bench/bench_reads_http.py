"""The console's and the API's fleet-wide reads over HTTP (gunicorn), at 1 and 4 clients,
side by side with a bare WSGI hello and, optionally, an older checkout.

    # once: a kept 1,000,000-device database with dashboard state (docs/performance.md)
    python bench/bench_reads_http.py --database homepot_reads_1m \\
        --code-root before=/tmp/reads/base --code-root after=. --rounds 3

What it does, per round and per code root (in turn, so "before" and "after" share the
machine's load of that minute; every other round in the opposite order):
  1. starts gunicorn (`--workers` sync workers, the checkout's `homepot.wsgi`, its own
     working directory) on a free port, and a bare WSGI hello (bench.bench_ingest:hello_app)
     once per round;
  2. drives each page for `--duration` seconds at each of `--clients` concurrent
     connections (a new connection per request, as the sync workers close them), after a
     few warm-up requests, signed in as `--user` (a browser session cookie for the admin
     pages, a bearer token for the API);
  3. prints p50/p99 latency, requests per second, errors, and the CPU the server spent per
     request: gunicorn's workers (Python) and their PostgreSQL backends (tagged with an
     application_name, kept open for the run), read from /proc: the machine's other load
     slows them but does not add to them.

The user's session and token are created here (this checkout's code, the same database).
The pages: the device changelist (no search), the fleet dashboard, the landing page, the
fleet summary API; `--pages` picks some, or the changelist searched for a device ID
substring, a number, a common name word and an IP prefix (`search_device_id`,
`search_number`, `search_name_common`, `search_ip_prefix`). Connection: 127.0.0.1:5432, user postgres.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import child_pids, cpu_seconds, start_gunicorn, stop  # noqa: E402

PAGES = {
    "changelist": ("session", "/admin/devices_app/device/"),
    "fleet_dashboard": ("session", "/admin/monitoring_app/alert/fleet/"),
    "landing": ("session", "/admin/"),
    "fleet_summary_api": ("token", "/api/v1/fleet/summary"),
    # The changelist's search box (devices_app.selectors.device_search), the terms of
    # bench_reads.py: a device ID substring (40 matches at 1,000,000), a number (50), a name
    # word matching a tenth of the fleet, an IP prefix.
    "search_device_id": ("session", "/admin/devices_app/device/?q=bench-12345-pos"),
    "search_number": ("session", "/admin/devices_app/device/?q=12345"),
    "search_name_common": ("session", "/admin/devices_app/device/?q=Printer"),
    "search_ip_prefix": ("session", "/admin/devices_app/device/?q=10.7.161"),
}
# Served unless --pages names them: the pages before the search ones were added.
DEFAULT_PAGES = ("changelist", "fleet_dashboard", "landing", "fleet_summary_api")
APPLICATION_NAME = "bench-reads-http"
TIMEOUT = ("--timeout", "120")  # a cold 1,000,000-device page may take longer than the default 30 s
WARM_UP_REQUESTS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True, help="A kept database (only a session is added).")
    parser.add_argument(
        "--code-root",
        action="append",
        metavar="LABEL=PATH",
        help="A checkout to serve (repeatable); default: this one, labelled 'this'.",
    )
    parser.add_argument("--user", default="bench-admin", help="bench-admin: an admin of the whole chain.")
    parser.add_argument("--pages", default=",".join(DEFAULT_PAGES))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds per page and client count.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn sync workers.")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


# --- credentials --------------------------------------------------------------------------------


def credentials(database: str, username: str) -> dict:
    """A session cookie and a bearer token for `username`, written to `database`."""
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
        HOMEPOT_ENV_FILE="",
        DJANGO_SETTINGS_MODULE="homepot.settings",
    )
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections
    from django.test import Client

    from accounts.models import User
    from accounts.services import api_token_issue

    user = User.objects.get(username=username)
    _, token = api_token_issue(user=user, name="bench-reads-http")
    browser = Client()
    browser.force_login(user)
    session = browser.cookies[settings.SESSION_COOKIE_NAME].value
    connections.close_all()
    return {
        "session": f"Cookie: {settings.SESSION_COOKIE_NAME}={session}",
        "token": f"Authorization: Bearer {token}",
        "secret_key": settings.SECRET_KEY,
    }


# --- load -----------------------------------------------------------------------------------------


def _request(path: str, auth_header: str | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if auth_header:
        lines.append(auth_header)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _one(port: int, request: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
    return time.perf_counter() - start, int(status_line.split()[1]) if status_line else 0


async def _drive(port: int, clients: int, duration: float, request: bytes) -> tuple[list[float], dict]:
    latencies, statuses = [], {}
    deadline = time.perf_counter() + duration

    async def client():
        while time.perf_counter() < deadline:
            latency, status = await _one(port, request)
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


# --- server-side CPU, from /proc -----------------------------------------------------------------


def _backends(database: str) -> list[int]:
    """The PostgreSQL backends of the served code (their application_name)."""
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APPLICATION_NAME]
        ).fetchall()
    return [pid for (pid,) in rows]


def _server_cpu(server: subprocess.Popen, database: str | None) -> tuple[float, float]:
    """CPU seconds so far of gunicorn's workers and of their PostgreSQL backends (kept open
    for the whole run: CONN_MAX_AGE is raised, so no backend's time is lost)."""
    workers = sum(cpu_seconds(pid) for pid in child_pids(server.pid))
    backends = sum(cpu_seconds(pid) for pid in _backends(database)) if database else 0.0
    return workers, backends


# --- gunicorn -----------------------------------------------------------------------------------


def measure(server, port, database, clients, duration, request) -> dict:
    for _ in range(WARM_UP_REQUESTS):
        asyncio.run(_one(port, request))
    workers_before, backends_before = _server_cpu(server, database)
    start = time.perf_counter()
    latencies, statuses = asyncio.run(_drive(port, clients, duration, request))
    elapsed = time.perf_counter() - start
    workers_after, backends_after = _server_cpu(server, database)
    per_request = 1000 / max(len(latencies), 1)
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 1),
        "errors": sum(n for status, n in statuses.items() if status != 200),
        "python_cpu_ms_per_request": round((workers_after - workers_before) * per_request, 1),
        "db_cpu_ms_per_request": round((backends_after - backends_before) * per_request, 1),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    args = parse_args()
    roots = {}
    for item in args.code_root or ["this=."]:
        label, _, path = item.partition("=")
        roots[label] = Path(path or label).resolve()
    auth = credentials(args.database, args.user)
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}?application_name={APPLICATION_NAME}",
        SECRET_KEY=auth["secret_key"],
        HOMEPOT_ENV_FILE="",
        CONN_MAX_AGE="86400",  # one backend per worker for the whole run: its CPU is counted
    )
    pages = args.pages.split(",")
    results: dict[str, list] = {}

    def record(key: str, outcome: dict) -> None:
        results.setdefault(key, []).append(outcome)
        print(f"{key:40} {json.dumps(outcome)}", flush=True)

    for round_number in range(1, args.rounds + 1):
        hello, port = start_gunicorn(
            "bench.bench_ingest:hello_app", cwd=ROOT, workers=args.workers, env=env, extra_args=TIMEOUT
        )
        try:
            for clients in args.clients:
                outcome = measure(hello, port, None, clients, args.duration, _request("/", None))
                record(f"hello@{clients}", {"round": round_number, **outcome})
        finally:
            stop(hello)
        # Every other round serves the code roots in the other order, so neither always
        # runs in the later (possibly busier or quieter) minutes of a round.
        order = list(roots.items())
        if round_number % 2 == 0:
            order.reverse()
        for label, root in order:
            server, port = start_gunicorn(
                "homepot.wsgi", cwd=root, workers=args.workers, env=env, extra_args=TIMEOUT
            )
            try:
                for page in pages:
                    kind, path = PAGES[page]
                    request = _request(path, auth[kind])
                    for clients in args.clients:
                        outcome = measure(server, port, args.database, clients, args.duration, request)
                        record(f"{label}:{page}@{clients}", {"round": round_number, **outcome})
            finally:
                stop(server)
    summary = {
        key: {
            "p50_ms": [run["p50_ms"] for run in runs],
            "p99_ms": [run["p99_ms"] for run in runs],
            "python_cpu_ms_per_request": [run["python_cpu_ms_per_request"] for run in runs],
            "db_cpu_ms_per_request": [run["db_cpu_ms_per_request"] for run in runs],
            "errors": sum(run["errors"] for run in runs),
        }
        for key, runs in results.items()
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
