"""The rollout policy's rules beyond the per-site cap and the failure threshold: waves
(staged rollout) and the job-wide in-flight cap. The dispatcher (jobs_app.dispatch) asks
this module which pending deliveries it may claim, opens the next wave through it, and
holds back what the job-wide cap does not allow.

A job with waves is split when its deliveries are materialised, in one INSERT ... SELECT
with window functions (no per-device Python): each site's devices are ranked, the sites
interleaved (the first device of every site, then the second of every site, ...) in an
order that differs per job, so the canary's devices are at distinct sites and each later
wave is spread over the chain rather than filling some stores first. The canary takes the
first `rollout_canary` positions; wave k ends at `rollout_waves[k]` percent of the targets.

A wave opens when the one before has no unfinished delivery and its success rate
(completed / answered) is at or above the gate; after the soak time; and, with
`wave_approval`, when a person approves (job_wave_approve). Below the gate the job pauses
with the numbers as its reason, so a bad change stops after the canary.
"""

import dataclasses
import datetime
import math

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from homepot import metrics
from homepot.errors import Conflict
from jobs_app.choices import (
    DELIVERY_FAILED,
    DELIVERY_IN_FLIGHT,
    DELIVERY_UNFINISHED,
    JOB_RUNNING_STATUSES,
    DeliveryStatus,
    JobStatus,
)
from jobs_app.models import Delivery, Job
from jobs_app.services.common import locked_job
from jobs_app.services.enqueue import dispatch_request, enqueue_dispatch
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic

# More waves than this is a schedule, not a rollout policy (and the CASE stays short).
MAX_WAVES = 10
DEFAULT_GATE_PERCENT = 100
ROLLOUT_FIELDS = ("rollout_canary", "rollout_waves", "wave_gate_percent", "wave_soak", "wave_approval")


# --- The policy as given -----------------------------------------------------------------------


def clean_rollout(
    *,
    rollout_canary: int | None = None,
    rollout_waves=None,
    wave_gate_percent: int | None = None,
    wave_soak: datetime.timedelta | None = None,
    wave_approval: bool = False,
) -> dict:
    """The rollout fields of a new job, checked (ValidationError naming the field). Waves are
    cumulative percents, rising, 1..100; a last 100 is added when missing so every device is
    reached. A canary without waves gets [100] (the canary, then everyone else). The gate,
    soak and approval need waves to apply to."""
    waves = _clean_waves(rollout_waves)
    if rollout_canary is not None and (isinstance(rollout_canary, bool) or rollout_canary < 1):
        raise ValidationError({"rollout_canary": "Give a number of devices, 1 or more."})
    if rollout_canary and not waves:
        waves = [100]
    if not waves:
        for name, value in (
            ("wave_gate_percent", wave_gate_percent),
            ("wave_soak", wave_soak),
            ("wave_approval", wave_approval or None),
        ):
            if value is not None:
                raise ValidationError({name: "Only with waves: give rollout_waves or rollout_canary too."})
    if wave_gate_percent is not None and not 0 <= wave_gate_percent <= 100:
        raise ValidationError({"wave_gate_percent": "Give a percent from 0 to 100."})
    if wave_soak is not None and wave_soak < datetime.timedelta(0):
        raise ValidationError({"wave_soak": "A soak time cannot be negative."})
    return {
        "rollout_canary": rollout_canary,
        "rollout_waves": waves,
        "wave_gate_percent": wave_gate_percent,
        "wave_soak": wave_soak or None,
        "wave_approval": bool(wave_approval),
    }


def _clean_waves(waves) -> list[int]:
    if waves in (None, "", []):
        return []
    if not isinstance(waves, list) or not all(isinstance(w, int) and not isinstance(w, bool) for w in waves):
        raise ValidationError({"rollout_waves": "Give a list of whole percents, e.g. [1, 10, 50, 100]."})
    if any(not 1 <= w <= 100 for w in waves):
        raise ValidationError({"rollout_waves": "Each wave is a percent from 1 to 100."})
    if any(b <= a for a, b in zip(waves, waves[1:], strict=False)):
        raise ValidationError({"rollout_waves": "Each wave must reach more devices than the one before."})
    if waves[-1] != 100:
        waves = [*waves, 100]
    if len(waves) > MAX_WAVES:
        raise ValidationError({"rollout_waves": f"At most {MAX_WAVES} waves."})
    return waves


def has_waves(job: Job) -> bool:
    return bool(job.rollout_waves or job.rollout_canary)


# --- Materialising in waves ----------------------------------------------------------------------


def deliveries_insert_in_waves(job: Job, target_sql: str, target_params, *, now, deadline) -> int:
    """Insert the job's deliveries with their wave, in one statement (see the module's
    docstring for the order), ids in wave order; set `wave_count` to the waves that got
    devices (an empty wave, e.g. 1 % of 50 devices behind a canary of 5, is dropped by the
    dense_rank). Returns the rows inserted. Called once per job, under its materialised_at
    claim."""
    bounds_sql, bounds_params = _wave_bounds_case(job)
    table = Delivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (job_id, device_id, site_id, status, attempts, last_error, "  # noqa: S608
            "created_at, deadline, wave) "
            "SELECT %s, w.device_id, w.site_id, %s, 0, '', %s, %s, "
            "dense_rank() OVER (ORDER BY w.raw_wave) - 1 FROM ("
            f"  SELECT o.device_id, o.site_id, o.pos, {bounds_sql} AS raw_wave FROM ("
            "    SELECT r.device_id, r.site_id, count(*) OVER () AS total, "
            "      row_number() OVER (ORDER BY r.site_rank, md5(r.site_id::text || ':' || %s), r.device_id) "
            "      AS pos FROM ("
            "      SELECT t.device_id, t.site_id, "
            "        row_number() OVER (PARTITION BY t.site_id ORDER BY t.device_id) AS site_rank "
            f"      FROM ({target_sql}) AS t (device_id, site_id)"
            "    ) r"
            "  ) o"
            ") w ORDER BY w.raw_wave, w.pos ON CONFLICT (job_id, device_id) DO NOTHING",
            [job.pk, DeliveryStatus.PENDING, now, deadline, *bounds_params, str(job.pk), *target_params],
        )
        inserted = cursor.rowcount
    last = Delivery.objects.filter(job_id=job.pk).order_by("-wave").values_list("wave", flat=True).first()
    Job.objects.filter(pk=job.pk).update(wave_count=(last or 0) + 1)
    return inserted


def _wave_bounds_case(job: Job) -> tuple[str, list]:
    """CASE over a device's position `o.pos` among `o.total` targets: 0 for the canary, then
    k for the k-th percent wave (each at least one device past the canary)."""
    whens, params = [], []
    offset = 0
    if job.rollout_canary:
        whens.append("WHEN o.pos <= %s THEN 0")
        params.append(job.rollout_canary)
        offset = 1
    for index, percent in enumerate(job.rollout_waves or [100]):
        whens.append("WHEN o.pos <= ceil(o.total * %s / 100.0) THEN %s")
        params += [percent, index + offset]
    return f"CASE {' '.join(whens)} ELSE %s END", [*params, len(job.rollout_waves or [100]) + offset]


# --- The dispatcher's claim and caps -----------------------------------------------------------------


def pending_in_wave(job_id: int, wave: int, last_id: int) -> QuerySet[Delivery]:
    """One wave's pending deliveries past the keyset `last_id`: one range of the (job, wave,
    status, id) index. The dispatcher walks waves 0..wave_open in turn, adding its own
    conditions (backoff, locks) to this query."""
    return Delivery.objects.filter(job_id=job_id, wave=wave, status=DeliveryStatus.PENDING, id__gt=last_id)


def within_job_cap(job: Job, rows: list[dict]) -> tuple[list[dict], int]:
    """Keep at most `max_in_flight` of the job's deliveries busy across all sites: the rows
    that fit, and how many are held back (left pending for a later pass). The count reads
    at most `max_in_flight` index entries. Correct only under the job's dispatch lock."""
    cap = job.max_in_flight
    if not cap or not rows:
        return rows, 0
    busy = Delivery.objects.filter(job_id=job.pk, status__in=DELIVERY_IN_FLIGHT).values("id")[:cap].count()
    room = max(cap - busy, 0)
    return rows[:room], max(len(rows) - room, 0)


# --- The gate --------------------------------------------------------------------------------------


@dataclasses.dataclass
class WaveCheck:
    """What the gate decided for a dispatch pass."""

    opened: bool = False  # the next wave was opened now
    soak_until: datetime.datetime | None = None  # passed; the next wave opens at this time
    awaiting_approval: bool = False  # passed; a person must approve the next wave
    stopped: bool = False  # below the gate: the job was paused


def wave_numbers(job_id: int, wave: int) -> dict:
    """One wave's counts: total, unfinished, completed, failed (with timed out), and its
    success rate in percent of the answers (None before any). An index-only range."""
    numbers = Delivery.objects.filter(job_id=job_id, wave=wave).aggregate(
        total=Count("id"),
        unfinished=Count("id", filter=Q(status__in=DELIVERY_UNFINISHED)),
        completed=Count("id", filter=Q(status=DeliveryStatus.COMPLETED)),
        failed=Count("id", filter=Q(status__in=DELIVERY_FAILED)),
    )
    answered = numbers["completed"] + numbers["failed"]
    numbers["success_percent"] = round(100 * numbers["completed"] / answered, 1) if answered else None
    return numbers


def _passes(numbers: dict, gate: int) -> bool:
    # A wave with no answer (all cancelled) has nothing against it.
    answered = numbers["completed"] + numbers["failed"]
    return not answered or numbers["completed"] * 100 >= gate * answered


def wave_label(wave: int, job: Job) -> str:
    if job.rollout_canary:
        return "canary" if wave == 0 else f"wave {wave}"
    return f"wave {wave + 1}"


def wave_advance(job_id: int) -> WaveCheck:
    """Open the job's next wave if its open wave has finished at or above the gate and the
    soak and approval allow; pause the job (audited as job.paused, with the numbers) if the
    wave finished below the gate. Called by each dispatch pass before it claims work and
    safe to repeat: every change is a conditional UPDATE on (status, wave_open)."""
    job = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).first()
    if job is None or job.wave_open >= job.wave_count - 1:
        return WaveCheck()
    wave = job.wave_open
    numbers = wave_numbers(job_id, wave)
    if numbers["unfinished"]:
        return WaveCheck()
    gate = job.wave_gate_percent if job.wave_gate_percent is not None else DEFAULT_GATE_PERCENT
    if not _passes(numbers, gate):
        _stop_below_gate(job, numbers, gate)
        return WaveCheck(stopped=True)
    now = timezone.now()
    if job.wave_passed_at is None:
        Job.objects.filter(pk=job_id, wave_open=wave, wave_passed_at__isnull=True).update(wave_passed_at=now)
        job.refresh_from_db(fields=["wave_passed_at"])
    if job.wave_soak and job.wave_passed_at + job.wave_soak > now:
        return WaveCheck(soak_until=job.wave_passed_at + job.wave_soak)
    if job.wave_approval:
        return WaveCheck(awaiting_approval=True)
    return WaveCheck(opened=_open_next(job, numbers, actor=None))


def _stop_below_gate(job: Job, numbers: dict, gate: int) -> None:
    reason = (
        f"{wave_label(job.wave_open, job).capitalize()} below its gate: {numbers['completed']} of "
        f"{numbers['completed'] + numbers['failed']} answers succeeded "
        f"({numbers['success_percent']}%, the gate is {gate}%). Later waves were not sent."
    )
    with audited_atomic():
        paused = Job.objects.filter(
            pk=job.pk, status__in=JOB_RUNNING_STATUSES, wave_open=job.wave_open
        ).update(status=JobStatus.PAUSED, status_reason=reason, updated_at=timezone.now())
        if paused:
            transaction.on_commit(lambda: metrics.job_waves.labels(outcome="stopped").inc())
            audit_record(
                event_type=AuditEvent.JOB_PAUSED,
                job=Job.objects.select_related("site").get(pk=job.pk),
                description=f"Job #{job.pk} paused: {reason}",
                new_values={
                    "status": JobStatus.PAUSED,
                    "status_reason": reason,
                    "wave": job.wave_open,
                    "wave_numbers": numbers,
                },
            )


def _open_next(job: Job, numbers: dict, *, actor, override: bool = False) -> bool:
    """wave_open → wave_open + 1, audited (job.wave_opened by the dispatcher, or
    job.wave_approved by `actor`). A repeat, or a second opener at once, changes nothing."""
    wave = job.wave_open
    with audited_atomic():
        opened = Job.objects.filter(pk=job.pk, wave_open=wave).update(
            wave_open=wave + 1, wave_passed_at=None, updated_at=timezone.now()
        )
        if opened:
            outcome = "approved" if actor else "opened"
            transaction.on_commit(lambda: metrics.job_waves.labels(outcome=outcome).inc())
            who = f"approved by {actor.get_username()}" if actor else "its gate passed"
            job = Job.objects.select_related("site").get(pk=job.pk)
            audit_record(
                event_type=AuditEvent.JOB_WAVE_APPROVED if actor else AuditEvent.JOB_WAVE_OPENED,
                actor=actor,
                job=job,
                description=f"Job #{job.pk}: {wave_label(wave + 1, job)} opened ({who}"
                + (", overriding the gate" if override else "")
                + ")",
                old_values={"wave_open": wave},
                new_values={"wave_open": wave + 1, "previous_wave": numbers, "gate_overridden": override},
            )
    return bool(opened)


@audited_atomic()
def job_wave_approve(*, actor, job: Job) -> Job:
    """A person opens the job's next wave: when the open wave has finished at or above its
    gate, its soak is over and the job asks for approval; or, overriding the gate, when the
    job was paused because the wave finished below it (the job then runs again). Scoped like
    the job's other actions; audited as job.wave_approved; the dispatcher starts after
    commit. Conflict (`no_wave_awaiting_approval`) when nothing awaits approval, so a repeat
    is refused rather than opening a second wave."""
    job = locked_job(actor, job)
    numbers = wave_numbers(job.pk, job.wave_open)
    gate = job.wave_gate_percent if job.wave_gate_percent is not None else DEFAULT_GATE_PERCENT
    waiting = job.status in JOB_RUNNING_STATUSES and job.wave_approval and job.wave_passed_at is not None
    if waiting and job.wave_soak and job.wave_passed_at + job.wave_soak > timezone.now():
        waiting = False
    override = job.status == JobStatus.PAUSED and not numbers["unfinished"] and not _passes(numbers, gate)
    last = job.wave_open >= job.wave_count - 1
    if last or numbers["unfinished"] or not (waiting or override):
        raise Conflict(
            f"Job #{job.pk} has no wave awaiting approval.",
            code="no_wave_awaiting_approval",
        )
    _open_next(job, numbers, actor=actor, override=override)
    if override:
        Job.objects.filter(pk=job.pk, status=JobStatus.PAUSED).update(
            status=JobStatus.QUEUED, status_reason="", updated_at=timezone.now()
        )
    enqueue_dispatch(job.pk)
    job.refresh_from_db()
    return job


def wave_nudge(job_id: int, job: dict) -> None:
    """After a rollup: when the job's open wave has just finished, a later wave waits and
    the gate has not yet been passed (a pass sets `wave_passed_at`; soak and approval then
    have their own wake-ups), ask for a dispatch pass to check the gate, instead of passes
    polling for it. `job` is the rollup's row (status, wave_open, wave_count,
    wave_passed_at).

    The look is taken after commit: two devices answering the last two deliveries of a wave
    at once each see the other's still open inside their own transactions, but whichever
    commits last sees both. A repeat asks nothing more (dispatch_request keeps one pass)."""
    if job["status"] not in JOB_RUNNING_STATUSES or job["wave_passed_at"] is not None:
        return
    if job["wave_open"] >= job["wave_count"] - 1:
        return
    wave = job["wave_open"]

    def look():
        open_rows = Delivery.objects.filter(job_id=job_id, wave=wave, status__in=DELIVERY_UNFINISHED)
        if not open_rows.exists():
            dispatch_request(job_id)

    transaction.on_commit(look)


# --- What the job page and the API show ------------------------------------------------------------


def job_waves(job: Job) -> list[dict]:
    """Each wave of the job with its target, gate, numbers and state (`done`, `open`,
    `soaking`, `awaiting approval`, `stopped by its gate`, `waiting`). One GROUP BY over the
    (job, wave, status) index, a few rows; [] for a job without waves."""
    if not has_waves(job) or job.materialised_at is None:
        return []
    counts: dict[int, dict[str, int]] = {}
    for wave, status, n in (
        Delivery.objects.filter(job_id=job.pk)
        .order_by()
        .values_list("wave", "status")
        .annotate(n=Count("id"))
        .values_list("wave", "status", "n")
    ):
        counts.setdefault(wave, {})[status] = n
    gate = job.wave_gate_percent if job.wave_gate_percent is not None else DEFAULT_GATE_PERCENT
    waves = []
    reached = 0
    for wave in range(job.wave_count):
        by_status = counts.get(wave, {})
        total = sum(by_status.values())
        reached += total
        completed = by_status.get(DeliveryStatus.COMPLETED, 0)
        failed = sum(by_status.get(s, 0) for s in DELIVERY_FAILED)
        unfinished = sum(by_status.get(s, 0) for s in DELIVERY_UNFINISHED)
        numbers = {"total": total, "unfinished": unfinished, "completed": completed, "failed": failed}
        answered = completed + failed
        numbers["success_percent"] = round(100 * completed / answered, 1) if answered else None
        waves.append(
            {
                "wave": wave,
                "label": wave_label(wave, job),
                "devices_reached": reached,
                "gate_percent": gate,
                **numbers,
                "state": _wave_state(job, wave, numbers, gate),
            }
        )
    return waves


def _wave_state(job: Job, wave: int, numbers: dict, gate: int) -> str:
    if wave > job.wave_open:
        return "waiting"
    if numbers["unfinished"]:
        return "open"
    if wave < job.wave_open or wave == job.wave_count - 1:
        return "done"
    if not _passes(numbers, gate):
        return "stopped by its gate"
    if job.wave_passed_at and job.wave_soak and job.wave_passed_at + job.wave_soak > timezone.now():
        left = job.wave_passed_at + job.wave_soak - timezone.now()
        return f"soaking ({math.ceil(left.total_seconds() / 60)} min left)"
    if job.wave_approval and job.wave_passed_at:
        return "awaiting approval"
    return "done"


def awaits_approval(job: Job) -> bool:
    """Whether the job page offers the approve button (job_wave_approve would open a wave)."""
    return any(w["state"] in ("awaiting approval", "stopped by its gate") for w in job_waves(job)) and (
        job.status in JOB_RUNNING_STATUSES or job.status == JobStatus.PAUSED
    )
