"""The MQTT push channel's client lifecycle against the local Mosquitto (127.0.0.1:1883),
reached through a TCP proxy that can swallow the broker's answers or cut the connection."""

import threading

import pytest

from homepot.tests.tcp_proxy import TcpProxy
from jobs_app.channels import Outgoing, PushError
from jobs_app.channels.mqtt import MqttChannel
from jobs_app.tests.test_worker import wait_for

WORK = Outgoing(
    delivery_id=1, device_id="mqtt-lifecycle-test", job_id=1, action="reboot", payload={}, priority="normal"
)


def paho_threads() -> set[threading.Thread]:
    # paho names the network thread that loop_start() starts "paho-mqtt-client-<client id>".
    return {thread for thread in threading.enumerate() if thread.name.startswith("paho-mqtt-client")}


def test_failed_publishes_leave_no_network_thread_behind(settings):
    before = paho_threads()
    with TcpProxy("127.0.0.1", settings.HOMEPOT_JOBS_MQTT_PORT) as proxy:
        settings.HOMEPOT_JOBS_MQTT_PORT = proxy.port
        settings.HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS = 0.2  # the PUBACK never comes anyway
        channel = MqttChannel()
        channel.push([WORK])  # a working connection first
        for _ in range(3):
            channel._connected()  # connected (CONNACK through), then the broker goes away
            proxy.cut()
            with pytest.raises(PushError):
                channel.push([WORK])
            proxy.restore()
            leaked = paho_threads() - before
            assert not leaked, f"after a failed publish: {sorted(t.name for t in leaked)}"
        channel.push([WORK])  # and the channel connects afresh and works again
        assert len(paho_threads() - before) == 1
        channel._drop(channel._client)
    assert not paho_threads() - before


def test_a_publish_unacknowledged_on_a_live_connection_counts_as_sent(settings, caplog):
    """The broker may have delivered it (issue 13): retrying would push it twice. The
    connection is kept, so paho goes on handing the message over."""
    before = paho_threads()
    with TcpProxy("127.0.0.1", settings.HOMEPOT_JOBS_MQTT_PORT) as proxy:
        settings.HOMEPOT_JOBS_MQTT_PORT = proxy.port
        settings.HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS = 0.2
        channel = MqttChannel()
        client = channel._connected()
        wait_for(client.is_connected)  # CONNACK through: the broker is slow, not away
        proxy.hold_replies()
        channel.push([WORK, WORK])  # no PushError
        assert "2 of 2 pushes not acknowledged" in caplog.text
        proxy.release_replies()
        assert channel._connected() is client
        assert len(paho_threads() - before) == 1
        channel._drop(channel._client)
    assert not paho_threads() - before
