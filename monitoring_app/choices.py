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
    SITES_IMPORTED = "sites.imported", "Sites imported from CSV"
    DEVICE_CREATED = "device.created", "Device created"
    DEVICE_UPDATED = "device.updated", "Device updated"
    DEVICE_DELETED = "device.deleted", "Device deleted"
    DEVICES_BULK_CREATED = "devices.bulk_created", "Devices created in bulk"
    DEVICES_IMPORTED = "devices.imported", "Devices imported from CSV"
    DEVICE_CREDENTIAL_ISSUED = "device.credential_issued", "Device credential issued"
    DEVICE_CREDENTIAL_REVOKED = "device.credential_revoked", "Device credential revoked"
    JOB_CREATED = "job.created", "Job created"
    JOB_UPDATED = "job.updated", "Job updated"
    JOB_CANCELLED = "job.cancelled", "Job cancelled"
    JOB_COMPLETED = "job.completed", "Job completed"
    JOB_FAILED = "job.failed", "Job failed"
    JOB_STARTED = "job.started", "Job started"
    JOB_PAUSED = "job.paused", "Job paused"
    JOB_RESUMED = "job.resumed", "Job resumed"
    JOB_RETRIED = "job.retried", "Job deliveries retried"
    JOB_CLONED = "job.cloned", "Job cloned"
    JOB_WAVE_OPENED = "job.wave_opened", "Job wave opened"
    JOB_WAVE_APPROVED = "job.wave_approved", "Job wave approved"
    JOB_ROLLED_BACK = "job.rolled_back", "Job rolled back"
    DELIVERY_CANCELLED = "delivery.cancelled", "Job delivery cancelled"
    DELIVERIES_DEFERRED = "deliveries.deferred", "Job deliveries deferred by devices"
    SEGMENT_CREATED = "segment.created", "Saved segment created"
    SEGMENT_UPDATED = "segment.updated", "Saved segment updated"
    SEGMENT_DELETED = "segment.deleted", "Saved segment deleted"
    DEVICE_STATUS_CHANGED = "device.status_changed", "Device connectivity changed"
    ALERT_OPENED = "alert.opened", "Alert opened"
    ALERT_ACKNOWLEDGED = "alert.acknowledged", "Alert acknowledged"
    ALERT_RESOLVED = "alert.resolved", "Alert resolved"
    ALERT_NOTE_ADDED = "alert.note_added", "Alert note added"
    HEALTH_PRUNED = "health.pruned", "Health history pruned"
    NOTIFICATION_FAILED = "notification.failed", "Alert notification failed"
    NOTIFICATION_RETRIED = "notification.retried", "Alert notification retried"
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
    LEGACY_IMPORTED = "legacy.imported", "Table imported from the older HOMEPOT"
    LEGACY_IMPORTED_EVENT = "legacy.imported_event", "Audit event imported from the older HOMEPOT"


class ConnectivityReason(models.TextChoices):
    """Why a device's status changed (DeviceStatusChange.reason)."""

    REPORT = "report", "Device reported"
    SWEEP = "sweep", "Silent past its interval"
    OPERATOR = "operator", "Set by an operator or integration"


class AlertKind(models.TextChoices):
    DEVICE_OFFLINE = "device_offline", "Device offline"
    DEVICE_UNHEALTHY = "device_unhealthy", "Device unhealthy"
    DEVICE_ERROR = "device_error", "Device in error"
    SITE_OFFLINE = "site_offline", "Site offline"


# Alerts about one device; a site alert has no device.
DEVICE_ALERT_KINDS = (AlertKind.DEVICE_OFFLINE, AlertKind.DEVICE_UNHEALTHY, AlertKind.DEVICE_ERROR)


class AlertSeverity(models.TextChoices):
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class SiteHealthStatus(models.TextChoices):
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    DOWN = "down", "Down"


class NotificationChannel(models.TextChoices):
    EMAIL = "email", "Email to the site's managers"
    WEBHOOK = "webhook", "Webhook"


class NotificationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    RETRYING = "retrying", "Retrying"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


# A notification in one of these is still to be delivered (due once next_attempt_at passed;
# for `sending`, that is when the sender's claim lapses).
NOTIFICATION_OPEN = (NotificationStatus.PENDING, NotificationStatus.SENDING, NotificationStatus.RETRYING)
