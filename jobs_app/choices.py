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
    """The guide's progression queued → sent → acknowledged → completed (the rollup of the
    job's deliveries), plus `scheduled` (waiting for its time), `paused`, and the end states."""

    SCHEDULED = "scheduled", "Scheduled"
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# Statuses in which the dispatcher hands out work and the rollup moves the job along.
JOB_RUNNING_STATUSES = (JobStatus.QUEUED, JobStatus.SENT, JobStatus.ACKNOWLEDGED)
# Unfinished jobs: may still be paused, resumed or cancelled.
JOB_ACTIVE_STATUSES = (*JOB_RUNNING_STATUSES, JobStatus.SCHEDULED, JobStatus.PAUSED)
JOB_TERMINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class DeferralExhausted(models.TextChoices):
    """What happens to a device's delivery once it has used up the job's deferral policy
    (too many deferrals, or too much delay in total) and asks to defer again."""

    FORCE = "force", "Force: offer it again now, ignoring further deferrals"
    SKIP = "skip", "Skip the device (its delivery ends cancelled)"
    FAIL = "fail", "Fail the device's delivery"


class DeliveryStatus(models.TextChoices):
    """One device's copy of a job: pending → sent → acknowledged → completed, or an end state."""

    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


# Work the device has (sent) or is doing (acknowledged): what "in flight" counts.
# The device has not acknowledged the work yet: an ack moves these, a cancel may drop them.
DELIVERY_NOT_TAKEN = (DeliveryStatus.PENDING, DeliveryStatus.SENT)
DELIVERY_IN_FLIGHT = (DeliveryStatus.SENT, DeliveryStatus.ACKNOWLEDGED)
DELIVERY_UNFINISHED = (DeliveryStatus.PENDING, *DELIVERY_IN_FLIGHT)
DELIVERY_FAILED = (DeliveryStatus.FAILED, DeliveryStatus.TIMED_OUT)
DELIVERY_FINISHED = (DeliveryStatus.COMPLETED, *DELIVERY_FAILED, DeliveryStatus.CANCELLED)
