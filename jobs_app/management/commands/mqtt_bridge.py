"""Turn devices' MQTT replies into delivery updates, in batches.

Subscribes (QoS 1) to `homepot/devices/+/events` through the shared subscription
`$share/<group>/homepot/devices/+/events`: run several bridges with the same group and the
broker spreads the events among them. A message is JSON:
    {"delivery_id": 42, "event": "ack"}
    {"delivery_id": 42, "event": "result", "status": "completed"|"failed", "details": {...}, "error": "..."}
The device is the one named in the topic, so a device can only answer its own deliveries
(restrict each device to its own topics with the broker's ACLs). Repeats, reports out of
order and unknown or foreign deliveries are as harmless as over HTTP.

Events are collected for up to --linger-ms (or --batch of them) and applied together
(`jobs_app.events`, applied by `jobs_app.services.answers`): a few statements per batch
instead of one per event. A message is
acknowledged to the broker only after its batch has committed, and the session outlives a
restart of the bridge (--session-seconds), so a bridge that dies mid-batch loses nothing:
the broker hands the unacknowledged events out again and applying them twice changes nothing.
"""

import logging
import queue
import socket
import time
from dataclasses import dataclass

from django.core.management.base import BaseCommand, CommandError
from django.db import DataError, IntegrityError, OperationalError, close_old_connections

from homepot import metrics
from jobs_app import events
from jobs_app.channels import PushError
from jobs_app.channels.mqtt import EVENTS_TOPIC, connect

logger = logging.getLogger(__name__)

APPLY_ATTEMPTS = 3


def handle_event(topic: str, payload: bytes) -> str:
    """Apply one device event on its own; returns what happened (for logs and tests)."""
    event = events.parse_event(topic, payload)
    if isinstance(event, str):
        return event
    counts = events.deliveries_apply_events([event])
    moved = [status for status, n in counts.items() if n and status != "unchanged"]
    return moved[0] if moved else "ignored: unknown delivery or no change"


@dataclass(frozen=True)
class Received:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float  # time.monotonic() when it reached the bridge: the lag metric's start


class Bridge:
    """One broker connection feeding a queue; the caller's thread drains it in batches."""

    def __init__(self, *, client_id: str, group: str, session_seconds: int, batch: int, in_flight: int):
        self.inbox: queue.Queue[Received] = queue.Queue()
        self.batch = batch
        self.topic = f"$share/{group}/{EVENTS_TOPIC}" if group else EVENTS_TOPIC
        self.client = connect(
            client_id,
            persistent_seconds=session_seconds,
            # A burst (two events per terminal of a fleet-wide job) must flow to the bridge,
            # not wait in the broker's per-client queue, which drops what does not fit
            # (Mosquitto: max_queued_messages, 1,000 by default).
            receive_maximum=in_flight,
            manual_ack=True,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.stats = {"events": 0, "batches": 0, "ignored": 0}

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)  # on every (re)connect

    def _on_message(self, client, userdata, message):
        if message.dup:
            metrics.mqtt_bridge_redeliveries.inc()
        self.inbox.put(Received(message.mid, message.qos, message.topic, message.payload, time.monotonic()))

    def drain(self, linger: float) -> int:
        """Apply what arrived within `linger` seconds of the first message (at most `batch`
        messages), then acknowledge those to the broker. Returns how many were handled."""
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return 0
        received = [first]
        deadline = time.monotonic() + linger
        while len(received) < self.batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                received.append(self.inbox.get(timeout=remaining))
            except queue.Empty:
                break
        parsed = [events.parse_event(item.topic, item.payload) for item in received]
        good = [event for event in parsed if not isinstance(event, str)]
        for item, event in zip(received, parsed, strict=True):
            if isinstance(event, str):
                logger.info("%s -> %s", item.topic, event)
        counts = self._apply(good)
        for item in received:
            if item.qos:
                self.client.ack(item.mid, item.qos)
        self.stats["events"] += len(received)
        self.stats["batches"] += 1
        self.stats["ignored"] += len(received) - len(good)
        done = time.monotonic()
        metrics.mqtt_bridge_batch_size.observe(len(received))
        for item in received:
            metrics.mqtt_bridge_lag.observe(done - item.received)
        metrics.mqtt_bridge_events.labels(outcome="applied").inc(len(good))
        metrics.mqtt_bridge_events.labels(outcome="ignored").inc(len(received) - len(good))
        logger.info("Applied %d device events: %s", len(good), counts)
        return len(received)

    def _apply(self, batch: list[events.DeviceEvent]) -> dict:
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            close_old_connections()  # a long-lived process: drop a connection the server closed
            try:
                return events.deliveries_apply_events(batch)
            except (DataError, IntegrityError):
                # Something in the batch the database refuses: apply the events one by one,
                # so one bad message is dropped (and logged) instead of being handed back
                # forever and stopping every bridge that receives it.
                return self._apply_one_by_one(batch)
            except OperationalError:
                # A deadlock with another bridge or a database restart: the batch is safe
                # to apply again. After the last attempt the bridge stops, leaving these
                # events unacknowledged for the broker to hand out again.
                if attempt == APPLY_ATTEMPTS:
                    raise
                logger.warning("Applying %d events failed (attempt %d); retrying", len(batch), attempt)
                time.sleep(0.5 * attempt)
        return {}

    def _apply_one_by_one(self, batch: list[events.DeviceEvent]) -> dict:
        counts: dict = {}
        for event in batch:
            try:
                for status, n in events.deliveries_apply_events([event]).items():
                    counts[status] = counts.get(status, 0) + n
            except (DataError, IntegrityError) as exc:
                logger.warning("Dropped an event the database refuses: %s (%s)", event, exc)
                self.stats["ignored"] += 1
        return counts

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Command(BaseCommand):
    help = "Bridge devices' MQTT events (homepot/devices/<id>/events) into delivery updates."

    def add_arguments(self, parser):
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (0: never)."
        )
        parser.add_argument(
            "--group",
            default="homepot-bridge",
            help="Shared-subscription group: bridges with the same group split the events "
            "between them. Empty: an ordinary subscription (every bridge sees every event).",
        )
        parser.add_argument(
            "--client-id",
            default=f"homepot-bridge-{socket.gethostname()}",
            help="Broker client id; give each bridge of a group its own (its session is kept by it).",
        )
        parser.add_argument(
            "--session-seconds",
            type=int,
            default=600,
            help="How long the broker keeps this bridge's session (and unacknowledged events) "
            "after it stops. 0: none.",
        )
        parser.add_argument("--batch", type=int, default=500, help="Most events applied together.")
        parser.add_argument(
            "--in-flight",
            type=int,
            default=65535,
            help="Events the broker may hand this bridge before it acknowledges them (MQTT 5 "
            "Receive Maximum, at most 65535). They wait in the bridge's memory, unacknowledged: "
            "a bridge that dies is handed them again.",
        )
        parser.add_argument(
            "--linger-ms", type=float, default=50, help="How long to wait for more events to batch."
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help="Serve this bridge's Prometheus metrics on this port (0: not served here; with "
            "PROMETHEUS_MULTIPROC_DIR the web's /metrics shows them instead).",
        )
        parser.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            help="Address for --metrics-port: keep it on a network only Prometheus reaches.",
        )

    def handle(
        self, *args, duration, group, client_id, session_seconds, batch, linger_ms, in_flight, **options
    ):
        if options["metrics_port"]:
            from prometheus_client import start_http_server

            start_http_server(options["metrics_port"], addr=options["metrics_addr"])
        if batch < 1:
            raise CommandError("--batch must be at least 1.")
        if not 1 <= in_flight <= 65535:
            raise CommandError("--in-flight is between 1 and 65535.")
        try:
            bridge = Bridge(
                client_id=client_id,
                group=group,
                session_seconds=session_seconds,
                batch=batch,
                in_flight=in_flight,
            )
        except PushError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Bridging {bridge.topic} as {client_id}")
        started = time.monotonic()
        try:
            while not duration or time.monotonic() - started < duration:
                bridge.drain(linger_ms / 1000)
        except KeyboardInterrupt:
            pass
        finally:
            bridge.close()
        if options["verbosity"] > 1:
            self.stdout.write(f"{bridge.stats}")
