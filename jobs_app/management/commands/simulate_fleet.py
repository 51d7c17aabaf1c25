"""Play N terminals as real clients: over HTTP (`--channel poll`, the default) each polls
`GET /api/v1/agent/commands`, acknowledges each delivery, waits a while and reports it
`completed` (or `failed`, at --failure-rate); over MQTT (`--channel mqtt`) each listens on
`homepot/devices/<id>/commands` and answers on `.../events` (run `manage.py mqtt_bridge`);
a `{"type": "cancel"}` message there makes it drop the delivery instead of reporting it.

Each simulated device gets a fresh credential (issuing one revokes the device's previous
credential: use it on demo and benchmark fleets, not on real terminals). Over MQTT that is
only needed with broker logins on (HOMEPOT_MQTT_AUTH): each terminal then logs in as itself,
one connection each; with them off, terminals share connections (--per-connection).

    python manage.py simulate_fleet --devices 20 --base-url http://127.0.0.1:8000
"""

import heapq
import itertools
import json
import math
import random
import threading
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from devices_app.models import Device
from devices_app.services import device_credential_issue, device_update


class Terminal(threading.Thread):
    def __init__(self, device_id, secret, options, stats, stop):
        super().__init__(daemon=True, name=device_id)
        self.device_id, self.secret, self.options, self.stats, self.stop = (
            device_id,
            secret,
            options,
            stats,
            stop,
        )
        self.rng = random.Random(device_id)  # noqa: S311 - simulation, not security

    def call(self, method, path, body=None):
        request = urllib.request.Request(  # noqa: S310 - the operator's own base URL
            self.options["base_url"].rstrip("/") + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Device {self.secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def run(self):
        while not self.stop.is_set():
            try:
                for command in self.call("GET", "/api/v1/agent/commands")["commands"]:
                    self.handle(command)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.stats["errors"] += 1
                if self.options["verbosity"] > 1:
                    print(f"{self.device_id}: {exc}")
            self.stop.wait(self.options["poll_interval"] * self.rng.uniform(0.5, 1.5))

    def handle(self, command):
        delivery = command["delivery_id"]
        if command["status"] == "sent":
            if self.call("POST", f"/api/v1/agent/deliveries/{delivery}/ack")["status"] == "cancelled":
                return
            self.stats["acknowledged"] += 1
        time.sleep(self.options["work_seconds"] * self.rng.uniform(0.5, 1.5))
        if self.rng.random() < self.options["failure_rate"]:
            body = {"status": "failed", "error": "simulated failure", "details": {"simulated": True}}
            self.stats["failed"] += 1
        else:
            body = {"status": "completed", "details": {"applied": command["action"]}}
            self.stats["completed"] += 1
        self.call("POST", f"/api/v1/agent/deliveries/{delivery}/result", body)


MAX_CONNECTIONS = 200


class MqttFleet:
    """MQTT terminals: one broker connection per --per-connection devices (a real terminal
    has its own; sharing keeps thousands of them in one process). Each acknowledges a
    command at once and reports its outcome --work-seconds later, from one scheduler thread."""

    def __init__(self, device_ids, options, stats, secrets=None):
        """`secrets` (device_id -> credential), when the broker wants logins: each terminal
        then connects as itself (client id and username its device_id), one connection each."""
        from jobs_app.channels.mqtt import connect

        self.options, self.stats, self.rng = options, stats, random.Random(0)  # noqa: S311
        self.cancelled: set = set()  # deliveries the server told us to drop
        self.due: list = []  # heap of (when, sequence, client, device_id, delivery)
        self.sequence = itertools.count()
        self.wake = threading.Condition()
        self.stopping = False
        # paho's network loop uses select(), which cannot watch file descriptors past 1,024
        # (three per client): beyond MAX_CONNECTIONS clients, more terminals share each one.
        per = max(1, options["per_connection"], math.ceil(len(device_ids) / MAX_CONNECTIONS))
        if secrets is not None:
            per = 1
        self.clients = []
        for start in range(0, len(device_ids), per):
            if secrets is None:
                client = connect(on_message=self.on_message)
            else:
                device_id = device_ids[start]
                client = connect(
                    device_id,
                    on_message=self.on_message,
                    username=device_id,
                    password=secrets[device_id],
                )
            subscribed = threading.Event()
            client.on_subscribe = lambda *args, done=subscribed: done.set()
            client.subscribe([(f"homepot/devices/{d}/commands", 1) for d in device_ids[start : start + per]])
            if not subscribed.wait(30):
                raise CommandError("The MQTT broker did not confirm the subscriptions.")
            self.clients.append(client)
        self.reporter = threading.Thread(target=self.report_when_due, daemon=True)
        self.reporter.start()

    def on_message(self, client, userdata, message):
        device_id = message.topic.split("/")[2]
        try:
            command = json.loads(message.payload)
        except ValueError:
            return
        delivery = command.get("delivery_id")
        if command.get("type") == "cancel":
            # The job was cancelled: drop the work if it has not been reported yet.
            self.cancelled.add(delivery)
            self.stats["cancelled"] += 1
            return
        events = f"homepot/devices/{device_id}/events"
        client.publish(events, json.dumps({"delivery_id": delivery, "event": "ack"}), qos=1)
        self.stats["acknowledged"] += 1
        when = time.monotonic() + self.options["work_seconds"] * self.rng.uniform(0.5, 1.5)
        with self.wake:
            heapq.heappush(self.due, (when, next(self.sequence), client, device_id, delivery))
            self.wake.notify()

    def report_when_due(self):
        while True:
            with self.wake:
                while not self.stopping and (not self.due or self.due[0][0] > time.monotonic()):
                    self.wake.wait(timeout=(self.due[0][0] - time.monotonic()) if self.due else None)
                if self.stopping:
                    return
                _when, _seq, client, device_id, delivery = heapq.heappop(self.due)
            if delivery in self.cancelled:
                continue
            failed = self.rng.random() < self.options["failure_rate"]
            result = {
                "delivery_id": delivery,
                "event": "result",
                "status": "failed" if failed else "completed",
            }
            if failed:
                result["error"] = "simulated failure"
            client.publish(f"homepot/devices/{device_id}/events", json.dumps(result), qos=1)
            self.stats["failed" if failed else "completed"] += 1

    def close(self):
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.reporter.join(timeout=5)
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


class Command(BaseCommand):
    help = "Simulate N terminals polling the agent API over HTTP and answering their jobs."

    def add_arguments(self, parser):
        parser.add_argument("--devices", type=int, default=10, help="How many terminals to play.")
        parser.add_argument("--site", help="Only devices of this site (its site_id).")
        parser.add_argument(
            "--channel", choices=["poll", "mqtt"], default="poll", help="Which terminals to play."
        )
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--poll-interval", type=float, default=2.0, help="Seconds between polls.")
        parser.add_argument("--work-seconds", type=float, default=1.0, help="Time to apply a job.")
        parser.add_argument("--failure-rate", type=float, default=0.0, help="0..1: share reported failed.")
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (0: never)."
        )
        parser.add_argument(
            "--per-connection", type=int, default=250, help="MQTT: terminals sharing one broker connection."
        )
        parser.add_argument(
            "--adopt",
            action="store_true",
            help="Demo fleets: if fewer than --devices use --channel, switch others to it first "
            "(lowest ids; through the audited device update).",
        )

    def handle(self, *args, **options):
        if not 0 <= options["failure_rate"] <= 1:
            raise CommandError("--failure-rate is a share between 0 and 1.")
        devices = Device.objects.select_related("site")
        if options["site"]:
            devices = devices.filter(site__site_id=options["site"])
        if options["adopt"]:
            self._adopt(devices, options["channel"], options["devices"])
        devices = list(devices.filter(push_channel=options["channel"]).order_by("id")[: options["devices"]])
        if not devices:
            raise CommandError(f"No {options['channel']} devices to simulate.")
        stats = {"acknowledged": 0, "completed": 0, "failed": 0, "cancelled": 0, "errors": 0}
        stop = threading.Event()
        if options["channel"] == "mqtt":
            secrets = None
            if getattr(settings, "HOMEPOT_MQTT_AUTH", False):
                # Broker logins on: each terminal logs in with its own credential.
                if len(devices) > MAX_CONNECTIONS:
                    raise CommandError(
                        f"With broker logins on, each MQTT terminal has its own connection: "
                        f"at most {MAX_CONNECTIONS} per simulator (run several)."
                    )
                secrets = {d.device_id: device_credential_issue(actor=None, device=d)[1] for d in devices}
            fleet = MqttFleet([d.device_id for d in devices], options, stats, secrets)
            self.stdout.write(f"Simulating {len(devices)} MQTT terminals")
            self._run_for(options["duration"])
            fleet.close()
            self.stdout.write(json.dumps(stats))
            return
        terminals = [
            Terminal(
                device.device_id, device_credential_issue(actor=None, device=device)[1], options, stats, stop
            )
            for device in devices
        ]
        self.stdout.write(f"Simulating {len(terminals)} terminals against {options['base_url']}")
        for terminal in terminals:
            terminal.start()
        try:
            self._run_for(options["duration"])
        finally:
            stop.set()
            for terminal in terminals:
                terminal.join(timeout=15)
        self.stdout.write(json.dumps(stats))

    def _adopt(self, devices, channel: str, wanted: int) -> None:
        """Switch the lowest-id devices to `channel` until `wanted` use it (a re-run finds
        them already switched and changes nothing)."""
        missing = wanted - devices.filter(push_channel=channel).count()
        if missing <= 0:
            return
        for device in devices.exclude(push_channel=channel).order_by("id")[:missing]:
            device_update(actor=None, device=device, push_channel=channel)
            self.stdout.write(f"{device.device_id} now uses {channel}")

    def _run_for(self, duration: float) -> None:
        started = time.monotonic()
        try:
            while not duration or time.monotonic() - started < duration:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
