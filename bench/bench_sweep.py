"""Benchmark the monitoring sweep, alert evaluation and health rollups on a big fleet.

    python bench/bench_sweep.py                      # 1,000,000 devices (20,000 sites of 50)
    python bench/bench_sweep.py --devices 100000 --keep

What it does:
  1. recreates a scratch database (`--database`, default homepot_bench_sweep; DROPPED), migrates
     it and runs `manage.py create_fleet` as an operator would;
  2. makes every device online and recently seen, except 1 site in 20 whose devices all went
     silent an hour ago (a store outage) and 1 device in 1,000 elsewhere (a dead till);
  3. times, in-process, the monitoring services exactly as the beat task calls them:
     the sweep that marks the silent devices offline (one UPDATE ... RETURNING + INSERT),
     the same sweep again with nothing to do (the steady state, every 30 s), the alert
     evaluation that opens site and device alerts, and again in the steady state;
  4. times the reads: the fleet summary of an admin (every device), the fleet summary and
     site list of a manager of 100 sites, and one site's health page; then the same reads
     of that manager through the API (Django's test client with a real bearer token: the
     whole request path but the socket).

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import datetime
import json
import os
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench_sweep", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5, help="Timed repetitions of each read.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1000


def best_of(repeat: int, function, *args, **kwargs) -> float:
    return min(timed(function, *args, **kwargs)[1] for _ in range(repeat))


def prepare_fleet(now: datetime.datetime) -> None:
    from django.db import connection

    from monitoring_app.models import MonitoringState

    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE devices_app_device SET status = 'online', connectivity_changed_at = NULL,
                   last_seen = CASE WHEN site_id %% 20 = 0 OR id %% 1000 = 1
                                    THEN %(silent)s ELSE %(now)s END""",
            {"now": now, "silent": now - datetime.timedelta(hours=1)},
        )
        cursor.execute("VACUUM ANALYZE devices_app_device")
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={
            "last_sweep_at": now - datetime.timedelta(seconds=30),
            "resumed_at": now - datetime.timedelta(days=1),
        },
    )


def measure(args: argparse.Namespace) -> dict:
    from django.conf import settings
    from django.utils import timezone

    from accounts.choices import MembershipRole
    from accounts.models import SiteMembership, User
    from monitoring_app.alerts import alerts_evaluate
    from monitoring_app.selectors import fleet_summary
    from monitoring_app.sweep import sweep_offline
    from sites_app.models import Site
    from sites_app.selectors import attach_health, site_health, site_health_devices, site_list

    now = timezone.now()
    prepare_fleet(now)
    results = {}
    sweep, results["sweep_ms"] = timed(sweep_offline, now=now)
    results["marked_offline"] = sweep.marked_offline
    _, results["sweep_again_ms"] = timed(sweep_offline, now=now + datetime.timedelta(seconds=30))
    # Alerts open for devices offline longer than the threshold: evaluate "later".
    later = now + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS + 60)
    evaluation, results["evaluate_ms"] = timed(alerts_evaluate, now=later)
    results["alerts_opened"] = len(evaluation.opened)
    _, results["evaluate_again_ms"] = timed(alerts_evaluate, now=later + datetime.timedelta(seconds=30))

    admin = User.objects.create_superuser("bench-admin", "bench@example.com", "x")
    manager = User.objects.create_user("bench-manager", "m@example.com", "x")
    site_ids = list(Site.objects.order_by("pk").values_list("pk", flat=True)[:100])
    SiteMembership.objects.bulk_create(
        SiteMembership(user=manager, site_id=pk, role=MembershipRole.MANAGER) for pk in site_ids
    )
    results["fleet_summary_admin_ms"] = best_of(args.repeat, fleet_summary, user=admin)
    results["fleet_summary_100_sites_ms"] = best_of(args.repeat, fleet_summary, user=manager)
    results["site_list_100_sites_page_ms"] = best_of(
        args.repeat,
        lambda: [
            site_health(s) for s in attach_health(list(site_list(user=manager).order_by("site_id")[:50]))
        ],
    )
    one = site_list(user=manager).get(pk=site_ids[0])
    results["site_health_one_site_ms"] = best_of(
        args.repeat,
        lambda: (
            site_health(attach_health([site_list(user=manager).get(pk=one.pk)])[0]),
            site_health_devices(one),
        ),
    )
    results["api_100_site_manager"] = time_api(manager, one.site_id, args.repeat)
    return results


def time_api(user, site_id: str, repeat: int) -> dict:
    """The same reads through the API as an integration calls it: Django's whole request path
    (middleware, DRF, bearer-token authentication, scoping, serializers, JSON), no socket.
    Median of `repeat` requests after one warm-up; status 200 checked."""
    import statistics

    from django.test import Client

    from accounts.services import api_token_issue

    _, raw = api_token_issue(user=user, name="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_HOST="localhost")
    urls = {
        "site_list_page_50_ms": "/api/v1/sites/?page_size=50",
        "site_health_ms": f"/api/v1/sites/{site_id}/health",
        "fleet_summary_ms": "/api/v1/fleet/summary",
    }
    timings = {}
    for name, url in urls.items():
        samples = []
        for _ in range(repeat + 1):
            start = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {response.status_code} {response.content[:300]!r}")
        timings[name] = round(statistics.median(samples[1:]), 1)
    return timings


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
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
    import django

    django.setup()
    try:
        results = {"devices": args.devices, "create_fleet_s": round(created_s, 1), **measure(args)}
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)
    results["machine"] = machine()
    for key, value in results.items():
        print(f"{key:32} {value:.1f}" if isinstance(value, float) else f"{key:32} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
