"""One beat leader across hosts: real `celery beat` processes sharing one Redis (RedBeat).

Every host runs a beat; only the holder of the leader lock sends tasks. Killing the leader
with SIGKILL (no chance to release its lock) hands the schedule to a standby within the
documented bound (HOMEPOT_BEAT_LOCK_SECONDS plus one tick), and the two never send at once.
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import redis
from django.conf import settings

BASE_DIR = Path(__file__).resolve().parent.parent.parent
LOCK_SECONDS = 4
SENT = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+): INFO/MainProcess\] Scheduler: Sending due task (?P<name>\S+)")
ACQUIRED = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+): INFO/MainProcess\] beat: Acquired lock")


class Beat:
    """`celery -A homepot beat` as its own process group, logging to a file."""

    def __init__(self, name: str, env: dict, tmp_path: Path):
        self.log_path = tmp_path / f"beat-{name}.log"
        self.process = subprocess.Popen(  # noqa: S603 (fixed arguments)
            [
                str(Path(sys.executable).parent / "celery"),
                *("-A", "homepot", "beat", "--loglevel=INFO"),
                *("--schedule", str(tmp_path / f"schedule-{name}")),
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def sends(self, entry: str | None = None) -> list[datetime]:
        """When this beat sent tasks (of one schedule entry, or of any)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = SENT.match(line)
            if match and entry in (None, match["name"]):
                found.append(datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f"))
        return found

    def leads(self) -> bool:
        return any(ACQUIRED.match(line) for line in self.log_path.read_text(errors="replace").splitlines())

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def beat_env(tmp_path):
    """Two beats' environment: their own lock and schedule keys and their own queue (nobody
    consumes it), the heartbeat flush every second so sends are frequent."""
    prefix = f"homepot:beat:test-{uuid.uuid4().hex}:"
    queue = f"beat-test-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "homepot.settings",
        "SECRET_KEY": os.environ.get("SECRET_KEY", "beat-test"),
        "HOMEPOT_ENV_FILE": "",
        "HOMEPOT_CELERY_LOG_TASKS": "true",
        "HOMEPOT_LOG_JSON": "false",
        "HOMEPOT_BEAT_LOCK_SECONDS": str(LOCK_SECONDS),
        "HOMEPOT_BEAT_KEY_PREFIX": prefix,
        "HOMEPOT_BEAT_REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "HOMEPOT_MONITORING_SEEN_FLUSH_SECONDS": "1",
    }
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield env
    keys = [*client.scan_iter(match=prefix + "*"), queue]
    client.delete(*keys)


def test_one_beat_sends_and_a_standby_takes_over_when_the_leader_is_killed(beat_env, tmp_path):
    first = Beat("a", beat_env, tmp_path)
    second = None
    try:
        _wait_for(lambda: len(first.sends()) >= 2, 30, "the first beat to lead and send")
        second = Beat("b", beat_env, tmp_path)
        # Both run side by side for a few ticks: the second waits for the lock.
        time.sleep(LOCK_SECONDS)
        assert second.process.poll() is None, "the standby must wait, not exit"
        assert not second.leads() and not second.sends()
        before = len(first.sends())
        assert before >= LOCK_SECONDS, "the leader went on sending meanwhile"

        first.kill()
        killed_at = datetime.now()
        _wait_for(lambda: len(second.sends()) >= 3, LOCK_SECONDS + 20, "the standby to take over")

        first_sends, second_sends = first.sends(), second.sends()
        failover = (second_sends[0] - killed_at).total_seconds()
        # The bound the documentation promises: the lock's lifetime and one beat tick.
        assert failover <= LOCK_SECONDS + settings.CELERY_BEAT_MAX_LOOP_INTERVAL + 1, failover
        # Never two senders: all the killed leader's sends come before the standby's first.
        assert max(first_sends) < min(second_sends)
        # The schedule's state moved with the lock: the new leader sends each entry when it is
        # due (the heartbeat flush once a second), not a replay from scratch.
        time.sleep(3)
        flushes = second.sends("monitoring-flush-heartbeats")
        assert len(flushes) <= (flushes[-1] - flushes[0]).total_seconds() + 1.5
    finally:
        first.stop()
        if second is not None:
            second.stop()
