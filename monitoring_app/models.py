import datetime
import hashlib
import json

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.scoping import ScopedQuerySet
from monitoring_app.choices import (
    NOTIFICATION_OPEN,
    AlertKind,
    AlertSeverity,
    AuditEvent,
    ConnectivityReason,
    HealthStatus,
    NotificationChannel,
    NotificationStatus,
)


class HealthCheckQuerySet(ScopedQuerySet):
    scope_path = "device__site"


class HealthCheck(models.Model):
    """One report a device made about itself (history; the device row carries the latest)."""

    # No index of its own: (device, -checked_at) below leads with it (one index less to write).
    # No foreign key in the database (db_constraint=False, migration 0021): a partition's key
    # locks the device table whenever a day is created, detached or dropped, which every
    # report's UPDATE conflicts with. The writers lock the device row instead and the cascade
    # is Django's plus a trigger (monitoring_app.partitions, docs/operations.md).
    device = models.ForeignKey(
        "devices_app.Device",
        on_delete=models.CASCADE,
        related_name="health_checks",
        db_index=False,
        db_constraint=False,
    )
    status = models.CharField(max_length=16, choices=HealthStatus.choices)
    response_time_ms = models.PositiveIntegerField("response time (ms)", null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    checked_at = models.DateTimeField(db_index=False)
    legacy_id = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Its id in the older HOMEPOT (imported rows only)."
    )

    objects = HealthCheckQuerySet.as_manager()

    class Meta:
        ordering = ["-checked_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=HealthStatus.values), name="monitoring_health_status_valid"
            ),
            # Partial: rows reported here have none, so the live ingest pays no index upkeep.
            # With checked_at: PostgreSQL requires the partition key in every unique index of
            # a partitioned table (monitoring_app.partitions); the importer skips legacy ids
            # it already has, so a legacy id is still imported once.
            models.UniqueConstraint(
                fields=["legacy_id", "checked_at"],
                condition=models.Q(legacy_id__isnull=False),
                name="monitoring_health_legacy_id_unique",
            ),
        ]
        indexes = [
            # "latest checks of a device": an index scan, newest first.
            models.Index(fields=["device", "-checked_at"], name="monitoring_health_dev_latest"),
            models.Index(fields=["-checked_at"], name="monitoring_health_checked"),
            models.Index(fields=["status", "-checked_at"], name="monitoring_health_status"),
            # The API's health history is keyset-paged by id: a fleet-wide status filter walks
            # this, newest first. Its device (and site: a list of devices) filter uses the
            # device index above; a device's history is small enough to sort.
            models.Index(fields=["status", "-id"], name="monitoring_health_status_id"),
        ]

    def __str__(self) -> str:
        # A record page's title (states by name): "Degraded report of device #12 at ...".
        when = f"{self.checked_at:%Y-%m-%d %H:%M}"
        return f"{self.get_status_display()} report of device #{self.device_id} at {when}"


class HealthCheckOffDay(models.Model):
    """A health report written outside its own UTC day: into a day already over (late), or
    before its day began (early: a device clock ahead near midnight). Written only by the
    trigger on the history, in the writer's transaction; read by the API's newest-first pages
    (monitoring_app.offday). Not a foreign key: the history's primary key is (id, checked_at)
    and its rows go by whole days."""

    check_id = models.BigIntegerField(primary_key=True)
    device_id = models.BigIntegerField()
    checked_at = models.DateTimeField()

    class Meta:
        indexes = [
            # A device's records above an id (a device's latest check): one probe.
            models.Index(fields=["device_id", "check_id"], name="monitoring_offday_device"),
            # Retention's clean-up of records whose days are gone.
            models.Index(fields=["checked_at"], name="monitoring_offday_checked"),
        ]

    def __str__(self) -> str:
        return (
            f"health check #{self.check_id} of device #{self.device_id} at {self.checked_at:%Y-%m-%d %H:%M}"
        )


class HealthCheckOffDaySince(models.Model):
    """One row: the last health-check id handed out before the off-day trigger existed. Rows
    above it are recorded when off their day; a page reaching back to it is proven without
    the record (monitoring_app.offday)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    check_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"off-day health checks recorded after #{self.check_id}"


AUDIT_HASHED_FIELDS = (
    "event_type",
    "actor_id",
    "actor_ref",
    "site_id",
    "site_ref",
    "device_id",
    "device_ref",
    "job_id",
    "description",
    "old_values",
    "new_values",
    "source_ip",
    "user_agent",
    "request_id",
    "created_at",
    "prev_hash",
)


def audit_row_hash(row) -> str:
    """SHA-256 over an audit row's content and the previous row's hash, as canonical JSON.

    `row` is an AuditLog (or a historical model in migrations). Changing this format
    breaks every existing chain, so it is written once and never edited.
    """
    created_at = row.created_at.astimezone(datetime.UTC).isoformat()
    return hashlib.sha256(audit_hashed_text(row, created_at=created_at).encode()).hexdigest()


def audit_hashed_text(row, *, created_at: str, prev_hash: str | None = None) -> str:
    """The canonical JSON audit_row_hash hashes, with `created_at` already as text and
    `prev_hash` (the row's own when None) given: the one-round-trip append builds it with
    stand-ins that PostgreSQL replaces (monitoring_app.services)."""
    content = {name: getattr(row, name) for name in AUDIT_HASHED_FIELDS}
    content["created_at"] = created_at
    if prev_hash is not None:
        content["prev_hash"] = prev_hash
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


class AppendOnlyError(Exception):
    """Raised on any attempt to change or remove an audit row through the application."""


class AuditLogQuerySet(ScopedQuerySet):
    scope_path = "site"

    def update(self, **kwargs):
        raise AppendOnlyError("Audit rows cannot be changed.")

    def delete(self):
        raise AppendOnlyError("Audit rows cannot be deleted.")

    delete.queryset_only = True


def _kept_reference(to: str, related_name: str):
    """A link that survives the target's deletion: no database constraint, nothing cascades.

    Audit rows are never updated, so the id stays as it was; the matching `*_ref` column
    keeps the target's business id readable after it is gone.
    """
    return models.ForeignKey(
        to,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name=related_name,
    )


class AuditLog(models.Model):
    """Who did what, to which site, device or job, and when. Append-only."""

    event_type = models.CharField(max_length=64, choices=AuditEvent.choices)
    actor = _kept_reference(settings.AUTH_USER_MODEL, "+")
    actor_ref = models.CharField("actor", max_length=150, blank=True)
    site = _kept_reference("sites_app.Site", "+")
    site_ref = models.CharField("site ID", max_length=64, blank=True)
    device = _kept_reference("devices_app.Device", "+")
    device_ref = models.CharField("device ID", max_length=64, blank=True)
    job = _kept_reference("jobs_app.Job", "+")
    description = models.TextField(blank=True)
    old_values = models.JSONField(null=True, blank=True)
    new_values = models.JSONField(null=True, blank=True)
    source_ip = models.GenericIPAddressField("source IP", null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Tamper evidence: each row's hash covers its content and the previous row's hash.
    prev_hash = models.CharField(max_length=64, editable=False)
    row_hash = models.CharField(max_length=64, unique=True, editable=False)

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(event_type__in=AuditEvent.values), name="monitoring_audit_event_valid"
            ),
        ]
        # The audit list pages by id (newest first; ids follow the chain); each filter it
        # offers leads an index that ends in id.
        indexes = [
            models.Index(fields=["created_at"], name="monitoring_audit_created"),
            models.Index(fields=["event_type", "-id"], name="monitoring_audit_event"),
            models.Index(fields=["actor", "-id"], name="monitoring_audit_actor"),
            models.Index(fields=["site", "-id"], name="monitoring_audit_site"),
            models.Index(fields=["site_ref", "-id"], name="monitoring_audit_site_ref"),
            models.Index(fields=["device_ref", "-id"], name="monitoring_audit_device_ref"),
            models.Index(fields=["job", "-id"], name="monitoring_audit_job"),
        ]

    def __str__(self) -> str:
        # A record page's title: the event by name ("Site updated"), not its code.
        actor = self.actor_ref or "system"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.get_event_type_display()} by {actor}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Audit rows cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit rows cannot be deleted.")

    def compute_hash(self) -> str:
        return audit_row_hash(self)


class DeviceStatusChangeQuerySet(ScopedQuerySet):
    scope_path = "device__site"


class DeviceStatusChange(models.Model):
    """One connectivity transition of a device (online ↔ offline), written set-based by the
    sweep and by the ingest when a device comes back. A table of its own rather than audit
    rows: a site outage moves hundreds of devices at once, and the audit chain serialises
    its writers."""

    # No index of its own: (device, -changed_at) below leads with it. No foreign key in the
    # database, for the reason given on HealthCheck.device.
    device = models.ForeignKey(
        "devices_app.Device",
        on_delete=models.CASCADE,
        related_name="status_changes",
        db_index=False,
        db_constraint=False,
    )
    old_status = models.CharField(max_length=16)
    new_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=16, choices=ConnectivityReason.choices)
    changed_at = models.DateTimeField()

    objects = DeviceStatusChangeQuerySet.as_manager()

    class Meta:
        ordering = ["-changed_at", "-id"]
        indexes = [
            models.Index(fields=["device", "-changed_at"], name="monitoring_stchg_device"),
            models.Index(fields=["-changed_at"], name="monitoring_stchg_changed"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id}: {self.old_status} → {self.new_status} at {self.changed_at:%Y-%m-%d %H:%M}"


class MonitoringState(models.Model):
    """One row (pk=1): when the sweep last ran, and when monitoring last resumed after a gap.

    After the server was down, every device looks silent; `resumed_at` gives them a fresh
    grace period instead of declaring the fleet offline."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_sweep_at = models.DateTimeField(null=True, blank=True)
    resumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="monitoring_state_single_row")]

    def __str__(self) -> str:
        return f"Monitoring state (last sweep {self.last_sweep_at})"


class HealthBufferState(models.Model):
    """How far the drain of the health report buffer has come, per Redis stream
    (monitoring_app.health_buffer): the id of the last stream entry whose reports are committed
    here, stored in the same transaction as them, so a redelivered entry is never inserted twice.
    """

    stream = models.CharField(max_length=200, primary_key=True)
    drained_id = models.CharField(max_length=41, default="0-0", help_text="Last stream entry written.")
    drained_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.stream} drained to {self.drained_id}"


class DemoClock(models.Model):
    """The demo fixture's anchor (fixtures/demo.json, its first row): when the fixture was
    built, and by how much loading it moved every date so that the demo chain trades today.

    `manage.py loaddata demo` fills `loaded_at` and `shift` (monitoring_app.demo_clock); a
    second load into the same database keeps them, so the rows it rewrites are identical (the
    audit trail refuses any other rewrite). Not part of the product's data model otherwise."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    built_at = models.DateTimeField(help_text="The moment the fixture's dates were written for.")
    loaded_at = models.DateTimeField(null=True, blank=True)
    shift = models.DurationField(
        null=True, blank=True, help_text="Added to every date: loaded_at - built_at."
    )

    def __str__(self) -> str:
        return f"Demo data built for {self.built_at:%Y-%m-%d %H:%M}, shifted by {self.shift}"


class AlertQuerySet(ScopedQuerySet):
    scope_path = "site"

    def open(self):
        return self.filter(resolved_at__isnull=True)


class Alert(models.Model):
    """Something an operator should look at: a device offline or unhealthy for too long, or
    a whole site offline. Opened and closed by monitoring_app.alerts; acknowledged, resolved
    and annotated by operators (audited)."""

    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="alerts")
    device = models.ForeignKey(
        "devices_app.Device", on_delete=models.CASCADE, null=True, blank=True, related_name="alerts"
    )
    kind = models.CharField(max_length=24, choices=AlertKind.choices)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices)
    message = models.CharField(max_length=500)
    opened_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(help_text="The last time the condition was observed.")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When the first of its notifications (monitoring_app.Notification) was delivered.
    notified_at = models.DateTimeField(null=True, blank=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=AlertKind.values), name="monitoring_alert_kind_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(severity__in=AlertSeverity.values), name="monitoring_alert_severity_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(kind=AlertKind.SITE_OFFLINE, device__isnull=True)
                | (~models.Q(kind=AlertKind.SITE_OFFLINE) & models.Q(device__isnull=False)),
                name="monitoring_alert_device_matches_kind",
            ),
            # At most one open alert per device and kind, and per site for site alerts: the
            # evaluator's INSERT ... ON CONFLICT DO NOTHING relies on these.
            models.UniqueConstraint(
                fields=["device", "kind"],
                condition=models.Q(resolved_at__isnull=True, device__isnull=False),
                name="monitoring_alert_one_open_per_device",
            ),
            models.UniqueConstraint(
                fields=["site", "kind"],
                condition=models.Q(resolved_at__isnull=True, device__isnull=True),
                name="monitoring_alert_one_open_per_site",
            ),
        ]
        indexes = [
            models.Index(fields=["site", "-opened_at"], name="monitoring_alert_site"),
            models.Index(
                fields=["-opened_at"],
                condition=models.Q(resolved_at__isnull=True),
                name="monitoring_alert_open",
            ),
            models.Index(fields=["device", "-opened_at"], name="monitoring_alert_device"),
            # The dashboard's and landing page's open alerts, worst and newest first: the first
            # 20 of the index, not a sort of every open alert (tens of thousands in an outage).
            models.Index(
                fields=["severity", "-opened_at", "-id"],
                condition=models.Q(resolved_at__isnull=True),
                name="monitoring_alert_open_worst",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message}"

    @property
    def state(self) -> str:
        if self.resolved_at:
            return "resolved"
        return "acknowledged" if self.acknowledged_at else "open"


class AlertNote(models.Model):
    """An operator's note on an alert (append-only, like the audit it is recorded in)."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.text[:60]


class NotificationQuerySet(ScopedQuerySet):
    scope_path = "alert__site"


class Notification(models.Model):
    """One alert told over one channel (email to the site's managers, or the webhook),
    delivered at least once: created with the alert, claimed by a sender in the database,
    marked `sent` only after the send succeeded, else retried with backoff until it is
    `failed` (monitoring_app.notifications). The admin lists them and can retry one."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.CharField(max_length=16, choices=NotificationChannel.choices)
    status = models.CharField(
        max_length=16, choices=NotificationStatus.choices, default=NotificationStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the next attempt is due; while sending, when the sender's claim lapses.",
    )
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "channel"], name="monitoring_notification_one_per_channel"
            ),
            models.CheckConstraint(
                condition=models.Q(channel__in=NotificationChannel.values),
                name="monitoring_notification_channel",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=NotificationStatus.values),
                name="monitoring_notification_status",
            ),
        ]
        indexes = [
            # The sender's "what is due": only the few rows still to deliver are indexed.
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=models.Q(status__in=NOTIFICATION_OPEN),
                name="monitoring_notif_due",
            ),
            models.Index(fields=["status", "-created_at"], name="monitoring_notif_status"),
            models.Index(fields=["-created_at"], name="monitoring_notif_created"),
        ]

    def __str__(self) -> str:
        return f"{self.get_channel_display()} for alert {self.alert_id}: {self.get_status_display()}"


class FleetSnapshotQuerySet(ScopedQuerySet):
    scope_path = "site"


class FleetSnapshot(models.Model):
    """The device counts of one site at one moment (a bucket boundary): the rollup behind the
    dashboard's charts. Written set-based by the monitoring tick (one INSERT ... SELECT ...
    GROUP BY site per bucket), pruned by retention; the charts never read devices or health
    history, so they cost the same at 10 or 10,000,000 health checks."""

    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="+")
    bucket_at = models.DateTimeField()
    total = models.PositiveIntegerField()
    online = models.PositiveIntegerField()
    offline = models.PositiveIntegerField()
    maintenance = models.PositiveIntegerField()
    healthy = models.PositiveIntegerField()
    degraded = models.PositiveIntegerField()
    unhealthy = models.PositiveIntegerField()

    objects = FleetSnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["bucket_at", "site"]
        constraints = [
            # One row per site and bucket: a second tick in the same bucket inserts nothing.
            models.UniqueConstraint(fields=["site", "bucket_at"], name="monitoring_snapshot_one_per_bucket"),
        ]
        # The (site, bucket_at) unique index serves a manager's sites; this one the admin's
        # whole fleet and the pruning.
        indexes = [models.Index(fields=["bucket_at"], name="monitoring_snapshot_bucket")]

    def __str__(self) -> str:
        return f"{self.site_id} at {self.bucket_at:%Y-%m-%d %H:%M}: {self.online}/{self.total} online"


class FleetTotalSnapshot(models.Model):
    """The whole chain's device counts at one moment: the sum of that bucket's FleetSnapshot
    rows, written by the monitoring tick in the same transaction, so an admin's chart reads
    one row per point instead of summing every site's row (20,000 per point at 1,000,000
    devices). Scoped users' charts still sum their own sites' rows. A site deleted later
    stays in the totals of the moments it existed, as it was then."""

    bucket_at = models.DateTimeField(unique=True)
    total = models.PositiveIntegerField()
    online = models.PositiveIntegerField()
    offline = models.PositiveIntegerField()
    maintenance = models.PositiveIntegerField()
    healthy = models.PositiveIntegerField()
    degraded = models.PositiveIntegerField()
    unhealthy = models.PositiveIntegerField()

    class Meta:
        ordering = ["bucket_at"]

    def __str__(self) -> str:
        return f"fleet at {self.bucket_at:%Y-%m-%d %H:%M}: {self.online}/{self.total} online"
