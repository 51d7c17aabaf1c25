"""What the demo's simulated terminals say about themselves (`simulate_fleet --demo`).

The demo chain (fixtures/demo.json) stages a few faults; the simulator plays the rest of the
chain as a healthy one trading today, and these few changes over time, on the wall clock (so
whoever opens the demo, whenever, sees the same story within the hour):

- **A store losing its network**: Riverside Commons (`OUTAGE_SITE`) goes silent from minute
  `OUTAGE_MINUTES[0]` to `OUTAGE_MINUTES[1]` of every hour (UTC). The sweep takes its
  terminals offline after interval + grace, a `site_offline` alert opens five minutes later and
  is notified, and it resolves once the store is back.
- **A printer degrading**: the food court's receipt printer (`PRINTER`) runs low on paper over
  each two hours (`degraded`, slower answers) until someone refills it.
- **Maintenance and errors**: devices the fixture puts in maintenance (on the bench) report
  `degraded`; devices in `error` (their payment module, or a printer head, has failed: an
  operator set it) report `unhealthy` with the fault, and stay in error until an operator
  clears it. The offline devices of the fixture are not played: they stay offline.

Everything else reports `healthy`, busier at meal times, with the odd slow moment.
"""

import datetime
import random

OUTAGE_SITE = "site-789"
OUTAGE_MINUTES = (40, 52)  # of every hour, UTC: 12 minutes without network
PRINTER = "site-456-receipt-printer-1"
PRINTER_CYCLE_MINUTES = 120  # paper: fine for 50 minutes, low for 60, refilled
ERRORS = {
    "receipt_printer": "Printer head temperature out of range; printing suspended.",
    "default": "Payment module not responding (EMV kernel timeout after 3 retries).",
}


def in_outage(site_id: str, now: datetime.datetime) -> bool:
    """Whether the site has no network at `now` (wall clock, UTC)."""
    return site_id == OUTAGE_SITE and OUTAGE_MINUTES[0] <= now.minute < OUTAGE_MINUTES[1]


def health_report(
    *, device_id: str, device_type: str, status: str, version: str, now: datetime.datetime, rng: random.Random
) -> dict:
    """One health report body (POST /api/v1/agent/health) as this device would send it now."""
    health, error, paper = "healthy", "", "ok"
    if status == "error":
        health, error = "unhealthy", ERRORS.get(device_type, ERRORS["default"])
    elif status == "maintenance":
        health = "degraded"
    elif device_id == PRINTER and 50 <= (now.hour * 60 + now.minute) % PRINTER_CYCLE_MINUTES < 110:
        health, paper = "degraded", "low"
    elif rng.random() < 0.02:
        health = "degraded"  # a slow moment
    busy = 1.6 if now.hour in (11, 12, 13, 17, 18, 19) else 1.0  # lunch and dinner, roughly
    load = {"healthy": (8, 40), "degraded": (65, 90), "unhealthy": (85, 99)}[health]
    report = {
        "status": health,
        "response_time_ms": {
            "healthy": rng.randrange(40, 180),
            "degraded": rng.randrange(400, 1200),
            "unhealthy": rng.randrange(2500, 5000),
        }[health],
        "cpu_percent": round(min(99.0, rng.uniform(*load) * (busy if health == "healthy" else 1)), 1),
        "memory_percent": round(rng.uniform(35, 60) if health == "healthy" else rng.uniform(75, 96), 1),
        "disk_percent": round(rng.uniform(30, 70), 1),
        "app_version": version,
        "firmware_version": version,
        "error_message": error,
        "metrics": {},
    }
    if device_type == "pos_terminal":
        report["metrics"]["transactions_last_hour"] = int(rng.randrange(5, 60) * busy)
    if device_type == "receipt_printer":
        report["metrics"]["paper_level"] = paper
    return report
