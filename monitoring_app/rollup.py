"""The fleet rollup: per-site device counts at fixed moments, for the dashboard's charts.

The monitoring tick takes one snapshot per SNAPSHOT_MINUTES bucket: ONE
`INSERT ... SELECT` from the site-health rollup (devices_app.SiteHealthCount, one row per site;
a GROUP BY over the devices on SQLite), with the same counts as site health
(sites_app.selectors.health_counts), plus the chain's total row (FleetTotalSnapshot). A chart
of the last 7 days reads one row per point for an admin of the whole chain, one per site and
point for anyone else, never devices or health history.
"""

import datetime

from django.db import connection, connections, transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.scoping import scoped_site_ids
from devices_app.models import Device, SiteHealthCount
from monitoring_app.models import FleetSnapshot, FleetTotalSnapshot
from sites_app.selectors import health_counts_per_site

SNAPSHOT_MINUTES = 15
# Kept a little longer than the longest chart (7 days); retention removes older rows.
SNAPSHOT_KEEP_DAYS = 8
COUNTS = ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy")


def bucket_start(moment: datetime.datetime) -> datetime.datetime:
    """The start of the SNAPSHOT_MINUTES bucket `moment` falls in."""
    minute = moment.minute - moment.minute % SNAPSHOT_MINUTES
    return moment.replace(minute=minute, second=0, microsecond=0)


def fleet_snapshot_take(*, now: datetime.datetime | None = None) -> int:
    """Record every site's device counts for the current bucket, once: ONE INSERT ...
    SELECT ... GROUP BY site (ON CONFLICT DO NOTHING, so overlapping ticks are harmless),
    and the chain's total of those rows (FleetTotalSnapshot) in the same transaction.
    Returns the number of rows written (0 when the bucket is already taken)."""
    bucket = bucket_start(now or timezone.now())
    if FleetSnapshot.objects.filter(bucket_at=bucket).exists():
        return 0  # already taken this bucket: skip the GROUP BY over every device
    if connection.vendor == "postgresql":
        # The site-health rollup (one row per site), not a GROUP BY over every device.
        names = {f"health_{name}": F(name) for name in COUNTS}
        per_site = SiteHealthCount.objects.order_by().values("site_id").annotate(**names)
    else:
        per_site = health_counts_per_site(Device.objects.all())
    select_sql, params = per_site.query.sql_with_params()
    columns = ", ".join(COUNTS)
    sources = ", ".join(f"c.health_{name}" for name in COUNTS)
    sums = ", ".join(f"coalesce(sum({name}), 0)" for name in COUNTS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO monitoring_app_fleetsnapshot (site_id, bucket_at, {columns})
                SELECT c.site_id, %s, {sources} FROM ({select_sql}) c
                ON CONFLICT (site_id, bucket_at) DO NOTHING""",  # noqa: S608 (fixed names; values are parameters)
            [bucket, *params],
        )
        written = cursor.rowcount
        # The chain's total of the same rows, so an admin's chart reads one row per point.
        cursor.execute(
            f"""INSERT INTO monitoring_app_fleettotalsnapshot (bucket_at, {columns})
                SELECT %s, {sums} FROM monitoring_app_fleetsnapshot WHERE bucket_at = %s
                ON CONFLICT (bucket_at) DO NOTHING""",  # noqa: S608 (fixed names; values are parameters)
            [bucket, bucket],
        )
        return written


def fleet_totals_rebuild(*, using: str = "default") -> int:
    """Sum every bucket's FleetSnapshot rows again into its FleetTotalSnapshot row (ONE
    INSERT ... SELECT ... GROUP BY bucket_at, upserting): for rows that did not come from the
    tick (a fixture). Safe to repeat. Returns the number of buckets written."""
    columns = ", ".join(COUNTS)
    sums = ", ".join(f"sum({name})" for name in COUNTS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in COUNTS)
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO monitoring_app_fleettotalsnapshot (bucket_at, {columns})
                SELECT bucket_at, {sums} FROM monitoring_app_fleetsnapshot WHERE true GROUP BY bucket_at
                ON CONFLICT (bucket_at) DO UPDATE SET {updates}"""  # noqa: S608 (fixed names)
        )
        return cursor.rowcount


def fleet_history(*, user, hours: int, hourly: bool = False, now: datetime.datetime | None = None) -> dict:
    """The user's sites' counts summed per snapshot over the last `hours` (every bucket, or
    only the hourly ones): ONE query. A user who sees every site (the scoping rule says
    so) reads the chain's total rows (one per point); anyone else sums their own sites'
    rows, scoped with for_user."""
    end = bucket_start(now or timezone.now())
    start = end - datetime.timedelta(hours=hours)
    whole_chain = scoped_site_ids(user) is None
    if whole_chain and connection.vendor == "postgresql":
        return {"start": start, "end": end, "points": _chain_points(start, end, hours if hourly else None)}
    snapshots = FleetTotalSnapshot.objects.all() if whole_chain else FleetSnapshot.objects.for_user(user)
    if hourly:
        # The hours named one by one: the indexes find exactly those rows, where a filter on
        # the minute would read every bucket of the week and drop three in four.
        first_hour = end.replace(minute=0)
        hours_at = [first_hour - datetime.timedelta(hours=n) for n in range(hours)]
        snapshots = snapshots.filter(bucket_at__in=hours_at)
    else:
        snapshots = snapshots.filter(bucket_at__gt=start, bucket_at__lte=end)
    if whole_chain:
        points = list(snapshots.order_by("bucket_at").values("bucket_at", *COUNTS))
    else:
        sums = {name: Sum(name) for name in COUNTS}
        points = list(snapshots.order_by("bucket_at").values("bucket_at").annotate(**sums))
    return {"start": start, "end": end, "points": points}


def _chain_points(start, end, hours: int | None) -> list[dict]:
    """fleet_history's points for the whole chain (FleetTotalSnapshot, one row per point) in
    one statement written here rather than built by the ORM per request: the hourly window
    names its hours as ONE array parameter (`= ANY`, the same index lookups as `IN` with
    168 parameters, which Django compiled one by one)."""
    columns = ", ".join(("bucket_at", *COUNTS))
    table = connection.ops.quote_name(FleetTotalSnapshot._meta.db_table)
    if hours is None:
        where, params = "bucket_at > %s AND bucket_at <= %s", [start, end]
    else:
        first_hour = end.replace(minute=0)
        where, params = (
            "bucket_at = ANY(%s)",
            [[first_hour - datetime.timedelta(hours=n) for n in range(hours)]],
        )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE {where} ORDER BY bucket_at", params)  # noqa: S608 (fixed names)
        names = ("bucket_at", *COUNTS)
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


ONLINE_SERIES = (("online", "#2e7d32"), ("offline", "#c62828"))
HEALTH_SERIES = (("healthy", "#2e7d32"), ("degraded", "#ef6c00"), ("unhealthy", "#c62828"))


# The plot area's margins inside the SVG: room for the count labels on the left and the
# time labels below.
CHART_MARGIN = {"left": 52, "right": 12, "top": 10, "bottom": 34}


def chart(
    history: dict, series, *, current: dict | None = None, now=None, width: int = 640, height: int = 180
) -> dict:
    """What the template needs to draw one inline SVG line chart with labelled axes: per series
    a polyline (x by time, so a gap in the snapshots stays visible) and a dot on its latest
    point, the count ticks (y) and the time ticks (x, in the console's time zone, named).

    `current` (the live counts, from the same selector as the table beside the chart) is
    drawn as the last point at `now`: a fresh install draws a point from its first minute,
    and the chart's latest value is the table's number. When the snapshots start inside
    the window, `collecting_since` says when. No JavaScript, no external assets."""
    now = now or timezone.now()
    start, end = history["start"], history["end"]
    points = list(history["points"])
    if current is not None:
        end = max(end, now)
        points.append({"bucket_at": now, **{name: current.get(name) or 0 for name, _ in series}})
    left, top_margin = CHART_MARGIN["left"], CHART_MARGIN["top"]
    plot_w = width - left - CHART_MARGIN["right"]
    plot_h = height - top_margin - CHART_MARGIN["bottom"]
    span = (end - start).total_seconds() or 1
    top = max((point[name] or 0 for point in points for name, _ in series), default=0)
    scale = top or 1

    def x_of(moment) -> float:
        return left + (moment - start).total_seconds() / span * plot_w

    def y_of(value) -> float:
        return top_margin + plot_h - (value or 0) / scale * plot_h

    lines = []
    for name, color in series:
        coords = [(x_of(point["bucket_at"]), y_of(point[name])) for point in points]
        lines.append(
            {
                "name": name,
                "color": color,
                "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
                "last_x": f"{coords[-1][0]:.1f}" if coords else None,
                "last_y": f"{coords[-1][1]:.1f}" if coords else None,
                "latest": points[-1][name] if points else None,
            }
        )
    y_ticks = [
        {"y": f"{y_of(value):.1f}", "label": f"{value:,}"}
        for value in (sorted({0, round(top / 2), top}) if top else [0])
    ]
    long_window = (end - start) > datetime.timedelta(days=1)
    label_format = "%a %H:%M" if long_window else "%H:%M"
    x_ticks = [
        {"x": f"{x_of(moment):.1f}", "label": timezone.localtime(moment).strftime(label_format)}
        for moment in (start, start + (end - start) / 2, end)
    ]
    first = history["points"][0]["bucket_at"] if history["points"] else None
    collecting_since = None
    if first is None or first - start > datetime.timedelta(minutes=SNAPSHOT_MINUTES):
        collecting_since = timezone.localtime(first or now)
    return {
        "width": width,
        "height": height,
        "plot": {"left": left, "top": top_margin, "right": left + plot_w, "bottom": top_margin + plot_h},
        "top": top,
        "start": start,
        "end": end,
        "lines": lines,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "zone": timezone.localtime(now).tzname(),
        "collecting_since": collecting_since,
        "snapshots": len(history["points"]),
        "empty": not points,
    }
