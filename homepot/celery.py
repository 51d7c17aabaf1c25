"""The HOMEPOT Celery application; configured from Django settings (CELERY_* names), with
the task run-time and failure metrics fed by Celery's signals."""

import logging
import os
import time

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    task_failure,
    task_postrun,
    task_prerun,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

app = Celery("homepot")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _merge_app_schedules(sender, **kwargs):
    # Each app keeps its periodic tasks beside its tasks (<app>/schedule.py).
    from devices_app.schedule import BEAT_SCHEDULE as devices_schedule
    from jobs_app.schedule import BEAT_SCHEDULE as jobs_schedule
    from monitoring_app.schedule import BEAT_SCHEDULE as monitoring_schedule

    sender.conf.beat_schedule = {**devices_schedule, **jobs_schedule, **monitoring_schedule}


# Logger names of Celery's per-task lines: "Task ... received" and "Task ... succeeded", and
# beat's "Sending due task": several lines every ten seconds from the periodic tasks alone.
_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


@after_setup_logger.connect
def _quiet_per_task_lines(logger, loglevel, **kwargs):
    # A person reads the worker's log: failures and retries (WARNING and up) stay, the
    # routine "received/succeeded" of every tick go, unless HOMEPOT_CELERY_LOG_TASKS asks
    # for them (for example while debugging a task).
    from django.conf import settings

    if getattr(settings, "HOMEPOT_CELERY_LOG_TASKS", False):
        return
    for name in _PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(max(loglevel or logging.INFO, logging.WARNING))


@celeryd_init.connect
def _warnings_as_log_lines(**kwargs):
    # Celery warns (SecurityWarning: running as root) with `warnings` before it sets up its
    # logging; with JSON logs on, such a warning is a log line like any other, not raw text.
    from django.conf import settings

    if getattr(settings, "HOMEPOT_LOG_JSON", False):
        import django

        django.setup()  # LOGGING's JSON handler on the root logger (repeating it is a no-op)
        logging.captureWarnings(True)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_lines(logger, **kwargs):
    # The worker and beat replace the root logger's handlers (and give the task logger its
    # own) with Celery's plain formats, so LOGGING's JSON formatter never reaches them: with
    # HOMEPOT_LOG_JSON on, every handler Celery set up writes JSON too (with the task id).
    from django.conf import settings

    if not getattr(settings, "HOMEPOT_LOG_JSON", False):
        return
    from homepot.logging_filters import JsonFormatter

    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


# --- Task metrics (homepot.metrics) -------------------------------------------------------
# Start times by task id, in the process running the task: prerun and postrun fire there.
_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id=None, **kwargs):
    _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_finished(task_id=None, task=None, state=None, **kwargs):
    started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    from homepot import metrics

    metrics.celery_task_duration.labels(task=task.name, state=state or "UNKNOWN").observe(
        time.perf_counter() - started
    )


@task_failure.connect
def _task_failed(sender=None, **kwargs):
    from homepot import metrics

    metrics.celery_task_failures.labels(task=getattr(sender, "name", "unknown")).inc()
