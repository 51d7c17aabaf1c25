"""In-process CPU of the API's hot requests (job creation, the device list's first page),
through Django's test client, and of the device list's first page as served (the WSGI
application gunicorn runs, called in this process: `devices_first_page_served`, which the
fast path in front of Django's handler answers), with an optional cProfile of them.

    python bench/profile_api_hot.py --database homepot_apihot_100k --requests 200
    python bench/profile_api_hot.py --database homepot_apihot_100k --profile jobs_create
    python bench/profile_api_hot.py --database homepot_apihot_100k --profile devices_first_page_served

Prints, per request kind, this process's CPU per request (time.process_time: Python only,
not PostgreSQL's), its PostgreSQL backend's CPU per request (/proc, a second pass of the
same requests), the SQL statements of one request (Django's log) and its round trips
to PostgreSQL (libpq's trace, BEGIN and COMMIT included); with `--profile NAME` the top
entries of a cProfile of that kind's requests. Load-independent enough to compare two
checkouts run one after the other (`--code-root`), unlike the latencies of bench_api_hot.
"""

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--code-root", default=".")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--profile", metavar="NAME", help="jobs_create, devices_first_page or devices_first_page_served"
    )
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--dump", type=Path, help="Also write the profile's raw stats here.")
    parser.add_argument("--redis-db", type=int, default=11)
    return parser.parse_args()


def cpu_ms_per_request(call, requests: int) -> float:
    start = time.process_time()
    for i in range(requests):
        response = call(i)
        assert response.status_code in (200, 201), response.content
    return (time.process_time() - start) * 1000 / requests


class _Served:
    """A response of the WSGI application gunicorn serves (homepot.wsgi), called in this
    process with the environ gunicorn builds: what the test client skips (WSGI wrappers in
    front of Django's handler, such as the device list's fast path) included."""

    def __init__(self, token: str):
        from homepot.wsgi import application

        self.application, self.token = application, token

    def get(self, path: str):
        import io

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_AUTHORIZATION": f"Bearer {self.token}",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        started = []
        chunks = self.application(environ, lambda status, headers, exc_info=None: started.append(status))
        try:
            b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        response = argparse.Namespace(status_code=int(started[0][:3]), content=started[0])
        return response


def round_trips(call) -> int:
    """Queries one request sends to PostgreSQL, from libpq's protocol trace: each simple
    Query or extended Parse message the client sends (BEGIN and COMMIT included, which
    Django's query log leaves out)."""
    import tempfile

    from django.db import connection

    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        try:
            call(0)
        finally:
            pgconn.untrace()
        trace.seek(0)
        return sum(1 for line in trace if "\tF\t" in line and ("\tQuery\t" in line or "\tParse\t" in line))


def backend_cpu_ms_per_request(call, requests: int) -> float:
    """CPU of this process's PostgreSQL backend per request (/proc: parsing, planning,
    executing, its WAL), which a round trip or a statement less shows and the load moves
    little. Clock ticks (10 ms): run enough requests for a few hundred ticks."""
    from django.db import connection

    from bench.harness import cpu_seconds

    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    start = cpu_seconds(pid)
    for i in range(requests):
        response = call(i)
        assert response.status_code in (200, 201), response.content
    return (cpu_seconds(pid) - start) * 1000 / requests


def main() -> None:
    args = parse_args()
    code_root = Path(args.code_root).resolve()
    sys.path.insert(0, str(ROOT))
    from bench.bench_api_hot import django_setup, job_body, server_env, statements_per_request

    env = server_env(argparse.Namespace(database=args.database, redis_db=args.redis_db), "profile_api_hot")
    env["CELERY_TASK_DEFAULT_QUEUE"] = "profile_api_hot"
    token, site_ids = django_setup(code_root, env)
    from django.conf import settings
    from django.test import Client

    settings.ALLOWED_HOSTS = ["*"]
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    calls = {
        "jobs_create": lambda i: client.post(
            "/api/v1/jobs", job_body(site_ids[i % len(site_ids)]), content_type="application/json"
        ),
        "devices_first_page": lambda i: client.get("/api/v1/devices"),
        "devices_first_page_served": lambda i: served.get("/api/v1/devices"),
    }
    served = _Served(token)
    results = {
        "statements": statements_per_request(token, site_ids),
        "cpu_ms": {},
        "backend_cpu_ms": {},
        "round_trips": {},
    }
    try:
        for name, call in calls.items():
            cpu_ms_per_request(call, 20)  # warm-up: imports, caches
            if args.profile == name:
                # CPU time, not wall time: waits on PostgreSQL and a loaded machine stay out of it.
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                cpu_ms_per_request(call, args.requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
                if args.dump:
                    profiler.dump_stats(args.dump)
            results["cpu_ms"][name] = round(cpu_ms_per_request(call, args.requests), 2)
            results["backend_cpu_ms"][name] = round(backend_cpu_ms_per_request(call, args.requests), 2)
            results["round_trips"][name] = round_trips(call)
    finally:
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).delete("profile_api_hot")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
