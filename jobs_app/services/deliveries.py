"""Deliveries: one per targeted device and job, and their state machine. Materialised once
in one INSERT ... SELECT, moved by conditional UPDATEs (`... WHERE status IN (allowed
sources)`), so a replayed batch, a repeated device report or a report arriving out of
order changes nothing it should not, and two workers can never both move the same row.
Deliveries are not audited one by one (a 100,000-device job would write 100,000 audit
rows); an operator cancelling a single delivery is (delivery_cancel)."""

import datetime
import json
import logging

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Min, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.scoping import require_site_access
from devices_app.models import Device
from homepot import metrics
from homepot.errors import Conflict
from jobs_app.choices import DELIVERY_IN_FLIGHT, DELIVERY_NOT_TAKEN, DELIVERY_UNFINISHED, DeliveryStatus
from jobs_app.models import Delivery, Job
from jobs_app.services import answers, rollout
from jobs_app.services.common import locked_job
from jobs_app.services.progress import job_check_failure_threshold, job_rollup
from jobs_app.services.targets import job_target_query
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic

logger = logging.getLogger(__name__)


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
        deadline = None if deadline_when_sent(job) or not job.ttl else now + job.ttl
        sql, params = job_target_query(job).values_list("pk", "site_id").query.sql_with_params()
        if rollout.has_waves(job):
            return rollout.deliveries_insert_in_waves(job, sql, params, now=now, deadline=deadline)
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


def deadline_when_sent(job: Job) -> bool:
    """A job that waits for maintenance windows or for its waves' gates gives each delivery
    its deadline when it is sent (deliveries_mark_sent): hours of waiting for a window, a
    soak or an approval are not a device's delay."""
    return job.within_maintenance_windows or rollout.has_waves(job)


def deliveries_mark_sent(delivery_ids, *, ttl: datetime.timedelta | None = None) -> int:
    """pending → sent for a batch, in one UPDATE. Rows no longer pending are left alone.
    With `ttl` (jobs that wait: deadline_when_sent) each gets its deadline from now."""
    now = timezone.now()
    extra = {"deadline": now + ttl} if ttl else {}
    return Delivery.objects.filter(pk__in=list(delivery_ids), status=DeliveryStatus.PENDING).update(
        status=DeliveryStatus.SENT, sent_at=now, attempts=F("attempts") + 1, next_attempt_at=None, **extra
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
    """The earliest time one of the job's pending deliveries of its open waves may be
    offered (now for one that is not waiting out a push backoff); None when nothing is
    pending there (later waves wait for their gate, which wakes the dispatcher itself)."""
    now = timezone.now()
    open_wave = Subquery(Job.objects.filter(pk=job_id).values("wave_open"))
    pending = Delivery.objects.filter(job_id=job_id, status=DeliveryStatus.PENDING, wave__lte=open_wave)
    return pending.aggregate(first=Min(Coalesce("next_attempt_at", Value(now))))["first"]


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
    is the one the MQTT bridge applies in bulk (jobs_app.services.answers)."""

    delivery = _device_delivery(device, delivery_id)
    answers.deliveries_apply_events([answers.DeviceEvent(device.device_id, delivery.pk, answers.ACK)])
    delivery.refresh_from_db()
    return delivery


def delivery_report(
    *, device: Device, delivery_id, outcome: str, details=None, error: str = "", previous_config=None
) -> Delivery:
    """The device's outcome: `completed`, or `failed` with an error. Accepted from pending,
    sent, acknowledged (an ack may be lost) and timed_out (a late answer is still the
    truth); a repeat or a report on a finished delivery changes nothing. With `completed`,
    `previous_config` (what the device had before, for the settings the job touched) is
    recorded for a rollback. The transition is the one the MQTT bridge applies in bulk
    (jobs_app.services.answers)."""

    if outcome not in (DeliveryStatus.COMPLETED, DeliveryStatus.FAILED):
        raise ValidationError({"status": "Report completed or failed."})
    delivery = _device_delivery(device, delivery_id)
    answers.deliveries_apply_events(
        [
            answers.DeviceEvent(
                device.device_id,
                delivery.pk,
                answers.RESULT,
                outcome,
                details,
                error,
                previous_config=previous_config,
            )
        ]
    )
    delivery.refresh_from_db()
    return delivery


def delivery_defer(*, device: Device, delivery_id, delay_seconds: int, reason: str = "") -> Delivery:
    """The device says "not now" (a sale in progress): within the job's deferral policy the
    delivery goes back to pending until the delay granted ends, past it the policy decides
    (forced, skipped, failed); see jobs_app.services.deferral. Only a sent or acknowledged
    delivery moves; a repeat on a pending or finished one, or a deferral of forced work,
    changes nothing. Unknown or foreign delivery: Http404. Audited (deliveries.deferred).
    The transition is the one the MQTT bridge applies in bulk."""
    delivery = _device_delivery(device, delivery_id)
    answers.deliveries_apply_events(
        [
            answers.DeviceEvent(
                device.device_id, delivery.pk, answers.DEFER, delay_seconds=delay_seconds, reason=reason
            )
        ]
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


def in_flight_by_site(job_id: int, site_ids) -> dict[int, int]:
    """How many of the job's deliveries each site has sent or acknowledged right now."""
    return dict(
        Delivery.objects.filter(job_id=job_id, status__in=DELIVERY_IN_FLIGHT, site_id__in=list(site_ids))
        .order_by()
        .values_list("site_id")
        .annotate(n=Count("id"))
        .values_list("site_id", "n")
    )


def deliveries_cancel_open(job_id: int, now) -> tuple[int, list[tuple[int, str, str]]]:
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


def notify_cancelled(job: Job, told: list[tuple[int, str, str]]) -> None:
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
    job = locked_job(actor, delivery.job)
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
        notify_cancelled(job, [(delivery.pk, device.device_id, device.push_channel)])
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
