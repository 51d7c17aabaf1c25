from django.db import models


class HealthStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    UNHEALTHY = "unhealthy", "Unhealthy"


class AuditEvent(models.TextChoices):
    """The catalogue of audited events, `<entity>.<verb>`; docs/audit-events.md explains each."""

    SITE_CREATED = "site.created", "Site created"
    SITE_UPDATED = "site.updated", "Site updated"
    SITE_DELETED = "site.deleted", "Site deleted"
    DEVICE_CREATED = "device.created", "Device created"
    DEVICE_UPDATED = "device.updated", "Device updated"
    DEVICE_DELETED = "device.deleted", "Device deleted"
    DEVICES_BULK_CREATED = "devices.bulk_created", "Devices created in bulk"
    JOB_CREATED = "job.created", "Job created"
    JOB_UPDATED = "job.updated", "Job updated"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    JOB_COMPLETED = "job.completed", "Job completed"
    JOB_FAILED = "job.failed", "Job failed"
    USER_CREATED = "user.created", "User created"
    USER_UPDATED = "user.updated", "User updated"
    USER_DELETED = "user.deleted", "User deleted"
    USER_LOGIN = "user.login", "User logged in"
    USER_LOGIN_FAILED = "user.login_failed", "Login failed"
    MEMBERSHIP_GRANTED = "membership.granted", "Site membership granted"
    MEMBERSHIP_CHANGED = "membership.changed", "Site membership changed"
    MEMBERSHIP_REVOKED = "membership.revoked", "Site membership revoked"
    TOKEN_ISSUED = "token.issued", "API token issued"
    TOKEN_REVOKED = "token.revoked", "API token revoked"
    HEALTH_REPORTED = "health.reported", "Health reported"
