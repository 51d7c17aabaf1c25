"""The one seam between the services and the dispatcher's Celery task: a service asks for
a dispatch pass here, and the task is found by its name in the Celery app's registry, so
the services never import jobs_app.tasks or jobs_app.dispatch (those stand above them and
call down into them; the arrows run one way).

Each job has at most one requested pass pending (its dispatch ticket, `Job.dispatch_due_at`)."""

import datetime
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from homepot.broker import publish_task
from homepot.celery import app as celery_app
from jobs_app.choices import JOB_RUNNING_STATUSES
from jobs_app.models import Job
from jobs_app.services.common import setting

logger = logging.getLogger(__name__)

# The dispatcher's task (jobs_app.tasks.dispatch_job), by its registered name.
DISPATCH_TASK = "jobs_app.tasks.dispatch_job"


def _dispatch_task():
    """The registered dispatcher task. A worker has imported every app's tasks at start; a
    web process may not have yet, so the app's own task discovery is run once when needed."""
    if DISPATCH_TASK not in celery_app.tasks:
        celery_app.loader.import_default_modules()
    return celery_app.tasks[DISPATCH_TASK]


def enqueue_dispatch(job_id: int) -> None:
    """Start the dispatcher now, once the operator's transaction has committed (a worker
    must see the row). An operator action wants its effect at once, so this takes the job's
    dispatch ticket even from a follow-up already due later (that message then runs as a
    stray once, harmlessly: see dispatch_request)."""
    dispatch_request(job_id, force=True)


def dispatch_request(
    job_id: int,
    *,
    at: datetime.datetime | None = None,
    sooner: bool = True,
    force: bool = False,
) -> bool:
    """Ask for one dispatch pass of a running job at `at` (now when None); after commit,
    enqueue `dispatch_job(job_id, ticket)` with a countdown to that time.

    At most one requested pass is pending per job, however many ticks, held passes and
    push failures ask for one: `Job.dispatch_due_at` holds its time and is claimed by a
    conditional UPDATE, which succeeds only when no pass is pending, when the pending one
    is overdue by HOMEPOT_JOBS_DISPATCH_LOST_SECONDS (its message was lost with a broker or
    a worker), or, with `sooner`, when it is due later than `at`. `force` (operator
    actions) always takes it. The time is the ticket: the pass that carries it clears it
    when it starts, any other message for the job (a stray: replaced, redelivered after a
    crash) runs one pass and can re-queue itself only through this same claim, so no
    chain of passes grows. Returns whether a pass was enqueued; a repeat is a no-op while
    the first is pending. A broker that is down is logged, not raised: the claim stays,
    turns overdue, and the beat tick enqueues again.
    """
    now = timezone.now()
    at = max(at or now, now)
    claim = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES)
    if not force:
        lost = now - datetime.timedelta(seconds=setting("DISPATCH_LOST_SECONDS", 30))
        free = Q(dispatch_due_at__isnull=True) | Q(dispatch_due_at__lt=lost)
        claim = claim.filter(free | Q(dispatch_due_at__gt=at) if sooner else free)
    if not claim.update(dispatch_due_at=at):
        return False
    _send_after_commit(job_id, at)
    return True


def enqueue_dispatch_new(job: Job) -> None:
    """The first pass of a job this transaction has just inserted with its ticket already
    in the row (`dispatch_due_at` written by the INSERT): enqueued after commit, like
    dispatch_request, without the claiming UPDATE (no one else can hold a ticket for a row
    nobody else can see yet)."""
    _send_after_commit(job.pk, job.dispatch_due_at)


def _send_after_commit(job_id: int, at: datetime.datetime) -> None:
    def send():
        delay = (at - timezone.now()).total_seconds()
        args = (job_id, at.isoformat())
        try:
            # apply_async's message from a kept producer (homepot.broker); the header's view of
            # the arguments is their repr, which is what Celery's saferepr gives for an int
            # and a short text.
            publish_task(_dispatch_task(), args, countdown=delay if delay > 0 else None, argsrepr=repr(args))
        except Exception:  # noqa: BLE001 - any broker failure; the tick retries
            logger.exception("Could not enqueue the dispatcher for job %s; the beat tick will retry", job_id)

    transaction.on_commit(send)


def dispatch_ticket_release(job_id: int, ticket: str | None) -> bool:
    """The requested pass holding `ticket` has started: no pass is pending any more (so the
    next request may claim). Any other ticket (a stray message) changes nothing."""
    if not ticket:
        return False
    due = datetime.datetime.fromisoformat(ticket)
    return bool(Job.objects.filter(pk=job_id, dispatch_due_at=due).update(dispatch_due_at=None))
