"""This app's periodic tasks, merged into Celery beat's schedule by homepot/celery.py."""

from celery.schedules import crontab
from django.conf import settings

BEAT_SCHEDULE: dict = {
    "monitoring-tick": {
        "task": "monitoring_app.tasks.monitoring_tick",
        "schedule": settings.HOMEPOT_MONITORING_SWEEP_SECONDS,
        "options": {"expires": settings.HOMEPOT_MONITORING_SWEEP_SECONDS},
    },
    "monitoring-flush-heartbeats": {
        "task": "monitoring_app.tasks.flush_heartbeats",
        "schedule": settings.HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS,
        "options": {"expires": settings.HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS},
    },
    "monitoring-drain-health": {
        "task": "monitoring_app.tasks.drain_health_reports",
        "schedule": settings.HOMEPOT_MONITORING_HEALTH_DRAIN_SECONDS,
        "options": {"expires": settings.HOMEPOT_MONITORING_HEALTH_DRAIN_SECONDS},
    },
    # Retries of failed notifications come due here (new alerts also enqueue it at once).
    "monitoring-deliver-notifications": {
        "task": "monitoring_app.tasks.deliver_notifications",
        "schedule": settings.HOMEPOT_MONITORING_NOTIFY_SECONDS,
        "options": {"expires": settings.HOMEPOT_MONITORING_NOTIFY_SECONDS},
    },
    # Hourly: the history's day partitions HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD days ahead,
    # and strays the DEFAULT partition caught moved out (a missed run only delays that).
    "monitoring-history-partitions": {
        "task": "monitoring_app.tasks.maintain_history_partitions",
        "schedule": crontab(minute=7),
    },
    # Nightly, off trading hours for most of the chain.
    "monitoring-prune-health": {
        "task": "monitoring_app.tasks.prune_health_history",
        "schedule": crontab(hour=3, minute=17),
    },
}

# A signed checkpoint of the audit head; rows cut from the newest end are provable up to the
# last one, so the interval bounds what could go unnoticed (docs/operations.md).
if settings.HOMEPOT_AUDIT_CHECKPOINT_DIR:
    BEAT_SCHEDULE["monitoring-audit-checkpoint"] = {
        "task": "monitoring_app.tasks.audit_checkpoint",
        "schedule": settings.HOMEPOT_AUDIT_CHECKPOINT_MINUTES * 60,
        "options": {"expires": settings.HOMEPOT_AUDIT_CHECKPOINT_MINUTES * 60},
    }
