"""Play N terminals as real clients: over HTTP (`--channel poll`, the default) each polls
`GET /api/v1/agent/commands`, acknowledges each delivery, waits a while and reports it
`completed` (or `failed`: at random with --failure-rate, or exactly a share of each job's
deliveries with --fail-share, a bad change for the waves to stop); over MQTT
(`--channel mqtt`) each listens on `homepot/devices/<id>/commands` and answers on
`.../events` (run `manage.py mqtt_bridge`);
a `{"type": "cancel"}` message there makes it drop the delivery instead of reporting it.
With --heartbeat-interval / --health-interval, HTTP terminals also heartbeat and report
their health on that schedule.

`--demo` plays the demo chain (fixtures/demo.json, docs/operations.md "The demo"): every
device meant to be alive (online, in error or in maintenance, at an open store), whatever its
channel, heartbeating every 30 s and reporting health every 5 minutes, with the story of
jobs_app/demo_scenario.py (a store losing its network for a while, a printer running low on
paper); the poll-channel ones also take their work. The fixture's offline devices stay silent.

Credentials are kept between runs in --credentials-file (var/, mode 0600): a terminal reuses
its stored credential while it still authenticates, and only one that does not (a reset
database, a revoked credential) gets a new one. Issuing revokes the device's previous
credential: use the simulator on demo and benchmark fleets, not on real terminals. Over MQTT
credentials are only needed with broker logins on (HOMEPOT_MQTT_AUTH): each terminal then logs
in as itself, one connection each; with them off, terminals share connections
(--per-connection).

Busy tills: with --defer-prob P a terminal answers a delivery it is offered with "defer"
(reason "sale in progress", --defer-seconds) at probability P instead of taking it, unless
the offer says `force` (the job's deferral limit is reached). Each terminal keeps its own
configuration (starting from the device's `config`), applies a config job's settings to
it (a null setting removes it) and reports what it had before as `previous_config` with
its outcome, so a rollback restores what the till really had.

It never creates or retries jobs: it answers the deliveries it is given, once each (a
restart finds finished ones gone from its mailbox). It logs one summary line a minute, and
the demo story's turns, never a line per request.

    python manage.py simulate_fleet --devices 20 --base-url http://127.0.0.1:8000
    python manage.py simulate_fleet --demo --base-url http://127.0.0.1:8000
"""

import contextlib
import fcntl
import heapq
import itertools
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
import zoneinfo
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device, DeviceCredential
from devices_app.services import device_credential_issue, device_update
from jobs_app import demo_scenario


class CredentialStore:
    """device_id -> secret, in a JSON file only its owner can read (0600), written atomically.
    Shared by the simulators of one database (run.sh starts an HTTP and an MQTT one at once):
    `locked()` serialises read-check-issue-write, so two never issue for the same device."""

    def __init__(self, path: Path):
        self.path = path
        self.secrets: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        try:
            self.secrets = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.secrets = {}

    @contextlib.contextmanager
    def locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.reload()
            yield
        finally:
            os.close(fd)  # releases the lock

    def usable(self, device_ids: list[str]) -> dict[str, str]:
        """The stored secrets that still authenticate as their device: ONE query for all."""
        stored = {d: self.secrets[d] for d in device_ids if d in self.secrets}
        hashes = {DeviceCredential.hash_key(secret): d for d, secret in stored.items()}
        valid = DeviceCredential.objects.filter(key_hash__in=list(hashes), revoked_at=None).values_list(
            "key_hash", "device__device_id"
        )
        return {device: stored[device] for key_hash, device in valid if hashes[key_hash] == device}

    def save(self, secrets: dict[str, str]) -> None:
        self.secrets.update(secrets)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(self.secrets, handle, indent=1, sort_keys=True)
        os.chmod(temporary, 0o600)  # also when the file existed with looser permissions
        os.replace(temporary, self.path)


def credentials_for(devices: list[Device], store: CredentialStore) -> tuple[dict[str, str], int]:
    """Each device's secret: the stored one while it authenticates, else a new one (issued
    through the audited service, which revokes the old). Returns (secrets, how many issued)."""
    with store.locked():
        secrets = store.usable([d.device_id for d in devices])
        missing = [d for d in devices if d.device_id not in secrets]
        issued = {d.device_id: device_credential_issue(actor=None, device=d)[1] for d in missing}
        if issued:
            store.save(issued)
    return secrets | issued, len(issued)


class FailShare:
    """Fails an exact share of each job's deliveries that the simulator answers, spread over
    them (the k-th answer of a job fails when k * share passes a whole number): with
    --fail-share 0.3, 3 of every 10 answers of a change fail, the canary's as much as the
    fleet's, so a bad change can be shown stopping after its canary. Shared by the
    terminals' threads."""

    def __init__(self, share: float):
        self.share = share
        self.answered: Counter = Counter()
        self.lock = threading.Lock()

    def fails(self, job_id) -> bool:
        if not self.share:
            return False
        with self.lock:
            self.answered[job_id] += 1
            k = self.answered[job_id]
        return math.floor(k * self.share + 1e-9) > math.floor((k - 1) * self.share + 1e-9)


class Terminal(threading.Thread):
    def __init__(self, device, secret, options, stats, stop):
        super().__init__(daemon=True, name=device.device_id)
        self.device_id, self.secret, self.options, self.stats, self.stop = (
            device.device_id,
            secret,
            options,
            stats,
            stop,
        )
        self.site_id = device.site.site_id
        self.device_type, self.status = device.device_type, device.status
        self.version = device.firmware_version
        self.config = TillConfig(device)
        self.polls = device.push_channel == "poll"
        self.rng = random.Random(device.device_id)  # noqa: S311 - simulation, not security
        self.lock = options["stats_lock"]

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def call(self, method, path, body=None):
        request = urllib.request.Request(  # noqa: S310 - the operator's own base URL
            self.options["base_url"].rstrip("/") + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Device {self.secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def every(self, name: str) -> float:
        """Seconds until the next `name` (poll, heartbeat, health): its interval, +-25 %."""
        return self.options[f"{name}_interval"] * self.rng.uniform(0.75, 1.25)

    def run(self):
        now = time.monotonic()
        # Spread the fleet's first reports over an interval, as terminals booted at random.
        due = {"poll": now if self.polls else math.inf}
        for name in ("heartbeat", "health"):
            interval = self.options[f"{name}_interval"]
            due[name] = now + self.rng.uniform(0, interval) if interval else math.inf
        while not self.stop.is_set():
            if self.options["demo"] and demo_scenario.in_outage(self.site_id, timezone.now()):
                self.stop.wait(1)  # the store's network is down: nothing gets through
                continue
            for name in ("poll", "heartbeat", "health"):
                if time.monotonic() < due[name]:
                    continue
                try:
                    getattr(self, name)()
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    self.count("errors")
                    # By kind too (HTTP status or exception), so a run says what failed.
                    self.count(f"errors_{getattr(exc, 'code', None) or type(exc).__name__}")
                    if self.options["verbosity"] > 1:
                        print(f"{self.device_id}: {name}: {exc}")
                due[name] = time.monotonic() + self.every(name)
            # At most a second: the outage check above runs on the wall clock.
            self.stop.wait(min(1.0, max(0.0, min(due.values()) - time.monotonic())))

    def poll(self):
        for command in self.call("GET", "/api/v1/agent/commands")["commands"]:
            self.handle(command)

    def heartbeat(self):
        self.call("POST", "/api/v1/agent/heartbeat", {})
        self.count("heartbeats")

    def health(self):
        report = demo_scenario.health_report(
            device_id=self.device_id,
            device_type=self.device_type,
            status=self.status,
            version=self.version,
            now=timezone.now(),
            rng=self.rng,
        )
        self.call("POST", "/api/v1/agent/health", report)
        self.count("health_reports")

    def handle(self, command):
        delivery = command["delivery_id"]
        if command["status"] == "sent":
            if busy(self.rng, self.options, command):
                self.call("POST", f"/api/v1/agent/deliveries/{delivery}/defer", defer_body(self.options))
                self.count("deferred")
                return
            if self.call("POST", f"/api/v1/agent/deliveries/{delivery}/ack")["status"] == "cancelled":
                return
            self.count("acknowledged")
        time.sleep(self.options["work_seconds"] * self.rng.uniform(0.5, 1.5))
        failing = self.options["fail_share"].fails(command.get("job_id"))
        if failing or self.rng.random() < self.options["failure_rate"]:
            body = {"status": "failed", "error": "simulated failure", "details": {"simulated": True}}
            self.count("failed")
        else:
            previous = self.config.apply(command["action"], command.get("payload") or {})
            self.version = self.config.version  # reported with the next health report
            body = {
                "status": "completed",
                "details": {"applied": command["action"]},
                "previous_config": previous,
            }
            self.count("completed")
        self.call("POST", f"/api/v1/agent/deliveries/{delivery}/result", body)


class TillConfig:
    """A terminal's own settings (from the device's `config`) and software version: applies a
    job's work and says what it replaced (`previous_config`), for config jobs and software
    updates; None for work that changes no setting."""

    CONFIG_ACTIONS = ("update_config", "update_pos_payment_config")

    def __init__(self, device):
        self.settings = dict(device.config or {})
        self.version = device.firmware_version

    def apply(self, action: str, payload: dict) -> dict | None:
        if action in self.CONFIG_ACTIONS:
            previous = {key: self.settings.get(key) for key in payload}
            for key, value in payload.items():
                if value is None:
                    self.settings.pop(key, None)
                else:
                    self.settings[key] = value
            return previous
        if action == "software_update" and isinstance(payload.get("version"), str):
            previous = {"version": self.version or None}
            self.version = payload["version"]
            return previous
        return None


def busy(rng: random.Random, options: dict, command: dict) -> bool:
    """A sale in progress: defer this offer (never one the server forces)."""
    return not command.get("force") and rng.random() < options["defer_prob"]


def defer_body(options: dict) -> dict:
    return {"delay_seconds": options["defer_seconds"], "reason": "sale in progress"}


MAX_CONNECTIONS = 200


class MqttFleet:
    """MQTT terminals: one broker connection per --per-connection devices (a real terminal
    has its own; sharing keeps thousands of them in one process). Each acknowledges a
    command at once and reports its outcome --work-seconds later, from one scheduler thread.
    A delivery pushed again after it was taken is acknowledged again but not worked on
    (counted `repeated`; `received` counts every deliver message)."""

    def __init__(self, devices, options, stats, secrets=None):
        """`secrets` (device_id -> credential), when the broker wants logins: each terminal
        then connects as itself (client id and username its device_id), one connection each."""
        from jobs_app.channels.mqtt import connect

        self.options, self.stats, self.rng = options, stats, random.Random(0)  # noqa: S311
        self.configs = {d.device_id: TillConfig(d) for d in devices}
        self.work: dict = {}  # delivery -> (action, payload), until reported
        device_ids = [d.device_id for d in devices]
        self.cancelled: set = set()  # deliveries the server told us to drop
        # Deliveries taken (acknowledged and worked on), so a repeated push is not acted on
        # twice; one int each, about 100 bytes, a few MB for a 100,000-terminal run.
        self.acted: set = set()
        self.due: list = []  # heap of (when, sequence, client, device_id, delivery, failing)
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
        self.stats["received"] += 1
        if delivery in self.acted:
            # The same push again (docs/jobs.md "Delivery guarantee"): acknowledge again in
            # case the first ack was lost, but do not do the work twice.
            client.publish(events, json.dumps({"delivery_id": delivery, "event": "ack"}), qos=1)
            self.stats["repeated"] += 1
            return
        if busy(self.rng, self.options, command):
            deferral = {"delivery_id": delivery, "event": "defer", **defer_body(self.options)}
            client.publish(events, json.dumps(deferral), qos=1)
            self.stats["deferred"] += 1
            return
        client.publish(events, json.dumps({"delivery_id": delivery, "event": "ack"}), qos=1)
        self.acted.add(delivery)
        self.stats["acknowledged"] += 1
        self.work[delivery] = (command.get("action"), command.get("payload") or {})
        when = time.monotonic() + self.options["work_seconds"] * self.rng.uniform(0.5, 1.5)
        failing = self.options["fail_share"].fails(command.get("job_id"))
        with self.wake:
            heapq.heappush(self.due, (when, next(self.sequence), client, device_id, delivery, failing))
            self.wake.notify()

    def report_when_due(self):
        while True:
            with self.wake:
                while not self.stopping and (not self.due or self.due[0][0] > time.monotonic()):
                    self.wake.wait(timeout=(self.due[0][0] - time.monotonic()) if self.due else None)
                if self.stopping:
                    return
                _when, _seq, client, device_id, delivery, failing = heapq.heappop(self.due)
            action, payload = self.work.pop(delivery, (None, {}))
            if delivery in self.cancelled:
                continue
            failed = failing or self.rng.random() < self.options["failure_rate"]
            result = {
                "delivery_id": delivery,
                "event": "result",
                "status": "failed" if failed else "completed",
            }
            if failed:
                result["error"] = "simulated failure"
            else:
                result["previous_config"] = self.configs[device_id].apply(action, payload)
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
        parser.add_argument(
            "--demo",
            action="store_true",
            help="Play the demo chain: every device meant to be alive, heartbeats and health "
            "reports included, with the demo's staged story (jobs_app/demo_scenario.py). "
            "Ignores --devices.",
        )
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--poll-interval", type=float, default=2.0, help="Seconds between polls.")
        parser.add_argument(
            "--heartbeat-interval",
            type=float,
            help="Seconds between heartbeats (default: 30 with --demo, else none).",
        )
        parser.add_argument(
            "--health-interval",
            type=float,
            help="Seconds between health reports (default: 300 with --demo, else none).",
        )
        parser.add_argument("--work-seconds", type=float, default=1.0, help="Time to apply a job.")
        parser.add_argument(
            "--failure-rate", type=float, default=0.0, help="0..1: chance that an answer is a failure."
        )
        parser.add_argument(
            "--fail-share",
            type=float,
            default=0.0,
            help="0..1: fail exactly this share of each job's deliveries, spread evenly (3 of every "
            "10 with 0.3): a bad change, to show waves stopping it after the canary.",
        )
        parser.add_argument(
            "--defer-prob",
            type=float,
            default=0.0,
            help='0..1: chance a till is busy and answers an offer with "defer" (sale in progress).',
        )
        parser.add_argument(
            "--defer-seconds", type=int, default=5, help="The delay a busy till asks for (seconds)."
        )
        parser.add_argument(
            "--duration", type=float, default=0, help="Stop after this many seconds (0: never)."
        )
        parser.add_argument(
            "--credentials-file",
            help="Where the terminals' credentials are kept between runs "
            "(default: var/simulator/<database name>.json, mode 0600).",
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
        if not 0 <= options["fail_share"] <= 1:
            raise CommandError("--fail-share is a share between 0 and 1.")
        options["fail_share"] = FailShare(options["fail_share"])
        if not 0 <= options["defer_prob"] <= 1:
            raise CommandError("--defer-prob is a probability between 0 and 1.")
        if options["defer_seconds"] < 1:
            raise CommandError("--defer-seconds is at least 1.")
        for name, demo_default in (("heartbeat_interval", 30.0), ("health_interval", 300.0)):
            if options[name] is None:
                options[name] = demo_default if options["demo"] else 0.0
        options["stats_lock"] = threading.Lock()
        store = CredentialStore(
            Path(
                options["credentials_file"]
                or Path(settings.BASE_DIR) / "var" / "simulator" / f"{connection.settings_dict['NAME']}.json"
            )
        )
        devices = Device.objects.select_related("site")
        if options["site"]:
            devices = devices.filter(site__site_id=options["site"])
        if options["demo"] and options["channel"] == "poll":
            devices = self._demo_devices(devices, store)
        else:
            if options["adopt"]:
                self._adopt(devices, options["channel"], options["devices"])
            devices = list(
                devices.filter(push_channel=options["channel"]).order_by("id")[: options["devices"]]
            )
        if not devices:
            raise CommandError(f"No {options['channel']} devices to simulate.")
        stats = Counter(
            acknowledged=0, deferred=0, completed=0, failed=0, cancelled=0, errors=0, received=0, repeated=0
        )
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
                secrets, _issued = credentials_for(devices, store)
            fleet = MqttFleet(devices, options, stats, secrets)
            self.stdout.write(f"Simulating {len(devices)} MQTT terminals")
            self._run_for(options["duration"], stats, options)
            fleet.close()
            self.stdout.write(json.dumps(stats))
            return
        secrets, issued = credentials_for(devices, store)
        terminals = [Terminal(device, secrets[device.device_id], options, stats, stop) for device in devices]
        self.stdout.write(
            f"Simulating {len(terminals)} terminals against {options['base_url']} "
            f"({len(terminals) - issued} stored credentials reused, {issued} issued; {store.path})"
        )
        for terminal in terminals:
            terminal.start()
        try:
            self._run_for(options["duration"], stats, options)
        finally:
            stop.set()
            for terminal in terminals:
                terminal.join(timeout=15)
        self.stdout.write(json.dumps(stats))

    def _demo_devices(self, devices, store: CredentialStore) -> list[Device]:
        """The devices the demo means to be alive: online, in error or in maintenance at an
        open store, plus those played before (a store in its staged outage when the
        simulator restarts is offline, and must come back)."""
        alive = Q(status__in=[DeviceStatus.ONLINE, DeviceStatus.ERROR, DeviceStatus.MAINTENANCE])
        played_before = Q(device_id__in=list(store.secrets))
        return list(devices.filter((alive & Q(site__is_active=True)) | played_before).order_by("id"))

    def _adopt(self, devices, channel: str, wanted: int) -> None:
        """Switch the lowest-id devices to `channel` until `wanted` use it (a re-run finds
        them already switched and changes nothing)."""
        missing = wanted - devices.filter(push_channel=channel).count()
        if missing <= 0:
            return
        for device in devices.exclude(push_channel=channel).order_by("id")[:missing]:
            device_update(actor=None, device=device, push_channel=channel)
            self.stdout.write(f"{device.device_id} now uses {channel}")

    def _window_turns(self, before: set[int] | None) -> set[int] | None:
        """The demo's stores living in their own time zones: say which stores' maintenance
        windows are open (at start) or have opened or closed since `before` (each minute),
        with the store's local time. One set-based statement (sites_app.windows)."""
        from sites_app.models import Site
        from sites_app.windows import open_site_ids

        if connection.vendor != "postgresql":
            return None
        now = open_site_ids()
        sites = {site.pk: site for site in Site.objects.filter(is_active=True)}
        now = {pk for pk in now if pk in sites}
        changed = sorted(now ^ before, key=lambda pk: sites[pk].site_id) if before is not None else []
        stamp = f"{timezone.now():%H:%M:%S}"
        if before is None:
            self.stdout.write(f"{stamp} demo: maintenance windows open at {len(now)} of {len(sites)} stores")
        for pk in changed:
            site = sites[pk]
            local = timezone.now().astimezone(zoneinfo.ZoneInfo(site.timezone))
            state = "opens" if pk in now else "closes"
            self.stdout.write(
                f"{stamp} demo: {site.site_id}'s maintenance window {state} ({local:%H:%M} {site.timezone})"
            )
        return now

    def _run_for(self, duration: float, stats: Counter, options: dict) -> None:
        """Wait, writing one summary line a minute (and the demo story's turns)."""
        started = last_report = time.monotonic()
        reported: Counter = Counter(stats)
        outage = None
        open_sites = self._window_turns(None) if options["demo"] else None
        try:
            while not duration or time.monotonic() - started < duration:
                time.sleep(0.2)
                if options["demo"]:
                    now = timezone.now()
                    down = demo_scenario.in_outage(demo_scenario.OUTAGE_SITE, now)
                    if down != outage and (outage is not None or down):
                        state = "loses its network" if down else "is back online"
                        self.stdout.write(f"{now:%H:%M:%S} demo: {demo_scenario.OUTAGE_SITE} {state}")
                    outage = down
                if time.monotonic() - last_report >= 60:
                    with options["stats_lock"]:
                        current = Counter(stats)
                    delta = {name: current[name] - reported[name] for name in current}
                    line = ", ".join(f"{n} {name}" for name, n in delta.items() if n)
                    self.stdout.write(f"{timezone.now():%H:%M:%S} last minute: {line or 'nothing'}")
                    reported, last_report = current, time.monotonic()
                    if options["demo"]:
                        open_sites = self._window_turns(open_sites)
        except KeyboardInterrupt:
            pass
