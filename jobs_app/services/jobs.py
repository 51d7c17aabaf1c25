"""A job's lifecycle, as operators drive it: create, edit, cancel, pause, resume, retry,
clone; and the scheduled start. Each action is scoped (accounts.scoping), validated and
audited once; those that set work going ask for a dispatch pass after commit
(jobs_app.services.enqueue)."""

import datetime

from django.db import transaction
from django.utils import timezone

from accounts.scoping import require_site_access
from homepot.compiled_sql import insert_one
from homepot.errors import Conflict
from homepot.validation import full_clean_batched
from jobs_app.choices import (
    DELIVERY_FAILED,
    JOB_ACTIVE_STATUSES,
    JOB_RUNNING_STATUSES,
    DeliveryStatus,
    JobAction,
    JobStatus,
)
from jobs_app.models import Delivery, Job, SavedSegment
from jobs_app.payloads import clean_payload
from jobs_app.services.common import (
    AUDITED_FIELDS,
    job_snapshot,
    locked_job,
    refuse_finished,
    refuse_rolled_back,
)
from jobs_app.services.deliveries import deliveries_cancel_open, notify_cancelled
from jobs_app.services.enqueue import enqueue_dispatch, enqueue_dispatch_new
from jobs_app.services.rollout import ROLLOUT_FIELDS, clean_rollout
from jobs_app.services.targets import check_targets, segment_for_job
from jobs_app.services.windows import window_default
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic, changes, lock_for_change, snapshot
from sites_app.models import Site

# What a job's author may still change once it exists; the target and the work itself only
# while nothing has been sent.
_EDITABLE_ALWAYS = {"description", "priority"}
_EDITABLE_WHILE_QUEUED = {"site", "action", "payload"}


@audited_atomic()
def job_create(
    *,
    actor,
    site: Site,
    action: str,
    payload: dict | None = None,
    extra_sites=(),
    segment: dict | None = None,
    target_devices=(),
    scheduled_at: datetime.datetime | None = None,
    saved_segment: SavedSegment | None = None,
    **fields,
) -> Job:
    """Create a job for `site` (and `extra_sites`, narrowed by `segment` and
    `target_devices`); every targeted site must be one the actor may change. A
    `saved_segment` the actor may use gives the segment instead (copied onto the job).

    Queued now, or `scheduled` when `scheduled_at` is in the future; the dispatcher starts
    after commit. Audited as job.created. Not idempotent: each call creates a new job.
    """
    extra_sites = [s for s in extra_sites if s.pk != site.pk]
    target_devices = list(target_devices)
    check_targets(actor, site, extra_sites, target_devices)
    segment = segment_for_job(actor, segment, saved_segment)
    # The action's declared schema (jobs_app/payloads.py): the API and the admin both land here.
    payload = clean_payload(action, payload or {})
    fields.update(clean_rollout(**{name: fields.pop(name) for name in ROLLOUT_FIELDS if name in fields}))
    scheduled = scheduled_at is not None and scheduled_at > timezone.now()
    if fields.get("within_maintenance_windows") is None:
        fields["within_maintenance_windows"] = window_default(action)
    job = Job(
        site=site,
        action=action,
        payload=payload,
        segment=segment,
        saved_segment=saved_segment,
        scheduled_at=scheduled_at,
        created_by=actor,
        status=JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED,
        # A job queued now carries its first dispatch ticket in its INSERT (enqueue_dispatch_new).
        dispatch_due_at=None if scheduled else timezone.now(),
        **fields,
    )
    # The site was just checked by check_targets (it exists, the actor may change it) and the
    # creator is the authenticated actor: their foreign keys are not looked up a second time.
    # The check constraints are asked in one query (homepot.validation), not seven.
    full_clean_batched(job, exclude=["site", "created_by"])
    insert_one(job)  # job.save(), from an INSERT compiled once (homepot/compiled_sql.py)
    if extra_sites:
        job.extra_sites.set(extra_sites)
    if target_devices:
        job.target_devices.set(target_devices)
    audit_record(
        event_type=AuditEvent.JOB_CREATED,
        actor=actor,
        job=job,
        # The choices' labels, as get_action_display() gives them (that rebuilds a dict of every
        # choice per call); both values were validated by full_clean above.
        description=f"Job #{job.pk} ({JobAction(job.action).label}) {JobStatus(job.status).label.lower()} "
        f"for {site.site_id}" + (f" and {len(extra_sites)} more site(s)" if extra_sites else ""),
        new_values={
            **job_snapshot(job),
            "extra_sites": [s.site_id for s in extra_sites],
            "target_devices": [d.device_id for d in target_devices],
            "saved_segment": {"id": saved_segment.pk, "name": saved_segment.name} if saved_segment else None,
        },
    )
    if not scheduled:
        enqueue_dispatch_new(job)
    return job


@audited_atomic()
def job_update(*, actor, job: Job, **fields) -> Job:
    """Edit a job's description or priority; its site, action and payload only while it is
    still queued (Conflict otherwise). Audited as job.updated; a repeat records nothing."""
    job = lock_for_change(Job.objects.select_related("site"), job.pk)
    require_site_access(actor, job.site, "change")
    unknown = set(fields) - _EDITABLE_ALWAYS - _EDITABLE_WHILE_QUEUED
    if unknown:
        raise Conflict(f"{', '.join(sorted(unknown))} cannot be edited.", field=sorted(unknown)[0])
    if "site" in fields and fields["site"].pk != job.site_id:
        require_site_access(actor, fields["site"], "change")
    before = snapshot(job, AUDITED_FIELDS)
    for name, value in fields.items():
        setattr(job, name, value)
    old, new = changes(before, snapshot(job, AUDITED_FIELDS))
    locked = set(new) & _EDITABLE_WHILE_QUEUED
    if locked and (before["status"] not in (JobStatus.QUEUED, JobStatus.SCHEDULED) or job.materialised_at):
        raise Conflict(
            f"Job #{job.pk} is {job.get_status_display().lower()}: its {', '.join(sorted(locked))} "
            "can no longer change. Cancel it and create a new job instead.",
            field=sorted(locked)[0],
            code="job_not_queued",
        )
    if {"action", "payload"} & set(new):
        job.payload = clean_payload(job.action, job.payload)
    job.full_clean()
    if new:
        job.save()
        audit_record(
            event_type=AuditEvent.JOB_UPDATED,
            actor=actor,
            job=job,
            description=f"Job #{job.pk} updated: {', '.join(new)}",
            old_values=old,
            new_values=new,
        )
    return job


@audited_atomic()
def job_cancel(*, actor, job: Job) -> Job:
    """Cancel an unfinished job: its pending deliveries are cancelled, and so are those sent
    but not yet acknowledged (a polling device is told `cancelled` when it acknowledges; a
    device on a push channel such as MQTT is sent a cancel message after commit; work a
    device has acknowledged runs to its end). Audited as job.cancelled.

    A repeat on a cancelled job is a no-op; a finished job raises Conflict.
    """
    job = locked_job(actor, job)
    if job.status == JobStatus.CANCELLED:
        return job
    if job.status not in JOB_ACTIVE_STATUSES:
        raise Conflict(f"Job #{job.pk} is already {job.get_status_display().lower()}.", code="job_finished")
    old_status = job.status
    now = timezone.now()
    dropped, told = deliveries_cancel_open(job.pk, now)
    if told:
        notify_cancelled(job, told)
    job.status = JobStatus.CANCELLED
    job.completed_at = max(now, job.started_at) if job.started_at else now
    job.save(update_fields=["status", "completed_at", "updated_at"])
    audit_record(
        event_type=AuditEvent.JOB_CANCELLED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} cancelled ({dropped} deliveries dropped)",
        old_values={"status": old_status},
        new_values={"status": job.status, "deliveries_cancelled": dropped},
    )
    return job


@audited_atomic()
def job_pause(*, actor, job: Job, reason: str = "") -> Job:
    """Stop handing out work (deliveries already sent carry on). Audited as job.paused.
    A repeat is a no-op; a finished job raises Conflict."""
    job = locked_job(actor, job)
    if job.status == JobStatus.PAUSED:
        return job
    if job.status not in (*JOB_RUNNING_STATUSES, JobStatus.SCHEDULED):
        refuse_finished(job, "paused")
    old_status = job.status
    job.status = JobStatus.PAUSED
    job.status_reason = reason or f"Paused by {actor.get_username() if actor else 'the system'}."
    job.save(update_fields=["status", "status_reason", "updated_at"])
    audit_record(
        event_type=AuditEvent.JOB_PAUSED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} paused: {job.status_reason}",
        old_values={"status": old_status},
        new_values={"status": job.status, "status_reason": job.status_reason},
    )
    return job


@audited_atomic()
def job_resume(*, actor, job: Job) -> Job:
    """Carry on with a paused job (the dispatcher restarts). Audited as job.resumed.
    Resuming a job that is running is a no-op; a finished job, or one rolled back (its
    change is being undone), raises Conflict."""
    job = locked_job(actor, job)
    if job.status in JOB_RUNNING_STATUSES or job.status == JobStatus.SCHEDULED:
        return job
    if job.status != JobStatus.PAUSED:
        refuse_finished(job, "resumed")
    refuse_rolled_back(job, "resumed")
    # A job paused before its time goes back to waiting for it.
    waiting = job.scheduled_at is not None and job.scheduled_at > timezone.now() and not job.materialised_at
    job.status = JobStatus.SCHEDULED if waiting else JobStatus.QUEUED
    job.status_reason = ""
    job.save(update_fields=["status", "status_reason", "updated_at"])
    audit_record(
        event_type=AuditEvent.JOB_RESUMED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} resumed",
        old_values={"status": JobStatus.PAUSED},
        new_values={"status": job.status},
    )
    if not waiting:
        enqueue_dispatch(job.pk)
    return job


@audited_atomic()
def job_retry(*, actor, job: Job) -> int:
    """Send the failed and timed-out deliveries again (they become pending, with a fresh
    deadline). A failed job runs again; a paused one stays paused until resumed. Audited as
    job.retried. Conflict when there is nothing to retry, the job was cancelled or rolled
    back."""
    job = locked_job(actor, job)
    if job.status == JobStatus.CANCELLED:
        refuse_finished(job, "retried")
    refuse_rolled_back(job, "retried")
    now = timezone.now()
    retried = Delivery.objects.filter(job=job, status__in=DELIVERY_FAILED).update(
        status=DeliveryStatus.PENDING,
        failed_at=None,
        sent_at=None,
        acknowledged_at=None,
        attempts=0,
        next_attempt_at=None,
        deadline=(now + job.ttl) if job.ttl else None,
        # A fresh start: the device may defer it again, within the job's policy.
        defer_count=0,
        deferred_seconds=0,
        defer_reason="",
        forced=False,
    )
    if not retried:
        raise Conflict(
            f"Job #{job.pk} has no failed or timed-out deliveries to retry.", code="nothing_to_retry"
        )
    old_status = job.status
    if job.status != JobStatus.PAUSED:
        job.status = JobStatus.QUEUED
        job.status_reason = ""
        job.completed_at = None
    job.save(update_fields=["status", "status_reason", "completed_at", "updated_at"])
    audit_record(
        event_type=AuditEvent.JOB_RETRIED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk}: {retried} failed or timed-out deliveries retried",
        old_values={"status": old_status},
        new_values={"status": job.status, "deliveries_retried": retried},
    )
    if job.status != JobStatus.PAUSED:
        enqueue_dispatch(job.pk)
    return retried


@audited_atomic()
def job_clone(*, actor, job: Job) -> Job:
    """A new job with the same work, targets and rollout policy, queued now (the actor must
    still be allowed on every targeted site). Audited once, as job.cloned on the new job."""
    source = Job.objects.select_related("site").get(pk=job.pk)
    extra_sites = list(source.extra_sites.all())
    devices = list(source.target_devices.all())
    check_targets(actor, source.site, extra_sites, devices)
    if source.rollback_of_id:
        raise Conflict(
            f"Job #{source.pk} is a rollback: its work is each device's own previous settings, "
            "which a clone cannot repeat.",
            code="rollback_not_clonable",
        )
    copy = Job(
        site=source.site,
        action=source.action,
        description=source.description,
        payload=source.payload,
        priority=source.priority,
        segment=source.segment,
        ttl=source.ttl,
        batch_size=source.batch_size,
        max_in_flight_per_site=source.max_in_flight_per_site,
        failure_threshold_percent=source.failure_threshold_percent,
        within_maintenance_windows=source.within_maintenance_windows,
        max_in_flight=source.max_in_flight,
        **{name: getattr(source, name) for name in ROLLOUT_FIELDS},
        max_deferrals=source.max_deferrals,
        max_deferral_seconds=source.max_deferral_seconds,
        deferral_exhausted=source.deferral_exhausted,
        rollback_on_failure=source.rollback_on_failure,
        cloned_from=source,
        created_by=actor,
        status=JobStatus.QUEUED,
    )
    copy.full_clean()
    copy.save()
    copy.extra_sites.set(extra_sites)
    copy.target_devices.set(devices)
    audit_record(
        event_type=AuditEvent.JOB_CLONED,
        actor=actor,
        job=copy,
        description=f"Job #{copy.pk} cloned from job #{source.pk}",
        new_values={**job_snapshot(copy), "cloned_from": source.pk},
    )
    enqueue_dispatch(copy.pk)
    return copy


def job_mark_started(job_id: int) -> bool:
    """Record the moment the dispatcher first works on the job; audited once as job.started."""
    with audited_atomic():
        started = Job.objects.filter(pk=job_id, started_at__isnull=True).update(started_at=timezone.now())
        if started:
            job = Job.objects.select_related("site").get(pk=job_id)
            audit_record(event_type=AuditEvent.JOB_STARTED, job=job, description=f"Job #{job_id} started")
    return bool(started)


def jobs_start_due(now: datetime.datetime | None = None) -> list[int]:
    """Scheduled jobs whose time has come → queued (conditional UPDATE), dispatcher enqueued."""
    now = now or timezone.now()
    due = list(
        Job.objects.filter(status=JobStatus.SCHEDULED, scheduled_at__lte=now).values_list("pk", flat=True)
    )
    started = []
    for job_id in due:
        with transaction.atomic():
            if Job.objects.filter(pk=job_id, status=JobStatus.SCHEDULED).update(status=JobStatus.QUEUED):
                started.append(job_id)
                enqueue_dispatch(job_id)
    return started
