#!/usr/bin/env python3
"""Build fixtures/demo.json: the demo chain of the database guide's "Demo Data Overview".

Copperleaf Kitchen, an invented restaurant chain: 14 sites across seven regions, 30 devices
(POS terminals numbered 1 to 5 within each site, plus card readers and receipt printers),
each site's trading hours (maintenance windows, in its own time zone, and blackout dates),
13 recent jobs in every status of the progression with their per-device deliveries, three
hours of health checks, a week of chart snapshots and the audit trail that tells how it all
got there. Every name, address and business is made up.

The file is static: its dates lead up to DEMO_NOW (2026-11-25 08:45 UTC), which its first row,
a DemoClock anchor, records. `manage.py loaddata demo` moves every date by (now - DEMO_NOW) as
it writes the rows (monitoring_app/demo_clock.py), so on any day the demo trades today: the
terminals meant to be online were seen seconds ago, and `manage.py simulate_fleet --demo`
keeps them so (docs/operations.md, "The demo").
Primary keys are explicit, so a second `manage.py loaddata demo` rewrites the same rows instead
of adding copies. Load it into an empty database: its audit rows (ids 1..n) start the audit
hash chain. Users are not part of the fixture (the run script creates the admin account):
every audited action here is the system's (actor null).

Run from the project root:  python scripts/build_demo_fixture.py
The output is deterministic: rebuilding without changes gives the same file byte for byte.
Needs the project's virtualenv: audit rows are hash-chained with the app's own function.
No database is touched.
"""

from __future__ import annotations

import json
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "fixtures" / "demo.json"
DEMO_NOW = datetime(2026, 11, 25, 8, 45, tzinfo=UTC)
CHAIN = "Copperleaf Kitchen"
GATEWAY_URL = "https://payments.example.com"
ONBOARDING_IMPORT = datetime(2026, 11, 3, 11, 0, tzinfo=UTC)

# site_id, name suffix, region, time zone, street address (invented towns), active,
# devices as (type, count); POS terminals are numbered 1..n within the site.
SITES = [
    ("site-123", "Harbor Point", "Northeast", "America/New_York", "1420 Wharf Street, Port Calder, ME",
     True, [("pos_terminal", 5), ("card_reader", 1), ("receipt_printer", 1)]),
    ("site-456", "Millbrook Plaza", "Northeast", "America/New_York", "88 Millbrook Plaza, Ashford Falls, NY",
     True, [("pos_terminal", 4), ("receipt_printer", 1)]),
    ("site-789", "Riverside Commons", "Midwest", "America/Chicago", "315 Riverside Drive, Kellan Rapids, MN",
     True, [("pos_terminal", 3), ("card_reader", 1)]),
    ("site-234", "Cedar Hollow", "Southeast", "America/New_York", "2207 Magnolia Avenue, Cedar Hollow, GA",
     True, [("pos_terminal", 2)]),
    ("site-345", "Prairie Gate", "Midwest", "America/Chicago", "47 Prairie Gate Road, Westerly Mills, KS",
     True, [("pos_terminal", 2)]),
    ("site-567", "Red Mesa", "Mountain", "America/Denver", "901 Canyon View Boulevard, Red Mesa Junction, CO",
     True, [("pos_terminal", 1)]),
    ("site-678", "Saguaro Crossing", "Southwest", "America/Phoenix", "6120 Saguaro Crossing, Dry Wells, AZ",
     True, [("pos_terminal", 1), ("card_reader", 1)]),
    ("site-890", "Bayfront", "Pacific", "America/Los_Angeles", "12 Bayfront Promenade, Seacliff Harbor, CA",
     True, [("pos_terminal", 1)]),
    ("site-901", "Evergreen Station", "Pacific", "America/Los_Angeles",
     "3300 Station Square, Evergreen Bluff, WA", True, [("pos_terminal", 1)]),
    ("site-112", "Lakeshore", "Midwest", "America/Detroit", "540 Lakeshore Avenue, Port Wendell, MI",
     True, [("pos_terminal", 1)]),
    ("site-223", "Gulf Landing", "South Central", "America/Chicago", "77 Pelican Way, Gulf Landing, TX",
     True, [("pos_terminal", 1)]),
    ("site-334", "Aurora Point", "Alaska & Hawaii", "America/Anchorage", "18 Glacier Road, Aurora Point, AK",
     True, [("pos_terminal", 1)]),
    ("site-445", "Kalena Bay", "Alaska & Hawaii", "Pacific/Honolulu", "250 Lanai Street, Kalena Bay, HI",
     True, [("pos_terminal", 1)]),
    ("site-556", "Pinecrest Airport", "Mountain", "America/Boise",
     "Concourse B, Pinecrest Regional Airport, Pinecrest, ID", False, [("pos_terminal", 1)]),
]  # fmt: skip

SITE_DESCRIPTIONS = {
    "site-123": "Flagship harbour-front restaurant with a takeaway counter and a bar.",
    "site-456": "Food-court unit in a regional shopping centre; busiest on weekends.",
    "site-789": "Riverside dine-in restaurant with a pay-at-table card reader.",
    "site-556": "Airport concourse unit, closed for renovation until January 2027.",
}

TYPE_LABELS = {
    "pos_terminal": ("POS Terminal", "pos-terminal"),
    "card_reader": ("Card Reader", "card-reader"),
    "receipt_printer": ("Receipt Printer", "receipt-printer"),
}
# Per-type host numbers on the store LAN and the middle octets of the MAC addresses.
IP_BASE = {"pos_terminal": 10, "card_reader": 40, "receipt_printer": 60}
MAC_FAMILY = {"pos_terminal": 0x11, "card_reader": 0x22, "receipt_printer": 0x33}

# The devices whose state is not "online, on the current firmware" (the rest are).
# device_id -> (status, firmware or None for the default, minutes since the status began or
# None). The staged faults: offline terminals (silent since last_seen; the sweep took them
# offline three minutes later), devices in `error` (set by an operator; they still answer),
# maintenance. Every other device is alive: the fleet simulator keeps it so (--demo).
DEVICE_STATES = {
    "site-123-pos-terminal-4": ("maintenance", None, 95),
    "site-123-receipt-printer-1": ("error", None, 12),
    "site-456-pos-terminal-3": ("offline", "4.2.0", 60 * 31),
    "site-234-pos-terminal-2": ("error", None, 25),
    "site-345-pos-terminal-1": ("online", "4.2.0", None),
    "site-345-pos-terminal-2": ("offline", "4.2.0", 60 * 52),
    "site-567-pos-terminal-1": ("online", "4.1.7", None),  # its 4.2.1 update failed
    "site-678-card-reader-1": ("offline", None, 60 * 27),
    "site-678-pos-terminal-1": ("online", "4.2.0", None),
    "site-890-pos-terminal-1": ("online", "4.2.0", None),
    "site-112-pos-terminal-1": ("error", None, 40),
    "site-334-pos-terminal-1": ("offline", "4.1.7", 60 * 80),
    "site-445-pos-terminal-1": ("unknown", None, None),  # registered yesterday, not yet online
    "site-556-pos-terminal-1": ("maintenance", "4.1.7", 60 * 20),  # its store is closed
}
# Latest health where it is not what the status implies (CURRENT_HEALTH): the food court's
# printer is running low on paper (the simulator carries on: it degrades, is refilled, ...).
HEALTH_OVERRIDES = {"site-456-receipt-printer-1": "degraded"}
# Terminals that take their work over MQTT (the rest poll): stores with no work in flight, so
# without a broker nothing waits on them. Heartbeats and health reports are HTTP for all.
MQTT_DEVICES = {"site-567-pos-terminal-1", "site-678-pos-terminal-1", "site-890-pos-terminal-1"}
SWEEP_AFTER = timedelta(minutes=3)  # interval + grace: when the sweep noticed a silent device
DEFAULT_FIRMWARE = {"pos_terminal": "4.2.1", "card_reader": "2.8.3", "receipt_printer": "1.5.0"}

SITE_AUDITED = ("site_id", "name", "description", "location", "region", "timezone", "is_active")
DEVICE_AUDITED = (
    "device_id", "name", "device_type", "site", "status", "ip_address", "mac_address",
    "firmware_version", "config",
)  # fmt: skip


def iso(moment: datetime) -> str:
    """Aware UTC as Django's serializer writes it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_sites() -> list[dict]:
    onboarding = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    rows = []
    for pk, (site_id, suffix, region, tz, location, active, _) in enumerate(SITES, start=1):
        created = onboarding + timedelta(minutes=3 * pk)
        updated = datetime(2026, 11, 16, 17, 30, tzinfo=UTC) if not active else created
        description = SITE_DESCRIPTIONS.get(site_id, f"{CHAIN} restaurant in the {region} region.")
        rows.append(
            {
                "model": "sites_app.site",
                "pk": pk,
                "fields": {
                    "site_id": site_id,
                    "name": f"{CHAIN} {suffix}",
                    "description": description,
                    "location": location,
                    "region": region,
                    "timezone": tz,
                    "is_active": active,
                    "created_at": iso(created),
                    "updated_at": iso(updated),
                },
            }
        )
    return rows


ALIVE = ("online", "error", "maintenance")  # statuses of devices that still answer


def is_alive(status: str, site_active: bool) -> bool:
    """A device the demo keeps reporting: online, in error (its payment module, not its
    network) or in maintenance on the bench, at a store that is open."""
    return status in ALIVE and site_active


def device_times(pk: int, status: str, minutes: int | None, alive: bool, created: datetime) -> dict:
    """last_seen (seconds ago for the living, so the first sweep after loading finds them
    fresh) and connectivity_changed_at (when the current status began)."""
    if status == "unknown":
        return {"last_seen": None, "connectivity_changed_at": None}
    since = DEMO_NOW - timedelta(minutes=minutes) if minutes is not None else created
    if status == "offline":
        return {"last_seen": since, "connectivity_changed_at": since + SWEEP_AFTER}
    last_seen = DEMO_NOW - timedelta(seconds=5 + (pk * 13) % 50) if alive else since
    return {"last_seen": last_seen, "connectivity_changed_at": since}


def mac_address(device_type: str, site_pk: int, number: int) -> str:
    """Canonical form (upper-case, colons), as the guide's scripts number them."""
    return f"00:1B:44:{MAC_FAMILY[device_type]:02X}:{site_pk:02X}:{number:02X}"


def device_config(site_id: str, site_pk: int, site_name: str, device_type: str, number: int) -> dict:
    store = site_id.replace("site-", "store-")
    if device_type == "pos_terminal":
        return {
            "gateway_url": GATEWAY_URL,
            "merchant_id": f"CLK-{site_id[5:]:0>6}",
            "store_id": store,
            "terminal_id": f"T{site_pk:02d}-{number:02d}",
            "currency": "USD",
            "receipt_header": site_name,
            "contactless_limit": 100,
            "tip_prompt": True,
        }
    paired = f"{site_id}-pos-terminal-1"
    if device_type == "card_reader":
        return {"paired_terminal": paired, "contactless": True, "pin_timeout_s": 30, "store_id": store}
    return {"paired_terminal": paired, "paper_width_mm": 80, "auto_cut": True, "store_id": store}


def build_devices(sites: list[dict]) -> list[dict]:
    rows = []
    pk = 0
    for site_row, (site_id, *_rest, devices) in zip(sites, SITES, strict=True):
        site_pk = site_row["pk"]
        site_name = site_row["fields"]["name"]
        site_active = site_row["fields"]["is_active"]
        for device_type, count in devices:
            label, slug = TYPE_LABELS[device_type]
            for number in range(1, count + 1):
                pk += 1
                device_id = f"{site_id}-{slug}-{number}"
                status, firmware, minutes = DEVICE_STATES.get(device_id, ("online", None, None))
                # Onboarding imported the chain's terminals in one go; the two "unknown" devices
                # were registered one by one yesterday and have not reported yet.
                created = ONBOARDING_IMPORT + timedelta(seconds=pk)
                if status == "unknown":
                    created = datetime(2026, 11, 24, 15, 10 + pk, tzinfo=UTC)
                times = device_times(pk, status, minutes, is_alive(status, site_active), created)
                last_seen = times["last_seen"]
                rows.append(
                    {
                        "model": "devices_app.device",
                        "pk": pk,
                        "fields": {
                            "device_id": device_id,
                            "name": f"{label} {number}",
                            "device_type": device_type,
                            "site": site_pk,
                            "status": status,
                            "ip_address": f"192.168.{site_pk}.{IP_BASE[device_type] + number}",
                            "mac_address": mac_address(device_type, site_pk, number),
                            "firmware_version": firmware or DEFAULT_FIRMWARE[device_type],
                            "config": device_config(site_id, site_pk, site_name, device_type, number),
                            "push_channel": "mqtt" if device_id in MQTT_DEVICES else "poll",
                            "last_seen": iso(last_seen) if last_seen else None,
                            "connectivity_changed_at": iso(times["connectivity_changed_at"])
                            if times["connectivity_changed_at"]
                            else None,
                            # Filled from the health history (build_health_checks).
                            "health_status": "",
                            "health_changed_at": None,
                            "last_health_at": None,
                            "created_at": iso(created),
                            "updated_at": iso(max(created, last_seen or created)),
                        },
                    }
                )
    return rows


def _payment_payload(site_id: str, limit: int) -> dict:
    return {
        "gateway_url": f"{GATEWAY_URL}/v2",
        "merchant_id": f"CLK-{site_id[5:]:0>6}",
        "contactless_limit": limit,
        "accepted_networks": ["visa", "mastercard", "amex", "discover"],
        "settlement_cutoff": "23:30",
    }


def _software_payload(version: str) -> dict:
    digest = f"{random.Random(version).getrandbits(256):064x}"
    return {"package": "copperleaf-pos", "version": version, "checksum": f"sha256:{digest}", "reboot": True}


# site_id, action, priority, status, description, payload, created (UTC), minutes to start and to
# finish (None: not yet), and for an ended job the outcome its audit row records.
JOBS = [
    ("site-123", "update_pos_payment_config", "high", "completed",
     "Raise the contactless limit to 100 USD and move to the v2 payment gateway.",
     _payment_payload("site-123", 100), datetime(2026, 11, 18, 14, 5), 0.1, 3.6,
     "all 5 terminals applied the new payment configuration"),
    ("site-456", "update_pos_payment_config", "normal", "completed",
     "Move Millbrook Plaza terminals to the v2 payment gateway.",
     _payment_payload("site-456", 100), datetime(2026, 11, 19, 9, 30), 0.2, 4.1,
     "all 4 terminals applied the new payment configuration"),
    ("site-789", "software_update", "normal", "completed",
     "Deploy POS application 4.2.1 (tip prompt fix) before opening.",
     _software_payload("4.2.1"), datetime(2026, 11, 19, 7, 0), 0.1, 12.5,
     "3 terminals now run 4.2.1"),
    ("site-234", "software_update", "normal", "completed",
     "Deploy POS application 4.2.1 (tip prompt fix) before opening.",
     _software_payload("4.2.1"), datetime(2026, 11, 20, 7, 0), 0.1, 9.8,
     "2 terminals now run 4.2.1"),
    ("site-345", "restart_pos_app", "high", "completed",
     "Restart the POS application after the lunch-rush freeze reported by the store.",
     {"grace_period_s": 30, "reason": "application unresponsive"}, datetime(2026, 11, 21, 18, 42), 0.05, 1.2,
     "POS application restarted on 2 terminals"),
    ("site-567", "software_update", "normal", "failed",
     "Deploy POS application 4.2.1 (tip prompt fix) before opening.",
     _software_payload("4.2.1"), datetime(2026, 11, 21, 8, 0), 0.1, 6.3,
     "download failed its checksum twice; 4.1.7 stayed installed"),
    ("site-678", "update_pos_payment_config", "normal", "failed",
     "Move Saguaro Crossing to the v2 payment gateway.",
     _payment_payload("site-678", 100), datetime(2026, 11, 22, 16, 15), 0.2, 30.0,
     "terminal 1 rejected it: merchant id not yet enabled on the v2 gateway"),
    ("site-890", "update_config", "low", "cancelled",
     "Change the receipt footer for the holiday season.",
     {"receipt_footer": "Thank you for visiting Copperleaf Kitchen Bayfront!"},
     datetime(2026, 11, 22, 11, 0), None, 14.0,
     "the footer named the wrong store; withdrawn before sending"),
    ("site-123", "software_update", "high", "acknowledged",
     "Pilot POS application 4.2.2 (faster card-present checkout) at the flagship.",
     _software_payload("4.2.2"), datetime(2026, 11, 25, 8, 38), 0.1, None, None),
    ("site-901", "update_pos_payment_config", "normal", "paused",
     "Move Evergreen Station to the v2 payment gateway.",
     _payment_payload("site-901", 100), datetime(2026, 11, 25, 8, 20), 0.2, None,
     "Paused by the store manager until the evening shift change."),
    ("site-112", "restart_pos_app", "critical", "sent",
     "Restart the POS application: terminal reports a payment module error.",
     {"grace_period_s": 0, "reason": "payment module error"}, datetime(2026, 11, 25, 8, 36), 0.1, None, None),
    ("site-223", "update_pos_payment_config", "normal", "scheduled",
     "Move Gulf Landing to the v2 payment gateway after closing time.",
     _payment_payload("site-223", 100), datetime(2026, 11, 25, 8, 40), None, None, None),
    ("site-456", "health_check", "low", "queued",
     "On-demand health check of every Millbrook Plaza device.",
     {"checks": ["cpu", "memory", "disk", "printer"]}, datetime(2026, 11, 25, 8, 44), None, None, None),
]  # fmt: skip
JOB_OUTCOMES: dict[int, str] = {}  # job pk -> outcome, filled by build_jobs

# Which devices a job went to (its segment), by status. A finished job went to every POS
# terminal of its store, and its deliveries add up to its outcome. The running ones went to
# terminals the simulator plays, so they finish once the demo runs; the queued one is sent
# when the workers first start, to the store's online devices only. The paused, scheduled and
# cancelled ones have no deliveries yet (the cancelled one was withdrawn before sending).
JOB_SEGMENTS = {
    "completed": {"device_type": ["pos_terminal"]},
    "failed": {"device_type": ["pos_terminal"]},
    "acknowledged": {"device_type": ["pos_terminal"], "status": ["online"]},
    "sent": {"device_type": ["pos_terminal"]},
    "queued": {"status": ["online"]},
}
DELIVERED = ("completed", "failed", "acknowledged", "sent")  # job statuses with deliveries
FAILURES = {  # the error each failed job's terminal reported
    "site-567": "Package checksum mismatch after two downloads; 4.1.7 kept.",
    "site-678": "Gateway refused merchant CLK-000678: not enabled for v2.",
}


def build_jobs(site_pks: dict[str, int]) -> list[dict]:
    jobs = sorted(JOBS, key=lambda job: job[6])
    rows = []
    for pk, job in enumerate(jobs, start=1):
        site_id, action, priority, status, description, payload, created, start, finish, outcome = job
        # A paused job's outcome is why it is paused; a scheduled one starts after closing.
        reason = outcome if status == "paused" else ""
        if outcome and not reason:
            JOB_OUTCOMES[pk] = outcome
        created = created.replace(tzinfo=UTC)
        started = created + timedelta(minutes=start) if start is not None else None
        completed = created + timedelta(minutes=finish) if finish is not None else None
        updated = max(moment for moment in (created, started, completed) if moment)
        segment = JOB_SEGMENTS.get(status, {})
        rows.append(
            {
                "model": "jobs_app.job",
                "pk": pk,
                "fields": {
                    "site": site_pks[site_id],
                    "action": action,
                    "description": description,
                    "payload": payload,
                    "priority": priority,
                    "status": status,
                    "created_by": None,
                    "created_at": iso(created),
                    "updated_at": iso(updated),
                    "started_at": iso(started) if started else None,
                    "completed_at": iso(completed) if completed else None,
                    "status_reason": reason,
                    "scheduled_at": iso(created.replace(hour=23)) if status == "scheduled" else None,
                    "segment": segment,
                    "materialised_at": iso(started) if status in DELIVERED else None,
                },
            }
        )
    return rows


def build_deliveries(jobs: list[dict], devices: list[dict], site_ids: dict[int, str]) -> list[dict]:
    """One delivery per targeted device of every job that was sent out, in the state its job
    implies: a finished job's last delivery finished when the job did."""
    rows = []
    for job in jobs:
        fields = job["fields"]
        status = fields["status"]
        if status not in DELIVERED:
            continue
        segment = fields["segment"]
        targets = [
            device
            for device in devices
            if device["fields"]["site"] == fields["site"]
            and all(device["fields"][name] in allowed for name, allowed in segment.items())
        ]
        started = datetime.fromisoformat(fields["started_at"])
        finished = datetime.fromisoformat(fields["completed_at"]) if fields["completed_at"] else None
        for n, device in enumerate(targets):
            sent = started + timedelta(seconds=2 + n)
            acked = sent + timedelta(seconds=8 + 5 * n)
            done = finished - timedelta(seconds=20 * (len(targets) - 1 - n)) if finished else None
            delivery = {
                "job": job["pk"],
                "device": device["pk"],
                "site": fields["site"],
                "status": status,
                "attempts": 1,
                "last_error": "",
                "result": None,
                "created_at": iso(started),
                "sent_at": iso(sent),
                "acknowledged_at": iso(acked) if status != "sent" else None,
                "completed_at": iso(done) if status == "completed" else None,
                "failed_at": iso(done) if status == "failed" else None,
                "deadline": None,
            }
            if status == "completed":
                delivery["result"] = {"applied": fields["action"]}
            elif status == "failed":
                delivery["last_error"] = FAILURES[site_ids[fields["site"]]]
            rows.append({"model": "jobs_app.delivery", "fields": delivery})
    return [
        {"model": row["model"], "pk": pk, "fields": row["fields"]} for pk, row in enumerate(rows, start=1)
    ]


def _metrics(rng: random.Random, device: dict, health: str) -> dict:
    load = {"healthy": (8, 45), "degraded": (70, 92), "unhealthy": (88, 99)}[health]
    metrics = {
        "cpu_percent": round(rng.uniform(*load), 1),
        "memory_percent": round(rng.uniform(35, 60) if health == "healthy" else rng.uniform(75, 96), 1),
        "disk_percent": round(rng.uniform(30, 70), 1),
        "app_version": device["fields"]["firmware_version"],
        "uptime_seconds": rng.randrange(3_600, 1_900_000),
    }
    if device["fields"]["device_type"] == "pos_terminal":
        metrics["transactions_last_hour"] = rng.randrange(0, 140)
    if device["fields"]["device_type"] == "receipt_printer":
        metrics["paper_level"] = "low" if health != "healthy" else "ok"
    return metrics


ERRORS = {
    "error": "Payment module not responding (EMV kernel timeout after 3 retries).",
    "printer": "Printer head temperature out of range; printing suspended.",
    "offline": "Network degraded: payment gateway did not answer within 5 s.",
}


CURRENT_HEALTH = {
    "online": "healthy",
    "maintenance": "degraded",
    "error": "unhealthy",
    "offline": "unhealthy",
}


def _history(device: dict, alive: bool) -> list[tuple[datetime, str]]:
    """(checked_at, health) of a device's checks, oldest first, ending in its current state.

    The living report every 15 minutes over the last three hours, the latest a minute or two
    before they were last seen; a silent device has three checks, half an hour apart, ending
    when it went quiet."""
    fields = device["fields"]
    status, device_id = fields["status"], fields["device_id"]
    last_seen = datetime.fromisoformat(fields["last_seen"])
    if not alive:
        before = "degraded" if status in ("error", "offline") else "healthy"
        statuses = ["healthy", before, CURRENT_HEALTH[status]]
        return [(last_seen - timedelta(minutes=30 * (2 - n)), h) for n, h in enumerate(statuses)]
    latest = last_seen - timedelta(seconds=60 + (device["pk"] * 37) % 120)
    since = datetime.fromisoformat(fields["connectivity_changed_at"] or fields["created_at"])
    current = HEALTH_OVERRIDES.get(device_id, CURRENT_HEALTH[status])
    if device_id in HEALTH_OVERRIDES:
        since = DEMO_NOW - timedelta(minutes=45)  # the paper started running low
    history = []
    for n in range(12, -1, -1):
        checked_at = latest - timedelta(minutes=15 * n)
        if checked_at >= since:
            health = current
        elif checked_at >= since - timedelta(minutes=15) and status == "error":
            health = "degraded"  # the payment module was slow before it stopped
        elif (device["pk"] + n) % 11 == 0:
            health = "degraded"  # a busy moment in an otherwise healthy history
        else:
            health = "healthy"
        history.append((checked_at, health))
    return history


def build_health_checks(devices: list[dict], sites: list[dict]) -> list[dict]:
    """Every device that has ever reported has a history (unknown ones have not); the device
    rows get their latest health from it, as the ingest would have written it."""
    rng = random.Random(2026)
    active = {site["pk"]: site["fields"]["is_active"] for site in sites}
    rows = []
    for device in devices:
        fields = device["fields"]
        if not fields["last_seen"]:
            continue
        history = _history(device, is_alive(fields["status"], active[fields["site"]]))
        for checked_at, health in history:
            error = ""
            if health == "unhealthy":
                key = "printer" if fields["device_type"] == "receipt_printer" else fields["status"]
                error = ERRORS.get(key, ERRORS["error"])
            response = {
                "healthy": rng.randrange(40, 180),
                "degraded": rng.randrange(400, 1200),
                "unhealthy": None if fields["status"] == "offline" else rng.randrange(2500, 5000),
            }[health]
            rows.append(
                {
                    "model": "monitoring_app.healthcheck",
                    "fields": {
                        "device": device["pk"],
                        "status": health,
                        "response_time_ms": response,
                        "metrics": _metrics(rng, device, health),
                        "error_message": error,
                        "checked_at": iso(checked_at),
                    },
                }
            )
        latest_at, latest = history[-1]
        changed_at = latest_at
        for checked_at, health in reversed(history):
            if health != latest:
                break
            changed_at = checked_at
        fields.update(health_status=latest, last_health_at=iso(latest_at), health_changed_at=iso(changed_at))
    rows.sort(key=lambda row: (row["fields"]["checked_at"], row["fields"]["device"]))
    return [
        {"model": row["model"], "pk": pk, "fields": row["fields"]} for pk, row in enumerate(rows, start=1)
    ]


def _audit(event: str, created: datetime, description: str, **fields) -> dict:
    values = {
        "event_type": event,
        "actor": None,
        "actor_ref": "",
        "site": None,
        "site_ref": "",
        "device": None,
        "device_ref": "",
        "job": None,
        "description": description,
        "old_values": None,
        "new_values": None,
        "source_ip": None,
        "user_agent": "",
        "request_id": "",
        "created_at": iso(created),
    }
    values.update(fields)
    return {"model": "monitoring_app.auditlog", "fields": values}


def build_audit(sites: list[dict], devices: list[dict], jobs: list[dict]) -> list[dict]:
    rows = []
    site_by_pk = {site["pk"]: site["fields"] for site in sites}
    for site in sites:
        fields = site["fields"]
        created_values = {name: fields[name] for name in SITE_AUDITED} | {"is_active": True}
        rows.append(
            _audit(
                "site.created",
                datetime.fromisoformat(fields["created_at"]),
                f"Site {fields['site_id']} created",
                site=site["pk"],
                site_ref=fields["site_id"],
                new_values=created_values,
            )
        )
    # The chain's existing terminals arrived in one onboarding import; later devices one by one.
    imported = [device for device in devices if device["fields"]["status"] != "unknown"]
    rows.append(
        _audit(
            "devices.bulk_created",
            ONBOARDING_IMPORT + timedelta(minutes=1),
            f"Onboarding import: {len(imported)} devices at {len(sites)} sites",
            new_values={
                "devices": len(imported),
                "sites": len(sites),
                "source": "onboarding import (inventory spreadsheet)",
                "first_device_id": imported[0]["fields"]["device_id"],
                "last_device_id": imported[-1]["fields"]["device_id"],
            },
        )
    )
    for device in devices:
        fields = device["fields"]
        if fields["status"] == "unknown":
            created_values = {name: fields[name] for name in DEVICE_AUDITED}
            rows.append(
                _audit(
                    "device.created",
                    datetime.fromisoformat(fields["created_at"]),
                    f"Device {fields['device_id']} registered at {site_by_pk[fields['site']]['site_id']}",
                    site=fields["site"],
                    site_ref=site_by_pk[fields["site"]]["site_id"],
                    device=device["pk"],
                    device_ref=fields["device_id"],
                    new_values=created_values,
                )
            )
        elif fields["status"] in ("maintenance", "error"):
            # An operator's change (an integration's, for the payment module errors).
            rows.append(
                _audit(
                    "device.updated",
                    datetime.fromisoformat(fields["connectivity_changed_at"]),
                    f"Device {fields['device_id']} updated: status",
                    site=fields["site"],
                    site_ref=site_by_pk[fields["site"]]["site_id"],
                    device=device["pk"],
                    device_ref=fields["device_id"],
                    old_values={"status": "online"},
                    new_values={"status": fields["status"]},
                )
            )
    closed = next(site for site in sites if not site["fields"]["is_active"])
    rows.append(
        _audit(
            "site.updated",
            datetime.fromisoformat(closed["fields"]["updated_at"]),
            f"Site {closed['fields']['site_id']} updated: is_active",
            site=closed["pk"],
            site_ref=closed["fields"]["site_id"],
            old_values={"is_active": True},
            new_values={"is_active": False},
        )
    )
    finished_events = {"completed": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}
    for job in jobs:
        fields = job["fields"]
        site_ref = site_by_pk[fields["site"]]["site_id"]
        link = {"site": fields["site"], "site_ref": site_ref, "job": job["pk"]}
        rows.append(
            _audit(
                "job.created",
                datetime.fromisoformat(fields["created_at"]),
                f"Job #{job['pk']} ({fields['action']}) created for {site_ref}",
                new_values={
                    "action": fields["action"],
                    "priority": fields["priority"],
                    "status": "queued",
                    "site": fields["site"],
                    "payload": fields["payload"],
                },
                **link,
            )
        )
        event = finished_events.get(fields["status"])
        if event:
            before = "queued" if fields["status"] == "cancelled" else "acknowledged"
            rows.append(
                _audit(
                    event,
                    datetime.fromisoformat(fields["completed_at"]),
                    f"Job #{job['pk']} {fields['status']}: {JOB_OUTCOMES[job['pk']]}",
                    old_values={"status": before},
                    new_values={"status": fields["status"]},
                    **link,
                )
            )
    rows.sort(key=lambda row: row["fields"]["created_at"])
    rows = [
        {"model": row["model"], "pk": pk, "fields": row["fields"]} for pk, row in enumerate(rows, start=1)
    ]
    chain_audit_rows(rows)
    return rows


def chain_audit_rows(rows: list[dict]) -> None:
    """Fill prev_hash/row_hash as the app's audit writer would, so `verify_audit` passes on
    the loaded demo. Uses the app's own hash function: one definition of the format."""
    from monitoring_app.models import AuditLog, audit_row_hash
    from monitoring_app.services import GENESIS_HASH

    prev = GENESIS_HASH
    for row in rows:
        fields = row["fields"]
        entry = AuditLog(
            pk=row["pk"],
            **{name: value for name, value in fields.items() if name not in FOREIGN_KEYS},
            **{f"{name}_id": fields[name] for name in FOREIGN_KEYS},
        )
        entry.created_at = datetime.fromisoformat(fields["created_at"])
        entry.prev_hash = prev
        fields["prev_hash"] = prev
        fields["row_hash"] = prev = audit_row_hash(entry)


FOREIGN_KEYS = ("actor", "site", "device", "job")


def _state_at(device: dict, moment: datetime, checks: dict[int, list[tuple[str, str]]]) -> str | None:
    """What the rollup would have counted the device as at `moment` (None: not there yet)."""
    fields = device["fields"]
    if datetime.fromisoformat(fields["created_at"]) > moment:
        return None
    if fields["status"] == "unknown":
        return "unknown"
    since = fields["connectivity_changed_at"]
    if since and datetime.fromisoformat(since) <= moment and fields["status"] != "online":
        return {"error": "offline"}.get(fields["status"], fields["status"])
    health = "healthy"  # online: its latest health then (healthy before its history starts)
    for checked_at, status in checks.get(device["pk"], []):
        if checked_at <= iso(moment):
            health = status
    return health


def build_snapshots(sites: list[dict], devices: list[dict], health_checks: list[dict]) -> list[dict]:
    """The charts' rollup as the tick would have taken it: every 15 minutes over the last day,
    every hour over the week before (what the two charts read)."""
    checks: dict[int, list[tuple[str, str]]] = {}
    for row in health_checks:
        checks.setdefault(row["fields"]["device"], []).append(
            (row["fields"]["checked_at"], row["fields"]["status"])
        )
    day = [DEMO_NOW - timedelta(minutes=15 * n) for n in range(96)]
    week = [DEMO_NOW.replace(minute=0) - timedelta(hours=24 + n) for n in range(6 * 24 + 1)]
    rows = []
    for moment in sorted(day + week):
        for site in sites:
            counts = dict.fromkeys(
                ("total", "online", "offline", "maintenance", "healthy", "degraded", "unhealthy"), 0
            )
            for device in devices:
                if device["fields"]["site"] != site["pk"]:
                    continue
                state = _state_at(device, moment, checks)
                if state is None:
                    continue
                counts["total"] += 1
                if state in ("healthy", "degraded", "unhealthy"):
                    counts["online"] += 1
                if state in counts and state != "total":
                    counts[state] += 1
            rows.append(
                {
                    "model": "monitoring_app.fleetsnapshot",
                    "fields": {"site": site["pk"], "bucket_at": iso(moment), **counts},
                }
            )
    return [
        {"model": row["model"], "pk": pk, "fields": row["fields"]} for pk, row in enumerate(rows, start=1)
    ]


# Trading hours (maintenance windows, in each site's own time zone): when jobs that keep to
# them may reach the tills. Most stores take the guide's Mon-Sat 02:00-05:00, Sun 01:00-07:00;
# the late-night diners close later, the airport store never closes and has no window beyond a
# short one at dawn, and the mall store keeps no schedule at all (any time).
STANDARD_WEEK = [(day, "02:00", "05:00") for day in range(1, 7)] + [(7, "01:00", "07:00")]
LATE_NIGHT_WEEK = [(day, "23:30", "04:30") for day in range(1, 8)]  # past midnight, every night
WINDOWS = {
    "site-123": STANDARD_WEEK,
    "site-456": [],  # the food court: any time
    "site-789": STANDARD_WEEK,
    "site-234": LATE_NIGHT_WEEK,
    "site-345": STANDARD_WEEK,
    "site-567": STANDARD_WEEK,
    "site-678": LATE_NIGHT_WEEK,
    "site-890": STANDARD_WEEK,
    "site-901": [(day, "04:00", "05:00") for day in range(1, 8)],  # open around the clock
    "site-112": STANDARD_WEEK,
    "site-223": STANDARD_WEEK,
    "site-334": STANDARD_WEEK,
    "site-445": [(day, "03:00", "06:00") for day in range(1, 8)],
    "site-556": STANDARD_WEEK,
}
# Blackout dates (local calendar, both ends included): peak trading and holidays.
BLACKOUTS = [
    ("site-123", "2026-11-27", "2026-11-28", "Black Friday weekend"),
    ("site-456", "2026-11-27", "2026-11-28", "Black Friday weekend"),
    ("site-890", "2026-12-24", "2026-12-26", "Christmas"),
    ("site-901", "2026-12-24", "2026-12-26", "Christmas"),
    ("site-223", "2027-02-14", "2027-02-14", "Super Bowl Sunday"),
]


def build_schedules(site_pks: dict[str, int]) -> list[dict]:
    rows = []
    for site_id, week in WINDOWS.items():
        for weekday, starts, ends in week:
            rows.append(
                {
                    "model": "sites_app.maintenancewindow",
                    "pk": len(rows) + 1,
                    "fields": {"site": site_pks[site_id], "weekday": weekday, "starts": starts, "ends": ends},
                }
            )
    for pk, (site_id, starts_on, ends_on, reason) in enumerate(BLACKOUTS, start=1):
        rows.append(
            {
                "model": "sites_app.blackoutperiod",
                "pk": pk,
                "fields": {
                    "site": site_pks[site_id],
                    "starts_on": starts_on,
                    "ends_on": ends_on,
                    "reason": reason,
                },
            }
        )
    return rows


def demo_clock() -> dict:
    """The anchor, loaded first: the dates below lead up to DEMO_NOW (monitoring_app.demo_clock)."""
    return {
        "model": "monitoring_app.democlock",
        "pk": 1,
        "fields": {"built_at": iso(DEMO_NOW), "loaded_at": None, "shift": None},
    }


def build() -> list[dict]:
    sites = build_sites()
    devices = build_devices(sites)
    site_pks = {site["fields"]["site_id"]: site["pk"] for site in sites}
    jobs = build_jobs(site_pks)
    deliveries = build_deliveries(jobs, devices, {pk: site_id for site_id, pk in site_pks.items()})
    health_checks = build_health_checks(devices, sites)
    snapshots = build_snapshots(sites, devices, health_checks)
    audit = build_audit(sites, devices, jobs)
    schedules = build_schedules(site_pks)
    return (
        [demo_clock()] + sites + schedules + devices + jobs + deliveries + health_checks + snapshots + audit
    )


def setup_django() -> None:
    sys.path.insert(0, str(OUTPUT.parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")
    # Nothing is signed here (the script only hashes rows), so any key will do.
    os.environ.setdefault("SECRET_KEY", "build-demo-fixture")
    import django

    django.setup()


def main() -> None:
    setup_django()
    rows = build()
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["model"]] = counts.get(row["model"], 0) + 1
    print(f"Wrote {OUTPUT}: " + ", ".join(f"{n} {model}" for model, n in counts.items()))


if __name__ == "__main__":
    main()
