"""CPU and SQL per health report, in-process: load-independent figures for the health ingest.

    python bench/bench_health_cpu.py                    # 2,000 requests per mode, 3 rounds
    python bench/bench_health_cpu.py --requests 500 --rounds 5 --batch 50

Recreates a scratch database (`--database`, default homepot_bench_health_cpu; DROPPED) with
200 devices online, starts a redis-server of its own (appendonly yes, appendfsync always, on a
free port, in a temporary directory) for the health buffer, and calls the views directly
(no HTTP, no middleware) for each mode, rounds alternating the order:

  drf_direct    the DRF view with the buffer off: what every report cost before this work
  fast_direct   the plain-Django path with the buffer off (a report writes PostgreSQL)
  fast_buffered the plain-Django path with the buffer on (a report is one XADD); the drain of
                what it buffered is measured separately (`drain`)

and the same for a batch of `--batch` reports. Per request it reports this process's CPU,
PostgreSQL's backend CPU (from /proc/<pid>/stat of this connection's backend), the Redis
server's CPU, the SQL statements sent, and how many reports the requests wrote themselves.
The machine's load changes the wall time, not these.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_health_cpu")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bench.bench_create_fleet import command_env, drop_database, manage, recreate_database
    from homepot.tests.served import free_port

    recreate_database(args.database)
    env = command_env(args.database)
    manage(env, "migrate", "--noinput")
    manage(env, "create_fleet", "--sites", "4", "--devices-per-site", "50")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        redis_server = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
            + ["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            os.environ.update(env)
            os.environ["HOMEPOT_MONITORING_HEALTH_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
            time.sleep(0.5)
            results = run(args, redis_server.pid)
        finally:
            redis_server.kill()
            redis_server.wait()
            from django.db import connections

            connections.close_all()
            drop_database(args.database)
    print(json.dumps(results, indent=2))


def run(args, redis_pid: int) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from bench.bench_ingest import issue_credentials
    from monitoring_app import health_buffer
    from monitoring_app.api.agent import HealthBatchView, HealthView
    from monitoring_app.api.health_fast import health_batch_endpoint, health_endpoint
    from monitoring_app.models import HealthCheck

    device_secrets = issue_credentials()
    factory = RequestFactory()
    report = {"status": "healthy", "cpu_percent": 12.5, "memory_percent": 40.1, "app_version": "7.3.0"}

    def steady():
        with connection.cursor() as cursor:
            cursor.execute("UPDATE devices_app_device SET status = 'online', last_seen = now()")
            cursor.execute("UPDATE devices_app_devicecredential SET last_used_at = now()")

    def body(batch: bool) -> dict:
        if not batch:
            return report
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        return {"reports": [{**report, "timestamp": stamp}] * args.batch}

    views = {
        "drf_direct": (False, HealthView.as_view(), HealthBatchView.as_view()),
        "fast_direct": (False, health_endpoint, health_batch_endpoint),
        "fast_buffered": (True, health_endpoint, health_batch_endpoint),
    }
    out: dict = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]

    for round_ in range(args.rounds):
        order = list(views) if round_ % 2 == 0 else list(reversed(views))
        for batch in (False, True):
            for mode in order:
                buffered, single, many = views[mode]
                settings.HOMEPOT_MONITORING_BUFFER_HEALTH = buffered
                steady()
                view, payload = (many if batch else single), json.dumps(body(batch))
                n = args.requests // (10 if batch else 1)
                requests = [
                    factory.post(
                        "/",
                        payload,
                        content_type="application/json",
                        HTTP_AUTHORIZATION=f"Device {device_secrets[i % len(device_secrets)]}",
                    )
                    for i in range(n)
                ]
                rows0 = HealthCheck.objects.count()
                pg0, redis0, own0 = proc_cpu(backend), proc_cpu(redis_pid), time.process_time()
                with CaptureQueriesContext(connection) as queries:
                    for request in requests:
                        response = view(request)
                        assert response.status_code == 201, response.content
                own, pg, rd = (
                    time.process_time() - own0,
                    proc_cpu(backend) - pg0,
                    proc_cpu(redis_pid) - redis0,
                )
                key = f"{mode}{'_batch' if batch else ''}"
                per = 1000 / n
                out.setdefault(key, []).append(
                    {
                        "python_cpu_ms": round(own * per, 3),
                        "postgres_cpu_ms": round(pg * per, 3),
                        "redis_cpu_ms": round(rd * per, 3),
                        "sql_per_request": round(len(queries) / n, 2),
                    }
                )
                reports = n * (args.batch if batch else 1)
                out[key][-1]["written_by_the_request"] = HealthCheck.objects.count() - rows0
                if buffered:
                    pg0, own0, start = proc_cpu(backend), time.process_time(), time.perf_counter()
                    drained = health_buffer.drain(wait=True, max_seconds=600)
                    # Under heavy load a Redis answer can take longer than the 0.3 s timeout:
                    # those reports were written directly (and, if Redis had appended them
                    # after all, drained too: the documented "twice, never zero times").
                    assert HealthCheck.objects.count() - rows0 >= reports
                    elapsed = time.perf_counter() - start
                    own, pg = time.process_time() - own0, proc_cpu(backend) - pg0
                    out.setdefault(f"drain{'_batch' if batch else ''}", []).append(
                        {
                            "python_cpu_ms_per_report": round(
                                (time.process_time() - own0) * 1000 / reports, 4
                            ),
                            "postgres_cpu_ms_per_report": round(
                                (proc_cpu(backend) - pg0) * 1000 / reports, 4
                            ),
                            "reports": drained,
                            "reports_per_s_wall": round(drained / elapsed) if elapsed else None,
                        }
                    )
                print(key, out[key][-1], flush=True)
    return out


if __name__ == "__main__":
    main()
