"""Device answers: acknowledgements and outcomes of deliveries, applied in set-based
statements. The one implementation of those transitions: the HTTP agent API
(`services.delivery_acknowledge`, `services.delivery_report`, `services.delivery_defer`)
applies a batch of one, the MQTT bridge (through jobs_app.events) whatever arrived together.

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

from django.db import connection
from django.utils import timezone

from devices_app.models import Device
from homepot import metrics
from jobs_app.choices import DELIVERY_NOT_TAKEN, DELIVERY_UNFINISHED, DeliveryStatus, JobAction
from jobs_app.models import Delivery, Job
from jobs_app.services import deferral
from jobs_app.services.progress import job_check_failure_threshold, job_rollup
from jobs_app.services.rollback import CONFIG_ACTIONS
from monitoring_app.services import audited_atomic

ACK = "ack"
RESULT = "result"
DEFER = "defer"
DEFAULT_FAILURE_ERROR = "The device reported a failure."


@dataclass(frozen=True)
class DeviceEvent:
    """One answer of a device about one of its deliveries."""

    device_id: str  # the device's business id, as the topic names it
    delivery_id: int
    kind: str  # ACK, RESULT or DEFER
    outcome: str = ""  # with RESULT: completed or failed
    details: Any = None
    error: str = ""
    # With RESULT: what the device had before, for the settings the job touched (a dict).
    previous_config: Any = None
    # With DEFER: the delay asked for and why.
    delay_seconds: int = 0
    reason: str = ""


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
    defers: dict[int, DeviceEvent] = {}
    total = 0
    for event in events:
        total += 1
        bucket = {ACK: acks, RESULT: results, DEFER: defers}[event.kind]
        bucket.setdefault(event.delivery_id, event)
    now = timezone.now()
    # Audited: deferrals record one deliveries.deferred row per job, in the same transaction.
    with audited_atomic():
        _lock_in_id_order(sorted({*acks, *results, *defers}))
        acked = _apply_acks(list(acks.values()), now)
        finished = _apply_results(list(results.values()), now)
        # After the outcomes: a deferral that arrives with the delivery's result changes nothing.
        deferred = deferral.deferrals_apply(
            [
                deferral.Deferral(e.device_id, e.delivery_id, e.delay_seconds, e.reason)
                for e in defers.values()
            ],
            now,
        )
    # Observed once committed: a batch the bridge retries after a rollback counts once.
    _observe(acked, finished)
    deferral.observe(deferred)
    acked = [row[:3] for row in acked]
    finished = [row[:3] for row in finished]
    counts = {DeliveryStatus.ACKNOWLEDGED: sum(n for _job, _status, n in acked)}
    for _job, status, n in finished:
        counts[status] = counts.get(status, 0) + n
    # A deferral counts under its outcome: deferred, forced, skipped, or failed.
    for _job, outcome, n, *_rest in deferred:
        counts[outcome] = counts.get(outcome, 0) + n
    counts["unchanged"] = total - sum(counts.values())
    _roll_up(
        jobs={row[0] for row in (*acked, *finished, *deferred)},
        with_failures={job for job, status, _n in finished if status == DeliveryStatus.FAILED}
        | {row[0] for row in deferred if row[1] == deferral.FAILED},
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


def _lock_in_id_order(delivery_ids: list[int]) -> None:
    """Row locks on the batch's deliveries, in id order, before the UPDATEs below take them
    in whatever order their plans visit the rows. Several bridges (on several hosts) get
    overlapping batches: a delivery's ack through one, its result through another. Taking
    the locks in one order makes them queue behind each other instead of deadlocking."""
    if not delivery_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Delivery._meta.db_table} WHERE id = ANY(%s) ORDER BY id FOR UPDATE",  # noqa: S608
            [delivery_ids],
        )


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
    completed]) rows.

    A completion also records what the device had before (`previous_config`, what a
    rollback restores; see services/rollback.py): for configuration jobs, each setting the
    work names, as the device reported it, else as `Device.config` had it (null: it had no
    such setting); for a software update, the version the device reported, else
    `Device.firmware_version`. And a completed configuration job updates `Device.config`
    with what it applied (a null setting removes it), in the same statement, so HOMEPOT's
    record stays what the device runs even when the device reports nothing."""
    if not results:
        return []
    return _fetch(
        f"""
        WITH incoming (delivery_id, device_key, outcome, details, error, previous) AS (
            SELECT * FROM unnest(%(ids)s::bigint[], %(devices)s::text[], %(outcomes)s::text[],
                                 %(details)s::jsonb[], %(errors)s::text[], %(previous)s::jsonb[])
        ),
        moved AS (
            UPDATE {Delivery._meta.db_table} d SET
                status = i.outcome,
                result = i.details,
                previous_config = CASE WHEN i.outcome = %(completed)s THEN (
                    SELECT CASE
                        WHEN j.action = ANY(%(config_actions)s) THEN (
                            SELECT jsonb_object_agg(
                                k, COALESCE(i.previous -> k, dv.config -> k, 'null'::jsonb))
                            FROM jsonb_object_keys(COALESCE(d.payload, j.payload)) AS k)
                        WHEN j.action = %(software_update)s THEN (
                            SELECT CASE WHEN v IS NULL OR v = 'null'::jsonb THEN NULL
                                        ELSE jsonb_build_object('version', v) END
                            FROM (SELECT COALESCE(i.previous -> 'version',
                                                  to_jsonb(NULLIF(dv.firmware_version, ''))) AS v) AS pv)
                    END
                    FROM {Job._meta.db_table} j WHERE j.id = d.job_id
                ) ELSE d.previous_config END,
                sent_at = COALESCE(d.sent_at, %(now)s),
                acknowledged_at = COALESCE(d.acknowledged_at, %(now)s),
                completed_at = CASE WHEN i.outcome = %(completed)s THEN %(now)s ELSE d.completed_at END,
                failed_at = CASE WHEN i.outcome = %(completed)s THEN NULL ELSE %(now)s END,
                last_error = CASE WHEN i.outcome = %(completed)s THEN '' ELSE i.error END
            FROM incoming i JOIN {Device._meta.db_table} dv ON dv.device_id = i.device_key
            WHERE d.id = i.delivery_id AND d.device_id = dv.id AND d.status = ANY(%(from)s)
            RETURNING d.job_id, d.status, dv.push_channel, d.device_id AS device_pk, d.payload AS own_work,
                      EXTRACT(EPOCH FROM d.completed_at - d.acknowledged_at)::float8 AS waited
        ),
        configured AS (
            UPDATE {Device._meta.db_table} dv SET
                config = (COALESCE(dv.config, '{{}}'::jsonb) || jsonb_strip_nulls(w.work))
                         - ARRAY(SELECT key FROM jsonb_each(w.work) WHERE value = 'null'::jsonb)
            FROM (SELECT m.device_pk, COALESCE(m.own_work, j.payload) AS work
                  FROM moved m JOIN {Job._meta.db_table} j ON j.id = m.job_id
                  WHERE m.status = %(completed)s AND j.action = ANY(%(config_actions)s)) w
            WHERE dv.id = w.device_pk AND jsonb_typeof(w.work) = 'object'
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
            "previous": [
                json.dumps(e.previous_config) if isinstance(e.previous_config, dict) else None
                for e in results
            ],
            "config_actions": list(CONFIG_ACTIONS),
            "software_update": JobAction.SOFTWARE_UPDATE,
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
