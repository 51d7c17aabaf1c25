"""Reads of the monitoring app."""

import datetime
import functools
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from accounts.scoping import scoped_site_ids
from homepot.compiled_sql import ParameterisedRead, fetch_prebuilt, prebuilt
from homepot.db import stream
from monitoring_app.models import AuditLog, DeviceStatusChange
from monitoring_app.services import GENESIS_HASH


@dataclass(frozen=True)
class ChainReport:
    rows_checked: int
    broken_row_id: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_row_id is None


def audit_chain_verify(*, chunk_size: int = 5000, checkpoints=()) -> ChainReport:
    """Walk the audit chain in id order and return the first row whose link or content
    does not match. Streams the table in chunks, so memory stays flat at any size.

    The first row must link to the genesis hash (nothing cut from the oldest end). With
    `checkpoints` (monitoring_app.checkpoints), every checkpointed row must still be in the
    chain at its recorded position with its recorded hash, and the chain must reach the
    last checkpoint (nothing cut from the newest end up to it)."""
    expected = {c.row_id: c for c in checkpoints if c.row_id}
    expected_prev = GENESIS_HASH
    checked = 0
    for row in stream(AuditLog.objects.order_by("id"), chunk_size=chunk_size):
        if row.prev_hash != expected_prev:
            return ChainReport(
                checked, row.pk, "its link to the previous row does not match (a row was removed or inserted)"
            )
        if row.compute_hash() != row.row_hash:
            return ChainReport(checked, row.pk, "its content does not match its hash (the row was altered)")
        expected_prev = row.row_hash
        checked += 1
        checkpoint = expected.pop(row.pk, None)
        if checkpoint is not None and (checkpoint.row_hash, checkpoint.count) != (row.row_hash, checked):
            return ChainReport(
                checked - 1,
                row.pk,
                f"it differs from the checkpoint of {checkpoint.taken_at} (row {checkpoint.count} "
                f"of the chain, hash {checkpoint.row_hash[:12]}…): the chain was rewritten",
            )
    if expected:
        missing = min(expected.values(), key=lambda c: c.row_id)
        last = max(checkpoints, key=lambda c: c.count)
        return ChainReport(
            checked,
            missing.row_id,
            f"the checkpoint of {missing.taken_at} names it as row {missing.count} of the chain but it is "
            f"gone: rows were cut from the end (the trail holds {checked} row(s), the last checkpoint "
            f"counted {last.count})",
        )
    return ChainReport(checked)


# --- Timelines ---------------------------------------------------------------------------


# The columns each kind of event shows, in the order its rows are unpacked (the rest, a
# report's metrics or an audit's old and new values, is JSON the timeline would decode for
# nothing: about a tenth of its CPU).
_REPORT_COLUMNS = ("checked_at", "status", "error_message")
_CHANGE_COLUMNS = ("changed_at", "old_status", "new_status", "reason")
_ALERT_COLUMNS = ("id", "opened_at", "resolved_at", "message")
_JOB_COLUMNS = ("created_at", "status", "job_id", "job__action")
_AUDIT_COLUMNS = ("created_at", "actor_id", "actor_ref", "description", "event_type")


def _event(at, kind: str, summary: str, **extra) -> dict:
    return {"at": at, "type": kind, "summary": summary, **extra}


@functools.cache
def _labels(model, field_name: str) -> dict:
    """A choice field's labels by value, as `get_FOO_display()` reads them (a value not
    among the choices shows as itself: `_labels(...).get(value, value)`)."""
    return dict(model._meta.get_field(field_name).flatchoices)


def _alert_events(alerts) -> list[dict]:
    """`alerts`: rows of _ALERT_COLUMNS."""
    events = []
    for pk, opened_at, resolved_at, message in alerts:
        events.append(_event(opened_at, "alert", f"Alert opened: {message}", alert=pk))
        if resolved_at:
            events.append(_event(resolved_at, "alert", f"Alert resolved: {message}", alert=pk))
    return events


def _connectivity_summary(old: str, new: str, reason: str) -> str:
    """A connectivity change as both timelines write it: "online → offline (Sweep)"."""
    return f"{old} → {new} ({_labels(DeviceStatusChange, 'reason').get(reason, reason)})"


def _job_events(rows, *, status_of) -> list[dict]:
    """Jobs, from rows of _JOB_COLUMNS: a device's deliveries (`status_of` Delivery, whose
    status names its copy of the job) or a site's jobs (`status_of` Job)."""
    from jobs_app.models import Job

    actions, statuses = _labels(Job, "action"), _labels(status_of, "status")
    return [
        _event(
            created_at,
            "job",
            f"Job #{job} {actions.get(action, action)}: {statuses.get(status, status)}",
            job=job,
        )
        for created_at, status, job, action in rows
    ]


def _audit_events(entries) -> list[dict]:
    """Audited actions, from rows of _AUDIT_COLUMNS: "operator" when a person did it (named
    in `actor`), "system" when the product did (sweeps, rollouts, retention), the word the
    audit list uses too."""
    return [
        _event(
            created_at,
            "operator" if actor_id else "system",
            description,
            actor=actor_ref if actor_id else "system",
            event=event_type,
        )
        for created_at, actor_id, actor_ref, description, event_type in entries
    ]


# --- Newest first over a history partitioned by day -------------------------------------------

# How far back from its anchor a newest-first read of one device's history looks first.
DEVICE_HISTORY_SPANS = (datetime.timedelta(days=1), datetime.timedelta(days=7))


def newest_first(fetch, *, limit: int, anchor, spans=DEVICE_HISTORY_SPANS) -> list:
    """The first `limit` rows of a history newest first, read from the days that hold them.
    `fetch(since)` reads the first `limit` rows of the history's newest-first order whose
    time is at or after `since` (None: of the whole history). First only the rows since
    `anchor` - span for each span in turn, then (when none of those windows holds `limit`
    rows) the whole history.

    Why: with a DEFAULT partition PostgreSQL cannot read day partitions as an ordered Append,
    so an unbounded "newest first, LIMIT n" opens the index of every day kept (a Merge
    Append): its cost grows with the retention. A lower bound on the time is pruned at plan
    time, so a window costs the days it covers. Exact whatever the anchor: rows inside the
    window all sort before every row outside it, so once the window holds `limit` rows they
    are the first `limit` rows of the whole history (later rows only land inside it). A wrong
    or stale anchor costs a query, never a row. `anchor` None: the whole history at once.
    """
    if anchor is not None:
        for span in spans:
            rows = fetch(anchor - span)
            if len(rows) == limit:
                return rows
    return fetch(None)


def recent_reports_span(limit: int) -> datetime.timedelta | None:
    """The span in which a device reporting at the expected interval sends twice `limit`
    health reports (100 minutes for 50 at one a minute): the first window of a device's
    timeline, which then reads today's day alone instead of yesterday's rows too. None when
    that is a day or more (the day's window comes first anyway)."""
    span = datetime.timedelta(seconds=2 * limit * settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS)
    return span if span < DEVICE_HISTORY_SPANS[0] else None


# The timelines' reads, compiled once per process (and limit): building them again on every
# request was a third of a device timeline's CPU (docs/performance.md, issue 11).
def _device_reports(device, *since, limit):
    from monitoring_app.models import HealthCheck

    reports = HealthCheck.objects.filter(device_id=device)
    if since:
        reports = reports.filter(checked_at__gte=since[0])
    return reports.order_by("-checked_at", "-id").values_list(*_REPORT_COLUMNS)[:limit]


def _device_changes(device, *since, limit):
    changes = DeviceStatusChange.objects.filter(device_id=device)
    if since:
        changes = changes.filter(changed_at__gte=since[0])
    return changes.order_by("-changed_at", "-id").values_list(*_CHANGE_COLUMNS)[:limit]


def _alerts(*, limit, **owner):
    from monitoring_app.models import Alert

    return Alert.objects.filter(**owner).order_by("-opened_at", "-id").values_list(*_ALERT_COLUMNS)[:limit]


def _audit(*, limit, **subject):
    return AuditLog.objects.filter(**subject).order_by("-id").values_list(*_AUDIT_COLUMNS)[:limit]


def _device_deliveries(device, *, limit):
    from jobs_app.models import Delivery

    return Delivery.objects.filter(device_id=device).order_by("-id").values_list(*_JOB_COLUMNS)[:limit]


def _site_changes(site, *, limit):
    return (
        DeviceStatusChange.objects.filter(device__site_id=site)
        .order_by("-changed_at", "-id")
        .values_list("device__device_id", *_CHANGE_COLUMNS)[:limit]
    )


def _site_jobs(site, *, limit):
    from jobs_app.models import Job

    return (
        Job.objects.filter(site_id=site)
        .order_by("-id")
        .values_list("created_at", "status", "id", "action")[:limit]
    )


_DEVICE_REPORTS = ParameterisedRead(_device_reports, int)
_DEVICE_REPORTS_SINCE = ParameterisedRead(_device_reports, int, datetime.datetime)
_DEVICE_CHANGES = ParameterisedRead(_device_changes, int)
_DEVICE_CHANGES_SINCE = ParameterisedRead(_device_changes, int, datetime.datetime)
_DEVICE_ALERTS = ParameterisedRead(lambda device, *, limit: _alerts(device_id=device, limit=limit), int)
_DEVICE_DELIVERIES = ParameterisedRead(_device_deliveries, int)
_DEVICE_AUDIT = ParameterisedRead(lambda ref, *, limit: _audit(device_ref=ref, limit=limit), str)
_SITE_CHANGES = ParameterisedRead(_site_changes, int)
_SITE_ALERTS = ParameterisedRead(lambda site, *, limit: _alerts(site_id=site, limit=limit), int)
_SITE_JOBS = ParameterisedRead(_site_jobs, int)
_SITE_AUDIT = ParameterisedRead(lambda site, *, limit: _audit(site_id=site, limit=limit), int)


def _newest_of(read, read_since, key, limit: int):
    """`fetch(since)` of newest_first over `read` (the whole history of `key`) and
    `read_since` (from a time on)."""

    def fetch(since):
        return read.rows(key, limit=limit) if since is None else read_since.rows(key, since, limit=limit)

    return fetch


def device_timeline(*, device, limit: int = 50) -> list[dict]:
    """One device's history, newest first: health reports, connectivity changes, alerts,
    jobs and audited actions. One bounded query per source (each served by a (device, time)
    index), merged in Python: at most 5 × `limit` rows read. The health reports and
    connectivity changes (histories partitioned by day) are read newest_first from what the
    device row knows (its latest health's time, first the span of twice `limit` reports at
    the expected interval; its last connectivity change), and the changes
    no further back than the oldest report shown when the reports fill the timeline, so their
    cost does not grow with the days kept (a device silent for days still reads them all)."""
    from devices_app.models import Device  # noqa: F401 (documentation: `device` is a Device)
    from jobs_app.models import Delivery
    from monitoring_app.models import HealthCheck

    recent = recent_reports_span(limit)
    reports = newest_first(
        _newest_of(_DEVICE_REPORTS, _DEVICE_REPORTS_SINCE, device.pk, limit),
        limit=limit,
        anchor=device.last_health_at,
        spans=DEVICE_HISTORY_SPANS if recent is None else (recent, *DEVICE_HISTORY_SPANS),
    )
    health = _labels(HealthCheck, "status")
    events = [
        _event(checked_at, "health", health.get(status, status) + (f": {error}" if error else ""))
        for checked_at, status, error in reports
    ]
    if len(reports) == limit:
        # The reports alone fill the timeline: a change older than the oldest of them cannot
        # make the cut, so the changes are read from its time on, one statement over the days
        # since (pruned at plan time). Without it a device with few changes (most of them)
        # read every day kept: the windows of newest_first hold fewer than `limit` rows.
        changes = _DEVICE_CHANGES_SINCE.rows(device.pk, reports[-1][0], limit=limit)
    else:
        changes = newest_first(
            _newest_of(_DEVICE_CHANGES, _DEVICE_CHANGES_SINCE, device.pk, limit),
            limit=limit,
            anchor=device.connectivity_changed_at,
        )
    events += [
        _event(changed_at, "connectivity", _connectivity_summary(old, new, reason))
        for changed_at, old, new, reason in changes
    ]
    events += _alert_events(_DEVICE_ALERTS.rows(device.pk, limit=limit))
    events += _job_events(_DEVICE_DELIVERIES.rows(device.pk, limit=limit), status_of=Delivery)
    events += _audit_events(_DEVICE_AUDIT.rows(device.device_id, limit=limit))
    return sorted(events, key=lambda e: e["at"], reverse=True)[:limit]


def site_timeline(*, site, limit: int = 50) -> list[dict]:
    """One site's history, newest first: its devices' connectivity changes, alerts, jobs and
    audited actions (health reports stay on the device timelines: a site has thousands)."""
    from jobs_app.models import Job

    events = [
        _event(changed_at, "connectivity", f"{device_id}: {_connectivity_summary(old, new, reason)}")
        for device_id, changed_at, old, new, reason in _SITE_CHANGES.rows(site.pk, limit=limit)
    ]
    events += _alert_events(_SITE_ALERTS.rows(site.pk, limit=limit))
    events += _job_events(_SITE_JOBS.rows(site.pk, limit=limit), status_of=Job)
    events += _audit_events(_SITE_AUDIT.rows(site.pk, limit=limit))
    return sorted(events, key=lambda e: e["at"], reverse=True)[:limit]


# --- The fleet dashboard ------------------------------------------------------------------


def _delivery_count(**filters):
    """A job's deliveries (matching `filters`) counted in a correlated subquery, served by
    the (job, status, id) index: an index-only count per listed job."""
    from django.db.models import Count, IntegerField, OuterRef, Subquery
    from django.db.models.functions import Coalesce

    from jobs_app.models import Delivery

    counted = (
        Delivery.objects.filter(job=OuterRef("pk"), **filters)
        .order_by()
        .values("job")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def jobs_in_progress(*, user, limit: int = 20) -> list:
    """The unfinished jobs of the user's sites (by the job's site, like the jobs list),
    newest first, at most `limit`, each with `delivery_total` and `delivery_finished`:
    ONE query (two correlated counts per listed job)."""
    from jobs_app.choices import DELIVERY_FINISHED, JOB_ACTIVE_STATUSES
    from jobs_app.models import Job

    jobs = (
        Job.objects.for_user(user)
        .filter(status__in=JOB_ACTIVE_STATUSES)
        .select_related("site")
        .annotate(
            delivery_total=_delivery_count(), delivery_finished=_delivery_count(status__in=DELIVERY_FINISHED)
        )
        .order_by("-created_at", "-id")[:limit]
    )
    jobs = list(jobs)
    for job in jobs:
        job.delivery_percent = (
            round(100 * job.delivery_finished / job.delivery_total) if job.delivery_total else None
        )
    return jobs


# --- The fleet at a glance ----------------------------------------------------------------

TROUBLED_SITES = 10


def _severity_key(summary: dict) -> tuple:
    """Worst first: down before degraded, then most offline, unhealthy, degraded."""
    rank = {"down": 0, "degraded": 1, "healthy": 2}[summary["status"]]
    return (rank, -summary["offline"], -summary["unhealthy"], -summary["degraded"])


def _health_counts_by_site(devices) -> list[dict]:
    """sites_app.selectors.health_counts per site (plus `status_error`), from ONE
    `GROUP BY site, status, health_status` with a single count, folded here: at most one row
    per site and (status, health) pair (a few thousand for 1,000 sites). PostgreSQL counts
    this faster than eight filtered counts per row (60 against 80-95 ms at 100,000 devices,
    docs/performance.md), and an index on (site, status, health_status) would make it an
    index-only scan. The rule is site health's (`health_counts`); a test holds the two equal."""
    from django.db.models import Count

    from devices_app.choices import DeviceStatus
    from monitoring_app.choices import HealthStatus
    from sites_app.selectors import _NOT_MONITORED

    not_offline = {*_NOT_MONITORED, DeviceStatus.ONLINE}
    names = ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy")
    zero = {"status_error": 0, **{f"health_{name}": 0 for name in names}}
    sites: dict[int, dict] = {}
    rows = devices.order_by().values_list("site_id", "status", "health_status").annotate(n=Count("*"))
    for site_id, status, health, n in rows:
        counts = sites.setdefault(site_id, {"site_id": site_id, **zero})
        counts["health_total"] += n
        if status == DeviceStatus.ONLINE:
            counts["health_online"] += n
            key = {HealthStatus.DEGRADED: "health_degraded", HealthStatus.UNHEALTHY: "health_unhealthy"}
            counts[key.get(health, "health_healthy")] += n
        elif status == DeviceStatus.MAINTENANCE:
            counts["health_maintenance"] += n
        if status not in not_offline:
            counts["health_offline"] += n
        if status == DeviceStatus.ERROR:
            counts["status_error"] += n
    return list(sites.values())


_COUNT_NAMES = ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy")


# A site's offline share is a float in the database; the index range starts this much below
# the fraction and the exact rule (as health_summary writes it) decides at the boundary.
_SHARE_SLACK = 1e-9


def _site_down_rule(fraction: float) -> Q:
    """health_summary's "down" over SiteHealthCount columns: something is monitored and
    nothing is online, or the offline share reaches the outage fraction. The first term is
    the range of the (offline_share) index; the second is the rule itself."""
    from django.db.models import ExpressionWrapper, F, FloatField, Value

    outage = ExpressionWrapper(Value(fraction) * (F("online") + F("offline")), output_field=FloatField())
    return Q(offline_share__gte=min(fraction, 1.0) - _SHARE_SLACK) & (Q(online=0) | Q(offline__gte=outage))


_TROUBLE_ORDER = ("-offline", "-unhealthy", "-degraded", "site_id")


def _rollup_totals(rows, fraction: float) -> dict:
    """The totals and the number of sites down over `rows` (SiteHealthCount): ONE aggregate."""
    from django.db.models import Count, Sum
    from django.db.models.functions import Coalesce

    from devices_app.models import SITE_HEALTH_COUNTS

    return rows.aggregate(
        **{_TOTAL_NAMES[name]: Coalesce(Sum(name), 0) for name in SITE_HEALTH_COUNTS},
        sites_down=Count("pk", filter=_site_down_rule(fraction)),
    )


def _rollup_down_sites(rows, fraction: float, limit: int):
    """The worst `limit` down sites of `rows` (the top of the offline-share index)."""
    from devices_app.models import SITE_HEALTH_COUNTS

    down = rows.filter(_site_down_rule(fraction)).order_by(*_TROUBLE_ORDER)
    return down.values("site_id", *SITE_HEALTH_COUNTS)[:limit]


def _rollup_other_troubled_sites(rows, fraction: float, limit: int):
    """The worst `limit` sites of `rows` in trouble but not down (the trouble index)."""
    from devices_app.models import SITE_HEALTH_COUNTS

    in_trouble = Q(offline__gt=0) | Q(degraded__gt=0) | Q(unhealthy__gt=0)
    others = rows.filter(in_trouble).exclude(_site_down_rule(fraction)).order_by(*_TROUBLE_ORDER)
    return others.values("site_id", *SITE_HEALTH_COUNTS)[:limit]


def _open_alert_counts(alerts) -> dict:
    from django.db.models import Count

    from monitoring_app.choices import AlertSeverity

    return alerts.open().aggregate(
        total=Count("pk"),
        critical=Count("pk", filter=Q(severity=AlertSeverity.CRITICAL)),
        warning=Count("pk", filter=Q(severity=AlertSeverity.WARNING)),
        unacknowledged=Count("pk", filter=Q(acknowledged_at__isnull=True)),
    )


# The whole chain's fleet reads (an admin's: no user in them), compiled once per process
# (homepot.compiled_sql): the key names every value the statement depends on.
@prebuilt("fleet.totals")
def _whole_chain_totals(fraction: float):
    from devices_app.models import SiteHealthCount

    return lambda: _rollup_totals(SiteHealthCount.objects.all(), fraction)


@prebuilt("fleet.down_sites")
def _whole_chain_down_sites(fraction: float, limit: int):
    from devices_app.models import SiteHealthCount

    return lambda: list(_rollup_down_sites(SiteHealthCount.objects.all(), fraction, limit))


@prebuilt("fleet.other_troubled_sites")
def _whole_chain_other_troubled_sites(fraction: float, limit: int):
    from devices_app.models import SiteHealthCount

    return lambda: list(_rollup_other_troubled_sites(SiteHealthCount.objects.all(), fraction, limit))


@prebuilt("fleet.open_alert_counts")
def _whole_chain_open_alert_counts():
    from monitoring_app.models import Alert

    return lambda: _open_alert_counts(Alert.objects.all())


@prebuilt("fleet.sites")
def _whole_chain_sites():
    from sites_app.models import Site

    return lambda: Site.objects.count()


def _fleet_counts_from_rollup(user) -> tuple[dict, int, list[dict]]:
    """The fleet totals, the number of sites down and the TROUBLED_SITES worst sites' counts
    from SiteHealthCount (one row per site, kept by triggers): the totals and the down count
    in ONE aggregate over the user's rows (scoped by for_user, the one rule), then the worst
    sites from its indexes: the down sites first (the top of the offline-share index), then
    the others in trouble (the trouble index, worst first), at most TROUBLED_SITES rows each.
    No GROUP BY and nothing per device, whatever the fleet's size. For an admin of the whole
    chain the same statements, compiled once per process (fetch_prebuilt)."""
    from django.conf import settings

    from devices_app.models import SITE_HEALTH_COUNTS, SiteHealthCount

    fraction = settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION
    if scoped_site_ids(user) is None:
        aggregated = fetch_prebuilt("fleet.totals", fraction)[0]
        troubled = fetch_prebuilt("fleet.down_sites", fraction, TROUBLED_SITES)
        if len(troubled) < TROUBLED_SITES:
            troubled += fetch_prebuilt("fleet.other_troubled_sites", fraction, TROUBLED_SITES - len(troubled))
    else:
        rows = SiteHealthCount.objects.for_user(user)
        aggregated = _rollup_totals(rows, fraction)
        troubled = list(_rollup_down_sites(rows, fraction, TROUBLED_SITES))
        if len(troubled) < TROUBLED_SITES:
            troubled += _rollup_other_troubled_sites(rows, fraction, TROUBLED_SITES - len(troubled))
    sites_down = aggregated.pop("sites_down")
    totals = {name: int(value) for name, value in aggregated.items()}
    return (
        totals,
        sites_down,
        [
            {"site_id": row["site_id"], **{_TOTAL_NAMES[name]: row[name] for name in SITE_HEALTH_COUNTS}}
            for row in troubled
        ],
    )


# SiteHealthCount's columns under the names health_summary reads.
_TOTAL_NAMES = {
    **{name: f"health_{name}" for name in ("total", "online", "offline", "maintenance")},
    **{name: f"health_{name}" for name in ("healthy", "degraded", "unhealthy")},
    "error": "status_error",
}


def _fleet_counts_from_devices(user) -> tuple[dict, int, list[dict]]:
    """The same answer as _fleet_counts_from_rollup, counted from the devices (SQLite, which
    has no rollup triggers)."""
    from devices_app.models import Device
    from sites_app.selectors import health_summary

    per_site = _health_counts_by_site(Device.objects.for_user(user))
    names = [f"health_{name}" for name in _COUNT_NAMES] + ["status_error"]
    totals = {name: sum(row[name] for row in per_site) for name in names}
    judged = [(row, health_summary(row)) for row in per_site]
    troubled = sorted(
        ((row, summary) for row, summary in judged if summary["status"] != "healthy"),
        key=lambda item: (_severity_key(item[1]), item[0]["site_id"]),
    )[:TROUBLED_SITES]
    down = sum(summary["status"] == "down" for _, summary in judged)
    return totals, down, [row for row, _ in troubled]


def fleet_summary(*, user) -> dict:
    """Counts over the user's sites from the SiteHealthCount rollup (one row per site, never
    the devices themselves; on SQLite the devices are counted), the names of the worst
    sites, the number of sites, and the open alerts. The query count does not grow with the
    fleet.

    `by_status` splits the devices by their connectivity status exactly (online, offline,
    error, maintenance, unknown: the five add up to `total`), where `offline` above counts
    every monitored device that is not online (errors too), as site health does."""
    from django.db import connection

    from devices_app.choices import DeviceStatus
    from monitoring_app.models import Alert
    from sites_app.models import Site
    from sites_app.selectors import health_summary

    if connection.vendor == "postgresql":
        totals, sites_down, troubled = _fleet_counts_from_rollup(user)
    else:
        totals, sites_down, troubled = _fleet_counts_from_devices(user)
    error = totals["status_error"]
    # Site health's "offline" is every monitored device not online: offline and error.
    by_status = {
        DeviceStatus.ONLINE.value: totals["health_online"],
        DeviceStatus.OFFLINE.value: totals["health_offline"] - error,
        DeviceStatus.ERROR.value: error,
        DeviceStatus.MAINTENANCE.value: totals["health_maintenance"],
    }
    by_status[DeviceStatus.UNKNOWN.value] = totals["health_total"] - sum(by_status.values())
    labels = Site.objects.in_bulk([row["site_id"] for row in troubled])
    if scoped_site_ids(user) is None and connection.vendor == "postgresql":
        alerts = fetch_prebuilt("fleet.open_alert_counts")[0]
        sites = fetch_prebuilt("fleet.sites")[0]["__count"]
    else:
        alerts = _open_alert_counts(Alert.objects.for_user(user))
        sites = Site.objects.for_user(user).count()
    return {
        **health_summary(totals),
        "by_status": by_status,
        "sites": sites,
        "sites_down": sites_down,
        "sites_in_trouble": [
            {
                "pk": row["site_id"],
                "site_id": labels[row["site_id"]].site_id,
                "name": labels[row["site_id"]].name,
                **health_summary(row),
            }
            for row in troubled
        ],
        "open_alerts": alerts,
    }


def jobs_in_progress_count(*, user) -> int:
    """How many of the user's sites' jobs are unfinished (the count behind "jobs in
    progress", whose list jobs_in_progress bounds): one count over the (status) index."""
    from jobs_app.choices import JOB_ACTIVE_STATUSES
    from jobs_app.models import Job

    return Job.objects.for_user(user).filter(status__in=JOB_ACTIVE_STATUSES).count()


def open_alerts(*, user, limit: int = 20) -> list:
    """The open alerts of the user's sites, worst and newest first, at most `limit`: ONE
    query (with their sites)."""
    from monitoring_app.models import Alert

    return list(
        Alert.objects.for_user(user)
        .open()
        .select_related("site")
        .order_by("severity", "-opened_at", "-id")[:limit]
    )
