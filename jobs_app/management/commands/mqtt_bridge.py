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

A bridge that stays dead is not waited for. Mosquitto keeps routing its share of the group's
events to a member whose session persists, connected or not, so those would wait in the dead
bridge's session until it came back (or be lost when the session expired). Each bridge of a
group therefore records in Redis that it is alive (`homepot:mqtt-bridges:<group>`, every
--peer-timeout / 6 seconds); a live bridge that finds a peer silent for --peer-timeout
seconds adopts that peer's session: it connects with the peer's client id, resuming the
session, unsubscribes it (no new events are routed there), applies and acknowledges what the
session held, and ends the session (session expiry 0), so the broker stops routing to it. A
bridge that comes back later starts a new session and rejoins the group. A bridge adopts only
after its own Redis records have succeeded for --peer-timeout seconds, so a Redis outage makes
no live bridge look dead; adopting a bridge that was only slow costs a reconnection, no event.
"""

import contextlib
import logging
import queue
import socket
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DataError, IntegrityError, OperationalError, close_old_connections

from homepot import metrics
from homepot.redis_clients import redis_client
from jobs_app import events
from jobs_app.channels import PushError
from jobs_app.channels.mqtt import EVENTS_TOPIC, connect

logger = logging.getLogger(__name__)

APPLY_ATTEMPTS = 3
ADOPT_QUIET_SECONDS = 2.0  # an adopted session has handed over all it held after this silence
ADOPT_MAX_SECONDS = 120.0


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
        self.batch, self.session_seconds, self.in_flight = batch, session_seconds, in_flight
        self.topic = f"$share/{group}/{EVENTS_TOPIC}" if group else EVENTS_TOPIC
        self.client = self._connect(client_id, self.inbox, on_connect=self._on_connect)
        self.stats = {"events": 0, "batches": 0, "ignored": 0, "adopted": 0}

    def _connect(self, client_id: str, inbox: queue.Queue, on_connect=None):
        def on_message(client, userdata, message):
            if message.dup:
                metrics.mqtt_bridge_redeliveries.inc()
            inbox.put(Received(message.mid, message.qos, message.topic, message.payload, time.monotonic()))

        return connect(
            client_id,
            persistent_seconds=self.session_seconds,
            # A burst (two events per terminal of a fleet-wide job) must flow to the bridge,
            # not wait in the broker's per-client queue, which drops what does not fit
            # (Mosquitto: max_queued_messages, 1,000 by default).
            receive_maximum=self.in_flight,
            manual_ack=True,
            on_message=on_message,
            on_connect=on_connect,
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)  # on every (re)connect

    def drain(self, linger: float) -> int:
        """Apply what arrived within `linger` seconds of the first message (at most `batch`
        messages), then acknowledge those to the broker. Returns how many were handled."""
        return self._drain(self.inbox, self.client, 0.2, linger)

    def adopt(self, client_id: str) -> int:
        """Take over the session of a dead bridge of the group (module docstring): apply and
        acknowledge every event it held, then end it. Returns how many events it held."""
        inbox: queue.Queue[Received] = queue.Queue()
        client = self._connect(client_id, inbox)
        handled = 0
        try:
            client.unsubscribe(self.topic)
            deadline = time.monotonic() + ADOPT_MAX_SECONDS
            while time.monotonic() < deadline:
                n = self._drain(inbox, client, ADOPT_QUIET_SECONDS, 0.05)
                if not n:
                    break
                handled += n
        finally:
            _end_session(client)
        self.stats["adopted"] += handled
        return handled

    def _drain(self, inbox: queue.Queue, client, wait: float, linger: float) -> int:
        try:
            first = inbox.get(timeout=wait)
        except queue.Empty:
            return 0
        received = [first]
        deadline = time.monotonic() + linger
        while len(received) < self.batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                received.append(inbox.get(timeout=remaining))
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
                client.ack(item.mid, item.qos)
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


def _end_session(client) -> None:
    """Disconnect asking the broker to drop the session now (MQTT 5: a session expiry of 0
    on DISCONNECT), which takes it out of the shared subscription's group."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.DISCONNECT)
    properties.SessionExpiryInterval = 0
    client.disconnect(properties=properties)
    client.loop_stop()


class Peers:
    """The bridges of one group as recorded in Redis: client id -> when it was last alive
    (Redis' own clock, so the hosts' clocks do not matter)."""

    def __init__(self, group: str, client_id: str, timeout: float):
        self.key = f"homepot:mqtt-bridges:{group}"
        self.client_id, self.timeout = client_id, timeout
        self.reachable_since: float | None = None

    def _redis(self) -> redis.Redis:
        return redis_client(settings.REDIS_URL, timeout=2)

    def beat(self) -> list[str]:
        """Record this bridge alive; return the peers silent for longer than the timeout.
        None while this bridge's own records have not succeeded for that long: after a Redis
        outage every peer looks silent until it has had time to record itself again."""
        try:
            seconds, micros = self._redis().time()
            now = seconds + micros / 1e6
            self._redis().hset(self.key, self.client_id, now)
            seen = self._redis().hgetall(self.key)
        except redis.RedisError as exc:
            logger.warning("Cannot record this bridge as alive in Redis: %s", exc)
            self.reachable_since = None
            return []
        if self.reachable_since is None:
            self.reachable_since = now
        if now - self.reachable_since < self.timeout:
            return []
        return [
            peer.decode()
            for peer, at in seen.items()
            if peer.decode() != self.client_id and now - float(at) > self.timeout
        ]

    def claim(self, peer: str) -> bool:
        """One live bridge adopts a dead one (two would only both apply the same events)."""
        try:
            return bool(self._redis().set(f"{self.key}:adopting:{peer}", self.client_id, nx=True, ex=300))
        except redis.RedisError:
            return False

    def forget(self, peer: str) -> None:
        with contextlib.suppress(redis.RedisError):
            self._redis().hdel(self.key, peer)
            self._redis().delete(f"{self.key}:adopting:{peer}")


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
        parser.add_argument(
            "--peer-timeout",
            type=float,
            default=30,
            help="A bridge of the group not seen alive (in Redis) this many seconds is dead: "
            "a live one adopts its broker session and the events waiting there. 0: never.",
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
        self,
        *args,
        duration,
        group,
        client_id,
        session_seconds,
        batch,
        linger_ms,
        in_flight,
        peer_timeout,
        **options,
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
        # Adopting needs a group (a plain subscription has no share to lose) and sessions
        # that outlive a bridge (a clean one is dropped by the broker as the bridge dies).
        peers = Peers(group, client_id, peer_timeout) if group and session_seconds and peer_timeout else None
        started = next_beat = time.monotonic()
        try:
            while not duration or time.monotonic() - started < duration:
                bridge.drain(linger_ms / 1000)
                if peers is not None and time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + peer_timeout / 6
                    self._adopt_dead(bridge, peers)
        except KeyboardInterrupt:
            pass
        finally:
            bridge.close()
        if options["verbosity"] > 1:
            self.stdout.write(f"{bridge.stats}")

    def _adopt_dead(self, bridge: Bridge, peers: Peers) -> None:
        for peer in peers.beat():
            if not peers.claim(peer):
                continue
            logger.warning("Bridge %s has not been seen for %s s: adopting its session", peer, peers.timeout)
            held = bridge.adopt(peer)
            peers.forget(peer)
            logger.warning("Adopted %s's session: %d events applied, session ended", peer, held)
            self.stdout.write(f"Adopted {peer}: {held} events")
