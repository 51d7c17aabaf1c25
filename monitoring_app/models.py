from django.conf import settings
from django.db import models

from accounts.scoping import ScopedQuerySet
from monitoring_app.choices import AuditEvent, HealthStatus


class HealthCheckQuerySet(ScopedQuerySet):
    scope_path = "device__site"


class HealthCheck(models.Model):
    """One report a device made about itself (history; the device row carries the latest)."""

    device = models.ForeignKey("devices_app.Device", on_delete=models.CASCADE, related_name="health_checks")
    status = models.CharField(max_length=16, choices=HealthStatus.choices)
    response_time_ms = models.PositiveIntegerField("response time (ms)", null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    checked_at = models.DateTimeField(db_index=False)

    objects = HealthCheckQuerySet.as_manager()

    class Meta:
        ordering = ["-checked_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=HealthStatus.values), name="monitoring_health_status_valid"
            ),
        ]
        indexes = [
            # "latest checks of a device": an index scan, newest first.
            models.Index(fields=["device", "-checked_at"], name="monitoring_health_dev_latest"),
            models.Index(fields=["-checked_at"], name="monitoring_health_checked"),
            models.Index(fields=["status", "-checked_at"], name="monitoring_health_status"),
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.status} at {self.checked_at:%Y-%m-%d %H:%M}"


class AuditLogQuerySet(ScopedQuerySet):
    scope_path = "site"


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
    created_at = models.DateTimeField(auto_now_add=True)

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(event_type__in=AuditEvent.values), name="monitoring_audit_event_valid"
            ),
        ]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="monitoring_audit_created"),
            models.Index(fields=["event_type", "-created_at"], name="monitoring_audit_event"),
            models.Index(fields=["actor", "-created_at"], name="monitoring_audit_actor"),
            models.Index(fields=["site", "-created_at"], name="monitoring_audit_site"),
            models.Index(fields=["device", "-created_at"], name="monitoring_audit_device"),
            models.Index(fields=["job", "-created_at"], name="monitoring_audit_job"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type} by {self.actor_ref or 'system'}"
