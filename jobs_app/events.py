"""Device answers arriving over MQTT: the wire format of `homepot/devices/<id>/events`
messages (parse_event): `ack`, `result` (with an optional `previous_config`) and `defer`
(`delay_seconds`, `reason`). What an answer changes is applied by
jobs_app.services.answers.deliveries_apply_events (re-exported here for the bridge), the
same transitions the HTTP agent API applies.
"""

import json

from jobs_app.choices import DeliveryStatus
from jobs_app.services.answers import (
    ACK,
    DEFAULT_FAILURE_ERROR,
    DEFER,
    RESULT,
    DeviceEvent,
    deliveries_apply_events,
)
from jobs_app.services.deferral import clean_deferral, storable

__all__ = (
    "ACK",
    "DEFAULT_FAILURE_ERROR",
    "DEFER",
    "RESULT",
    "DeviceEvent",
    "deliveries_apply_events",
    "parse_event",
)

_OUTCOMES = (DeliveryStatus.COMPLETED, DeliveryStatus.FAILED)
MAX_ID = 2**63  # delivery ids are bigint: anything larger names nothing


def parse_event(topic: str, payload: bytes) -> DeviceEvent | str:
    """The event in an MQTT message on `homepot/devices/<device_id>/events`, or the reason it
    is ignored (a string starting with "ignored:")."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["homepot", "devices"] or parts[3] != "events" or not parts[2]:
        return "ignored: topic"
    try:
        message = json.loads(payload)
        delivery_id = int(message["delivery_id"])
        kind = message["event"]
    except (ValueError, KeyError, TypeError):
        return "ignored: malformed"
    if not 0 < delivery_id < MAX_ID:
        return "ignored: malformed"
    if kind == ACK:
        return DeviceEvent(device_id=parts[2], delivery_id=delivery_id, kind=ACK)
    if kind == DEFER:
        cleaned = clean_deferral(message.get("delay_seconds"), message.get("reason"))
        if isinstance(cleaned, str):
            return f"ignored: {cleaned}"
        delay, reason = cleaned
        return DeviceEvent(parts[2], delivery_id, DEFER, delay_seconds=delay, reason=reason)
    if kind != RESULT:
        return "ignored: event"
    outcome = message.get("status")
    if outcome not in _OUTCOMES:
        return "ignored: bad status"
    previous = message.get("previous_config")
    if previous is not None and not (isinstance(previous, dict) and storable(previous)):
        return "ignored: previous_config is not an object"
    return DeviceEvent(
        device_id=parts[2],
        delivery_id=delivery_id,
        kind=RESULT,
        outcome=outcome,
        details=message.get("details"),
        error=str(message.get("error") or ""),
        previous_config=previous,
    )
