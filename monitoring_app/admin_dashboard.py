"""The fleet dashboard's table rows, written in Python.

Each of the dashboard's 20 alert rows and 20 job rows cost the template engine a dozen
variable look-ups, filters and tags (a third of the page's CPU with the charts); these
functions write the same HTML (a test compares them with the template's) in one
`format_html` per row. The table around them stays in the template.
"""

from django.utils import timezone
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
