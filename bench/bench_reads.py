"""Side-by-side timings of the console's and the API's reads at 1,000,000 devices.

    # once: a kept 1,000,000-device database with dashboard state (see docs/performance.md)
    python bench/bench_reads.py --database homepot_readperf_1m --code-root /tmp/base 3
    python bench/bench_reads.py --database homepot_readperf_1m --code-root . 3

Runs in-process against `--code-root` (this checkout, or an older one exported with
`git archive`, so the before and after run against the same database in the same session), as
the superuser `bench-admin`, through Django's test client (session or bearer token,
middleware, queries, template or JSON): each URL `repeat` times after one warm-up, printing
every sample, the number of SQL statements of one more request, their time and the shared
buffers they touch (each SELECT run again under EXPLAIN (ANALYZE, BUFFERS)), and a JSON
summary. `ONLY=name,name` limits the URLs.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import django_setup  # noqa: E402

URLS = {
    "changelist": ("browser", "/admin/devices_app/device/"),
    "search_device_id": ("browser", "/admin/devices_app/device/?q=bench-12345-pos"),
    "search_number": ("browser", "/admin/devices_app/device/?q=12345"),
    "search_name_common": ("browser", "/admin/devices_app/device/?q=Printer"),
    "search_ip_prefix": ("browser", "/admin/devices_app/device/?q=10.7.161"),
    "fleet_page": ("browser", "/admin/monitoring_app/alert/fleet/"),
    "landing": ("browser", "/admin/"),
    "fleet_summary_api": ("api", "/api/v1/fleet/summary"),
    "devices_api_first_page": ("api", "/api/v1/devices"),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repeat", type=int)
    parser.add_argument("--database", required=True)
    parser.add_argument("--code-root", default=".")
    args = parser.parse_args()
    django_setup(os.path.abspath(args.code_root), args.database)
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User
    from accounts.services import api_token_issue

    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["*"]
    admin = User.objects.get(username="bench-admin")
    _, raw = api_token_issue(user=admin, name="bench-reads")
    browser = Client()
    browser.force_login(admin)
    clients = {"browser": browser, "api": Client(HTTP_AUTHORIZATION=f"Bearer {raw}")}
    only = os.environ.get("ONLY")
    results = {}
    for name, (client, url) in URLS.items():
        if only and name not in only.split(","):
            continue
        samples = []
        for index in range(args.repeat + 1):
            start = time.perf_counter()
            response = clients[client].get(url)
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {response.status_code}")
            if index:
                samples.append(elapsed)
        with CaptureQueriesContext(connection) as queries:
            clients[client].get(url)
        sql_ms = sum(float(query["time"]) for query in queries.captured_queries) * 1000
        buffers = sum(_buffers(connection, query["sql"]) for query in queries.captured_queries)
        counted = f"{len(queries)} queries, {sql_ms:.1f} ms SQL, {buffers} buffers"
        print(name, [round(s, 1) for s in samples], counted, flush=True)
        results[name] = {
            "median": round(statistics.median(samples), 1),
            "min": round(min(samples), 1),
            "queries": len(queries),
            "sql_ms": round(sql_ms, 1),
            "buffers": buffers,
        }
    print(json.dumps(results))


def _buffers(connection, sql: str) -> int:
    """Shared buffers (8 kB pages, hit or read) one SELECT touches: EXPLAIN (ANALYZE,
    BUFFERS) runs it again. The cost in pages read, whatever the machine's load."""
    if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
        return 0
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
        plan = cursor.fetchone()[0]
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]["Plan"]
    return top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)


if __name__ == "__main__":
    main()
