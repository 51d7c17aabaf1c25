"""Where the admin health-check list spends its time, statement by statement.

    # on a database the history soak filled (bench_history_soak.py --fill-only --keep):
    python bench/bench_admin_health_list.py --database homepot_soak_bench --days 0 1 5 --rounds 3

For each size (the history made to hold exactly that many filled days, as the soak does, by
detaching and re-attaching whole days) and each page (as an admin of the chain: the default window,
any date, unhealthy only, the past 7 days, page 3; as a store manager of one site), in
rounds, the sizes alternating: the request through Django's test client, its wall time, and
for every SQL statement it ran that statement's own time, then EXPLAIN (ANALYZE, BUFFERS) of
it: shared buffers touched, rows, planning and execution time, and whether JIT compiled it.
The EXPLAIN runs after the request, outside its transaction, with JIT as the server has it:
its JIT figure is what the statement costs without the list's `SET LOCAL jit = off`.
The buffers, the statements and this thread's CPU time are what the machine's load moves
least; the wall time is mostly the load.

Nothing is written to the history: the bench user and its membership are created once.
Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import machine, setup_django  # noqa: E402
from bench.bench_history_soak import attach_only, filled_days, history_rows, log  # noqa: E402

LIST = "/admin/monitoring_app/healthcheck/"
# "any date" is the list as it was before it had a default window (the same SQL).
PAGES = {
    "admin": LIST,
    "admin_any_date": LIST + "?window=all",
    "admin_unhealthy": LIST + "?status__exact=unhealthy",
    "admin_unhealthy_any_date": LIST + "?status__exact=unhealthy&window=all",
    "admin_past_7_days": LIST + "?window=7d",
    "admin_page_3": LIST + "?p=3",
    "store_manager": LIST,
    "store_manager_any_date": LIST + "?window=all",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--days", type=int, nargs="+", default=[0, 1, 5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", nargs="+", default=list(PAGES), choices=list(PAGES))
    parser.add_argument("--no-explain", action="store_true", help="Time the statements only.")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def bench_users():
    """An admin of the chain and a store manager of the first site."""
    from accounts.choices import MembershipRole
    from accounts.models import SiteMembership, User
    from sites_app.models import Site

    admin = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser(
        "bench-admin", "bench@example.com", "x"
    )
    manager, created = User.objects.get_or_create(username="bench-store-manager", defaults={"is_staff": True})
    if created:
        from django.contrib.auth.models import Permission

        manager.user_permissions.add(
            Permission.objects.get(content_type__app_label="monitoring_app", codename="view_healthcheck")
        )
        SiteMembership.objects.create(
            user=manager, site=Site.objects.order_by("pk").first(), role=MembershipRole.MANAGER
        )
    return admin, manager


class StatementTimer:
    """execute_wrapper: each statement's SQL (parameters bound) and its own wall time."""

    def __init__(self):
        self.statements: list[tuple[str, float]] = []

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            took = (time.perf_counter() - start) * 1000
            bound = context["connection"].ops.last_executed_query(context["cursor"], sql, params)
            self.statements.append((bound, took))


def explain(sql: str) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of one SELECT: buffers, rows, times, JIT, top plan node."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
    top = plan["Plan"]
    jit = plan.get("JIT", {})
    return {
        "buffers": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
        "buffers_read": top["Shared Read Blocks"],
        "rows": top["Actual Rows"],
        "planning_ms": round(plan["Planning Time"], 2),
        "execution_ms": round(plan["Execution Time"], 2),
        "jit_ms": round(jit.get("Timing", {}).get("Total", 0), 1) if jit else 0,
        "node": top["Node Type"],
        "plan": top,
        "partitions_scanned": _scans(top),
    }


def _scans(node: dict) -> int:
    """How many relation scans the plan ran (each partition's index or heap counts one)."""
    own = 1 if "Relation Name" in node and node.get("Actual Loops", 0) else 0
    return own + sum(_scans(child) for child in node.get("Plans", []))


def measure_page(client, url: str, *, do_explain: bool) -> dict:
    from django.db import connection

    timer = StatementTimer()
    with connection.execute_wrapper(timer):
        start, start_cpu = time.perf_counter(), time.thread_time()
        response = client.get(url, HTTP_HOST="localhost")
        wall = (time.perf_counter() - start) * 1000
        cpu = (time.thread_time() - start_cpu) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {response.status_code}")
    statements = []
    for sql, took in timer.statements:
        entry = {"sql": sql, "ms": round(took, 1)}
        if do_explain and sql.lstrip().upper().startswith("SELECT") and "django_session" not in sql:
            entry["explain"] = explain(sql)
        statements.append(entry)
    return {
        "wall_ms": round(wall, 1),
        "cpu_ms": round(cpu, 1),
        "sql_ms": round(sum(took for _, took in timer.statements), 1),
        "rows_listed": len(response.context["cl"].result_list),
        "count_shown": response.context["cl"].result_count,
        "statements": statements,
    }


def run(args) -> dict:
    from django.conf import settings
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the responses carry their template context (the rows listed)
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "testserver"]
    admin, manager = bench_users()
    clients = {"admin": Client(), "manager": Client()}
    clients["admin"].force_login(admin)
    clients["manager"].force_login(manager)
    urls = PAGES
    filled = filled_days()
    results = []
    for round_number in range(args.rounds):
        for days in args.days:
            attach_only(days, filled)
            rows = history_rows()
            for name in args.pages:
                client = clients["manager" if name.startswith("store_manager") else "admin"]
                client.get(urls[name], HTTP_HOST="localhost")  # the session and the plan cache warm
                measured = measure_page(client, urls[name], do_explain=not args.no_explain)
                measured.update(round=round_number + 1, days=days, health_rows=rows, page=name)
                log(
                    f"round {round_number + 1}, {days} days, {name}: {measured['wall_ms']} ms "
                    f"(CPU {measured['cpu_ms']}, SQL {measured['sql_ms']}), "
                    f"{len(measured['statements'])} statements, slowest "
                    f"{max(s['ms'] for s in measured['statements'])} ms"
                )
                results.append(measured)
    attach_only(max(args.days), filled)
    return {"pages": results, "summary": summarize(results)}


def summarize(results: list[dict]) -> dict:
    """Per page and size: median wall ms, statements, the sum of EXPLAIN buffers, worst JIT."""
    summary: dict = {}
    for entry in results:
        key = f"{entry['page']} @ {entry['days']} days"
        buffers = sum(s.get("explain", {}).get("buffers", 0) for s in entry["statements"])
        jit = max((s.get("explain", {}).get("jit_ms", 0) for s in entry["statements"]), default=0)
        slot = summary.setdefault(
            key, {"wall_ms": [], "cpu_ms": [], "sql_ms": [], "statements": [], "buffers": [], "jit_ms": []}
        )
        slot["wall_ms"].append(entry["wall_ms"])
        slot["cpu_ms"].append(entry["cpu_ms"])
        slot["sql_ms"].append(entry["sql_ms"])
        slot["statements"].append(len(entry["statements"]))
        slot["buffers"].append(buffers)
        slot["jit_ms"].append(jit)
    for slot in summary.values():
        slot["median_wall_ms"] = statistics.median(slot["wall_ms"])
    return summary


def main() -> None:
    args = parse_args()
    setup_django(args.database)
    results = run(args)
    results["machine"] = machine()
    text = json.dumps(results, indent=2, default=str)
    print(json.dumps(results["summary"], indent=1))
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
