#!/usr/bin/env python3
"""Benchmark `manage.py create_fleet` and deep cursor pages of the device list on PostgreSQL.

For each size (default 100,000 and 1,000,000 devices, 50 per site) the script
  1. drops and creates a scratch database (default `homepot_bench`) and migrates it,
  2. runs `manage.py create_fleet` as a user would (a subprocess) and times it,
  3. records the table and index sizes;
then, on the last (largest) fleet, it EXPLAIN ANALYZEs the queries behind the device API's
pages (first page, a deep keyset page, filtered deep pages, and OFFSET for contrast) and times
real API requests for a deep cursor page. The scratch database is dropped at the end unless
--keep is given.

Usage (from the project root, PostgreSQL reachable as a superuser via PGHOST/PGPORT/PGUSER):
    .venv/bin/python bench/bench_create_fleet.py
    .venv/bin/python bench/bench_create_fleet.py --sizes 100000 --keep --json bench/last-run.json
Results go to stdout; docs/performance.md records a run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PAGE = 50  # the API's default page size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_bench", help="Scratch database (dropped!).")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="Devices per run.")
    parser.add_argument("--devices-per-site", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=5, help="Timed repetitions of each query.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    return parser.parse_args()


# --- the scratch database ------------------------------------------------------------------


def pg_params() -> dict[str, str]:
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "password": os.environ.get("PGPASSWORD", ""),
    }


def admin_connect() -> psycopg.Connection:
    return psycopg.connect(dbname="postgres", autocommit=True, **pg_params())


def recreate_database(name: str) -> None:
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_url(name: str) -> str:
    p = pg_params()
    auth = quote(p["user"], safe="") + (":" + quote(p["password"], safe="") if p["password"] else "")
    return f"postgres://{auth}@{quote(p['host'], safe='')}:{p['port']}/{name}"


def manage(env: dict[str, str], *args: str) -> tuple[str, float]:
    """Run manage.py; return its stdout and its peak resident memory in MB (this child only)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(  # noqa: S603 (manage.py with fixed arguments)
            [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=err
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{err.read()[-2000:]}")
        return out.read(), usage.ru_maxrss / 1024  # ru_maxrss is in kB on Linux


def command_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DATABASE_URL=database_url(name),
        SECRET_KEY=env.get("SECRET_KEY") or secrets.token_urlsafe(50),  # nothing is signed here
        HOMEPOT_ENV_FILE="",  # a developer's .env must not redirect the benchmark
    )
    return env


# --- one create_fleet run ------------------------------------------------------------------


def run_fleet(args: argparse.Namespace, size: int) -> dict:
    sites = max(1, size // args.devices_per_site)
    env = command_env(args.database)
    recreate_database(args.database)
    manage(env, "migrate", "--no-input", "-v", "0")
    started = time.perf_counter()
    stdout, peak_rss_mb = manage(
        env,
        "create_fleet",
        "--sites",
        str(sites),
        "--devices-per-site",
        str(args.devices_per_site),
        "--batch-size",
        str(args.batch_size),
        "--site-prefix",
        "bench",
        "-v",
        "1",
    )
    wall = time.perf_counter() - started
    reported = re.search(r"in ([\d.]+) s", stdout)
    devices = sites * args.devices_per_site
    inserted_s = float(reported.group(1)) if reported else wall
    return {
        "devices": devices,
        "sites": sites,
        "insert_seconds": inserted_s,
        "command_wall_seconds": round(wall, 2),
        "devices_per_second": round(devices / inserted_s),
        "command_peak_rss_mb": round(peak_rss_mb, 1),
        "sizes": table_sizes(args.database),
        "summary": stdout.strip().splitlines()[0],
    }


def table_sizes(name: str) -> dict:
    sql = """
        SELECT c.relname,
               pg_relation_size(c.oid) AS heap,
               pg_indexes_size(c.oid) AS indexes,
               pg_total_relation_size(c.oid) AS total,
               (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS n_indexes
        FROM pg_class c
        WHERE c.relname IN ('devices_app_device', 'sites_app_site', 'monitoring_app_healthcheck')
        ORDER BY c.relname
    """
    index_sql = """
        SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
        FROM pg_index WHERE indrelid = 'devices_app_device'::regclass ORDER BY 2 DESC
    """
    with psycopg.connect(dbname=name, **pg_params()) as conn:
        tables = {
            rel: {"heap_mb": mb(heap), "indexes_mb": mb(idx), "total_mb": mb(total), "indexes": n}
            for rel, heap, idx, total, n in conn.execute(sql)
        }
        tables["devices_app_device"]["per_index_mb"] = {
            name: mb(size) for name, size in conn.execute(index_sql)
        }
    return tables


def mb(size: int) -> float:
    return round(size / 2**20, 1)


# --- deep pages on the largest fleet --------------------------------------------------------


def setup_django(name: str) -> None:
    os.environ.update(command_env(name))
    os.environ["DJANGO_SETTINGS_MODULE"] = "homepot.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def explain_ms(queryset) -> tuple[float, str]:
    """Execution time reported by EXPLAIN ANALYZE (best of a few runs, warm cache) and the plan."""
    plans = [queryset.explain(analyze=True, buffers=True) for _ in range(3)]
    times = [float(re.search(r"Execution Time: ([\d.]+) ms", plan).group(1)) for plan in plans]
    return min(times), plans[-1]


def measure_pages(args: argparse.Namespace) -> dict:
    from django.db.models import Subquery

    from devices_app.models import Device
    from devices_app.selectors import device_list
    from sites_app.models import Site

    admin = _bench_admin()
    devices = device_list(user=admin)
    last_id = Device.objects.order_by("-id").values_list("id", flat=True).first()
    deep_id = int(last_id * 0.99)  # the 99th percentile of the table: a very deep page
    late_site = (
        Site.objects.filter(devices__id__gte=deep_id).order_by("id").values_list("site_id", flat=True)[0]
    )
    site_pk = Site.objects.filter(site_id=late_site).values("pk")[:1]
    in_site = Device.objects.filter(site__site_id=late_site).order_by("id").values_list("id", flat=True)
    site_middle = in_site[len(in_site) // 2]

    queries = {
        "first page, no filter": devices.order_by("id")[: PAGE + 1],
        f"keyset page after id {deep_id:,}, no filter": devices.filter(id__gt=deep_id).order_by("id")[
            : PAGE + 1
        ],
        f"status=online, keyset after id {deep_id:,}": devices.filter(
            status="online", id__gt=deep_id
        ).order_by("id")[: PAGE + 1],
        f"status=error (2 % of the fleet), keyset after id {deep_id:,}": devices.filter(
            status="error", id__gt=deep_id
        ).order_by("id")[: PAGE + 1],
        f"site={late_site} & status=online, keyset after id {site_middle:,}": devices.filter(
            site=Subquery(site_pk), status="online", id__gt=site_middle
        ).order_by("id")[: PAGE + 1],
        f"device_type=card_reader, keyset after id {deep_id:,}": devices.filter(
            device_type="card_reader", id__gt=deep_id
        ).order_by("id")[: PAGE + 1],
        f"for contrast: OFFSET {deep_id:,} (not used by the API)": devices.order_by("id")[
            deep_id : deep_id + PAGE + 1
        ],
    }
    results = {}
    for label, queryset in queries.items():
        ms, plan = explain_ms(queryset)
        results[label] = {"execution_ms": ms, "plan": plan}
    results["api"] = _time_api(admin, deep_id, late_site, args.repeat)
    return results


def _bench_admin():
    from accounts.models import User

    user, _ = User.objects.get_or_create(
        username="bench-admin",
        defaults={"email": "bench-admin@example.com", "is_staff": True, "is_superuser": True},
    )
    return user


def _cursor(position: int) -> str:
    # DRF's cursor: base64 of a query string holding the position ("p") of the last row seen.
    return base64.b64encode(urlencode({"p": str(position)}).encode()).decode()


def _time_api(admin, deep_id: int, site_id: str, repeat: int) -> dict:
    """Wall time of whole API requests (auth, query, serialisation) for deep cursor pages."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(admin)
    timings = {}
    for label, params in {
        "GET /api/v1/devices?cursor=<deep>": {"cursor": _cursor(deep_id)},
        "GET /api/v1/devices?status=online&cursor=<deep>": {"status": "online", "cursor": _cursor(deep_id)},
        "GET /api/v1/devices?status=error&cursor=<deep>": {"status": "error", "cursor": _cursor(deep_id)},
        f"GET /api/v1/devices?site={site_id}&status=online": {"site": site_id, "status": "online"},
    }.items():
        samples = []
        try:
            for _ in range(repeat + 1):
                started = time.perf_counter()
                response = client.get("/api/v1/devices", params, HTTP_HOST="localhost")
                samples.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.content[:200]!r}")
            rows = len(response.json().get("results", []))
            timings[label] = {"median_ms": round(statistics.median(samples[1:]), 1), "rows": rows}
        except Exception as exc:  # the API timing is optional: report why, keep the rest
            timings[label] = {"skipped": str(exc)[:200]}
    return timings


# --- report ---------------------------------------------------------------------------------


def machine() -> dict:
    with psycopg.connect(dbname="postgres", **pg_params()) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(
            conn.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings "
                "WHERE name IN ('shared_buffers', 'max_wal_size', 'synchronous_commit', 'work_mem')"
            ).fetchall()
        )
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": version,
        "postgresql_settings": settings,
        "platform": platform.platform(),
    }


def print_report(results: dict) -> None:
    m = results["machine"]
    print(f"\nMachine: {m['cpus']} CPUs, {m['platform']}, PostgreSQL {m['postgresql']}, Python {m['python']}")
    print(f"PostgreSQL settings: {m['postgresql_settings']}\n")
    print(f"{'devices':>10} {'sites':>7} {'insert s':>9} {'wall s':>7} {'devices/s':>10} {'peak RSS MB':>12}")
    for run in results["runs"]:
        print(
            f"{run['devices']:>10,} {run['sites']:>7,} {run['insert_seconds']:>9.1f} "
            f"{run['command_wall_seconds']:>7.1f} {run['devices_per_second']:>10,} "
            f"{run['command_peak_rss_mb']:>12}"
        )
    for run in results["runs"]:
        print(f"\nSizes at {run['devices']:,} devices (MB):")
        for table, size in run["sizes"].items():
            print(
                f"  {table:<28} heap {size['heap_mb']:>7}  indexes {size['indexes_mb']:>7} "
                f"({size['indexes']})  total {size['total_mb']:>7}"
            )
        for index, size in run["sizes"]["devices_app_device"]["per_index_mb"].items():
            print(f"    {index:<50} {size:>7}")
    if "pages" in results:
        print(
            f"\nDevice list pages at {results['runs'][-1]['devices']:,} devices (EXPLAIN ANALYZE, best of 3):"
        )
        for label, result in results["pages"].items():
            if label != "api":
                print(f"  {result['execution_ms']:>9.3f} ms  {label}")
        print("API requests (median wall time, in-process test client):")
        for label, result in results["pages"]["api"].items():
            shown = (
                f"{result['median_ms']:>7.1f} ms  ({result['rows']} rows)"
                if "median_ms" in result
                else result
            )
            print(f"  {shown}  {label}")
        print("\nPlans:")
        for label, result in results["pages"].items():
            if label != "api":
                print(f"--- {label}\n{result['plan']}\n")


def main() -> None:
    args = parse_args()
    results = {"machine": machine(), "runs": []}
    try:
        for size in args.sizes:
            print(f"create_fleet: {size:,} devices into a fresh {args.database} ...", flush=True)
            run = run_fleet(args, size)
            print(f"  {run['summary']}", flush=True)
            results["runs"].append(run)
        setup_django(args.database)
        results["pages"] = measure_pages(args)
    finally:
        if not args.keep:
            if "django" in sys.modules:
                from django.apps import apps

                if apps.ready:
                    from django.db import connections

                    connections.close_all()
            drop_database(args.database)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
