"""Writes of the jobs app: jobs (operator actions), their deliveries (the per-device state
machine) and the rollup of deliveries into the job's status.

Operator actions are scoped, validated and audited once each. Delivery transitions are
conditional UPDATEs (`... WHERE status IN (allowed sources)`): a replayed batch, a repeated
device report or a report arriving out of order changes nothing it should not, and two
workers can never both move the same row. Deliveries are not audited one by one (a
100,000-device job would write 100,000 audit rows); the job's transitions are, and so is an
operator cancelling a single delivery (delivery_cancel).
"""

import datetime
import json
import logging
import math

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Min, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.scoping import require_site_access, scoped_site_ids
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device
from homepot import metrics
from homepot.errors import Conflict
from homepot.validation import full_clean_batched
from jobs_app.choices import (
    DELIVERY_FAILED,
    DELIVERY_IN_FLIGHT,
    DELIVERY_NOT_TAKEN,
    DELIVERY_UNFINISHED,
    JOB_ACTIVE_STATUSES,
    JOB_RUNNING_STATUSES,
    DeliveryStatus,
    JobStatus,
)
from jobs_app.models import Delivery, Job, SavedSegment
from jobs_app.payloads import clean_payload
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic, changes, lock_for_change, snapshot
from sites_app.models import Site

logger = logging.getLogger(__name__)

AUDITED_FIELDS = (
    "site",
    "action",
    "description",
    "payload",
    "priority",
    "status",
    "segment",
    "scheduled_at",
    "batch_size",
    "max_in_flight_per_site",
    "failure_threshold_percent",
)
# What a job's author may still change once it exists; the target and the work itself only
# while nothing has been sent.
_EDITABLE_ALWAYS = {"description", "priority"}
_EDITABLE_WHILE_QUEUED = {"site", "action", "payload"}

# Segment keys and the values each accepts (None: any non-empty text).
SEGMENT_KEYS = {
    "device_type": set(DeviceType.values),
    "status": set(DeviceStatus.values),
    "firmware_version": None,
}


def _job_snapshot(job: Job) -> dict:
    """The audited fields, JSON-ready (the deadline as seconds)."""
    return {**snapshot(job, AUDITED_FIELDS), "ttl_seconds": job.ttl.total_seconds() if job.ttl else None}


def _setting(name: str, default):
    return getattr(settings, f"HOMEPOT_JOBS_{name}", default)


# --- Targets -----------------------------------------------------------------------------------


def clean_segment(segment) -> dict:
    """A segment is {key: [values]} with keys from SEGMENT_KEYS; refuse anything else (400)."""
    if segment in (None, ""):
        return {}
    if not isinstance(segment, dict):
        raise ValidationError({"segment": 'Give an object such as {"device_type": ["pos_terminal"]}.'})
    cleaned = {}
    for key, values in segment.items():
        if key not in SEGMENT_KEYS:
            raise ValidationError(
                {"segment": f"Unknown segment key {key!r}; use {', '.join(sorted(SEGMENT_KEYS))}."}
            )
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValidationError({"segment": f"{key}: give a non-empty list of text values."})
        allowed = SEGMENT_KEYS[key]
        unknown = [v for v in values if allowed is not None and v not in allowed]
        if unknown:
            raise ValidationError({"segment": f"{key}: unknown value(s) {', '.join(map(repr, unknown))}."})
        cleaned[key] = sorted(set(values))
    return cleaned


def target_devices_query(*, site_ids, segment: dict | None = None, device_ids=None) -> QuerySet[Device]:
    """The devices a job with these targets reaches: at one of `site_ids`, matching every
    list of the segment, and, when `device_ids` is given, among those devices."""
    devices = Device.objects.filter(site_id__in=list(site_ids))
    for key, values in (segment or {}).items():
        devices = devices.filter(**{f"{key}__in": values})
    if device_ids is not None:
        devices = devices.filter(pk__in=device_ids)
    return devices.order_by()


def job_target_query(job: Job) -> QuerySet[Device]:
    site_ids = [job.site_id, *job.extra_sites.values_list("pk", flat=True)]
    picked = job.target_devices.values_list("pk", flat=True)
    return target_devices_query(
        site_ids=site_ids, segment=job.segment, device_ids=picked if picked.exists() else None
    )


def _check_targets(actor, site: Site, extra_sites, devices) -> list[int]:
    """Every targeted site must be one the actor may change; hand-picked devices must be at
    one of the targeted sites. Returns the site ids."""
    require_site_access(actor, site, "change")
    site_ids = [site.pk]
    for extra in extra_sites:
        require_site_access(actor, extra, "change")
        site_ids.append(extra.pk)
    strays = [device.device_id for device in devices if device.site_id not in site_ids]
    if strays:
        raise ValidationError(
            {"target_devices": f"Not at the job's sites: {', '.join(sorted(strays)[:10])}."}
        )
    return site_ids


def _segment_for_job(actor, segment, saved_segment: SavedSegment | None) -> dict:
    """The segment a new job gets: the one given, or a copy of the saved segment's filter
    (one the actor may use; a later edit of the saved segment leaves the job alone)."""
    if saved_segment is None:
        return clean_segment(segment)
    if segment:
        raise ValidationError({"saved_segment": "Give either a segment or a saved segment, not both."})
    if actor is not None and not SavedSegment.objects.for_user(actor).filter(pk=saved_segment.pk).exists():
        raise ValidationError({"saved_segment": f"Unknown saved segment {saved_segment.pk}."})
    return clean_segment(saved_segment.segment)


# --- Saved segments ---------------------------------------------------------------------------


def _check_segment_scope(actor, site: Site | None) -> None:
    """A site-scoped segment needs change rights on its site; a site-less one, change
    rights on some site (the people who create jobs)."""
    if site is not None:
        require_site_access(actor, site, "change")
        return
    managed = scoped_site_ids(actor, "change") if actor is not None else None
    if managed is not None and not managed.exists():
        raise PermissionDenied("Only those who run a site may save segments.")


def _clean_saved_segment(saved: SavedSegment) -> None:
    saved.name = (saved.name or "").strip()
    saved.segment = clean_segment(saved.segment)
    if not saved.segment:
        raise ValidationError({"segment": "A saved segment needs at least one list to match."})
    saved.full_clean()


SEGMENT_AUDITED_FIELDS = ("name", "segment", "site")


@audited_atomic()
def segment_create(*, actor, name: str, segment: dict, site: Site | None = None) -> SavedSegment:
    """Save a named filter, for `site`'s managers or (site-less) for everyone who runs a
    site. Audited as segment.created; a job made from it also records the segment's id and
    name in its job.created row."""
    _check_segment_scope(actor, site)
    saved = SavedSegment(name=name, segment=segment, site=site, owner=actor)
    _clean_saved_segment(saved)
    saved.save()
    audit_record(
        event_type=AuditEvent.SEGMENT_CREATED,
        actor=actor,
        site=site,
        description=f"Saved segment #{saved.pk} '{saved.name}' created",
        new_values=snapshot(saved, SEGMENT_AUDITED_FIELDS),
    )
    return saved


def _segment_for_change(actor, saved: SavedSegment) -> SavedSegment:
    saved = lock_for_change(SavedSegment, saved.pk)
    if actor is not None and not SavedSegment.objects.for_user(actor, "change").filter(pk=saved.pk).exists():
        raise PermissionDenied("You may not change this saved segment.")
    return saved


def _still_in_reach(actor, saved: SavedSegment) -> None:
    # Checked after the write (the save rolls back with the error): a change may not move a
    # segment out of its changer's reach, e.g. make another's site segment site-less (those
    # are changed only by their owner), which would hand it to someone else.
    if actor is not None and not SavedSegment.objects.for_user(actor, "change").filter(pk=saved.pk).exists():
        raise PermissionDenied("This change would move the saved segment out of your reach.")


@audited_atomic()
def segment_update(*, actor, saved: SavedSegment, **fields) -> SavedSegment:
    """Rename, re-filter or re-scope a saved segment. Jobs already made from it keep the
    filter they copied. Audited as segment.updated with only what changed."""
    saved = _segment_for_change(actor, saved)
    unknown = set(fields) - {"name", "segment", "site"}
    if unknown:
        raise ValidationError({sorted(unknown)[0]: "This cannot be changed."})
    if "site" in fields and fields["site"] != saved.site:
        _check_segment_scope(actor, fields["site"])
    before = snapshot(saved, SEGMENT_AUDITED_FIELDS)
    for name, value in fields.items():
        setattr(saved, name, value)
    _clean_saved_segment(saved)
    old, new = changes(before, snapshot(saved, SEGMENT_AUDITED_FIELDS))
    if new:
        saved.save()
        _still_in_reach(actor, saved)
        audit_record(
            event_type=AuditEvent.SEGMENT_UPDATED,
            actor=actor,
            site=saved.site,
            description=f"Saved segment #{saved.pk} updated: {', '.join(new)}",
            old_values=old,
            new_values=new,
        )
    return saved


@audited_atomic()
def segment_delete(*, actor, saved: SavedSegment) -> None:
    """Delete a saved segment; jobs made from it keep their copied filter. Audited as
    segment.deleted."""
    saved = _segment_for_change(actor, saved)
    audit_record(
        event_type=AuditEvent.SEGMENT_DELETED,
        actor=actor,
        site=saved.site,
        description=f"Saved segment #{saved.pk} '{saved.name}' deleted",
        old_values=snapshot(saved, SEGMENT_AUDITED_FIELDS),
    )
    saved.delete()


# --- Operator actions --------------------------------------------------------------------------


def _enqueue_dispatch(job_id: int) -> None:
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
        lost = now - datetime.timedelta(seconds=_setting("DISPATCH_LOST_SECONDS", 30))
        free = Q(dispatch_due_at__isnull=True) | Q(dispatch_due_at__lt=lost)
        claim = claim.filter(free | Q(dispatch_due_at__gt=at) if sooner else free)
    if not claim.update(dispatch_due_at=at):
        return False

    def send():
        from jobs_app.tasks import dispatch_job

        delay = (at - timezone.now()).total_seconds()
        try:
            dispatch_job.apply_async((job_id, at.isoformat()), countdown=delay if delay > 0 else None)
        except Exception:  # noqa: BLE001 - any broker failure; the tick retries
            logger.exception("Could not enqueue the dispatcher for job %s; the beat tick will retry", job_id)

    transaction.on_commit(send)
    return True


def dispatch_ticket_release(job_id: int, ticket: str | None) -> bool:
    """The requested pass holding `ticket` has started: no pass is pending any more (so the
    next request may claim). Any other ticket (a stray message) changes nothing."""
    if not ticket:
        return False
    due = datetime.datetime.fromisoformat(ticket)
    return bool(Job.objects.filter(pk=job_id, dispatch_due_at=due).update(dispatch_due_at=None))


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
    _check_targets(actor, site, extra_sites, target_devices)
    segment = _segment_for_job(actor, segment, saved_segment)
    # The action's declared schema (jobs_app/payloads.py): the API and the admin both land here.
    payload = clean_payload(action, payload or {})
    scheduled = scheduled_at is not None and scheduled_at > timezone.now()
    job = Job(
        site=site,
        action=action,
        payload=payload,
        segment=segment,
        saved_segment=saved_segment,
        scheduled_at=scheduled_at,
        created_by=actor,
        status=JobStatus.SCHEDULED if scheduled else JobStatus.QUEUED,
        **fields,
    )
    # The site was just checked by _check_targets (it exists, the actor may change it) and the
    # creator is the authenticated actor: their foreign keys are not looked up a second time.
    # The check constraints are asked in one query (homepot.validation), not seven.
    full_clean_batched(job, exclude=["site", "created_by"])
    job.save()
    if extra_sites:
        job.extra_sites.set(extra_sites)
    if target_devices:
        job.target_devices.set(target_devices)
    audit_record(
        event_type=AuditEvent.JOB_CREATED,
        actor=actor,
        job=job,
        description=f"Job #{job.pk} ({job.get_action_display()}) {job.get_status_display().lower()} "
        f"for {site.site_id}" + (f" and {len(extra_sites)} more site(s)" if extra_sites else ""),
        new_values={
            **_job_snapshot(job),
            "extra_sites": [s.site_id for s in extra_sites],
            "target_devices": [d.device_id for d in target_devices],
            "saved_segment": {"id": saved_segment.pk, "name": saved_segment.name} if saved_segment else None,
        },
    )
    if not scheduled:
        _enqueue_dispatch(job.pk)
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


def _locked_job(actor, job: Job) -> Job:
    job = lock_for_change(Job.objects.select_related("site"), job.pk)
    require_site_access(actor, job.site, "change")
    return job


def _refuse_finished(job: Job, verb: str) -> None:
    raise Conflict(
        f"Job #{job.pk} is {job.get_status_display().lower()}: it cannot be {verb}.", code="job_not_active"
    )


@audited_atomic()
def job_cancel(*, actor, job: Job) -> Job:
    """Cancel an unfinished job: its pending deliveries are cancelled, and so are those sent
    but not yet acknowledged (a polling device is told `cancelled` when it acknowledges; a
    device on a push channel such as MQTT is sent a cancel message after commit; work a
    device has acknowledged runs to its end). Audited as job.cancelled.

    A repeat on a cancelled job is a no-op; a finished job raises Conflict.
    """
    job = _locked_job(actor, job)
    if job.status == JobStatus.CANCELLED:
        return job
    if job.status not in JOB_ACTIVE_STATUSES:
        raise Conflict(f"Job #{job.pk} is already {job.get_status_display().lower()}.", code="job_finished")
    old_status = job.status
    now = timezone.now()
    dropped, told = _deliveries_cancel(job.pk, now)
    if told:
        _notify_cancelled(job, told)
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


def _deliveries_cancel(job_id: int, now) -> tuple[int, list[tuple[int, str, str]]]:
    """pending|sent → cancelled in one UPDATE. Returns how many moved and, for those a push
    channel had already delivered (`sent_at` set), (delivery id, device id, channel): the
    devices to tell. Poll devices are left out: they learn `cancelled` from their next ack."""
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH moved AS (UPDATE {table} SET status = %s, failed_at = %s "  # noqa: S608
            "WHERE job_id = %s AND status = ANY(%s) RETURNING id, device_id, sent_at) "
            "SELECT count(*), coalesce(json_agg(json_build_array(m.id, d.device_id, d.push_channel)) "
            "FILTER (WHERE m.sent_at IS NOT NULL AND d.push_channel <> 'poll'), '[]') "
            f"FROM moved m JOIN {Device._meta.db_table} d ON d.id = m.device_id",
            [DeliveryStatus.CANCELLED, now, job_id, list(DELIVERY_NOT_TAKEN)],
        )
        dropped, told = cursor.fetchone()
    if isinstance(told, str):
        told = json.loads(told)
    return dropped, [tuple(row) for row in told]


def _notify_cancelled(job: Job, told: list[tuple[int, str, str]]) -> None:
    """After commit (the cancel must be the truth before a device hears of it), publish a
    cancel to each device through its channel. Best effort: a broker that is down is
    logged; the delivery stays cancelled and the device's report on it is ignored."""
    from jobs_app.channels import Outgoing, get_channel

    by_channel: dict[str, list[Outgoing]] = {}
    for delivery_id, device_id, channel in told:
        by_channel.setdefault(channel, []).append(
            Outgoing(
                delivery_id=delivery_id,
                device_id=device_id,
                job_id=job.pk,
                action=job.action,
                payload={},
                priority=job.priority,
            )
        )

    def send():
        for channel, batch in by_channel.items():
            try:
                get_channel(channel).cancel(batch)
            except Exception:  # noqa: BLE001 - any channel failure; the cancel itself stands
                logger.exception("Could not tell %d %s device(s) to drop job %s", len(batch), channel, job.pk)

    transaction.on_commit(send)


@audited_atomic()
def delivery_cancel(*, actor, delivery: Delivery) -> Delivery:
    """Cancel one device's copy of a job: pending|sent → cancelled (`failed_at` set), in one
    conditional UPDATE. Scoped like job_cancel (the actor must change the job's site), and
    the delivery must be at a site the actor sees.

    A device on a push channel (MQTT) that was sent the work is sent a cancel message after
    commit; a polling device hears `cancelled` when it next acknowledges. The job is rolled
    up afterwards, so cancelling its last open delivery finishes it. Audited as
    delivery.cancelled (with the job, the device and the delivery's site).

    A repeat on a cancelled delivery is a no-op; an acknowledged or finished delivery raises
    Conflict (`delivery_not_cancellable`).
    """
    # Job row first, then the delivery row: the same order as job_cancel, so the two never
    # wait on each other crosswise; a device's ack waits for this lock and then sees
    # `cancelled`.
    job = _locked_job(actor, delivery.job)
    delivery = (
        Delivery.objects.select_for_update(of=("self",))
        .select_related("device", "site")
        .get(pk=delivery.pk, job_id=job.pk)
    )
    if actor is not None:
        require_site_access(actor, delivery.site, "view")
    if delivery.status == DeliveryStatus.CANCELLED:
        return delivery
    if delivery.status not in DELIVERY_NOT_TAKEN:
        why = (
            "the device has already taken the work"
            if delivery.status == DeliveryStatus.ACKNOWLEDGED
            else "it is finished"
        )
        raise Conflict(
            f"Delivery #{delivery.pk} to {delivery.device.device_id} is "
            f"{delivery.get_status_display().lower()}: it cannot be cancelled ({why}).",
            code="delivery_not_cancellable",
        )
    old_status = delivery.status
    now = timezone.now()
    Delivery.objects.filter(pk=delivery.pk, status__in=DELIVERY_NOT_TAKEN).update(
        status=DeliveryStatus.CANCELLED, failed_at=now
    )
    delivery.status, delivery.failed_at = DeliveryStatus.CANCELLED, now
    device = delivery.device
    if delivery.sent_at is not None and device.push_channel != "poll":
        _notify_cancelled(job, [(delivery.pk, device.device_id, device.push_channel)])
    audit_record(
        event_type=AuditEvent.DELIVERY_CANCELLED,
        actor=actor,
        job=job,
        device=device,
        site=delivery.site,
        description=f"Delivery #{delivery.pk} of job #{job.pk} to {device.device_id} cancelled",
        old_values={"status": old_status},
        new_values={"status": delivery.status},
    )
    job_rollup(job.pk)
    return delivery


@audited_atomic()
def job_pause(*, actor, job: Job, reason: str = "") -> Job:
    """Stop handing out work (deliveries already sent carry on). Audited as job.paused.
    A repeat is a no-op; a finished job raises Conflict."""
    job = _locked_job(actor, job)
    if job.status == JobStatus.PAUSED:
        return job
    if job.status not in (*JOB_RUNNING_STATUSES, JobStatus.SCHEDULED):
        _refuse_finished(job, "paused")
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
    Resuming a job that is running is a no-op; a finished job raises Conflict."""
    job = _locked_job(actor, job)
    if job.status in JOB_RUNNING_STATUSES or job.status == JobStatus.SCHEDULED:
        return job
    if job.status != JobStatus.PAUSED:
        _refuse_finished(job, "resumed")
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
        _enqueue_dispatch(job.pk)
    return job


@audited_atomic()
def job_retry(*, actor, job: Job) -> int:
    """Send the failed and timed-out deliveries again (they become pending, with a fresh
    deadline). A failed job runs again; a paused one stays paused until resumed. Audited as
    job.retried. Conflict when there is nothing to retry or the job was cancelled."""
    job = _locked_job(actor, job)
    if job.status == JobStatus.CANCELLED:
        _refuse_finished(job, "retried")
    now = timezone.now()
    retried = Delivery.objects.filter(job=job, status__in=DELIVERY_FAILED).update(
        status=DeliveryStatus.PENDING,
        failed_at=None,
        sent_at=None,
        acknowledged_at=None,
        attempts=0,
        next_attempt_at=None,
        deadline=(now + job.ttl) if job.ttl else None,
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
        _enqueue_dispatch(job.pk)
    return retried


@audited_atomic()
def job_clone(*, actor, job: Job) -> Job:
    """A new job with the same work, targets and rollout policy, queued now (the actor must
    still be allowed on every targeted site). Audited once, as job.cloned on the new job."""
    source = Job.objects.select_related("site").get(pk=job.pk)
    extra_sites = list(source.extra_sites.all())
    devices = list(source.target_devices.all())
    _check_targets(actor, source.site, extra_sites, devices)
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
        new_values={**_job_snapshot(copy), "cloned_from": source.pk},
    )
    _enqueue_dispatch(copy.pk)
    return copy


# --- Reads that services and views share ---------------------------------------------------


def job_preview(
    *,
    actor,
    site: Site,
    extra_sites=(),
    segment: dict | None = None,
    target_devices=(),
    batch_size: int | None = None,
    max_in_flight_per_site: int | None = None,
    saved_segment: SavedSegment | None = None,
    per_site: bool = False,
) -> dict:
    """Pre-flight numbers for a job not yet created: how many devices match, how many are
    online now, how many already have unfinished work, and the expected duration under the
    rollout policy: waves (the largest site's devices over `max_in_flight_per_site`) times
    what a wave took in recent jobs (`_wave_seconds`), with the basis said in words."""
    devices = list(target_devices)
    site_ids = _check_targets(actor, site, list(extra_sites), devices)
    targets = target_devices_query(
        site_ids=site_ids,
        segment=_segment_for_job(actor, segment, saved_segment),
        device_ids=[d.pk for d in devices] or None,
    )
    busy = Delivery.objects.filter(status__in=DELIVERY_UNFINISHED).values("device_id")
    numbers = targets.aggregate(
        matching=Count("pk"),
        online=Count("pk", filter=Q(status=DeviceStatus.ONLINE)),
        with_unfinished_work=Count("pk", filter=Q(pk__in=busy)),
    )
    largest_site = (
        targets.values("site_id").annotate(n=Count("pk")).order_by("-n").values_list("n", flat=True).first()
        or 0
    )
    if per_site:
        # The admin's review step: matching devices per site, the largest first (bounded).
        per_site_rows = list(
            targets.order_by()
            .values("site_id", "site__site_id", "site__name")
            .annotate(n=Count("pk"))
            .order_by("-n", "site__site_id")[:PREVIEW_SITES_LIMIT]
        )
    wave_seconds, basis = _wave_seconds()
    waves = 0
    if numbers["matching"]:
        # Each site works through its devices `max_in_flight` at a time; sites run in parallel.
        waves = math.ceil(largest_site / max_in_flight_per_site) if max_in_flight_per_site else 1
    extra = {"per_site": per_site_rows} if per_site else {}
    return {
        **numbers,
        **extra,
        "sites": len(site_ids),
        "largest_site_devices": largest_site,
        "batches": math.ceil(numbers["matching"] / (batch_size or Job._meta.get_field("batch_size").default)),
        "waves": waves,
        "expected_duration_seconds": math.ceil(waves * wave_seconds),
        "expected_duration_basis": (
            (
                f"{waves} wave(s) of at most {max_in_flight_per_site} device(s) per site, "
                if max_in_flight_per_site
                else "1 wave (no per-site limit: every device at once), "
            )
            + basis
            if waves
            else "no device matches"
        ),
    }


# How many sites the per-site preview lists.
PREVIEW_SITES_LIMIT = 50
# How many recent finished jobs the duration estimate is measured from.
ESTIMATE_SAMPLE_JOBS = 20


def _wave_seconds() -> tuple[float, str]:
    """How long one wave (every targeted device busy at once) takes: the median duration of
    the last finished jobs that ran without a per-site limit (each of those was one wave),
    or the HOMEPOT_JOBS_EXPECTED_SECONDS_PER_DEVICE guess when none has finished yet. Read
    through the (-created_at) index, a handful of rows."""
    durations = sorted(
        (done - started).total_seconds()
        for started, done in Job.objects.filter(
            status__in=(JobStatus.COMPLETED, JobStatus.FAILED),
            max_in_flight_per_site__isnull=True,
            started_at__isnull=False,
            completed_at__isnull=False,
        )
        .order_by("-created_at")
        .values_list("started_at", "completed_at")[:ESTIMATE_SAMPLE_JOBS]
    )
    if not durations:
        guess = _setting("EXPECTED_SECONDS_PER_DEVICE", 30)
        return guess, f"about {guess} s each (a default: no job has finished yet to measure)"
    median = durations[len(durations) // 2]
    if len(durations) % 2 == 0:
        median = (durations[len(durations) // 2 - 1] + median) / 2
    median = max(median, 1.0)
    shown = f"{median:.0f} s" if median < 120 else f"{median / 60:.0f} min"
    return median, f"about {shown} each (the median of the last {len(durations)} finished job(s))"


def job_progress(job: Job) -> dict:
    """Counts per delivery status, percent finished, rate and time to finish.

    One GROUP BY over the (job, status, id) index, an index-only scan: a few milliseconds
    at 100,000 deliveries, with no counter row for every device report to fight over.
    """
    counts = dict.fromkeys(DeliveryStatus.values, 0)
    counts.update(
        Delivery.objects.filter(job_id=job.pk)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    total = sum(counts.values())
    finished = total - sum(counts[s] for s in DELIVERY_UNFINISHED)
    rate = eta = None
    if job.started_at and finished:
        end = job.completed_at or timezone.now()
        elapsed = max((end - job.started_at).total_seconds(), 0.001)
        rate = round(finished / elapsed, 3)
        eta = round((total - finished) / rate, 1) if total > finished else 0
    return {
        "total": total,
        "counts": counts,
        "percent": round(100 * finished / total, 1) if total else 0.0,
        "rate_per_second": rate,
        "eta_seconds": eta,
    }


# --- Deliveries: materialising and the state machine ----------------------------------------


def deliveries_materialise(job_id: int) -> int:
    """Create the job's deliveries, once, in one `INSERT ... SELECT` from the target query.

    The job row's `materialised_at` is claimed by a conditional UPDATE in the same
    transaction, so a replayed dispatcher (or two at once) inserts nothing more; ON CONFLICT
    keeps the (job, device) pair unique whatever happens. Returns the rows inserted.
    """
    now = timezone.now()
    with transaction.atomic():
        if not Job.objects.filter(pk=job_id, materialised_at__isnull=True).update(materialised_at=now):
            return 0
        job = Job.objects.get(pk=job_id)
        deadline = now + job.ttl if job.ttl else None
        sql, params = job_target_query(job).values_list("pk", "site_id").query.sql_with_params()
        table = Delivery._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (job_id, device_id, site_id, status, attempts, last_error, "  # noqa: S608
                f"created_at, deadline) SELECT %s, t.device_id, t.site_id, %s, 0, '', %s, %s "
                f"FROM ({sql}) AS t (device_id, site_id) "
                "ORDER BY t.device_id ON CONFLICT (job_id, device_id) DO NOTHING",
                [job_id, DeliveryStatus.PENDING, now, deadline, *params],
            )
            return cursor.rowcount


def deliveries_mark_sent(delivery_ids) -> int:
    """pending → sent for a batch, in one UPDATE. Rows no longer pending are left alone."""
    return Delivery.objects.filter(pk__in=list(delivery_ids), status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.SENT, sent_at=timezone.now(), attempts=F("attempts") + 1, next_attempt_at=None
    )


def deliveries_push_failed(
    delivery_ids, error: str, max_attempts: int, retry_at: datetime.datetime | None = None
) -> tuple[int, int]:
    """Record a failed push attempt for a batch still pending: those out of attempts become
    `failed` with the error, the others wait until `retry_at` (the dispatcher skips them
    until then, however often it runs). Returns (will retry, failed)."""
    ids = list(delivery_ids)
    now = timezone.now()
    pending = Delivery.objects.filter(pk__in=ids, status=DeliveryStatus.PENDING)
    failed = pending.filter(attempts__gte=max_attempts - 1).update(
        status=DeliveryStatus.FAILED, attempts=F("attempts") + 1, last_error=error[:2000], failed_at=now
    )
    retry = pending.update(attempts=F("attempts") + 1, last_error=error[:2000], next_attempt_at=retry_at)
    return retry, failed


def deliveries_next_attempt_at(job_id: int) -> datetime.datetime | None:
    """The earliest time one of the job's pending deliveries may be offered (now for one
    that is not waiting out a push backoff); None when nothing is pending."""
    now = timezone.now()
    return Delivery.objects.filter(job_id=job_id, status=DeliveryStatus.PENDING).aggregate(
        first=Min(Coalesce("next_attempt_at", Value(now)))
    )["first"]


def _device_delivery(device: Device, delivery_id) -> Delivery:
    """The device's own delivery, or Http404 (unknown and foreign ids look the same)."""
    from django.http import Http404

    try:
        delivery_id = int(delivery_id)
    except (TypeError, ValueError):
        raise Http404 from None
    delivery = Delivery.objects.filter(pk=delivery_id, device=device).select_related("job").first()
    if delivery is None:
        raise Http404
    return delivery


def delivery_acknowledge(*, device: Device, delivery_id) -> Delivery:
    """The device has the work: pending|sent → acknowledged. A repeat, or an ack arriving
    after the outcome, changes nothing. Unknown or foreign delivery: Http404. The transition
    is the one the MQTT bridge applies in bulk (jobs_app.events)."""
    from jobs_app import events

    delivery = _device_delivery(device, delivery_id)
    events.deliveries_apply_events([events.DeviceEvent(device.device_id, delivery.pk, events.ACK)])
    delivery.refresh_from_db()
    return delivery


def delivery_report(*, device: Device, delivery_id, outcome: str, details=None, error: str = "") -> Delivery:
    """The device's outcome: `completed`, or `failed` with an error. Accepted from pending,
    sent, acknowledged (an ack may be lost) and timed_out (a late answer is still the
    truth); a repeat or a report on a finished delivery changes nothing. The transition is
    the one the MQTT bridge applies in bulk (jobs_app.events)."""
    from jobs_app import events

    if outcome not in (DeliveryStatus.COMPLETED, DeliveryStatus.FAILED):
        raise ValidationError({"status": "Report completed or failed."})
    delivery = _device_delivery(device, delivery_id)
    events.deliveries_apply_events(
        [events.DeviceEvent(device.device_id, delivery.pk, events.RESULT, outcome, details, error)]
    )
    delivery.refresh_from_db()
    return delivery


def deliveries_time_out(now: datetime.datetime | None = None) -> int:
    """Unfinished deliveries past their deadline → timed_out, in one UPDATE; then the
    affected jobs are checked against their failure threshold and rolled up."""
    now = now or timezone.now()
    table = Delivery._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"WITH moved AS (UPDATE {table} SET status = %s, failed_at = %s, "  # noqa: S608
            "last_error = 'No answer before the deadline.' "
            "WHERE status = ANY(%s) AND deadline IS NOT NULL AND deadline < %s RETURNING job_id) "
            f"SELECT m.job_id, count(*), j.action FROM moved m JOIN {Job._meta.db_table} j "
            "ON j.id = m.job_id GROUP BY m.job_id, j.action",
            [DeliveryStatus.TIMED_OUT, now, [str(s) for s in DELIVERY_UNFINISHED], now],
        )
        moved = cursor.fetchall()
    for job_id, count, action in moved:
        metrics.deliveries_timed_out.labels(action=action).inc(count)
        job_check_failure_threshold(job_id)
        job_rollup(job_id)
    return sum(count for _job, count, _action in moved)


# --- The job's rollup ----------------------------------------------------------------------------


def _has(job_id: int, status: str) -> bool:
    # One probe of the (job, status, id) index.
    return Delivery.objects.filter(job_id=job_id, status=status).exists()


@audited_atomic()
def job_rollup(job_id: int) -> str | None:
    """Move a running job to the status its deliveries add up to: `queued` while any is
    pending, `sent` when all are out, `acknowledged` when all have answered, then
    `completed` (every delivery completed) or `failed` (some failed or timed out; the reason
    is recorded). Paused, scheduled and finished jobs are left alone. One conditional UPDATE:
    two rollups at once agree, and the finish is audited once. Returns the new status."""
    job = Job.objects.filter(pk=job_id).values("status", "materialised_at").first()
    if job is None or job["status"] not in JOB_RUNNING_STATUSES or job["materialised_at"] is None:
        return None
    if _has(job_id, DeliveryStatus.PENDING):
        target = JobStatus.QUEUED
    elif _has(job_id, DeliveryStatus.SENT):
        target = JobStatus.SENT
    elif _has(job_id, DeliveryStatus.ACKNOWLEDGED):
        target = JobStatus.ACKNOWLEDGED
    else:
        return _job_finish(job_id)
    running = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).exclude(status=target)
    return target if running.update(status=target, updated_at=timezone.now()) else None


def _job_finish(job_id: int) -> str | None:
    counts = dict(
        Delivery.objects.filter(job_id=job_id)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    failures = sum(counts.get(s, 0) for s in DELIVERY_FAILED)
    total = sum(counts.values())
    now = timezone.now()
    if not total:
        target, reason = JobStatus.FAILED, "No device matches the job's targets."
    elif failures:
        target, reason = JobStatus.FAILED, f"{failures} of {total} deliveries failed or timed out."
    else:
        target, reason = JobStatus.COMPLETED, ""
    finished = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).update(
        status=target, status_reason=reason, completed_at=Coalesce(F("started_at"), now), updated_at=now
    )
    if not finished:
        return None
    Job.objects.filter(pk=job_id, completed_at__lt=now).update(completed_at=now)
    job = Job.objects.select_related("site").get(pk=job_id)
    audit_record(
        event_type=AuditEvent.JOB_COMPLETED if target == JobStatus.COMPLETED else AuditEvent.JOB_FAILED,
        job=job,
        description=f"Job #{job_id} {target}" + (f": {reason}" if reason else ""),
        new_values={"status": target, "deliveries": counts},
    )
    return target


def job_check_failure_threshold(job_id: int) -> bool:
    """Pause a running job whose failures exceed its threshold (percent of the answers so
    far, once HOMEPOT_JOBS_FAILURE_MIN_SAMPLE answers are in), recording why. Audited once
    as job.paused. Returns True when this call paused it."""
    job = Job.objects.filter(pk=job_id).values("status", "failure_threshold_percent").first()
    if not job or job["failure_threshold_percent"] is None or job["status"] not in JOB_RUNNING_STATUSES:
        return False
    counts = Delivery.objects.filter(job_id=job_id).aggregate(
        total=Count("id"),
        failures=Count("id", filter=Q(status__in=DELIVERY_FAILED)),
        completed=Count("id", filter=Q(status=DeliveryStatus.COMPLETED)),
    )
    answered = counts["failures"] + counts["completed"]
    sample = min(counts["total"], _setting("FAILURE_MIN_SAMPLE", 10))
    threshold = job["failure_threshold_percent"]
    if answered < max(sample, 1) or counts["failures"] * 100 <= threshold * answered:
        return False
    reason = (
        f"Failure threshold crossed: {counts['failures']} of {answered} answers failed "
        f"(more than {threshold}%)."
    )
    with audited_atomic():
        paused = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).update(
            status=JobStatus.PAUSED, status_reason=reason, updated_at=timezone.now()
        )
        if paused:
            audit_record(
                event_type=AuditEvent.JOB_PAUSED,
                job=Job.objects.select_related("site").get(pk=job_id),
                description=f"Job #{job_id} paused: {reason}",
                new_values={"status": JobStatus.PAUSED, "status_reason": reason},
            )
    return bool(paused)


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
                _enqueue_dispatch(job_id)
    return started


def in_flight_by_site(job_id: int, site_ids) -> dict[int, int]:
    """How many of the job's deliveries each site has sent or acknowledged right now."""
    return dict(
        Delivery.objects.filter(job_id=job_id, status__in=DELIVERY_IN_FLIGHT, site_id__in=list(site_ids))
        .order_by()
        .values_list("site_id")
        .annotate(n=Count("id"))
        .values_list("site_id", "n")
    )
