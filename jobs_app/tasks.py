"""Celery tasks of the jobs app. Thin: the work is in jobs_app.dispatch and jobs_app.services.

Tasks are idempotent and acknowledged late (CELERY_TASK_ACKS_LATE): a task whose worker
dies is delivered again, and running it twice changes nothing the first run did.
"""

from celery import shared_task
from django.db.models import Count

from homepot import metrics
from jobs_app import dispatch, services
from jobs_app.choices import JOB_RUNNING_STATUSES, DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job


@shared_task(bind=True, acks_late=True)
def dispatch_job(self, job_id: int, ticket: str | None = None) -> dict:
    """Hand out the job's pending work (one pass). While work is held back by the per-site
    limit or waits out a push backoff, the pass asks for one follow-up pass; the job's
    dispatch ticket (`ticket`, see services.dispatch_request) keeps that to one pending
    message per job. A message without the ticket (a stray, a redelivery) runs once."""
    # In-process (eager) there are no timers to wait with: the beat tick carries on.
    follow_up = not self.request.is_eager
    return dispatch.dispatch_run(job_id, ticket=ticket, follow_up=follow_up).__dict__


@shared_task
def start_due_jobs() -> list[int]:
    return services.jobs_start_due()


@shared_task
def time_out_deliveries() -> int:
    return services.deliveries_time_out()


@shared_task
def finish_rollups() -> int:
    """Roll up every running job, and ask for a dispatch pass for those that still have
    pending work but no pass pending, or one overdue (the safety net for a dispatcher
    message lost with a broker or a worker). A pass already requested is left alone, so
    ticks never pile passes up."""
    running = list(Job.objects.filter(status__in=JOB_RUNNING_STATUSES).values_list("pk", "materialised_at"))
    for job_id, materialised_at in running:
        services.job_rollup(job_id)
        has_pending = Delivery.objects.filter(job_id=job_id, status=DeliveryStatus.PENDING).exists()
        if materialised_at is None or has_pending:
            services.dispatch_request(job_id, sooner=False)
    return len(running)


@shared_task
def jobs_tick() -> dict:
    """Everything periodic, in order (also what `manage.py jobs_tick` runs without beat)."""
    outcome = {
        "started": start_due_jobs(),
        "timed_out": time_out_deliveries(),
        "rolled_up": finish_rollups(),
    }
    # Jobs by status for homepot.metrics: one GROUP BY per tick rather than one per scrape.
    by_status = dict(Job.objects.order_by().values_list("status").annotate(n=Count("id")))
    metrics.set_all(metrics.jobs, "status", JobStatus.values, by_status)
    return outcome
