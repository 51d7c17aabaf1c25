"""Logs a person reads: no line per terminal poll or heartbeat in the development server's
access log, no line per periodic task in the Celery worker's and beat's."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

SERVER = logging.getLogger("django.server")


def access_line(request_line: str, status: str, level=logging.INFO) -> logging.LogRecord:
    # As runserver's request handler logs it (django.core.servers.basehttp.log_message).
    return SERVER.makeRecord(
        SERVER.name, level, __file__, 0, '"%s" %s %s', (request_line, status, "42"), None
    )


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /api/v1/agent/commands HTTP/1.1",
        "POST /api/v1/agent/heartbeat HTTP/1.1",
        "POST /api/v1/agent/deliveries/7/ack HTTP/1.1",
    ],
)
def test_successful_agent_requests_leave_no_line(request_line):
    assert not SERVER.filter(access_line(request_line, "200"))


def test_failed_agent_requests_and_people_s_requests_are_still_logged():
    assert SERVER.filter(access_line("GET /api/v1/agent/commands HTTP/1.1", "401", logging.WARNING))
    assert SERVER.filter(access_line("GET /admin/ HTTP/1.1", "200"))
    assert SERVER.filter(access_line("GET /api/v1/devices HTTP/1.1", "200"))


# Celery's logging as `celery worker --loglevel INFO` sets it up, in a process of its own (the
# set-up takes over the root logger); prints the levels of the per-task loggers and ours.
CELERY_LEVELS = """
import logging, django
django.setup()
from homepot.celery import app
app.log.setup(loglevel="INFO")
names = ("celery.app.trace", "celery.worker.strategy", "celery.beat", "jobs_app.tasks")
print(" ".join(logging.getLevelName(logging.getLogger(n).getEffectiveLevel()) for n in names))
"""


def celery_levels(**env) -> str:
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "homepot.test_settings", **env}
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", CELERY_LEVELS], cwd=root, env=environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_worker_logs_no_line_per_routine_task_but_keeps_warnings_and_its_own_lines():
    assert celery_levels() == "WARNING WARNING WARNING INFO"


def test_per_task_lines_come_back_when_asked_for():
    assert celery_levels(HOMEPOT_CELERY_LOG_TASKS="true") == "INFO INFO INFO INFO"


def test_json_log_lines_carry_the_request_id():
    """HOMEPOT_LOG_JSON=true: one JSON object a line, with the id of the request being served."""
    import io
    import json
    import logging

    from django.http import HttpResponse
    from django.test import RequestFactory

    from homepot.logging_filters import JsonFormatter
    from homepot.request_context import RequestContextMiddleware

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("homepot.test.json")
    log.addHandler(handler)
    try:
        middleware = RequestContextMiddleware(lambda request: None)
        request = RequestFactory().get("/", HTTP_X_REQUEST_ID="req-42")
        middleware.process_request(request)
        log.warning("inside %s", "a request")
        middleware.process_response(request, HttpResponse())
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["request_id"] == "req-42" and inside["message"] == "inside a request"
    assert inside["level"] == "WARNING" and inside["logger"] == "homepot.test.json"
    assert inside["time"].endswith("Z")
    assert "request_id" not in outside


def test_a_real_worker_writes_json_lines_with_the_task_id(tmp_path):
    """HOMEPOT_LOG_JSON=true on `celery worker`: every line it writes to stderr is one JSON
    object, and the lines about a task (received, and the failure with its traceback) carry
    that task's id and name."""
    import json
    import time
    import uuid

    from kombu import Connection

    from homepot.celery import app
    from jobs_app.tests.test_worker import TEST_BROKER

    root = Path(__file__).resolve().parents[2]
    queue = f"homepot-json-log-{uuid.uuid4().hex}"
    log_path = tmp_path / "worker.log"
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
        "HOMEPOT_LOG_JSON": "true",
        "HOMEPOT_CELERY_LOG_TASKS": "true",
        "CELERY_BROKER_URL": TEST_BROKER,
    }
    command = [sys.executable, "-m", "celery", "-A", "homepot", "worker", "--pool=solo", f"--queues={queue}"]
    command += ["--loglevel=INFO", "--without-mingle", "--without-gossip", "--without-heartbeat"]

    def lines() -> list[str]:
        return [line for line in log_path.read_text().splitlines() if line.strip()]

    def wait_for_line(text: str) -> None:
        deadline = time.monotonic() + 60
        while not any(text in line for line in lines()):
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the worker's log:\n" + "\n".join(lines()))
            time.sleep(0.1)

    # Logs go to stderr; stdout has Celery's start-up banner and shutdown notice (print()s).
    with log_path.open("w") as log:
        worker = subprocess.Popen(  # noqa: S603
            command, cwd=root, env=environment, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_for_line("ready.")
        task_id = str(uuid.uuid4())
        with Connection(TEST_BROKER) as connection:
            # A malformed message: the dispatcher raises on a job id that is not a number.
            app.send_task(
                "jobs_app.tasks.dispatch_job",
                args=["not-a-job-id"],
                task_id=task_id,
                queue=queue,
                connection=connection,
            )
        wait_for_line("raised unexpected")
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    entries = []
    for line in lines():
        entry = json.loads(line)  # every line, start-up banner lines included, is JSON
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        entries.append(entry)
    about_task = [entry for entry in entries if entry.get("task_id") == task_id]
    assert {entry["task"] for entry in about_task} == {"jobs_app.tasks.dispatch_job"}
    [failure] = [entry for entry in about_task if entry["level"] == "ERROR"]
    assert "raised unexpected" in failure["message"]
    assert "ValueError" in failure["exception"]
    assert any("received" in entry["message"] for entry in about_task)
