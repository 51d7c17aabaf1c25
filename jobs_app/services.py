"""Writes of the jobs app: create, edit and cancel jobs. Each is scoped, validated and audited.

Per-device delivery and dispatch arrive with orchestration; these services are where it
will hook in (job_create enqueues the dispatcher after commit).
"""

from django.db import transaction
from django.utils import timezone

from accounts.scoping import require_site_access
from homepot.errors import Conflict
from jobs_app.choices import JOB_ACTIVE_STATUSES, JobStatus
from jobs_app.models import Job
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, changes, snapshot
from sites_app.models import Site

AUDITED_FIELDS = ("site", "action", "description", "payload", "priority", "status")
# What a job's author may still change once it exists; the target and the work itself only
# while nothing has been sent.
_EDITABLE_ALWAYS = {"description", "priority"}
_EDITABLE_WHILE_QUEUED = {"site", "action", "payload"}


@transaction.atomic
def job_create(*, actor, site: Site, action: str, payload: dict | None = None, **fields) -> Job:
    """Queue a job for `site` (the actor must be allowed to change that site).

    Audited as job.created. Not idempotent: each call queues a new job.
    """
    require_site_access(actor, site, "change")
    job = Job(
        site=site,
        action=action,
        payload=payload or {},
        created_by=actor,
        status=JobStatus.QUEUED,
        **fields,
    )
    job.full_clean()
    job.save()
    audit_record(
        event_type=AuditEvent.JOB_CREATED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} ({job.get_action_display()}) queued for {site.site_id}",
        new_values=snapshot(job, AUDITED_FIELDS),
    )
    return job


@transaction.atomic
def job_update(*, actor, job: Job, **fields) -> Job:
    """Edit a job's description or priority; its site, action and payload only while it is
    still queued (Conflict otherwise). Audited as job.updated; a repeat records nothing."""
    job = Job.objects.select_for_update().select_related("site").get(pk=job.pk)
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
    if locked and before["status"] != JobStatus.QUEUED:
        raise Conflict(
            f"Job #{job.pk} is {job.get_status_display().lower()}: its {', '.join(sorted(locked))} "
            "can no longer change. Cancel it and create a new job instead.",
            field=sorted(locked)[0],
            code="job_not_queued",
        )
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


@transaction.atomic
def job_cancel(*, actor, job: Job) -> Job:
    """Cancel an unfinished job. Audited as job.cancelled.

    A repeat on a cancelled job is a no-op; a finished job raises Conflict.
    """
    job = Job.objects.select_for_update().select_related("site").get(pk=job.pk)
    require_site_access(actor, job.site, "change")
    if job.status == JobStatus.CANCELLED:
        return job
    if job.status not in JOB_ACTIVE_STATUSES:
        raise Conflict(f"Job #{job.pk} is already {job.get_status_display().lower()}.", code="job_finished")
    old_status = job.status
    job.status = JobStatus.CANCELLED
    job.completed_at = timezone.now()
    if job.started_at and job.completed_at < job.started_at:
        job.completed_at = job.started_at
    job.save(update_fields=["status", "completed_at", "updated_at"])
    audit_record(
        event_type=AuditEvent.JOB_CANCELLED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} cancelled",
        old_values={"status": old_status},
        new_values={"status": job.status},
    )
    return job
