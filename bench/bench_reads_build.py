"""Give a fleet made by `create_fleet` the state the read benchmarks measure, set-based.

    python manage.py create_fleet --sites 20000 --devices-per-site 50 --site-prefix bench
    python bench/bench_reads_build.py --database homepot_reads_1m

Like bench/bench_dashboard.py's fill, without the health history (none of the fleet-wide
pages reads it): every device online except 1 site in 20 (a store outage) and 1 device in
100 elsewhere, health varied; the charts' snapshots as the tick leaves them (every 15
minutes over the last day, every hour over the week before: 240 rows per site) and the
chain's total per point; open alerts for the offline devices and sites; 30 jobs in
progress with 1,000 deliveries each; the users
`bench-admin` (superuser) and `bench-manager` (manager of the first 100 sites).
Run it once on a migrated database (any version of this code).
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def step(cursor, label: str, sql: str, params=None) -> None:
    start = time.perf_counter()
    cursor.execute(sql, params)
    print(f"{label}: {time.perf_counter() - start:.1f} s", flush=True)


def set_states(cursor, now) -> None:
    step(
        cursor,
        "device states",
        """UPDATE devices_app_device SET
               status = CASE WHEN site_id %% 20 = 0 OR id %% 100 = 1 THEN 'offline' ELSE 'online' END,
               last_seen = %(now)s, last_health_at = %(now)s,
               health_status = CASE WHEN id %% 50 = 2 THEN 'unhealthy'
                                    WHEN id %% 25 = 3 THEN 'degraded' ELSE 'healthy' END""",
        {"now": now},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument(
        "--states-done", action="store_true", help="The devices' states are set already (skip that UPDATE)."
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
        HOMEPOT_ENV_FILE="",
        DJANGO_SETTINGS_MODULE="homepot.settings",
    )
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from bench.bench_dashboard import make_jobs

    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        if not args.states_done:
            set_states(cursor, now)
        step(
            cursor,
            "snapshots",
            """WITH per_site AS (
                   SELECT site_id, count(*) AS total FROM devices_app_device GROUP BY site_id),
               buckets AS (
                   SELECT generate_series(%(day)s::timestamptz, %(last)s::timestamptz, '15 minutes') AS at
                   UNION
                   SELECT generate_series(%(week)s::timestamptz, %(last)s::timestamptz, '1 hour'))
               INSERT INTO monitoring_app_fleetsnapshot
                   (site_id, bucket_at, total, online, offline, maintenance, healthy, degraded, unhealthy)
               SELECT p.site_id, b.at, p.total, p.total - c.off, c.off, 0,
                      p.total - c.off - p.total / 25, p.total / 25 - p.total / 50, p.total / 50
               FROM per_site p CROSS JOIN buckets b
               CROSS JOIN LATERAL (SELECT (p.site_id + extract(hour FROM b.at)::int) %% 7 AS off) c""",
            {
                "day": hour - datetime.timedelta(hours=23),
                "week": hour - datetime.timedelta(days=7, hours=-1),
                "last": hour - datetime.timedelta(minutes=15),
            },
        )
        step(
            cursor,
            "device alerts",
            """INSERT INTO monitoring_app_alert
                   (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
               SELECT site_id, id, 'device_offline', 'warning', device_id || ' offline',
                      %(now)s - interval '1 hour', %(now)s
               FROM devices_app_device WHERE status = 'offline' AND site_id %% 20 <> 0""",
            {"now": now},
        )
        step(
            cursor,
            "site alerts",
            """INSERT INTO monitoring_app_alert (site_id, kind, severity, message, opened_at, last_seen_at)
               SELECT id, 'site_offline', 'critical', site_id || ' offline',
                      %(now)s - interval '1 hour', %(now)s
               FROM sites_app_site WHERE id %% 20 = 0""",
            {"now": now},
        )
    print(f"jobs: {make_jobs(now)} s", flush=True)
    sum_chart_totals()
    with connection.cursor() as cursor:
        # With the tables PostgreSQL's triggers keep beside the devices (the search table,
        # the per-site counts), where this code has them: this PostgreSQL may run without
        # autovacuum, and a search planned without statistics took seconds.
        for table in (
            "devices_app_device",
            "devices_app_devicesearch",
            "devices_app_sitedevicecount",
            "devices_app_sitehealthcount",
            "sites_app_site",
            "monitoring_app_fleetsnapshot",
            "monitoring_app_alert",
        ):
            cursor.execute("SELECT to_regclass(%s)", [table])
            if cursor.fetchone()[0] is not None:
                step(cursor, f"vacuum analyze {table}", f"VACUUM ANALYZE {table}")
    make_users()


def sum_chart_totals() -> None:
    """The chain's total per chart point (FleetTotalSnapshot), which an admin's charts read:
    the tick writes it beside the per-site rows, this fill wrote only those. Older code has
    no such table, and nothing to do."""
    try:
        from monitoring_app.rollup import fleet_totals_rebuild
    except ImportError:
        return
    start = time.perf_counter()
    buckets = fleet_totals_rebuild()
    print(f"chart totals ({buckets} points): {time.perf_counter() - start:.1f} s", flush=True)


def make_users() -> None:
    from accounts.choices import MembershipRole
    from accounts.models import SiteMembership, User
    from sites_app.models import Site

    User.objects.create_superuser("bench-admin", "bench@example.com", "x")
    manager = User.objects.create_user("bench-manager", "m@example.com", "x", is_staff=True)
    site_ids = Site.objects.order_by("pk").values_list("pk", flat=True)[:100]
    SiteMembership.objects.bulk_create(
        SiteMembership(user=manager, site_id=pk, role=MembershipRole.MANAGER) for pk in site_ids
    )


if __name__ == "__main__":
    main()
