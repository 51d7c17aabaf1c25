"""PostgreSQL's CPU per execution of the device list's page statement, by variant (issue 11, list4).

    python bench/bench_page_statement.py --database homepot_list4_100k --executions 3000 --rounds 3

The statement is the one `devices_app.selectors.device_page_after` runs for an admin's first
page (the ORM's, compiled by this checkout). Each variant runs on a fresh connection of its
own, `--executions` times after 50 of warm-up, sent as Django sends it (psycopg's client-side
binding, text protocol) either plain (`plain`: parsed and planned every time) or as `EXECUTE`
of a statement prepared once (`prepared`, what homepot.db.prepared does); the backend's CPU
comes from /proc (10 ms ticks: keep a few thousand executions). Variants of the row's shape:

- `to_char`: as the code has it (three times written as the API's text by to_char);
- `cast_text`: the times as `::text` (the session's DateStyle; Python would then have to
  rewrite each one);
- `no_times`, `no_config`: those columns replaced by NULL, for what they cost;
- `ids_only`: the ids alone (the scan, the join, the sort, the protocol).

Variants and modes alternate within each round; nothing is written.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.harness import cpu_seconds  # noqa: E402

_TIME = re.compile(r'CASE WHEN date_trunc.*?END AS "(\w+)_utc_text"')


def page_statement(database: str) -> str:
    os.environ.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only"),
        HOMEPOT_ENV_FILE="",
        DJANGO_SETTINGS_MODULE="homepot.settings",
    )
    import django

    django.setup()
    from accounts.models import User
    from devices_app.selectors import _PagePlan

    admin = User(is_superuser=True, is_active=True)
    return _PagePlan(admin, None, 51, fixed=True).sql


def variants(sql: str) -> dict[str, str]:
    device = '"devices_app_device"'
    return {
        "to_char": sql,
        "cast_text": _TIME.sub(lambda m: f'{device}."{m[1]}"::text AS "{m[1]}_utc_text"', sql),
        "no_times": _TIME.sub(lambda m: f'NULL AS "{m[1]}_utc_text"', sql),
        "no_config": sql.replace(f'{device}."config" AS "config"', 'NULL AS "config"'),
        "ids_only": re.sub(r"^SELECT .*? FROM ", f'SELECT {device}."id" FROM ', sql),  # noqa: S608
    }


def backend_ms(database: str, sql: str, prepared: bool, executions: int) -> float:
    import psycopg

    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    options = {"autocommit": True, "cursor_factory": psycopg.ClientCursor, "prepare_threshold": None}
    with psycopg.connect(url, **options) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        cursor = conn.cursor()
        statement = sql
        if prepared:
            cursor.execute(f"PREPARE bench_page AS {sql}")
            statement = "EXECUTE bench_page"
        for _ in range(50):
            cursor.execute(statement)
            cursor.fetchall()
        pid = conn.info.backend_pid
        start = cpu_seconds(pid)
        for _ in range(executions):
            cursor.execute(statement)
            cursor.fetchall()
        return (cpu_seconds(pid) - start) * 1000 / executions


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", required=True)
    parser.add_argument("--executions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        for name, sql in variants(page_statement(args.database)).items():
            for prepared in (False, True):
                key = f"{name} {'prepared' if prepared else 'plain'}"
                ms = round(backend_ms(args.database, sql, prepared, args.executions), 3)
                results.setdefault(key, []).append(ms)
                print(f"round {round_number} {key:22} backend {ms:.3f} ms", flush=True)
    print(json.dumps({"load_1min": os.getloadavg()[0], "backend_ms": results}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
