"""Alerts: opened and closed by the evaluator (set-based SQL over the device rows), handled
by operators (acknowledge, resolve, note: audited), told by email to the site's managers and
to an optional webhook, at least once (monitoring_app.notifications).

Rules (settings HOMEPOT_MONITORING_*):
- device_offline: a device offline for longer than ALERT_OFFLINE_SECONDS; closes when it is
  back (or put into maintenance).
- device_unhealthy: an online device reporting `unhealthy` for longer than
  ALERT_UNHEALTHY_SECONDS; closes when it reports better, goes offline or into maintenance.
- site_offline: at least SITE_OUTAGE_FRACTION of a site's monitored devices (and at least
  SITE_OUTAGE_MIN_DEVICES) offline for longer than ALERT_OFFLINE_SECONDS: "the store is
  offline, probably its network". While it is open, no device_offline alert opens there.
  Monitored = not in maintenance and not `unknown` (never heard from).
- device_error: a device whose status is `error` (set through the device API or admin by an
  operator or an integration; its own reports keep it there) for longer than
  ALERT_ERROR_SECONDS; closes when its status is anything else. Not held back by an open
  site_offline alert: a device in error is a fault of its own, not the store's network.
"""

import contextlib
import datetime
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from accounts.scoping import require_site_access
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from homepot.errors import ServiceError
from monitoring_app.choices import AlertKind, AlertSeverity, AuditEvent, HealthStatus
from monitoring_app.models import Alert, AlertNote
from monitoring_app.notifications import notifications_create
from monitoring_app.services import audit_record, audited_atomic
from sites_app.models import Site

logger = logging.getLogger(__name__)

# An open alert's last_seen_at is refreshed at most this often (not on every evaluation).
LAST_SEEN_REFRESH = datetime.timedelta(minutes=5)

_NOT_MONITORED = (DeviceStatus.MAINTENANCE, DeviceStatus.UNKNOWN)


@dataclass
class EvaluationResult:
    opened: list[int]
    resolved: list[int]


def _params(now: datetime.datetime) -> dict:
    return {
        "now": now,
        "offline_cut": now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS),
        "unhealthy_cut": now
        - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_UNHEALTHY_SECONDS),
        "error_cut": now - datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_ALERT_ERROR_SECONDS),
        "error": DeviceStatus.ERROR,
        "k_error": AlertKind.DEVICE_ERROR,
        "refresh_cut": now - LAST_SEEN_REFRESH,
        "fraction": settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION,
        "min_devices": settings.HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES,
        "offline": DeviceStatus.OFFLINE,
        "online": DeviceStatus.ONLINE,
        "not_monitored": list(_NOT_MONITORED),
        "unhealthy": HealthStatus.UNHEALTHY,
        "k_offline": AlertKind.DEVICE_OFFLINE,
        "k_unhealthy": AlertKind.DEVICE_UNHEALTHY,
        "k_site": AlertKind.SITE_OFFLINE,
        "warning": AlertSeverity.WARNING,
        "critical": AlertSeverity.CRITICAL,
    }


# Each statement is set-based: one pass over the rows it concerns, whatever the fleet size.
_RESOLVE_SQL = [
    # Devices back online (or in maintenance, or gone from offline otherwise).
    """UPDATE monitoring_app_alert a SET resolved_at = %(now)s, last_seen_at = %(now)s
       FROM devices_app_device d
       WHERE a.device_id = d.id AND a.kind = %(k_offline)s AND a.resolved_at IS NULL
         AND d.status <> %(offline)s
       RETURNING a.id""",
    """UPDATE monitoring_app_alert a SET resolved_at = %(now)s, last_seen_at = %(now)s
       FROM devices_app_device d
       WHERE a.device_id = d.id AND a.kind = %(k_unhealthy)s AND a.resolved_at IS NULL
         AND (d.health_status <> %(unhealthy)s OR d.status <> %(online)s)
       RETURNING a.id""",
    # Devices out of error (fixed, or in maintenance).
    """UPDATE monitoring_app_alert a SET resolved_at = %(now)s, last_seen_at = %(now)s
       FROM devices_app_device d
       WHERE a.device_id = d.id AND a.kind = %(k_error)s AND a.resolved_at IS NULL
         AND d.status <> %(error)s
       RETURNING a.id""",
    # A site whose offline share fell below the outage fraction: read from the device-count
    # rollup (a few rows per site, exact in every transaction), not from the site's devices.
    """UPDATE monitoring_app_alert a SET resolved_at = %(now)s, last_seen_at = %(now)s
       WHERE a.kind = %(k_site)s AND a.resolved_at IS NULL AND NOT EXISTS (
           SELECT 1 FROM devices_app_sitedevicecount r WHERE r.site_id = a.site_id
           HAVING coalesce(sum(r.devices) FILTER (WHERE r.status <> ALL(%(not_monitored)s)), 0)
                  >= %(min_devices)s
              AND coalesce(sum(r.devices) FILTER (WHERE r.status = %(offline)s), 0)
                  >= %(fraction)s * sum(r.devices) FILTER (WHERE r.status <> ALL(%(not_monitored)s)))
       RETURNING a.id""",
]

_OPEN_SQL = [
    # Site outages first, so their devices get no alert of their own. The device-count
    # rollup names the candidates (enough devices offline now; "for long enough" is a subset),
    # minus the sites already alerted, and says since when: a candidate whose offline devices
    # all have a connectivity_changed_at no later than the rollup's bound, itself before the
    # threshold, is counted from the rollup alone; only the other candidates' devices are read.
    # So neither a steady outage of 1,000 stores nor the burst that opens it reads their
    # 50,000 devices (unless some went dark within the threshold).
    """INSERT INTO monitoring_app_alert (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
       WITH candidates AS (
           SELECT r.site_id,
                  sum(r.devices) FILTER (WHERE r.status <> ALL(%(not_monitored)s)) AS monitored,
                  sum(r.devices) FILTER (WHERE r.status = %(offline)s) AS offline,
                  CASE WHEN sum(r.undated) FILTER (WHERE r.status = %(offline)s AND r.devices > 0) = 0
                       THEN max(r.changed_max) FILTER (WHERE r.status = %(offline)s AND r.devices > 0)
                  END AS offline_since_at_most
           FROM devices_app_sitedevicecount r
           WHERE r.site_id = ANY(ARRAY(SELECT site_id FROM devices_app_sitedevicecount
                                       WHERE status = %(offline)s AND devices > 0))
             AND NOT EXISTS (SELECT 1 FROM monitoring_app_alert a WHERE a.site_id = r.site_id
                             AND a.kind = %(k_site)s AND a.resolved_at IS NULL AND a.device_id IS NULL)
           GROUP BY r.site_id
           HAVING sum(r.devices) FILTER (WHERE r.status <> ALL(%(not_monitored)s)) >= %(min_devices)s
              AND sum(r.devices) FILTER (WHERE r.status = %(offline)s) > 0
              AND sum(r.devices) FILTER (WHERE r.status = %(offline)s)
                  >= %(fraction)s * sum(r.devices) FILTER (WHERE r.status <> ALL(%(not_monitored)s))
       ),
       counted AS (
           SELECT site_id, monitored, offline AS offline_long FROM candidates
           WHERE offline_since_at_most <= %(offline_cut)s
           UNION ALL
           SELECT d.site_id,
                  count(*) FILTER (WHERE d.status <> ALL(%(not_monitored)s)),
                  count(*) FILTER (WHERE d.status = %(offline)s
                                   AND d.connectivity_changed_at <= %(offline_cut)s)
           FROM devices_app_device d
           WHERE d.site_id = ANY(ARRAY(SELECT site_id FROM candidates
                                       WHERE offline_since_at_most IS NULL
                                          OR offline_since_at_most > %(offline_cut)s))
           GROUP BY d.site_id
       )
       SELECT c.site_id, NULL, %(k_site)s, %(critical)s,
              format('%%s of %%s devices offline at %%s: the store is probably offline (network or power).',
                     c.offline_long, c.monitored,
                     (SELECT s.site_id FROM sites_app_site s WHERE s.id = c.site_id)),
              %(now)s, %(now)s
       FROM counted c
       WHERE c.monitored >= %(min_devices)s AND c.offline_long >= %(fraction)s * c.monitored
       ON CONFLICT (site_id, kind) WHERE resolved_at IS NULL AND device_id IS NULL DO NOTHING
       RETURNING id""",
    # No index has the device's status (the sweep's mass change stays a HOT update): the
    # device-count rollup names the sites with offline devices, minus those with an open site
    # alert (checked once per site, not per device), then only their rows are read through
    # the (site, ...) index, the status checked on the row.
    """INSERT INTO monitoring_app_alert (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
       SELECT d.site_id, d.id, %(k_offline)s, %(warning)s,
              format('%%s (%%s) offline since %%s.', d.name, d.device_id,
                     to_char(d.connectivity_changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')),
              %(now)s, %(now)s
       FROM devices_app_device d
       WHERE d.site_id = ANY(ARRAY(
               SELECT r.site_id FROM devices_app_sitedevicecount r
               WHERE r.status = %(offline)s AND r.devices > 0
                 AND NOT EXISTS (SELECT 1 FROM monitoring_app_alert a WHERE a.site_id = r.site_id
                                 AND a.kind = %(k_site)s AND a.resolved_at IS NULL
                                 AND a.device_id IS NULL)))
         AND d.status = %(offline)s AND d.connectivity_changed_at <= %(offline_cut)s
         AND NOT EXISTS (SELECT 1 FROM monitoring_app_alert a WHERE a.device_id = d.id
                         AND a.kind = %(k_offline)s AND a.resolved_at IS NULL)
       ON CONFLICT (device_id, kind) WHERE resolved_at IS NULL AND device_id IS NOT NULL DO NOTHING
       RETURNING id""",
    """INSERT INTO monitoring_app_alert (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
       SELECT d.site_id, d.id, %(k_unhealthy)s, %(warning)s,
              format('%%s (%%s) unhealthy since %%s.', d.name, d.device_id,
                     to_char(d.health_changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"')),
              %(now)s, %(now)s
       FROM devices_app_device d
       WHERE d.health_status = %(unhealthy)s AND d.status = %(online)s
         AND d.health_changed_at <= %(unhealthy_cut)s
         AND NOT EXISTS (SELECT 1 FROM monitoring_app_alert a WHERE a.device_id = d.id
                         AND a.kind = %(k_unhealthy)s AND a.resolved_at IS NULL)
       ON CONFLICT (device_id, kind) WHERE resolved_at IS NULL AND device_id IS NOT NULL DO NOTHING
       RETURNING id""",
    # Devices in error past the threshold (a device whose status changed before changes were
    # stamped counts as in error for long enough). Found like the offline ones above.
    """INSERT INTO monitoring_app_alert (site_id, device_id, kind, severity, message, opened_at, last_seen_at)
       SELECT d.site_id, d.id, %(k_error)s, %(warning)s,
              format('%%s (%%s) in error since %%s.', d.name, d.device_id,
                     coalesce(to_char(d.connectivity_changed_at AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD HH24:MI "UTC"'), 'an unknown time')),
              %(now)s, %(now)s
       FROM devices_app_device d
       WHERE d.site_id = ANY(ARRAY(SELECT site_id FROM devices_app_sitedevicecount
                                   WHERE status = %(error)s AND devices > 0))
         AND d.status = %(error)s
         AND (d.connectivity_changed_at IS NULL OR d.connectivity_changed_at <= %(error_cut)s)
         AND NOT EXISTS (SELECT 1 FROM monitoring_app_alert a WHERE a.device_id = d.id
                         AND a.kind = %(k_error)s AND a.resolved_at IS NULL)
       ON CONFLICT (device_id, kind) WHERE resolved_at IS NULL AND device_id IS NOT NULL DO NOTHING
       RETURNING id""",
]

_REFRESH_SQL = """UPDATE monitoring_app_alert SET last_seen_at = %(now)s
                  WHERE resolved_at IS NULL AND last_seen_at < %(refresh_cut)s"""


def _run(cursor, statements, params) -> list[int]:
    ids = []
    for sql in statements:
        cursor.execute(sql, params)
        ids += [row[0] for row in cursor.fetchall()]
    return ids


@contextlib.contextmanager
def _hash_anti_joins(cursor):
    """Plan the opening statements without nested loops, then put back the setting found.

    Each of them anti-joins the open alerts of the table it inserts into. As a nested loop
    whose inner side is not a lookup of the outer row's key (the planner's pick whenever the
    statistics say few open alerts, as at the start of a burst), every outer row rescans the
    index entries of the alerts inserted so far, invisible to the statement but still read:
    499,500 heap fetches for 1,000 device alerts, quadratic in the burst. A hash (or merge)
    anti-join reads the open alerts once, whatever the statistics say, so the table is not
    ANALYZEd after a burst any more: that read a sample of up to 30,000 pages of the alert
    table, closed alerts included (1.3 s at 3,030,000 closed alerts, twice per burst). The
    device rows are reached through `site_id = ANY(ARRAY(...))` index conditions, which need
    no join (docs/performance.md, eval3)."""
    cursor.execute("SELECT current_setting('enable_nestloop'), set_config('enable_nestloop', 'off', true)")
    (before, _) = cursor.fetchone()
    yield
    # Not on an error: the rollback of the evaluation's transaction undoes it.
    cursor.execute("SELECT set_config('enable_nestloop', %s, true)", [before])


# What an alert's audit row names, read in one statement: as model instances, 2,000 alerts
# with their sites and devices were about 30 % of the evaluation's Python (cProfile). The
# business ids are looked up by primary key, one per alert: a join planned as a hash join
# read all 20,000 sites for them.
_AUDITED_SQL = """SELECT a.id, a.site_id, (SELECT s.site_id FROM sites_app_site s WHERE s.id = a.site_id),
                         a.device_id, (SELECT d.device_id FROM devices_app_device d WHERE d.id = a.device_id),
                         a.kind, a.severity, a.message
                  FROM monitoring_app_alert a
                  WHERE a.id = ANY(%s::bigint[])
                  ORDER BY a.id"""


def _audit_system(cursor, alert_ids: list[int], event_type: AuditEvent, verb: str) -> None:
    """Queue one audit row per alert in `alert_ids` (system actor), in id order.

    audit_record reads only the pk and business id of the site and device it is given, so
    each is passed as an unsaved instance carrying those two (one per site, shared)."""
    if not alert_ids:
        return
    cursor.execute(_AUDITED_SQL, [alert_ids])
    sites: dict[int, Site] = {}
    for pk, site_pk, site_ref, device_pk, device_ref, kind, severity, message in cursor.fetchall():
        site = sites.get(site_pk)
        if site is None:
            site = sites[site_pk] = Site(pk=site_pk, site_id=site_ref)
        audit_record(
            event_type=event_type,
            site=site,
            device=Device(pk=device_pk, device_id=device_ref) if device_pk is not None else None,
            description=f"Alert {pk} {verb}: {message}",
            new_values={"alert": pk, "kind": kind, "severity": severity},
        )


def alerts_evaluate(*, now: datetime.datetime | None = None) -> EvaluationResult:
    """Close alerts whose condition ended, open alerts for conditions that lasted past their
    threshold, refresh `last_seen_at` of the rest (at most every few minutes). Each opening
    and automatic resolution is audited (system actor). Each opened alert gets its pending
    notifications (one per channel) in the same transaction, so none is lost between the two;
    sending them is the delivery task's job. Safe to repeat: an open alert is never opened
    twice (the partial unique constraints), a resolved one is not resolved again.
    """
    params = _params(now or timezone.now())
    # One audited block: the audit rows of every alert opened or resolved here are appended
    # to the chain in ONE insert at its end (2,000 rows of a regional outage in one statement
    # instead of 2,000 appends, each reading the chain's head).
    with audited_atomic(), connection.cursor() as cursor:
        # These statements read a few thousand rows each; their estimated cost (a subquery per
        # open alert) still crosses PostgreSQL's JIT thresholds, and compiling took 4.5 s of a
        # 4.9 s statement at 1,000 open site alerts (docs/performance.md). Off for this
        # transaction only.
        cursor.execute("SET LOCAL jit = off")
        resolved = _run(cursor, _RESOLVE_SQL, params)
        with _hash_anti_joins(cursor):
            opened = _run(cursor, _OPEN_SQL, params)
        notifications_create(alert_ids=opened, now=params["now"])
        cursor.execute(_REFRESH_SQL, params)
        _audit_system(cursor, resolved, AuditEvent.ALERT_RESOLVED, "resolved itself")
        _audit_system(cursor, opened, AuditEvent.ALERT_OPENED, "opened")
    return EvaluationResult(opened=opened, resolved=resolved)


# --- Operator actions --------------------------------------------------------------------


def _locked(alert: Alert, actor) -> Alert:
    require_site_access(actor, alert.site, "change")
    return Alert.objects.select_for_update(of=("self",)).select_related("site", "device").get(pk=alert.pk)


def alert_acknowledge(*, actor, alert: Alert) -> Alert:
    """Mark an alert as seen by `actor` (audited). A repeat, or acknowledging a resolved
    alert, changes nothing and records nothing."""
    with transaction.atomic():
        alert = _locked(alert, actor)
        if alert.acknowledged_at is None and alert.resolved_at is None:
            alert.acknowledged_at = timezone.now()
            alert.acknowledged_by = actor
            alert.save(update_fields=["acknowledged_at", "acknowledged_by"])
            audit_record(
                event_type=AuditEvent.ALERT_ACKNOWLEDGED,
                actor=actor,
                site=alert.site,
                device=alert.device,
                description=f"Alert {alert.pk} acknowledged",
                new_values={"alert": alert.pk, "acknowledged_at": alert.acknowledged_at.isoformat()},
            )
    return alert


def alert_resolve(*, actor, alert: Alert) -> Alert:
    """Close an alert by hand (audited). If the condition persists, the evaluator opens a
    new alert. A repeat changes nothing."""
    with transaction.atomic():
        alert = _locked(alert, actor)
        if alert.resolved_at is None:
            alert.resolved_at = timezone.now()
            alert.resolved_by = actor
            alert.save(update_fields=["resolved_at", "resolved_by"])
            audit_record(
                event_type=AuditEvent.ALERT_RESOLVED,
                actor=actor,
                site=alert.site,
                device=alert.device,
                description=f"Alert {alert.pk} resolved",
                new_values={"alert": alert.pk, "resolved_at": alert.resolved_at.isoformat()},
            )
    return alert


def alert_add_note(*, actor, alert: Alert, text: str) -> AlertNote:
    """Append an operator's note to an alert (audited). Not idempotent: each call adds one."""
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": ["Write something."]})
    if len(text) > 5000:
        raise ValidationError({"text": ["At most 5000 characters."]})
    if "\x00" in text:
        raise ServiceError("The note must not contain NUL characters.", field="text")
    with transaction.atomic():
        alert = _locked(alert, actor)
        note = AlertNote.objects.create(alert=alert, author=actor, text=text)
        audit_record(
            event_type=AuditEvent.ALERT_NOTE_ADDED,
            actor=actor,
            site=alert.site,
            device=alert.device,
            description=f"Note on alert {alert.pk}",
            new_values={"alert": alert.pk, "note": text},
        )
    return note
