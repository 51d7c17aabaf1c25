"""Turn devices' MQTT replies into the agent API's service calls.

Subscribes (QoS 1) to `homepot/devices/+/events`. A message is JSON:
    {"delivery_id": 42, "event": "ack"}
    {"delivery_id": 42, "event": "result", "status": "completed"|"failed", "details": {...}, "error": "..."}
The device is the one named in the topic, so a device can only answer its own deliveries
(restrict each device to its own topics with the broker's ACLs). Repeats, reports out of
order and unknown or foreign deliveries are as harmless as over HTTP.
"""

import json
import logging
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand
from django.db import close_old_connections
from django.http import Http404

from devices_app.models import Device
from jobs_app import services
from jobs_app.channels.mqtt import EVENTS_TOPIC, connect

logger = logging.getLogger(__name__)


def handle_event(topic: str, payload: bytes) -> str:
    """Apply one device event; returns what happened (for logs and tests)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[:2] != ["homepot", "devices"] or parts[3] != "events":
        return "ignored: topic"
    try:
        message = json.loads(payload)
        delivery_id = int(message["delivery_id"])
        event = message["event"]
    except (ValueError, KeyError, TypeError):
        return "ignored: malformed"
    device = Device.objects.filter(device_id=parts[2]).first()
    if device is None:
        return "ignored: unknown device"
    try:
        if event == "ack":
            delivery = services.delivery_acknowledge(device=device, delivery_id=delivery_id)
        elif event == "result":
            delivery = services.delivery_report(
                device=device,
                delivery_id=delivery_id,
                outcome=message.get("status"),
                details=message.get("details"),
                error=str(message.get("error") or ""),
            )
        else:
            return "ignored: event"
    except Http404:
        return "ignored: unknown delivery"
    except ValidationError:
        return "ignored: bad status"
    return delivery.status


class Command(BaseCommand):
    help = "Bridge devices' MQTT events (homepot/devices/<id>/events) into delivery updates."

    def add_arguments(self, parser):
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (0: never)."
        )

    def handle(self, *args, duration, **options):
        client = connect(client_id="homepot-mqtt-bridge")

        def on_message(client, userdata, message):
            close_old_connections()  # a long-lived thread: drop a connection the server closed
            outcome = handle_event(message.topic, message.payload)
            logger.info("%s -> %s", message.topic, outcome)

        def on_connect(client, userdata, flags, reason_code, properties):
            client.subscribe(EVENTS_TOPIC, qos=1)  # again after every reconnect

        client.on_message = on_message
        client.on_connect = on_connect
        client.subscribe(EVENTS_TOPIC, qos=1)
        self.stdout.write(f"Bridging {EVENTS_TOPIC}")
        started = time.monotonic()
        try:
            while not duration or time.monotonic() - started < duration:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        finally:
            client.loop_stop()
            client.disconnect()
