"""Benchmark the admin's fleet page on a big fleet with a long health history.

    python bench/bench_dashboard.py                  # 100,000 devices, 10,000,000 health checks
    python bench/bench_dashboard.py --devices 20000 --checks-per-device 20 --keep

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_dashboard; DROPPED),
     migrates it and runs `manage.py create_fleet` (1,000 sites of 100 devices by default);
  2. fills it with set-based SQL (INSERT ... SELECT ... generate_series): every device online
     except 1 site in 20 (a store outage) and 1 device in 100 elsewhere; `--checks-per-device`
     health checks per device spread over 30 days (100 × 100,000 = 10,000,000 by default);
     7 days of dashboard snapshots (FleetSnapshot, every 15 minutes, per site); open alerts
     for the offline devices and sites; 30 jobs in progress with 1,000 deliveries each;
  3. times one real snapshot of the whole fleet (the tick's INSERT ... SELECT ... GROUP BY);
  4. times the fleet page (/admin/monitoring_app/alert/fleet/), the landing page (/admin/)
     and its refresh (/admin/glance/) through Django's test client, signed in as an admin
     (every site) and as a manager of 100 sites: the whole request (session, middleware,
     queries, template), median, best and worst of `--repeat`, and the number of queries.
     `--pages landing,glance` times only those (the landing page reads no health history,
     so `--checks-per-device 1` is enough for it); `sites,site_page,devices,device_page,jobs,
     job_page` time the console's other main pages (lists, a store's page, a device's page
     with its sparkline, a job's page with its progress).

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import (  # noqa: E402
    command_env,
    drop_database,
    machine,
    manage,
    recreate_database,
)
from bench.harness import django_setup  # noqa: E402

FLEET_PAGE = "/admin/monitoring_app/alert/fleet/"
# The landing page (the admin index with the fleet at a glance) and its refresh fragment.
LANDING_PAGE = "/admin/"
GLANCE_FRAGMENT = "/admin/glance/"
# The console's other main pages: {site}, {device} and {job} are filled in with the first site
# (which the benchmark's manager runs), its first device and the first job in progress.
PAGES = {
    "page": FLEET_PAGE,
    "landing": LANDING_PAGE,
    "glance": GLANCE_FRAGMENT,
    "sites": "/admin/sites_app/site/",
    "site_page": "/admin/sites_app/site/{site}/change/",
    "devices": "/admin/devices_app/device/",
    "device_page": "/admin/devices_app/device/{device}/change/",
    "jobs": "/admin/jobs_app/job/",
    "job_page": "/admin/jobs_app/job/{job}/change/",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_dashboard", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--devices-per-site", type=int, default=100)
    parser.add_argument("--checks-per-device", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10, help="Timed requests per user.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    parser.add_argument(
        "--pages", default=",".join(PAGES), help=f"Which pages to time, comma-separated: {', '.join(PAGES)}."
    )
    return parser.parse_args()


def timed_sql(cursor, sql: str, params=None) -> float:
    start = time.perf_counter()
    cursor.execute(sql, params)
    return round(time.perf_counter() - start, 1)


def fill(args: argparse.Namespace, now: datetime.datetime) -> dict:
    """Devices' state, history, snapshots, alerts and jobs, all set-based."""
    from django.db import connection

    seconds = {}
    hour = now.replace(minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        seconds["devices_state_s"] = timed_sql(
            cursor,
            """UPDATE devices_app_device SET
                   status = CASE WHEN site_id %% 20 = 0 OR id %% 100 = 1 THEN 'offline' ELSE 'online' END,
                   last_seen = %(now)s, last_health_at = %(now)s,
                   health_status = CASE WHEN id %% 50 = 2 THEN 'unhealthy'
                                        WHEN id %% 25 = 3 THEN 'degraded' ELSE 'healthy' END""",
            {"now": now},
        )
        # checks_per_device reports per device, spread evenly over the last 30 days.
        seconds["health_checks_s"] = timed_sql(
            cursor,
            """INSERT INTO monitoring_app_healthcheck
                   (device_id, status, response_time_ms, metrics, error_message, checked_at)
               SELECT d.id,
                      CASE WHEN (d.id + n) %% 40 = 0 THEN 'unhealthy'
                           WHEN (d.id + n) %% 15 = 0 THEN 'degraded' ELSE 'healthy' END,
                      20 + (d.id + n) %% 200, '{"cpu_percent": 12.5}'::jsonb, '',
                      %(now)s - make_interval(secs => n * %(step)s + d.id %% 600)
               FROM devices_app_device d CROSS JOIN generate_series(1, %(per)s) AS n""",
            {"now": now, "per": args.checks_per_device, "step": 30 * 86400 / args.checks_per_device},
        )
        cursor.execute("SELECT count(*) FROM monitoring_app_healthcheck")
        seconds["health_checks"] = cursor.fetchone()[0]
        # 7 days of 15-minute snapshots per site, with a daily wave in the numbers.
        seconds["snapshots_s"] = timed_sql(
            cursor,
            """WITH per_site AS (
                   SELECT site_id, count(*) AS total FROM devices_app_device GROUP BY site_id)
               INSERT INTO monitoring_app_fleetsnapshot
                   (site_id, bucket_at, total, online, offline, maintenance, healthy, degraded, unhealthy)
               SELECT p.site_id, b.at, p.total, p.total - c.off, c.off, 0,
                      p.total - c.off - p.total / 25, p.total / 25 - p.total / 50, p.total / 50
               FROM per_site p
               CROSS JOIN generate_series(%(start)s::timestamptz, %(end)s::timestamptz,
                                          interval '15 minutes') AS b(at)
               CROSS JOIN LATERAL (SELECT (p.site_id + extract(hour FROM b.at)::int) %% 7 AS off) c""",
            {
                "start": hour - datetime.timedelta(days=7, hours=-1),
                "end": hour - datetime.timedelta(minutes=15),
            },
        )
        cursor.execute("SELECT count(*) FROM monitoring_app_fleetsnapshot")
        seconds["snapshots"] = cursor.fetchone()[0]
        seconds["alerts_s"] = timed_sql(
            cursor,
            """INSERT INTO monitoring_app_alert
                   (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
               SELECT site_id, id, 'device_offline', 'warning', device_id || ' offline',
                      %(now)s - interval '1 hour', %(now)s
               FROM devices_app_device WHERE status = 'offline' AND site_id %% 20 <> 0""",
            {"now": now},
        )
        cursor.execute(
            """INSERT INTO monitoring_app_alert (site_id, kind, severity, message, opened_at, last_seen_at)
               SELECT id, 'site_offline', 'critical', site_id || ' offline',
                      %(now)s - interval '1 hour', %(now)s
               FROM sites_app_site WHERE id %% 20 = 0""",
            {"now": now},
        )
        cursor.execute("VACUUM ANALYZE")
    seconds["jobs_s"] = make_jobs(now)
    return seconds


def make_jobs(now: datetime.datetime) -> float:
    """30 jobs in progress, each delivered to 1,000 devices, a third of them finished."""
    from django.db import connection

    from jobs_app.models import Job
    from sites_app.models import Site

    start = time.perf_counter()
    sites = list(Site.objects.order_by("pk")[:30])
    for index, site in enumerate(sites):
        job = Job.objects.create(site=site, action="restart_pos_app", status="sent", started_at=now)
        with connection.cursor() as cursor:
            cursor.execute(
                """INSERT INTO jobs_app_delivery (job_id, device_id, site_id, status, attempts, last_error,
                                                  created_at)
                   SELECT %(job)s, id, site_id, CASE WHEN id %% 3 = 0 THEN 'completed' ELSE 'sent' END, 1, '',
                          %(now)s
                   FROM devices_app_device WHERE id > %(offset)s ORDER BY id LIMIT 1000""",
                {"job": job.pk, "now": now, "offset": index * 1000},
            )
    return round(time.perf_counter() - start, 1)


def time_page(user, repeat: int, url: str = FLEET_PAGE) -> dict:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user)
    samples = []
    for _ in range(repeat + 1):  # the first request warms caches and is not counted
        start = time.perf_counter()
        response = client.get(url, HTTP_HOST="localhost")
        samples.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.content[:300]!r}")
    with CaptureQueriesContext(connection) as queries:
        client.get(url, HTTP_HOST="localhost")
    slowest = sorted(queries.captured_queries, key=lambda q: float(q["time"]), reverse=True)[:3]
    return {
        "median_ms": round(statistics.median(samples[1:]), 1),
        "best_ms": round(min(samples[1:]), 1),
        "worst_ms": round(max(samples[1:]), 1),
        "queries": len(queries),
        "slowest_queries": [
            {"ms": round(float(q["time"]) * 1000, 1), "sql": q["sql"][:200]} for q in slowest
        ],
        "bytes": len(response.content),
    }


def measure(args: argparse.Namespace) -> dict:
    from django.conf import settings
    from django.utils import timezone

    from accounts.choices import MembershipRole
    from accounts.models import SiteMembership, User
    from monitoring_app.rollup import fleet_snapshot_take
    from sites_app.models import Site

    settings.DEBUG = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "testserver"]
    now = timezone.now()
    results = fill(args, now)
    start = time.perf_counter()
    results["snapshot_rows"] = fleet_snapshot_take(now=now)
    results["snapshot_take_ms"] = round((time.perf_counter() - start) * 1000, 1)

    admin = User.objects.create_superuser("bench-admin", "bench@example.com", "x")
    manager = User.objects.create_user("bench-manager", "m@example.com", "x", is_staff=True)
    site_ids = list(Site.objects.order_by("pk").values_list("pk", flat=True)[:100])
    SiteMembership.objects.bulk_create(
        SiteMembership(user=manager, site_id=pk, role=MembershipRole.MANAGER) for pk in site_ids
    )
    from devices_app.models import Device
    from jobs_app.models import Job

    first_site = site_ids[0]
    first_of = {model: model.objects.filter(site_id=first_site).order_by("pk") for model in (Device, Job)}
    objects = {
        "site": first_site,
        "device": first_of[Device].values_list("pk", flat=True).first(),
        "job": first_of[Job].values_list("pk", flat=True).first(),
    }
    for name in args.pages.split(","):
        url = PAGES[name].format(**objects)
        results[f"{name}_admin"] = time_page(admin, args.repeat, url)
        results[f"{name}_manager_100_sites"] = time_page(manager, args.repeat, url)
    return results


def main() -> None:
    args = parse_args()
    recreate_database(args.database)
    env = command_env(args.database)
    manage(env, "migrate", "--noinput")
    sites = max(1, args.devices // args.devices_per_site)
    start = time.perf_counter()
    manage(
        env,
        "create_fleet",
        "--sites",
        str(sites),
        "--devices-per-site",
        str(args.devices_per_site),
        "--site-prefix",
        "bench",
    )
    created_s = time.perf_counter() - start
    if args.json:
        args.json = args.json.resolve()  # before django_setup changes the working directory
    django_setup(ROOT, args.database)
    try:
        results = {"devices": args.devices, "create_fleet_s": round(created_s, 1), **measure(args)}
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)
    results["machine"] = machine()
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
