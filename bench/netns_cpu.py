#!/usr/bin/env python3
"""CPU seconds spent by each kind of process of a multi-host run (bench/multihost.py), from
/proc, for as long as the run's namespaces exist:

    sudo .venv/bin/python bench/netns_cpu.py --tag hpmh32e4 --json var/cpu.json

Every --every seconds it lists the processes of every namespace named `<tag>-...` (`ip netns
pids`) and reads their user + system time; a process's last reading counts (one that ends
between two readings loses at most --every seconds of its CPU). CPU time is what a process
used, whatever else ran on the machine: it measures cost, not speed, so a loaded machine
inflates it only by cache and scheduling effects. Prints (and with --json writes) the seconds
per kind, the run's elapsed time and the average number of cores the run used; --timeline
writes every reading, so that a phase (a `--throughput` step's `window`) can be taken apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")

# First match of the command line wins.
KINDS = (
    ("gunicorn", "gunicorn"),
    ("celery worker", " worker"),
    ("celery beat", " beat"),
    ("mqtt bridge", "mqtt_bridge"),
    ("postgres", "postgres"),
    ("pgbouncer", "pgbouncer"),
    ("haproxy", "haproxy"),
    ("redis", "redis-server"),
    ("mosquitto", "mosquitto"),
    ("load: heartbeats", "multihost.py heartbeats"),
    ("load: polling terminals", "multihost.py poll-terminals"),
    ("load: capacity clients", "multihost.py capacity"),
    ("load: mqtt terminals", "simulate_fleet"),
)


def namespaces(tag: str) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # noqa: S607
    return [line.split()[0] for line in listing.splitlines() if line.startswith(f"{tag}-")]


def pids_of(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout  # noqa: S603, S607
    return [int(pid) for pid in out.split()]


def reading(pid: int) -> tuple[str, float] | None:
    """(command line, CPU seconds so far) of a live process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return command, (int(fields[11]) + int(fields[12])) / TICKS


def kind_of(command: str) -> str:
    for kind, needle in KINDS:
        if needle in command:
            return kind
    return "other"


def per_kind(readings: dict[int, tuple[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for command, seconds in readings.values():
        totals[kind_of(command)] = totals.get(kind_of(command), 0.0) + seconds
    return totals


def sample_until_gone(tag: str, every: float, timeline: Path | None) -> tuple[dict, float]:
    last: dict[int, tuple[str, float]] = {}
    started = time.monotonic()
    while not namespaces(tag):
        if time.monotonic() - started > 600:
            raise SystemExit(f"no namespace {tag}-... appeared")
        time.sleep(1)
    started = time.monotonic()
    while found := namespaces(tag):
        for ns in found:
            for pid in pids_of(ns):
                seen = reading(pid)
                if seen is not None and seen[0]:
                    last[pid] = seen
        if timeline is not None:
            # Cumulative seconds per kind at this moment: a phase's CPU is the difference.
            line = {"at": round(time.time(), 2), "cpu": {k: round(v, 2) for k, v in per_kind(last).items()}}
            with timeline.open("a") as f:
                f.write(json.dumps(line) + "\n")
        time.sleep(every)
    return per_kind(last), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", required=True)
    parser.add_argument("--every", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timeline", type=Path, help="also append every reading here (JSON lines)")
    args = parser.parse_args()
    totals, elapsed = sample_until_gone(args.tag, args.every, args.timeline)
    total = sum(totals.values())
    report = {
        "elapsed_seconds": round(elapsed, 1),
        "cpu_seconds": {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "cpu_seconds_total": round(total, 1),
        "cores_used_on_average": round(total / max(elapsed, 1e-9), 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
