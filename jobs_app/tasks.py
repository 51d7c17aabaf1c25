"""Celery tasks of the jobs app. Thin: the work is in jobs_app.dispatch and jobs_app.services.

Tasks are idempotent and acknowledged late (CELERY_TASK_ACKS_LATE): a task whose worker
dies is delivered again, and running it twice changes nothing the first run did.
"""

from celery import shared_task
from django.conf import settings

from jobs_app import dispatch, services
from jobs_app.choices import JOB_RUNNING_STATUSES, DeliveryStatus
from jobs_app.models import Delivery, Job


@shared_task(bind=True, max_retries=None, acks_late=True)
def dispatch_job(self, job_id: int) -> dict:
    """Hand out the job's pending work. Re-runs itself later while work is held back by
    the per-site limit, and with exponential backoff while pushes fail."""
    result = dispatch.dispatch_pass(job_id)
    if self.request.is_eager:
        return result.__dict__  # no timers in-process: the beat tick carries on
    if result.retry_push:
        raise self.retry(countdown=dispatch.push_backoff(result.max_attempts_seen))
    if result.held:
        self.apply_async((job_id,), countdown=getattr(settings, "HOMEPOT_JOBS_REDISPATCH_SECONDS", 5))
    return result.__dict__


@shared_task
def start_due_jobs() -> list[int]:
    return services.jobs_start_due()


@shared_task
def time_out_deliveries() -> int:
    return services.deliveries_time_out()


@shared_task
def finish_rollups() -> int:
    """Roll up every running job, and re-enqueue the dispatcher for those that still have
    pending work (the safety net for a dispatcher message lost with a broker)."""
    running = list(Job.objects.filter(status__in=JOB_RUNNING_STATUSES).values_list("pk", "materialised_at"))
    for job_id, materialised_at in running:
        services.job_rollup(job_id)
        has_pending = Delivery.objects.filter(job_id=job_id, status=DeliveryStatus.PENDING).exists()
        still_running = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).exists()
        if (materialised_at is None or has_pending) and still_running:
            dispatch_job.delay(job_id)
    return len(running)


@shared_task
def jobs_tick() -> dict:
    """Everything periodic, in order (also what `manage.py jobs_tick` runs without beat)."""
    return {
        "started": start_due_jobs(),
        "timed_out": time_out_deliveries(),
        "rolled_up": finish_rollups(),
    }
