"""The short version of the multi-host proof (bench/multihost.py, docs/performance.md):
two application hosts as network namespaces behind HAProxy, PostgreSQL behind PgBouncer in
transaction mode, Redis and Mosquitto on a database host, simulated terminals on a load
host; one job to every device, heartbeats through the load balancer, and the application host
whose beat leads killed (SIGKILL to all its processes, network cut) mid-run, then revived.

Runs where namespaces can be made (root with `ip`; CI here runs as root and scripts/test.sh
installs the servers), skipped with the reason elsewhere. About two minutes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(BASE_DIR / "bench"))

import multihost  # noqa: E402  (bench/multihost.py)

BEAT_LOCK_SECONDS = 6


def _why_not_here() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)  # noqa: S607
    if probe.returncode:
        return f"`ip netns` is not allowed here: {probe.stderr.strip()}"
    return None


pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(_why_not_here() is not None, reason=f"multi-host proof: {_why_not_here()}"),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    missing = multihost.missing_tools()
    assert not missing, f"scripts/test.sh installs these; missing: {missing}"
    out = tmp_path_factory.mktemp("multihost") / "report.json"
    result = subprocess.run(  # noqa: S603 (fixed arguments)
        [
            sys.executable,
            str(BASE_DIR / "bench" / "multihost.py"),
            *("--app-hosts", "2", "--devices", "2000", "--web-workers", "2"),
            # A tenth of the fleet polls over HTTP (every 15 s), the rest is on MQTT; heartbeats
            # at half the fleet's rate: what two cores shared with everything else carry.
            *("--poll-share", "0.1", "--poll-interval", "15", "--heartbeat-scale", "0.5"),
            *("--kill-after", "12", "--revive-after", "15", "--settle", "5"),
            *("--ttl", "120", "--job-timeout", "240", "--beat-lock-seconds", str(BEAT_LOCK_SECONDS)),
            *("--json", str(out)),
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), f"the proof did not finish:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(out.read_text())


def test_every_delivery_ends_final_and_the_job_completes(report):
    deliveries = report["deliveries"]
    assert sum(deliveries.values()) == report["devices"] == 2000
    assert not {"pending", "sent", "acknowledged"} & set(deliveries), deliveries
    assert report["job_status"] == "completed", deliveries
    # No terminal was pushed the same work twice.
    assert report["checks"]["each_push_received_once"], report["terminal_answers"]


def test_no_heartbeat_answered_2xx_is_lost(report):
    heartbeats = report["heartbeats"]
    assert heartbeats["answered_2xx"] > 0.5 * heartbeats["sent"], heartbeats
    assert heartbeats["acknowledged_but_lost"] == 0, heartbeats


def test_the_killed_hosts_beat_led_and_another_took_over_within_the_bound(report):
    assert report["fault"]["was_beat_leader"]
    failover = report["beat_failover"]
    assert failover["to"] != report["fault"]["host"]
    # The lock's lifetime plus one tick (a fifth of it), and a second of slack on a busy machine.
    assert failover["first_send_after_seconds"] <= BEAT_LOCK_SECONDS * 1.2 + 2, failover


def test_the_audit_chain_stays_verifiable_with_writers_on_several_hosts(report):
    assert report["audit_chain_intact"]


def test_nothing_is_left_behind(report):
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # noqa: S607
    assert "hpmh" not in namespaces
    assert not Path(report["workdir"]).exists()
