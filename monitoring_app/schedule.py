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
    # Retries of failed notifications come due here (new alerts also enqueue it at once).
    "monitoring-deliver-notifications": {
        "task": "monitoring_app.tasks.deliver_notifications",
        "schedule": settings.HOMEPOT_MONITORING_NOTIFY_SECONDS,
        "options": {"expires": settings.HOMEPOT_MONITORING_NOTIFY_SECONDS},
    },
    # Nightly, off trading hours for most of the chain.
    "monitoring-prune-health": {
        "task": "monitoring_app.tasks.prune_health_history",
        "schedule": crontab(hour=3, minute=17),
    },
}
