"""The dispatcher: creates a job's deliveries and hands them out in keyset-paged batches,
honouring the rollout policy (per-site and job-wide caps; waves and their gate, whose rules
live in jobs_app.services.rollout). Called by the `dispatch_job` task (jobs_app.tasks) and, in
tests and eager mode, directly.

Who owns a batch is decided by the database: each batch is claimed with
`SELECT ... FOR UPDATE SKIP LOCKED` inside its own transaction, pushed, and marked `sent`
with one conditional UPDATE before the transaction commits. A worker that dies mid-batch
rolls back, leaving the batch pending for the next pass. So each delivery is marked sent
exactly once; a device may be offered the same delivery twice after such a crash and
recognises it by its id and attempt (docs/jobs.md). A push that may have reached the devices
(a late broker acknowledgement) is marked sent, never retried: only what a channel knows it
did not hand over goes back to pending (channels.PartialPush).

One dispatcher per job at a time: each batch transaction first takes the job's
transaction-scoped advisory lock (`pg_try_advisory_xact_lock`). Counting what a site has
in flight, choosing what fits and marking it sent all happen under that lock, so two
passes can never both fill the same free slot of a store. A pass that finds the lock
taken stops at once without sending anything more (`busy`): the holder is doing the work.
The lock ends with its transaction, so a worker killed mid-batch (kill -9: the server sees
the connection close and rolls back) leaves no claim behind that would have to expire.
"""

import dataclasses
import datetime
import random
from collections import defaultdict

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from homepot import metrics
from jobs_app import services
from jobs_app.channels import Outgoing, PushError, get_channel
from jobs_app.choices import JOB_RUNNING_STATUSES
from jobs_app.models import Job
from jobs_app.services import rollout

# The advisory lock's key is (this namespace, job id): PostgreSQL's two-integer key space,
# apart from the single-number keys of the project's other advisory locks.
_DISPATCH_LOCK_NAMESPACE = 0x484D5054  # "HMPT"


@dataclasses.dataclass
class PassResult:
    sent: int = 0
    held: int = 0  # left pending by the per-site in-flight limit
    push_failures: int = 0  # left pending after a failed push (to retry after a backoff)
    failed: int = 0  # out of push attempts
    batches: int = 0
    busy: bool = False  # stopped: another pass of the job holds its dispatch lock
    wave_opened: bool = False  # this pass opened the job's next wave
    wave_stopped: bool = False  # the open wave finished below its gate: the job was paused
    soak_until: str | None = None  # the open wave passed; the next opens at this time (ISO)

    @property
    def retry_push(self) -> bool:
        return self.push_failures > 0


def max_push_attempts() -> int:
    return getattr(settings, "HOMEPOT_JOBS_PUSH_MAX_ATTEMPTS", 5)


def push_backoff(attempt: int) -> float:
    """Seconds before push attempt `attempt + 1`: exponential, capped, with jitter (half
    fixed, half random, so retries of many batches spread out instead of arriving together)."""
    base = getattr(settings, "HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS", 2.0)
    cap = getattr(settings, "HOMEPOT_JOBS_PUSH_BACKOFF_MAX_SECONDS", 300.0)
    delay = min(cap, base * 2 ** max(attempt - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)


def dispatch_run(job_id: int, *, ticket: str | None = None, follow_up: bool = True) -> PassResult:
    """What the `dispatch_job` task does: release the job's dispatch ticket if this is the
    requested pass, walk the job once (dispatch_pass), then ask for the follow-up pass the
    job needs (work held by the site limit, another pass busy, pushes waiting out their
    backoff); services.dispatch_request enqueues it only if no pass is pending already.
    Safe to repeat."""
    services.dispatch_ticket_release(job_id, ticket)
    result = dispatch_pass(job_id)
    if follow_up:
        at = _follow_up_at(job_id, result)
        if at is not None:
            services.dispatch_request(job_id, at=at)
    return result


def _follow_up_at(job_id: int, result: PassResult) -> datetime.datetime | None:
    now = timezone.now()
    soon = now + datetime.timedelta(seconds=getattr(settings, "HOMEPOT_JOBS_REDISPATCH_SECONDS", 5))
    if result.busy or result.held:
        return soon
    job = Job.objects.filter(pk=job_id).first()
    first = services.deliveries_next_offer_at(job) if job else None
    if result.soak_until is not None:
        # The next wave opens when the soak is over.
        soak_until = datetime.datetime.fromisoformat(result.soak_until)
        first = min(first, soak_until) if first else soak_until
    if first is None:
        return None
    # Work that could go now but this pass did not take (made pending behind its keyset
    # walk) is looked at soon rather than in a tight loop; work in backoff when it is due;
    # sites outside their maintenance window when the first of them opens.
    return soon if first <= now else first


def dispatch_pass(job_id: int) -> PassResult:
    """One walk over the job's pending deliveries of its open waves (first the wave gate may
    open the next wave or stop the job: services.rollout.wave_advance; then wave by wave,
    keyset: `id > last ORDER BY id LIMIT n`), skipping those waiting out a push backoff.
    Safe to run again or concurrently: a pass that meets another pass of the same job stops
    (`busy`). Does nothing for a job that is
    not running."""
    result = PassResult()
    job = Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).first()
    if job is None:
        return result
    services.deliveries_materialise(job_id)
    services.job_mark_started(job_id)
    if rollout.has_waves(job):
        check = rollout.wave_advance(job_id)
        result.wave_opened, result.wave_stopped = check.opened, check.stopped
        result.soak_until = check.soak_until.isoformat() if check.soak_until else None
        job.refresh_from_db(fields=["wave_open", "wave_count"])
    gate = services.WindowGate(job)
    # The keyset: the open waves in turn (0..wave_open), each in id order.
    wave, last_id = 0, 0
    while True:
        with transaction.atomic():
            if not _lock_job(job_id):
                result.busy = True
                break
            # Pause or cancel between batches stops the rollout here.
            if not Job.objects.filter(pk=job_id, status__in=JOB_RUNNING_STATUSES).exists():
                break
            rows = _claim_batch(job, wave, last_id, gate)
            if not rows:
                if wave < job.wave_open:
                    wave, last_id = wave + 1, 0
                    continue
                break
            last_id = rows[-1]["id"]
            result.batches += 1
            with metrics.timer(metrics.dispatch_batch_duration):
                _dispatch_batch(job, rows, result)
    services.job_rollup(job_id)
    return result


def _lock_job(job_id: int) -> bool:
    """Take the job's dispatch lock until the current transaction ends, or say it is taken."""
    if connection.vendor != "postgresql":
        return True  # the SQLite demo: it lets one writer in at a time anyway
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s::integer, %s::integer)",
            # Ids past 2**31 wrap: two jobs sharing a key only take turns, which is safe.
            [_DISPATCH_LOCK_NAMESPACE, job_id & 0x7FFFFFFF],
        )
        return cursor.fetchone()[0]


def _claim_batch(job: Job, wave: int, last_id: int, gate: services.WindowGate) -> list[dict]:
    """The next batch of one open wave's pending deliveries (rollout.pending_in_wave), past
    `last_id`, that are not waiting out a push backoff and, for a job that keeps to maintenance
    windows, at sites open now; locked for this transaction."""
    return list(
        rollout.pending_in_wave(job.pk, wave, last_id)
        .select_for_update(skip_locked=True, of=("self",))
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
        # Jobs that keep to maintenance windows: only sites inside one now (sites_app.windows).
        .filter(gate.claim_filter())
        .order_by("id")
        .values(
            "id",
            "site_id",
            "attempts",
            "deadline",
            "created_at",
            "device__device_id",
            "device__push_channel",
            "payload",
            "forced",
        )[: job.batch_size]
    )


def _within_site_limits(job: Job, rows: list[dict], result: PassResult) -> list[dict]:
    """Keep the store selling: never more than `max_in_flight_per_site` devices of a site
    busy with this job. The rest stay pending for a later pass. Correct only under the
    job's dispatch lock: another pass's sends are committed before it lets go."""
    limit = job.max_in_flight_per_site
    if not limit:
        return rows
    busy = services.in_flight_by_site(job.pk, {row["site_id"] for row in rows})
    allowed = []
    for row in rows:
        if busy.get(row["site_id"], 0) < limit:
            busy[row["site_id"]] = busy.get(row["site_id"], 0) + 1
            allowed.append(row)
        else:
            result.held += 1
    return allowed


def _dispatch_batch(job: Job, rows: list[dict], result: PassResult) -> None:
    by_channel: dict[str, list[dict]] = defaultdict(list)
    rows, held = rollout.within_job_cap(job, _within_site_limits(job, rows, result))
    result.held += held
    for row in rows:
        by_channel[row["device__push_channel"]].append(row)
    for channel_name, channel_rows in by_channel.items():
        batch = [
            Outgoing(
                delivery_id=row["id"],
                device_id=row["device__device_id"],
                job_id=job.pk,
                action=job.action,
                # A rollback sends each device its own previous settings.
                payload=job.payload if row["payload"] is None else row["payload"],
                priority=job.priority,
                deadline=row["deadline"].isoformat() if row["deadline"] else None,
                force=row["forced"],
                attempt=row["attempts"] + 1,
            )
            for row in channel_rows
        ]
        try:
            get_channel(channel_name).push(batch)
        except PushError as exc:
            unsent = set(getattr(exc, "unsent", None) or [row["id"] for row in channel_rows])
            _push_failed(job, channel_name, [row for row in channel_rows if row["id"] in unsent], exc, result)
            channel_rows = [row for row in channel_rows if row["id"] not in unsent]
            if not channel_rows:
                continue
        ids = [row["id"] for row in channel_rows]
        sent = services.deliveries_mark_sent(ids, ttl=job.ttl if services.deadline_when_sent(job) else None)
        result.sent += sent
        if sent == len(ids):
            # Claimed FOR UPDATE under the job's lock, so all of them moved; a short count
            # (never seen) would leave us unable to tell which, and we observe none.
            now = timezone.now()
            stage = metrics.delivery_stage.labels(
                stage="pending_to_sent", action=job.action, channel=channel_name
            )
            for row in channel_rows:
                stage.observe((now - row["created_at"]).total_seconds())


def _push_failed(job: Job, channel_name: str, rows: list[dict], exc: PushError, result: PassResult) -> None:
    """Leave `rows` pending after a push that certainly did not reach them, until a backoff
    has passed (or failed, out of attempts)."""
    attempts = max(row["attempts"] for row in rows) + 1
    retry_at = timezone.now() + datetime.timedelta(seconds=push_backoff(attempts))
    retry, failed = services.deliveries_push_failed(
        [row["id"] for row in rows], f"Push failed: {exc}", max_push_attempts(), retry_at
    )
    result.push_failures += retry
    result.failed += failed
    metrics.deliveries_deferred.labels(action=job.action, channel=channel_name).inc(retry)
    metrics.deliveries_failed.labels(action=job.action, channel=channel_name, reason="push").inc(failed)
