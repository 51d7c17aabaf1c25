"""Where a console page's time goes, in-process: CPU per request and a cProfile of it.

    python bench/profile_console.py --database homepot_reads_1m                # every page
    python bench/profile_console.py --database homepot_reads_1m --pages changelist --top 40
    python bench/profile_console.py --database homepot_reads_1m --code-root /tmp/base

Serves each page through Django's test client (the whole middleware stack, a session of
`--user`, the production settings: DEBUG off, cached templates), `--repeat` times after
`--warm-up` requests, and prints per page: the process CPU per request (time.process_time,
so the machine's other load slows it but does not add to it; it includes the driver's
work, not PostgreSQL's), the SQL statements of one request and their wall time, the
response size, and with `--top N` the N functions of most cumulative and own time
(cProfile over the repeats; the profiler's overhead inflates the absolute figures, not the
ranking). `--calls` counts the Python function calls per request, which the machine's
load does not change (a before/after figure for a busy machine). `--code-root` serves an
older checkout (exported with `git archive`) against the same database.
"""

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import django_setup  # noqa: E402

PAGES = {
    "changelist": "/admin/devices_app/device/",
    "fleet_dashboard": "/admin/monitoring_app/alert/fleet/",
    "landing": "/admin/",
    "glance": "/admin/glance/",
    "site_changelist": "/admin/sites_app/site/",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--code-root", default=".")
    parser.add_argument("--user", default="bench-admin")
    parser.add_argument("--pages", default="changelist,fleet_dashboard,landing")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warm-up", type=int, default=3)
    parser.add_argument("--top", type=int, default=0, help="Print the N heaviest functions per page.")
    parser.add_argument("--save", type=Path, help="Also write each profile to SAVE-<page>.prof (pstats).")
    parser.add_argument(
        "--calls",
        action="store_true",
        help="Also count the Python function calls per request (cProfile over --repeat requests): "
        "a figure the machine's load does not move.",
    )
    return parser.parse_args()


def cpu_per_request(client, path: str, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        response = client.get(path)
        samples.append((time.process_time() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return samples


def sql_of_one(client, path: str) -> tuple[int, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client.get(path)
    seconds = sum(float(query["time"]) for query in queries.captured_queries)
    return len(queries.captured_queries), seconds * 1000, len(response.content)


def calls_per_request(client, path: str, repeat: int) -> float:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        client.get(path)
    profiler.disable()
    return pstats.Stats(profiler).total_calls / repeat


def profile(client, path: str, repeat: int, top: int, save: Path | None = None) -> str:
    # CPU time, not wall time: on a loaded machine the wall clock mostly measures waiting.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(repeat):
        client.get(path)
    profiler.disable()
    if save:
        profiler.dump_stats(save)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    args = parse_args()
    django_setup(Path(args.code_root).resolve(), args.database, CONN_MAX_AGE="600")
    from django.test import Client

    from accounts.models import User

    client = Client()
    client.force_login(User.objects.get(username=args.user))
    for page in args.pages.split(","):
        path = PAGES[page]
        cpu_per_request(client, path, args.warm_up)
        samples = sorted(cpu_per_request(client, path, args.repeat))
        statements, sql_ms, size = sql_of_one(client, path)
        print(
            f"{page:16} CPU ms/request median {statistics.median(samples):6.1f} "
            f"(min {samples[0]:.1f}, max {samples[-1]:.1f}, n={len(samples)}); "
            f"{statements} SQL statements, {sql_ms:.1f} ms of SQL wall time; {size:,} bytes",
            flush=True,
        )
        if args.calls:
            calls = calls_per_request(client, path, args.repeat)
            print(f"{page:16} Python function calls/request {calls:,.0f}")
        if args.top or args.save:
            save = args.save and args.save.with_name(f"{args.save.name}-{page}.prof")
            print(profile(client, path, args.repeat, args.top, save), flush=True)


if __name__ == "__main__":
    main()
