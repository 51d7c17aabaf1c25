"""The timeline section of the admin's device and site change pages.

The events come from the same selectors as the timeline API (monitoring_app.selectors
device_timeline / site_timeline), so what a page shows and what the API answers are
written once. Rendered as a small table; alerts and jobs link to their own pages.
"""

from django.conf import settings
from django.utils.html import format_html, format_html_join

from homepot.admin import admin_change_url
from homepot.templatetags.homepot import zoned_time
from monitoring_app.selectors import device_timeline, site_timeline

TIMELINE_LIMIT = 50


def _subject(event: dict):
    """A link to the alert or job an event is about, when the user's admin has a page."""
    from jobs_app.models import Job
    from monitoring_app.models import Alert

    for key, model in (("alert", Alert), ("job", Job)):
        if event.get(key):
            url = admin_change_url(model, event[key])
            if url:
                return format_html('<a href="{}">{}</a>', url, event["summary"])
    return event["summary"]


def _what(event: dict) -> str:
    if event["type"] == "operator" and event.get("actor"):
        return f"operator ({event['actor']})"
    return event["type"]


def timeline_html(events: list[dict], zone_name: str | None = None):
    """The events as a table, their times in `zone_name` (the site's own zone: a store's
    "14:05" is its own clock) or the console's, the zone named in the header."""
    if not events:
        return "Nothing recorded yet."
    zone = zone_name or settings.TIME_ZONE
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (zoned_time(event["at"], zone_name, "%Y-%m-%d %H:%M:%S"), _what(event), _subject(event))
            for event in events
        ),
    )
    return format_html(
        '<table class="hp-timeline"><thead><tr><th>when ({})</th><th>what</th><th>event</th></tr></thead>'
        "<tbody>{}</tbody></table>",
        zone,
        rows,
    )


def device_timeline_html(device):
    """Health reports, connectivity changes, alerts, job deliveries, operator and system
    actions of the device, newest first, at most TIMELINE_LIMIT (one bounded query per
    source), in its site's time zone."""
    if device is None or device.pk is None:
        return "—"
    return timeline_html(device_timeline(device=device, limit=TIMELINE_LIMIT), device.site.timezone)


def site_timeline_html(site):
    """The site's devices' connectivity changes, alerts, jobs, operator and system actions,
    newest first, at most TIMELINE_LIMIT, in the site's time zone."""
    if site is None or site.pk is None:
        return "—"
    return timeline_html(site_timeline(site=site, limit=TIMELINE_LIMIT), site.timezone)
