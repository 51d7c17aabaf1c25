from django.db import models


class JobAction(models.TextChoices):
    UPDATE_POS_PAYMENT_CONFIG = "update_pos_payment_config", "Update POS payment configuration"
    UPDATE_CONFIG = "update_config", "Update configuration"
    RESTART_POS_APP = "restart_pos_app", "Restart POS application"
    SOFTWARE_UPDATE = "software_update", "Software update"
    HEALTH_CHECK = "health_check", "Health check"


class JobPriority(models.TextChoices):
    LOW = "low", "Low"
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class JobStatus(models.TextChoices):
    """The guide's progression queued → sent → acknowledged → completed, or an end state."""

    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


JOB_ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.SENT, JobStatus.ACKNOWLEDGED)
JOB_TERMINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
