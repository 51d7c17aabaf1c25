"""Load-independent evidence for the console's device search: EXPLAIN (ANALYZE, BUFFERS) of the
queries the admin changelist runs for a search (the first page of 50 in the list's order, and
the bounded count), with `<code root>`'s own `device_search`, on a kept database.

    python bench/bench_search_explain.py <code root> <database> [term ...]

Default terms are bench_reads.py's. Prints per term and query: execution ms and shared
buffers touched (hit + read), the load-independent figure.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import django_setup  # noqa: E402

TERMS = ["bench-12345-pos", "12345", "Printer", "10.7.161"]


def explain(queryset, wrap: str = "{}") -> dict:
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    sql = wrap.format(sql)
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        (plan,) = cursor.fetchone()
    node = plan[0]["Plan"]
    return {
        "ms": round(plan[0]["Execution Time"], 1),
        "buffers": node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0),
    }


def main() -> None:
    root, database, *terms = sys.argv[1:]
    django_setup(os.path.abspath(root), database)
    from devices_app.models import Device
    from devices_app.selectors import device_search

    out = {}
    for term in terms or TERMS:
        found = device_search(Device.objects.select_related("site").order_by("device_id"), term)
        # The changelist's bounded count (homepot.admin.EstimatedCountPaginator): at most 10,001.
        bounded = found.order_by().values("pk")[:10001]
        out[term] = {
            "page": explain(found[:50]),
            "bounded_count": explain(bounded, "SELECT count(*) FROM ({}) AS bounded"),  # noqa: S608
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
