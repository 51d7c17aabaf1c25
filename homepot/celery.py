"""The HOMEPOT Celery application; configured from Django settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

app = Celery("homepot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _merge_app_schedules(sender, **kwargs):
    # Each app keeps its periodic tasks beside its tasks (<app>/schedule.py).
    from jobs_app.schedule import BEAT_SCHEDULE as jobs_schedule
    from monitoring_app.schedule import BEAT_SCHEDULE as monitoring_schedule

    sender.conf.beat_schedule = {**jobs_schedule, **monitoring_schedule}
