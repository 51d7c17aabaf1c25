"""The fleet dashboard's table rows and charts, written in Python.

Each of the dashboard's 20 alert rows and 20 job rows cost the template engine a dozen
variable look-ups, filters and tags (a third of the page's CPU with the charts); these
functions write the same HTML (a test compares them with the template's) in one
`format_html` per row. The four SVG charts likewise (their ticks, lines and
captions were as many template nodes again). The page around them stays in the template.
"""

from django.utils import dateformat, timezone
from django.utils.html import format_html, format_html_join

from homepot.admin import format_percent, reverse_change_url, status_badge


def _minute(moment) -> str:
    """`{{ moment|date:"Y-m-d H:i" }}`: the console's time zone, to the minute."""
    return "" if moment is None else f"{timezone.localtime(moment):%Y-%m-%d %H:%M}"


def _site_id(row) -> str:
    site = row.site
    return "" if site is None else site.site_id


def alert_rows(alerts) -> str:
    """The <tr> of each open alert, as fleet_dashboard.html's loop wrote them."""
    return format_html_join(
        "",
        '\n      <tr><td><a href="{}">{}</a></td>\n'
        "          <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n    ",
        (
            (
                reverse_change_url("admin:monitoring_app_alert_change", alert.pk),
                _minute(alert.opened_at),
                status_badge(alert.severity, alert.get_severity_display()),
                alert.get_kind_display(),
                _site_id(alert),
                alert.message,
            )
            for alert in alerts
        ),
    )


def _progress(job):
    if not job.delivery_total:
        return "no devices yet"
    total, finished = job.delivery_total, job.delivery_finished
    return format_html(
        '<progress value="{}" max="{}"></progress> {} of {} device{} done ({})',
        finished,
        total,
        finished,
        total,
        "" if total == 1 else "s",
        format_percent(job.delivery_percent),
    )


def job_rows(jobs) -> str:
    """The <tr> of each job in progress, as fleet_dashboard.html's loop wrote them."""
    return format_html_join(
        "",
        '\n      <tr><td><a href="{}">Job #{}</a></td><td>{}</td>\n'
        "          <td>{}</td><td>{}</td><td>{}</td>\n"
        "          <td>{}</td></tr>\n    ",
        (
            (
                reverse_change_url("admin:jobs_app_job_change", job.pk),
                job.pk,
                _minute(job.created_at),
                job.get_action_display(),
                _site_id(job),
                status_badge(job.status, job.get_status_display()),
                _progress(job),
            )
            for job in jobs
        ),
    )


def _caption_items(chart) -> str:
    lines = chart["lines"]
    return format_html_join(
        ", ",
        '<span style="color: {}">■</span> {}{}',
        (
            (
                line["color"],
                line["name"],
                "" if line["latest"] is None else format_html(" {}", line["latest"]),
            )
            for line in lines
        ),
    )


def _y_ticks(chart, plot) -> str:
    return format_html_join(
        "",
        '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" '
        'dominant-baseline="middle" fill="currentColor">{}</text>',
        (
            (plot["left"], plot["right"], tick["y"], tick["y"], plot["left"] - 6, tick["y"], tick["label"])
            for tick in chart["y_ticks"]
        ),
    )


def _x_ticks(chart, plot) -> str:
    ticks = chart["x_ticks"]
    anchors = ["middle"] * len(ticks)
    if ticks:
        anchors[-1] = "end"
        anchors[0] = "start"
    return format_html_join(
        "",
        '<text x="{}" y="{}" text-anchor="{}" fill="currentColor">{}</text>',
        (
            (tick["x"], plot["bottom"] + 14, anchor, tick["label"])
            for tick, anchor in zip(ticks, anchors, strict=True)
        ),
    )


def _polylines(chart) -> str:
    def dot(line):
        if not line["last_x"]:
            return ""
        return format_html(
            '<circle cx="{}" cy="{}" r="3" fill="{}"><title>{} now: {}</title></circle>',
            line["last_x"],
            line["last_y"],
            line["color"],
            line["name"],
            line["latest"],
        )

    return format_html_join(
        "",
        '<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"><title>{}</title></polyline>{}',
        ((line["color"], line["points"], line["name"], dot(line)) for line in chart["lines"]),
    )


def chart_figure(chart: dict, *, caption: str, kind: str, key: str, window: str) -> str:
    """One line chart (monitoring_app.rollup.chart) as inline SVG, no JavaScript, no
    external assets, axes labelled: counts of devices up, time (zone named) across. Its
    last point is the live count, the number of the table above it."""
    plot = chart["plot"]
    note = ""
    if chart["collecting_since"]:
        note = format_html(
            '<p class="hp-chart-note">Collecting since {} {} (a snapshot every 15 minutes); '
            "the last point is now.</p>",
            dateformat.format(timezone.localtime(chart["collecting_since"]), "D H:i"),
            chart["zone"],
        )
    return format_html(
        '\n<figure class="hp-chart" id="chart-{kind}-{key}">\n'
        "  <figcaption>{caption}:\n"
        "    {items}\n"
        "  </figcaption>\n"
        "  {note}\n"
        '  <svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'viewBox="0 0 {width} {height}" role="img" aria-label="{caption}, {window}" font-size="11" '
        'font-family="sans-serif">\n'
        "    {y_ticks}\n"
        '    <line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#999"/>\n'
        '    <line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#999"/>\n'
        "    {x_ticks}\n"
        '    <text x="12" y="{top4}" transform="rotate(-90 12 {top4})" text-anchor="end" '
        'fill="currentColor">devices</text>\n'
        '    <text x="{right}" y="{bottom_text}" text-anchor="end" fill="currentColor">time ({zone})</text>\n'
        "    {lines}\n"
        "  </svg>\n"
        "</figure>\n",
        kind=kind,
        key=key,
        caption=caption,
        items=_caption_items(chart),
        note=note,
        width=chart["width"],
        height=chart["height"],
        window=window,
        y_ticks=_y_ticks(chart, plot),
        left=plot["left"],
        right=plot["right"],
        top=plot["top"],
        bottom=plot["bottom"],
        x_ticks=_x_ticks(chart, plot),
        top4=plot["top"] + 4,
        bottom_text=chart["height"] - 2,
        zone=chart["zone"],
        lines=_polylines(chart),
    )
