"""This app's periodic tasks, merged into Celery beat's schedule by homepot/celery.py."""

from django.conf import settings

_TICK = getattr(settings, "HOMEPOT_JOBS_TICK_SECONDS", 10.0)

BEAT_SCHEDULE: dict = {
    "jobs-start-due": {"task": "jobs_app.tasks.start_due_jobs", "schedule": _TICK},
    "jobs-time-out-deliveries": {"task": "jobs_app.tasks.time_out_deliveries", "schedule": _TICK},
    "jobs-finish-rollups": {"task": "jobs_app.tasks.finish_rollups", "schedule": _TICK},
}
