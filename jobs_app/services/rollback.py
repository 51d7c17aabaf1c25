"""Rollback: undo a job on the devices that took it, each back to what it had before.

What a device had before is recorded per delivery when the change is applied
(`Delivery.previous_config`, written by the outcome's UPDATE in jobs_app.events): the
settings the job touched, as the device reports them with its outcome (`previous_config`
in the result), else as HOMEPOT last knew them (`Device.config` for configuration jobs,
which completed configuration jobs keep current; `Device.firmware_version` for a software
update). Actions that change no setting (restart, health check) record nothing and cannot
be rolled back.

A rollback is a job of its own, linked both ways (`rollback_of`, `rolled_back_by`; one per
job, held by a unique key), with one delivery per device that completed the original,
each carrying that device's previous values as its own payload (`Delivery.payload`): made
in one `INSERT ... SELECT`, whatever the number of devices. It is rolled out like the
original (batch size, per-site and job-wide caps, maintenance windows, deadline, failure
threshold, deferral policy) unless
the operator overrides the cap or the batch size.
"""

import datetime
import logging

from django.db import connection
from django.utils import timezone

from homepot import metrics
from homepot.errors import Conflict
from jobs_app.choices import JOB_TERMINAL_STATUSES, DeliveryStatus, JobAction, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.services.common import job_snapshot, locked_job
from jobs_app.services.enqueue import enqueue_dispatch
from jobs_app.services.targets import check_targets
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic

logger = logging.getLogger(__name__)

# Actions whose change a rollback can undo, and how their previous values are known.
CONFIG_ACTIONS = (JobAction.UPDATE_CONFIG, JobAction.UPDATE_POS_PAYMENT_CONFIG)
ROLLBACK_ACTIONS = (*CONFIG_ACTIONS, JobAction.SOFTWARE_UPDATE)
# A job may be rolled back once it no longer hands out work.
ROLLBACK_FROM = (*JOB_TERMINAL_STATUSES, JobStatus.PAUSED)

UNSET = object()
TRIGGER_OPERATOR = "operator"
TRIGGER_FAILURE = "failure_threshold"


def rollback_devices(job_id: int):
    """The job's deliveries a rollback undoes: completed, with a previous configuration."""
    return Delivery.objects.filter(
        job_id=job_id, status=DeliveryStatus.COMPLETED, previous_config__isnull=False
    )


def rollback_job_for(
    source: Job, *, actor, max_in_flight_per_site=UNSET, batch_size: int | None = None
) -> Job:
    """The (unsaved) rollback job of `source`: the same sites, action and rollout policy."""
    cap = source.max_in_flight_per_site if max_in_flight_per_site is UNSET else max_in_flight_per_site
    return Job(
        site=source.site,
        action=source.action,
        description=f"Rollback of job #{source.pk}: each device gets back what it had before "
        f"({source.get_action_display()}).",
        # The work is per device (each delivery's payload); the job's own is empty.
        payload={},
        priority=source.priority,
        segment=source.segment,
        ttl=source.ttl,
        batch_size=batch_size or source.batch_size,
        max_in_flight_per_site=cap,
        failure_threshold_percent=source.failure_threshold_percent,
        # Undoing a change must not break the store's trading hours or the chain-wide cap either.
        within_maintenance_windows=source.within_maintenance_windows,
        max_in_flight=source.max_in_flight,
        max_deferrals=source.max_deferrals,
        max_deferral_seconds=source.max_deferral_seconds,
        deferral_exhausted=source.deferral_exhausted,
        rollback_on_failure=False,
        rollback_of=source,
        created_by=actor,
        status=JobStatus.QUEUED,
    )


def rollback_deliveries_create(rollback: Job, source_id: int, now: datetime.datetime) -> int:
    """One pending delivery per device that completed the source job, carrying its previous
    configuration as its payload, in one INSERT ... SELECT. Marks the rollback materialised
    (its deliveries come from here, not from its targets). Returns the rows inserted."""
    # A rollback that waits for maintenance windows gives each delivery its deadline when it
    # is sent, as any such job does (deliveries.deadline_when_sent).
    deadline = now + rollback.ttl if rollback.ttl and not rollback.within_maintenance_windows else None
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (job_id, device_id, site_id, status, attempts, last_error, "  # noqa: S608
            "created_at, deadline, defer_count, deferred_seconds, defer_reason, forced, payload) "
            "SELECT %s, d.device_id, d.site_id, %s, 0, '', %s, %s, 0, 0, '', false, d.previous_config "
            f"FROM {table} d WHERE d.job_id = %s AND d.status = %s AND d.previous_config IS NOT NULL "
            "ORDER BY d.device_id ON CONFLICT (job_id, device_id) DO NOTHING",
            [rollback.pk, DeliveryStatus.PENDING, now, deadline, source_id, DeliveryStatus.COMPLETED],
        )
        inserted = cursor.rowcount
    Job.objects.filter(pk=rollback.pk).update(materialised_at=now)
    rollback.materialised_at = now
    return inserted


def rollback_offered(job: Job) -> bool:
    """Whether the job page offers "Roll back": the job no longer hands out work, was not
    rolled back yet, and some device took the change with a previous configuration."""
    return (
        job.status in ROLLBACK_FROM
        and job.action in ROLLBACK_ACTIONS
        and not Job.objects.filter(rollback_of=job.pk).exists()
        and rollback_devices(job.pk).exists()
    )


@audited_atomic()
def job_rollback(
    *,
    actor,
    job: Job,
    max_in_flight_per_site=UNSET,
    batch_size: int | None = None,
    trigger: str = "operator",
) -> Job:
    """Create and start the rollback job of `job`: one delivery per device whose delivery
    completed, sending it its previous configuration (see the module). The actor must be
    allowed to change every site the job targets (as for a clone); `actor=None` is the
    system (the failure gate). Enqueues the dispatcher after commit. Audited as
    job.rolled_back on `job` and job.created on the rollback.

    Conflict: `job_running` while the job still hands out work, `already_rolled_back`,
    `nothing_to_roll_back` (no device took the change, or the action changes no setting).
    Not repeatable: a second call raises `already_rolled_back`.
    """
    source = locked_job(actor, job)
    extra_sites = list(source.extra_sites.all())
    check_targets(actor, source.site, extra_sites, [])
    if source.status not in ROLLBACK_FROM:
        raise Conflict(
            f"Job #{source.pk} is {source.get_status_display().lower()}: pause it or let it finish "
            "before rolling it back.",
            code="job_running",
        )
    done = Job.objects.filter(rollback_of=source.pk).values_list("pk", flat=True).first()
    if done:
        raise Conflict(
            f"Job #{source.pk} was already rolled back by job #{done}.", code="already_rolled_back"
        )
    devices = rollback_devices(source.pk).count() if source.action in ROLLBACK_ACTIONS else 0
    if not devices:
        raise Conflict(
            f"Job #{source.pk} has nothing to roll back: no device took the change"
            + (
                "."
                if source.action in ROLLBACK_ACTIONS
                else f" ({source.get_action_display()} changes no setting)."
            ),
            code="nothing_to_roll_back",
        )
    rollback = rollback_job_for(
        source, actor=actor, max_in_flight_per_site=max_in_flight_per_site, batch_size=batch_size
    )
    rollback.full_clean()
    rollback.save()
    rollback.extra_sites.set(extra_sites)
    created = rollback_deliveries_create(rollback, source.pk, timezone.now())
    audit_record(
        event_type=AuditEvent.JOB_ROLLED_BACK,
        actor=actor,
        job=source,
        description=f"Job #{source.pk} rolled back by job #{rollback.pk} ({created} device(s) restored; "
        f"{'by the failure threshold' if trigger == TRIGGER_FAILURE else 'by an operator'})",
        new_values={"rolled_back_by": rollback.pk, "devices": created, "trigger": trigger},
    )
    audit_record(
        event_type=AuditEvent.JOB_CREATED,
        actor=actor,
        job=rollback,
        description=f"Job #{rollback.pk} ({rollback.get_action_display()}) queued: "
        f"rollback of job #{source.pk}",
        new_values={**job_snapshot(rollback), "rollback_of": source.pk, "devices": created},
    )
    metrics.rollbacks_started.labels(trigger=trigger).inc()
    enqueue_dispatch(rollback.pk)
    return rollback


def job_rollback_on_failure(job_id: int) -> Job | None:
    """After the failure gate paused `job_id`: its rollback, if the job asks for one and
    some device took the change; None otherwise (the pause stands either way). Safe to
    repeat: a job already rolled back is left alone."""
    job = Job.objects.filter(pk=job_id, rollback_on_failure=True, status=JobStatus.PAUSED).first()
    if job is None or Job.objects.filter(rollback_of=job_id).exists():
        return None
    try:
        return job_rollback(actor=None, job=job, trigger=TRIGGER_FAILURE)
    except Conflict as exc:
        logger.info("Job %s paused by its failure threshold; no rollback: %s", job_id, exc)
        return None
