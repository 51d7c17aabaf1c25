"""The MQTT channel: each delivery is published, QoS 1, to
`homepot/devices/<device_id>/commands` on the broker at HOMEPOT_JOBS_MQTT_HOST:PORT.

The push succeeds when every message of the batch was acknowledged by the broker (PUBACK)
or is still on its way over a live connection when the wait ends; a refused connection, or
messages paho refused or lost with its connection, raise PushError (PartialPush for part of
the batch), so the dispatcher leaves those pending and retries them with backoff. Devices answer on
`homepot/devices/<device_id>/events`, which `manage.py mqtt_bridge` turns into the same
service calls as the HTTP agent API.

Messages on the commands topic carry a `type`: `deliver` (the work) or `cancel` (drop
delivery `delivery_id`: its job was cancelled after the work was sent).
"""

import json
import logging
import threading
import time

from django.conf import settings

from jobs_app.channels import Channel, Outgoing, PartialPush, PushError

logger = logging.getLogger(__name__)

COMMANDS_TOPIC = "homepot/devices/{device_id}/commands"
EVENTS_TOPIC = "homepot/devices/+/events"


def connect(
    client_id: str = "",
    *,
    persistent_seconds: int = 0,
    receive_maximum: int | None = None,
    manual_ack: bool = False,
    on_message=None,
    on_connect=None,
    username: str | None = None,
    password: str | None = None,
):
    """A connected paho client (MQTT 5) with its network loop running, or PushError.

    It logs in as `username`/`password` when given (a device: its device_id and credential,
    with `client_id` its device_id); otherwise, with HOMEPOT_MQTT_AUTH on, as the bridge
    (HOMEPOT_MQTT_BRIDGE_USERNAME/PASSWORD), and anonymously with it off.

    `persistent_seconds` > 0 asks the broker to keep the session (subscriptions and QoS 1
    messages not yet acknowledged) that long after a disconnect, so a restarted bridge
    picks up where it stopped. `receive_maximum` is how many QoS 1 messages the broker may
    have in flight to this client at once (the broker's own default is small). With
    `manual_ack` a received message is acknowledged only when the caller says so.

    Callbacks are given here, not set afterwards: a resumed session's messages arrive right
    after the connection is made, and one arriving before `on_message` is set is lost.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.on_message = on_message
    client.on_connect = on_connect
    if username is None and getattr(settings, "HOMEPOT_MQTT_AUTH", False):
        username, password = settings.HOMEPOT_MQTT_BRIDGE_USERNAME, settings.HOMEPOT_MQTT_BRIDGE_PASSWORD
    if username is not None:
        client.username_pw_set(username, password)
    properties = Properties(PacketTypes.CONNECT)
    if persistent_seconds:
        properties.SessionExpiryInterval = persistent_seconds
    if receive_maximum:
        properties.ReceiveMaximum = receive_maximum
    try:
        client.connect(
            getattr(settings, "HOMEPOT_JOBS_MQTT_HOST", "127.0.0.1"),
            getattr(settings, "HOMEPOT_JOBS_MQTT_PORT", 1883),
            keepalive=30,
            clean_start=not persistent_seconds,
            properties=properties,
        )
    except OSError as exc:
        raise PushError(f"MQTT broker unreachable: {exc}") from exc
    client.loop_start()
    return client


class MqttChannel(Channel):
    name = "mqtt"

    def __init__(self):
        self._client = None
        self._lock = threading.Lock()

    def _connected(self):
        with self._lock:
            if self._client is None or not self._client.is_connected():
                self._drop_locked()
                self._client = connect()
            return self._client

    def _drop(self, client) -> None:
        """Forget `client` after a failure, so the next batch connects afresh. Its network
        thread is stopped and its socket closed: a client merely forgotten keeps its loop
        thread running (and reconnecting) for the life of the worker, one per failure."""
        with self._lock:
            if self._client is client:
                self._drop_locked()

    def _drop_locked(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()  # ends the loop thread's reconnecting too
            client.loop_stop()  # joins it

    def push(self, batch: list[Outgoing]) -> None:
        self._publish(batch, Outgoing.message)

    def cancel(self, batch: list[Outgoing]) -> None:
        """Publish `{"type": "cancel", "delivery_id": ...}` on each device's commands topic
        (QoS 1, after the push it cancels: the broker keeps the order per topic)."""
        self._publish(batch, Outgoing.cancel_message)

    def _publish(self, batch: list[Outgoing], render) -> None:
        """Publish the batch (QoS 1) and wait, at most HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS
        for the whole batch, for the broker's acknowledgements.

        A message still unacknowledged at the deadline on a live connection counts as sent:
        paho keeps it and goes on handing it over, so publishing it again would reach the
        device twice (the duplicates of issue 13's 100,000-device run). Only messages paho
        refused, or that were unacknowledged when the connection was lost, are retried
        (PartialPush). The bound is on the batch, not each message, because the dispatcher
        waits inside its transaction, which a pooler ends when idle too long."""
        client = self._connected()
        timeout = getattr(settings, "HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS", 10)
        published = [(item, _publish_one(client, item, render)) for item in batch]
        unsent = _wait_for_acknowledgements(published, time.monotonic() + timeout)
        if not client.is_connected():
            unsent = [item for item, info in published if not _acknowledged(info)]
        if not unsent:
            _log_unacknowledged(published, timeout)
        else:
            self._drop(client)  # reconnect next time
            if len(unsent) == len(batch):
                raise PushError("MQTT publish failed: the broker took none of the batch.")
            raise PartialPush(
                f"MQTT publish failed for {len(unsent)} of {len(batch)} messages.",
                [item.delivery_id for item in unsent],
            )


def _publish_one(client, item: Outgoing, render):
    return client.publish(COMMANDS_TOPIC.format(device_id=item.device_id), json.dumps(render(item)), qos=1)


def _log_unacknowledged(published, timeout: float) -> None:
    """A slow broker is worth knowing about (it is what made pushes repeat before, issue 13),
    but it is not a failure: say how many pushes went on without their PUBACK."""
    waiting = sum(1 for _item, info in published if not _acknowledged(info))
    if waiting:
        logger.warning(
            "MQTT: %d of %d pushes not acknowledged by the broker within %.1f s; counted as sent, "
            "still being handed over.",
            waiting,
            len(published),
            timeout,
        )


def _acknowledged(info) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # refused by paho: never went out
        return False


def _wait_for_acknowledgements(published, deadline: float) -> list[Outgoing]:
    """Wait until `deadline` for each message's PUBACK; return those paho refused outright
    (not connected, queue full), which certainly did not go out. (Those unacknowledged when
    the connection broke may have arrived; the caller retries them too, and devices ignore
    a delivery they have already taken: docs/jobs.md "Delivery guarantee".)"""
    refused = []
    for item, info in published:
        try:
            info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            refused.append(item)
    return refused
