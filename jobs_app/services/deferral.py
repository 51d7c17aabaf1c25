"""Device-side deferral ("sale in progress"): a device answers a delivery with "not now",
a reason and a requested delay, within the bounds of its job's policy.

A granted deferral puts the delivery back to `pending` with `next_attempt_at` set to the
end of the delay: the dispatcher already skips pending work that is not due yet, and the
per-site cap counts only `sent` and `acknowledged` deliveries, so a till that waits out a
sale holds no slot of its store. No new status, nothing new for the set-based dispatcher
to learn. The delivery's deadline moves by the delay granted (the device asked for time,
and the policy granted it).

The policy (`Job.max_deferrals`, `Job.max_deferral_seconds`, `Job.deferral_exhausted`):
a deferral is granted while the device has deferrals left and total delay left (the delay
granted is the smaller of what it asked and what is left). A deferral beyond that
applies the job's choice: `force` (offered again at once, marked `forced`: the message
says so and any further deferral of it is ignored), `skip` (the delivery ends `cancelled`,
the reason in `last_error`) or `fail` (the delivery ends `failed`, counted by the failure
threshold like any other failure).

Applied set-based, like acknowledgements and outcomes (jobs_app.events): one UPDATE for a
batch of deferrals from the MQTT bridge, the same UPDATE with one row for the HTTP agent
API. Audited as one `deliveries.deferred` row per job per batch (counts and the first
devices), not one per delivery.
"""

import json
from dataclasses import dataclass

from django.db import connection

from devices_app.models import Device
from homepot import metrics
from jobs_app.choices import DELIVERY_IN_FLIGHT, DeferralExhausted, DeliveryStatus
from jobs_app.models import Delivery, Job
from jobs_app.services.enqueue import dispatch_request
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record

# What a deferral request ends as (the `outcome` of its row; metrics label).
DEFERRED = "deferred"
FORCED = "forced"
SKIPPED = "skipped"
FAILED = "failed"

MAX_DELAY_SECONDS = 86400
MAX_REASON = 500
# Devices named in one job's deliveries.deferred audit row (the counts are complete).
AUDIT_DEVICES = 20


@dataclass(frozen=True)
class Deferral:
    """One device's "not now" for one of its deliveries."""

    device_id: str  # the business id, as the MQTT topic and the credential name it
    delivery_id: int
    delay_seconds: int
    reason: str = ""


def clean_deferral(delay, reason) -> tuple[int, str] | str:
    """(delay, reason) from a device's message, or why it is refused (a string)."""
    if isinstance(delay, bool) or not isinstance(delay, int):
        if not (isinstance(delay, float) and delay.is_integer()):
            return "delay_seconds: give a whole number of seconds."
        delay = int(delay)
    if not 1 <= delay <= MAX_DELAY_SECONDS:
        return f"delay_seconds: between 1 and {MAX_DELAY_SECONDS}."
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or not storable(reason):
        return "reason: give a text."
    return delay, reason[:MAX_REASON]


def storable(value) -> bool:
    """Whether PostgreSQL's text and jsonb can hold `value`: no NUL character and no unpaired
    UTF-16 surrogate anywhere in it (the HTTP API refuses those at its parser; an MQTT
    message reaches us unchecked, and one bad event must not fail the bridge's batch)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        return False
    return "\\u0000" not in text


def apply_deferrals(deferrals: list[Deferral], now) -> list[tuple]:
    """Apply a batch of deferrals in one UPDATE (inside the caller's transaction). Only the
    calling device's own `sent` or `acknowledged` deliveries move, and never a `forced`
    one; anything else (a repeat, a late or foreign answer) matches nothing.

    Returns one row per (job, outcome, channel): (job id, outcome, count, action, channel,
    [device ids], earliest next offer, a reason).
    """
    if not deferrals:
        return []
    exhausted_outcome = (
        f"CASE j.deferral_exhausted WHEN '{DeferralExhausted.SKIP}' THEN '{SKIPPED}' "
        f"WHEN '{DeferralExhausted.FAIL}' THEN '{FAILED}' ELSE '{FORCED}' END"
    )
    sql = f"""
        WITH incoming (delivery_id, device_key, delay, reason) AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(devices)s::text[], %(delays)s::int[],
                                 %(reasons)s::text[])
        ),
        decided AS (
            SELECT d.id, dv.device_id AS device_key, dv.push_channel, i.reason,
                   LEAST(i.delay, j.max_deferral_seconds - d.deferred_seconds) AS granted,
                   CASE WHEN d.defer_count < j.max_deferrals
                             AND d.deferred_seconds < j.max_deferral_seconds
                        THEN '{DEFERRED}' ELSE {exhausted_outcome} END AS outcome
            FROM incoming i
            JOIN {Device._meta.db_table} dv ON dv.device_id = i.device_key
            JOIN {Delivery._meta.db_table} d ON d.id = i.delivery_id AND d.device_id = dv.id
            JOIN {Job._meta.db_table} j ON j.id = d.job_id
            WHERE d.status = ANY(%(from)s) AND NOT d.forced
            FOR NO KEY UPDATE OF d
        ),
        moved AS (
            UPDATE {Delivery._meta.db_table} d SET
                status = CASE x.outcome WHEN '{SKIPPED}' THEN %(cancelled)s
                                        WHEN '{FAILED}' THEN %(failed)s ELSE %(pending)s END,
                next_attempt_at = CASE WHEN x.outcome = '{DEFERRED}'
                                       THEN %(now)s + make_interval(secs => x.granted) END,
                deadline = CASE WHEN x.outcome = '{DEFERRED}'
                                THEN d.deadline + make_interval(secs => x.granted)
                                ELSE d.deadline END,
                defer_count = d.defer_count + (x.outcome = '{DEFERRED}')::int,
                deferred_seconds = d.deferred_seconds
                                   + CASE WHEN x.outcome = '{DEFERRED}' THEN x.granted ELSE 0 END,
                defer_reason = x.reason,
                forced = (x.outcome = '{FORCED}'),
                acknowledged_at = NULL,
                -- A new offer is a fresh start for the push retries.
                attempts = CASE WHEN x.outcome IN ('{DEFERRED}', '{FORCED}') THEN 0 ELSE d.attempts END,
                failed_at = CASE WHEN x.outcome IN ('{SKIPPED}', '{FAILED}') THEN %(now)s END,
                last_error = CASE x.outcome
                    WHEN '{SKIPPED}' THEN 'Skipped: the device asked to defer beyond the job''s limit ('
                                          || d.defer_count || ' deferral(s), ' || d.deferred_seconds
                                          || ' s). Its reason: ' || x.reason
                    WHEN '{FAILED}' THEN 'Failed: the device asked to defer beyond the job''s limit ('
                                         || d.defer_count || ' deferral(s), ' || d.deferred_seconds
                                         || ' s). Its reason: ' || x.reason
                    ELSE d.last_error END
            FROM decided x
            WHERE d.id = x.id AND d.status = ANY(%(from)s) AND NOT d.forced
            RETURNING d.job_id, x.outcome, x.push_channel, x.device_key, d.next_attempt_at, x.reason
        )
        SELECT m.job_id, m.outcome, count(*), j.action, m.push_channel,
               (array_agg(m.device_key ORDER BY m.device_key))[1:{AUDIT_DEVICES}],
               min(m.next_attempt_at), max(m.reason)
        FROM moved m JOIN {Job._meta.db_table} j ON j.id = m.job_id
        GROUP BY m.job_id, m.outcome, j.action, m.push_channel
    """  # noqa: S608 - table names from the models, outcomes are constants; values are parameters
    params = {
        "ids": [d.delivery_id for d in deferrals],
        "devices": [d.device_id for d in deferrals],
        "delays": [d.delay_seconds for d in deferrals],
        "reasons": [d.reason for d in deferrals],
        "from": list(DELIVERY_IN_FLIGHT),
        "pending": DeliveryStatus.PENDING,
        "cancelled": DeliveryStatus.CANCELLED,
        "failed": DeliveryStatus.FAILED,
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def summarise(rows: list[tuple]) -> dict[int, dict]:
    """Per job: {"outcomes": {outcome: count}, "devices": [...], "next_offer_at", "reason"}."""
    jobs: dict[int, dict] = {}
    for job_id, outcome, count, _action, _channel, devices, next_at, reason in rows:
        empty = {"outcomes": {}, "devices": [], "next_offer_at": None, "reason": ""}
        job = jobs.setdefault(job_id, empty)
        job["outcomes"][outcome] = job["outcomes"].get(outcome, 0) + count
        job["devices"] = sorted({*job["devices"], *devices})[:AUDIT_DEVICES]
        job["reason"] = job["reason"] or reason or ""
        if next_at is not None and (job["next_offer_at"] is None or next_at < job["next_offer_at"]):
            job["next_offer_at"] = next_at
    return jobs


def deferrals_apply(deferrals: list[Deferral], now) -> list[tuple]:
    """Apply a batch of deferrals (inside the caller's audited block), record one
    deliveries.deferred audit row per job, and ask for each job's dispatch pass: at once
    for work forced on a device, else when the earliest granted delay ends. Returns the
    rows of apply_deferrals (for the metrics, once committed, and the caller's counts)."""
    rows = apply_deferrals(deferrals, now)
    for job_id, summary in summarise(rows).items():
        _audit(job_id, summary)
        if summary["outcomes"].get(FORCED):
            dispatch_request(job_id)
        elif summary["next_offer_at"] is not None:
            dispatch_request(job_id, at=summary["next_offer_at"])
    return rows


def _audit(job_id: int, summary: dict) -> None:
    outcomes = summary["outcomes"]
    told = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    reason = f" ({summary['reason']})" if summary["reason"] else ""
    next_at = summary["next_offer_at"]
    audit_record(
        event_type=AuditEvent.DELIVERIES_DEFERRED,
        job=Job.objects.select_related("site").get(pk=job_id),
        description=f"Job #{job_id}: devices asked to defer{reason}: {told}",
        new_values={
            **{outcome: outcomes.get(outcome, 0) for outcome in (DEFERRED, FORCED, SKIPPED, FAILED)},
            "devices": summary["devices"],
            "next_offer_at": next_at.isoformat() if next_at else None,
            "reason": summary["reason"],
        },
    )


def observe(rows: list[tuple]) -> None:
    """homepot_device_deferrals, from committed rows of apply_deferrals."""
    for _job, outcome, count, action, channel, *_rest in rows:
        metrics.device_deferrals.labels(action=action, channel=channel, outcome=outcome).inc(count)
