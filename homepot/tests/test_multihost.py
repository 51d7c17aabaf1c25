"""The short version of the multi-host proof (bench/multihost.py, docs/performance.md):
two application hosts as network namespaces behind HAProxy, PostgreSQL behind PgBouncer in
transaction mode, Redis and Mosquitto on a database host, simulated terminals on a load
host; one job to every device, heartbeats through the load balancer, and the application host
whose beat leads killed (SIGKILL to all its processes, network cut) mid-run, then revived;
then a smaller run with PgBouncer killed and restarted instead (503, not 500, and recovery);
then Redis killed and restarted, and the leader's host only cut off (its processes alive), as
two runs at once.

Runs where namespaces can be made (root with `ip`; CI here runs as root and scripts/test.sh
installs the servers), skipped with the reason elsewhere. About eight minutes on a loaded
machine (475 s at a load average of about 30), of which the two new faults 219 s.
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


def _start(tmp_path_factory, name: str, *options: str) -> tuple[subprocess.Popen, Path]:
    missing = multihost.missing_tools()
    assert not missing, f"scripts/test.sh installs these; missing: {missing}"
    folder = tmp_path_factory.mktemp(name)
    out = folder / "report.json"
    process = subprocess.Popen(  # noqa: S603 (fixed arguments)
        [
            sys.executable,
            str(BASE_DIR / "bench" / "multihost.py"),
            *("--app-hosts", "2", "--web-workers", "2"),
            # A tenth of the fleet polls over HTTP (every 15 s), the rest is on MQTT; heartbeats
            # at half the fleet's rate: what two cores shared with everything else carry.
            *("--poll-share", "0.1", "--poll-interval", "15", "--heartbeat-scale", "0.5"),
            *("--ttl", "120", "--job-timeout", "240", "--beat-lock-seconds", str(BEAT_LOCK_SECONDS)),
            *options,
            *("--json", str(out)),
        ],
        cwd=BASE_DIR,
        stdout=(folder / "stdout.txt").open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, out


def _finish(process: subprocess.Popen, out: Path) -> dict:
    try:
        process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        # SIGTERM: the proof removes its namespaces and processes on the way out.
        process.terminate()
        process.wait(timeout=120)
    log = (out.parent / "stdout.txt").read_text(errors="replace")
    assert out.exists(), f"the proof did not finish:\n{log[-6000:]}"
    return json.loads(out.read_text())


def _run(tmp_path_factory, name: str, *options: str) -> dict:
    return _finish(*_start(tmp_path_factory, name, *options))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The beat leader's application host killed (every process, SIGKILL) and cut off."""
    return _run(
        tmp_path_factory,
        "host",
        *("--devices", "2000", "--kill-after", "12", "--revive-after", "15", "--settle", "5"),
    )


@pytest.fixture(scope="module")
def pooler_report(tmp_path_factory):
    """PgBouncer killed (SIGKILL) on the database host, restarted 10 s later."""
    return _run(
        tmp_path_factory,
        "pooler",
        *("--fault", "pgbouncer", "--devices", "1000"),
        *("--kill-after", "8", "--revive-after", "10", "--settle", "10"),
    )


@pytest.fixture(scope="module")
def fault_reports(tmp_path_factory):
    """Two more faults, as two runs at once (each on its own subnet): Redis killed (SIGKILL)
    on the database host and restarted 15 s later; and the beat leader's application host
    cut off from the network for 15 s with its processes alive."""
    timing = ("--devices", "2000", "--kill-after", "12", "--revive-after", "15", "--settle", "5")
    started = {
        fault: _start(tmp_path_factory, fault, "--fault", fault, *timing)
        for fault in ("redis", "partition-leader")
    }
    return {fault: _finish(*run) for fault, run in started.items()}


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


def test_nothing_is_left_behind(report, pooler_report):
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # noqa: S607
    # This run's own namespaces (another run of the proof may be going on beside it).
    assert report["tag"] not in namespaces and pooler_report["tag"] not in namespaces
    assert not Path(report["workdir"]).exists()
    assert not Path(pooler_report["workdir"]).exists()


def test_with_the_pooler_killed_requests_answer_503_not_500_and_recover(pooler_report):
    heartbeats = pooler_report["heartbeats"]
    statuses = heartbeats["by_status"]
    # While PgBouncer was away the API said "unavailable, retry", never "server error".
    assert statuses.get("503", 0) > 0, heartbeats
    assert "500" not in statuses, heartbeats
    # After the restart heartbeats are answered again, and none answered 2xx was lost.
    assert heartbeats["answered_2xx_after_repair"] > 0, heartbeats
    assert heartbeats["acknowledged_but_lost"] == 0, heartbeats


def test_with_the_pooler_killed_the_job_still_completes_with_every_delivery_once(pooler_report):
    deliveries = pooler_report["deliveries"]
    assert sum(deliveries.values()) == pooler_report["devices"] == 1000
    assert pooler_report["job_status"] == "completed", deliveries
    assert pooler_report["checks"]["each_push_received_once"], pooler_report["terminal_answers"]
    assert pooler_report["checks"]["beat_sends_after_repair"]
    assert pooler_report["audit_chain_intact"]


def _assert_the_job_completed_with_every_delivery_once(report: dict) -> None:
    deliveries = report["deliveries"]
    assert deliveries == {"completed": report["devices"]}, deliveries
    assert report["job_status"] == "completed", deliveries
    assert report["checks"]["each_push_received_once"], report["terminal_answers"]


def _assert_no_server_error_and_nothing_acknowledged_lost(report: dict) -> None:
    heartbeats = report["heartbeats"]
    assert "500" not in heartbeats["by_status"], heartbeats
    assert "500" not in report["load"]["poll_terminals"]["errors_by_status"], report["load"]
    assert heartbeats["acknowledged_but_lost"] == 0, heartbeats
    # Recovery: after the repair heartbeats are answered again.
    assert heartbeats["answered_2xx_after_repair"] > 0, heartbeats


def test_with_redis_killed_requests_answer_503_not_500_and_nothing_is_lost(fault_reports):
    report = fault_reports["redis"]
    _assert_no_server_error_and_nothing_acknowledged_lost(report)
    heartbeats = report["heartbeats"]
    # Heartbeats go straight to the device rows while Redis is away: the fleet kept reporting.
    assert heartbeats["sent_while_host_down"] > 0, heartbeats
    assert heartbeats["failed_while_host_down"] <= 0.1 * heartbeats["sent_while_host_down"], heartbeats
    # What needs Redis (the commands a polling terminal fetches) says "unavailable, retry".
    polls = report["load"]["poll_terminals"]
    assert set(polls["errors_by_status"]) <= {"0", "502", "503", "504"}, polls


def test_with_redis_killed_the_job_completes_and_beat_resumes(fault_reports):
    report = fault_reports["redis"]
    _assert_the_job_completed_with_every_delivery_once(report)
    assert report["checks"]["beat_sends_after_repair"]
    assert report["audit_chain_intact"]


def test_with_the_leader_cut_off_another_leads_and_the_old_one_stays_silent(fault_reports):
    report = fault_reports["partition-leader"]
    assert report["fault"]["was_beat_leader"]
    failover = report["beat_failover"]
    assert failover["to"] != report["fault"]["host"]
    assert failover["first_send_after_seconds"] <= BEAT_LOCK_SECONDS * 1.2 + 2, failover
    # No periodic task ran twice at once: the cut-off leader sent nothing once another led.
    assert report["checks"]["old_leader_sent_nothing_while_another_led"]
    assert report["checks"]["beat_sends_after_repair"]


def test_with_the_leader_cut_off_the_load_balancer_routes_around_it(fault_reports):
    report = fault_reports["partition-leader"]
    _assert_no_server_error_and_nothing_acknowledged_lost(report)
    heartbeats = report["heartbeats"]
    # Only what was in flight to the host when it was cut fails; the rest goes to the other.
    assert heartbeats["sent_while_host_down"] > 0, heartbeats
    assert heartbeats["error_rate_while_host_down"] <= 0.1, heartbeats
    _assert_the_job_completed_with_every_delivery_once(report)
    assert report["audit_chain_intact"]


def test_the_fault_runs_beside_each_other_used_subnets_of_their_own(fault_reports):
    subnets = {report["subnet"] for report in fault_reports.values()}
    assert len(subnets) == 2, subnets
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # noqa: S607
    assert not any(report["tag"] in namespaces for report in fault_reports.values())
