"""The device list's status filter at 1,000,000 devices, through the doors users use: the API's
keyset page and the admin changelist, each request's device query EXPLAINed.

    python bench/bench_status_filter.py <code root> <database>

For each status (offline, error, online) and page (the first; a deep one: the API from the
cursor position id > half the fleet's largest id, the admin its page 100), one request goes
through Django's test client as a superuser (created once, `bench-status-admin`), every SQL
statement it runs is captured, and the one that reads the page of devices is run again under
EXPLAIN (ANALYZE, BUFFERS). Prints one JSON object: per request the page's rows, the
statement's execution ms, shared buffers touched, the plan's top node and the request's
statement count. Read-only apart from the superuser.
"""

import base64
import json
import sys
import urllib.parse

from bench_sweep_trials import setup

STATUSES = ("offline", "error", "online")


def page_statement(queries: list[dict]) -> str:
    """The statement that reads the page's device rows (the longest SELECT over the device
    table with a LIMIT: the admin also counts, the API also reads the user's scope)."""
    selects = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "devices_app_device"' in q["sql"] and "LIMIT" in q["sql"]
    ]
    return max(selects, key=len)


def explain(sql: str) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        (plan,) = cursor.fetchone()
    top = plan[0]
    node = top["Plan"]
    return {
        "ms": round(top["Execution Time"], 1),
        "buffers": sum(node.get(f"Shared {k} Blocks", 0) for k in ("Hit", "Read")),
        "plan": _shape(node),
    }


def _shape(node: dict, depth: int = 0) -> str:
    """The plan's node types and relations, nested, on one line."""
    name = node["Node Type"] + (f" {node['Index Name']}" if "Index Name" in node else "")
    children = node.get("Plans", [])
    if not children or depth > 4:
        return name
    return name + "(" + ", ".join(_shape(child, depth + 1) for child in children) + ")"


def measure(client, url: str) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    if response.status_code != 200:  # e.g. the admin's page 100 of a status with 100 devices
        return {"http": response.status_code}
    sql = page_statement(captured.captured_queries)
    figures = explain(sql)
    figures["statements"] = len(captured.captured_queries)
    if url.startswith("/api/"):
        figures["rows"] = len(response.json()["results"])
    else:
        figures["rows"] = response.content.decode().count('class="action-select"')
    return figures


def main() -> None:
    root, database = sys.argv[1], sys.argv[2]
    setup(root, database)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from devices_app.models import Device

    settings.ALLOWED_HOSTS = ["*"]
    user, _ = get_user_model().objects.get_or_create(
        username="bench-status-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)
    middle = Device.objects.order_by("-id").values_list("id", flat=True).first() // 2
    cursor = base64.b64encode(f"p={middle}".encode()).decode()
    out = {}
    for status in STATUSES:
        out[f"api {status} first"] = measure(client, f"/api/v1/devices?status={status}&page_size=50")
        out[f"api {status} deep"] = measure(
            client, f"/api/v1/devices?status={status}&page_size=50&cursor={urllib.parse.quote(cursor)}"
        )
        out[f"admin {status} first"] = measure(client, f"/admin/devices_app/device/?status__exact={status}")
        out[f"admin {status} page 100"] = measure(
            client, f"/admin/devices_app/device/?status__exact={status}&p=100"
        )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
