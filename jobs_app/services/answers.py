"""Device answers: acknowledgements and outcomes of deliveries, applied in set-based
statements. The one implementation of those transitions: the HTTP agent API
(`services.delivery_acknowledge`, `services.delivery_report`) applies a batch of one, the
MQTT bridge (through jobs_app.events) whatever arrived together.

A fleet-wide job brings two answers per terminal within seconds. Applied one UPDATE at a
time, one process manages about 90 a second, far behind what a broker delivers to the MQTT
bridge; in batches it is one UPDATE for the acknowledgements, one for the outcomes, then
one rollup per job touched.

Every event names its device (the MQTT topic) and a delivery id; an event about a delivery
that is unknown or belongs to another device changes nothing, as over HTTP.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from devices_app.models import Device
from homepot import metrics
from jobs_app.choices import DELIVERY_NOT_TAKEN, DELIVERY_UNFINISHED, DeliveryStatus
from jobs_app.models import Delivery, Job
from jobs_app.services.progress import job_check_failure_threshold, job_rollup

ACK = "ack"
RESULT = "result"
DEFAULT_FAILURE_ERROR = "The device reported a failure."


@dataclass(frozen=True)
class DeviceEvent:
    """One answer of a device about one of its deliveries."""

    device_id: str  # the device's business id, as the topic names it
    delivery_id: int
    kind: str  # ACK or RESULT
    outcome: str = ""  # with RESULT: completed or failed
    details: Any = None
    error: str = ""


def deliveries_apply_events(events: Iterable[DeviceEvent]) -> dict[str, int]:
    """Apply a batch of device events; returns how many deliveries moved to each status and
    how many events changed nothing (`unchanged`: repeats, late or foreign answers).

    Acknowledgements go first, so an ack and its result in the same batch end `completed`.
    Of several results for one delivery the first counts, as over HTTP where the first
    report finishes the delivery. The moves commit together; the affected jobs are then
    checked against their failure threshold and rolled up, once per job.
    """
    acks: dict[int, DeviceEvent] = {}
    results: dict[int, DeviceEvent] = {}
    total = 0
    for event in events:
        total += 1
        bucket = acks if event.kind == ACK else results
        bucket.setdefault(event.delivery_id, event)
    now = timezone.now()
    with transaction.atomic():
        acked = _apply_acks(list(acks.values()), now)
        finished = _apply_results(list(results.values()), now)
    # Observed once committed: a batch the bridge retries after a rollback counts once.
    _observe(acked, finished)
    acked = [row[:3] for row in acked]
    finished = [row[:3] for row in finished]
    counts = {DeliveryStatus.ACKNOWLEDGED: sum(n for _job, _status, n in acked)}
    for _job, status, n in finished:
        counts[status] = counts.get(status, 0) + n
    counts["unchanged"] = total - sum(counts.values())
    _roll_up(
        jobs={job for job, _status, _n in (*acked, *finished)},
        with_failures={job for job, status, _n in finished if status == DeliveryStatus.FAILED},
    )
    return counts


def _observe(acked: list[tuple], finished: list[tuple]) -> None:
    """The delivery SLO histograms and failure counters (homepot.metrics) from the rows of
    _apply_acks and _apply_results: (job, status, count, action, channel, stage seconds)."""
    for _job, _status, _n, action, channel, waited in acked:
        stage = metrics.delivery_stage.labels(stage="sent_to_acknowledged", action=action, channel=channel)
        for seconds in waited:
            stage.observe(seconds)
    for _job, status, n, action, channel, waited in finished:
        if status == DeliveryStatus.FAILED:
            metrics.deliveries_failed.labels(action=action, channel=channel, reason="device").inc(n)
            continue
        stage = metrics.delivery_stage.labels(
            stage="acknowledged_to_completed", action=action, channel=channel
        )
        for seconds in waited:
            stage.observe(seconds)


def _apply_acks(acks: list[DeviceEvent], now) -> list[tuple]:
    """pending|sent → acknowledged for the batch, in one UPDATE. (job, status, count, action,
    channel, [seconds from sent to acknowledged]) rows."""
    if not acks:
        return []
    return _fetch(
        f"""
        WITH incoming (delivery_id, device_key) AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(devices)s::text[])
        ),
        moved AS (
            UPDATE {Delivery._meta.db_table} d SET
                status = %(acknowledged)s,
                acknowledged_at = %(now)s,
                sent_at = COALESCE(d.sent_at, %(now)s)
            FROM incoming i JOIN {Device._meta.db_table} dv ON dv.device_id = i.device_key
            WHERE d.id = i.delivery_id AND d.device_id = dv.id AND d.status = ANY(%(from)s)
            RETURNING d.job_id, dv.push_channel,
                      EXTRACT(EPOCH FROM d.acknowledged_at - d.sent_at)::float8 AS waited
        )
        SELECT m.job_id, %(acknowledged)s, count(*), j.action, m.push_channel, array_agg(m.waited)
        FROM moved m JOIN {Job._meta.db_table} j ON j.id = m.job_id
        GROUP BY m.job_id, j.action, m.push_channel
        """,  # noqa: S608 - table names from the models; values are parameters
        {
            "ids": [e.delivery_id for e in acks],
            "devices": [e.device_id for e in acks],
            "acknowledged": DeliveryStatus.ACKNOWLEDGED,
            "now": now,
            "from": list(DELIVERY_NOT_TAKEN),
        },
    )


def _apply_results(results: list[DeviceEvent], now) -> list[tuple]:
    """Unfinished or timed-out → completed|failed for the batch, in one UPDATE (a late answer
    is still the truth). (job, status, count, action, channel, [seconds from acknowledged to
    completed]) rows."""
    if not results:
        return []
    return _fetch(
        f"""
        WITH incoming (delivery_id, device_key, outcome, details, error) AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(devices)s::text[], %(outcomes)s::text[],
                                 %(details)s::jsonb[], %(errors)s::text[])
        ),
        moved AS (
            UPDATE {Delivery._meta.db_table} d SET
                status = i.outcome,
                result = i.details,
                sent_at = COALESCE(d.sent_at, %(now)s),
                acknowledged_at = COALESCE(d.acknowledged_at, %(now)s),
                completed_at = CASE WHEN i.outcome = %(completed)s THEN %(now)s ELSE d.completed_at END,
                failed_at = CASE WHEN i.outcome = %(completed)s THEN NULL ELSE %(now)s END,
                last_error = CASE WHEN i.outcome = %(completed)s THEN '' ELSE i.error END
            FROM incoming i JOIN {Device._meta.db_table} dv ON dv.device_id = i.device_key
            WHERE d.id = i.delivery_id AND d.device_id = dv.id AND d.status = ANY(%(from)s)
            RETURNING d.job_id, d.status, dv.push_channel,
                      EXTRACT(EPOCH FROM d.completed_at - d.acknowledged_at)::float8 AS waited
        )
        SELECT m.job_id, m.status, count(*), j.action, m.push_channel,
               array_remove(array_agg(m.waited), NULL)
        FROM moved m JOIN {Job._meta.db_table} j ON j.id = m.job_id
        GROUP BY m.job_id, m.status, j.action, m.push_channel
        """,  # noqa: S608 - table names from the models; values are parameters
        {
            "ids": [e.delivery_id for e in results],
            "devices": [e.device_id for e in results],
            "outcomes": [e.outcome for e in results],
            "details": [None if e.details is None else json.dumps(e.details) for e in results],
            "errors": [
                "" if e.outcome == DeliveryStatus.COMPLETED else (e.error or DEFAULT_FAILURE_ERROR)[:2000]
                for e in results
            ],
            "completed": DeliveryStatus.COMPLETED,
            "now": now,
            "from": [*DELIVERY_UNFINISHED, DeliveryStatus.TIMED_OUT],
        },
    )


def _fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _roll_up(*, jobs: set[int], with_failures: set[int]) -> None:
    for job_id in sorted(jobs):
        if job_id in with_failures:
            job_check_failure_threshold(job_id)
        job_rollup(job_id)
