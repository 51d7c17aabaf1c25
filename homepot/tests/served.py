"""HOMEPOT served by a real gunicorn subprocess, for tests and benches that go through the
front door (a socket, the WSGI server, every middleware) rather than Django's test client.

Used by homepot/tests/test_outage.py and bench/bench_outage.py. Also here: `free_port`, and
`mosquitto_running`, a Mosquitto of a test's own (the shared broker carries other clients').
"""

import contextlib
import getpass
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@contextlib.contextmanager
def mosquitto_running(workdir: Path, *, anonymous: bool = True, extra_config: str = ""):
    """A Mosquitto on a free loopback port, configured in `workdir` (its log there too),
    stopped on exit; yields the port. `extra_config`: more lines of mosquitto.conf."""
    import pytest

    port = free_port()
    log = workdir / "mosquitto.log"
    (workdir / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\n"
        f"allow_anonymous {'true' if anonymous else 'false'}\n"
        # Started as root, Mosquitto would switch to the `mosquitto` user, which cannot read
        # pytest's private temporary directory.
        f"user {getpass.getuser()}\n"
        "persistence false\n"
        f"log_dest file {log}\n"
        "log_type all\n" + extra_config
    )
    process = subprocess.Popen(  # noqa: S603 - our own arguments
        [MOSQUITTO, "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start: {log.read_text() if log.exists() else ''}")
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Answer:
    status: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""

    def json(self):
        return json.loads(self.body)


def call(port: int, method: str, path: str, body=None, headers=None, timeout: float = 30) -> Answer:
    """One request on a fresh connection. `body` (a dict) is sent as JSON. A connection the
    server drops without answering is status 0."""
    headers = dict(headers or {})
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    except (OSError, http.client.HTTPException):
        return Answer(0)
    finally:
        conn.close()


class Gunicorn:
    """`gunicorn homepot.wsgi` on a free loopback port with the given environment."""

    def __init__(self, env: dict, *, workers: int = 2, threads: int = 4, log_path: str | None = None):
        self.port = free_port()
        self._log = open(log_path or os.devnull, "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "gunicorn",
                "homepot.wsgi:application",
                f"--bind=127.0.0.1:{self.port}",
                f"--workers={workers}",
                f"--threads={threads}",
                "--worker-class=gthread",
                "--timeout=60",
                "--graceful-timeout=2",
            ],
            cwd=BASE_DIR,
            env={**os.environ, "HOMEPOT_ENV_FILE": "", **env},
            stdout=self._log,
            stderr=self._log,
        )

    def wait_until_up(self, deadline_seconds: float = 60) -> None:
        """Until /healthz answers 200 (the workers import Django and reach the database)."""
        give_up = time.monotonic() + deadline_seconds
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}")
            if call(self.port, "GET", "/healthz", timeout=5).status == 200:
                return
            time.sleep(0.1)  # polling a starting server, not waiting for a save
        raise RuntimeError("gunicorn did not answer /healthz in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self._log.close()
