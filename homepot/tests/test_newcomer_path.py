"""A newcomer's path, through the doors they use: ./scripts/run.sh in a subprocess, then
`python manage.py ...` typed afterwards, and the API served from the embedded SQLite file.

Every child gets an environment without the test run's database and secrets, and its own
env file in tmp_path (never the developer's .env).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
STRIPPED = {
    "DATABASE_URL",
    "DATABASE__URL",
    "SECRET_KEY",
    "DEBUG",
    "DJANGO_SETTINGS_MODULE",
    "HOMEPOT_ENV_FILE",
}


def child_env(**extra: str) -> dict:
    env = {name: value for name, value in os.environ.items() if name not in STRIPPED}
    env.update(extra)
    return env


def run(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own scripts and interpreter
        args, cwd=ROOT, env=child_env(**env), capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture
def sqlite_demo(tmp_path):
    """run.sh --no-server on a SQLite file of this test, with an env file of this test."""
    env_file, database = tmp_path / ".env", tmp_path / "demo.sqlite3"
    result = run(
        ["./scripts/run.sh", "--no-server"],
        HOMEPOT_ENV_FILE=str(env_file),
        DATABASE_URL=f"sqlite:///{database}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return env_file, database, result.stdout


def test_run_sh_no_server_writes_its_choice_into_the_env_file_and_claims_no_server(sqlite_demo):
    env_file, database, output = sqlite_demo

    assert f"DATABASE_URL=sqlite:///{database}" in env_file.read_text().splitlines()
    assert "DEBUG=true" in env_file.read_text().splitlines()
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert f"Wrote DATABASE_URL=sqlite:///{database} into" in output
    assert "is ready" not in output and "console :" not in output
    assert "nothing is serving" in output


def test_manage_py_typed_afterwards_reaches_the_same_database(sqlite_demo):
    env_file, database, _ = sqlite_demo

    # As the README's API quick start: no DATABASE_URL, DEBUG or SECRET_KEY in the shell.
    result = run(
        [sys.executable, "manage.py", "ensure_admin", "--with-token"], HOMEPOT_ENV_FILE=str(env_file)
    )

    assert result.returncode == 0, result.stderr
    assert "Admin account 'admin' kept." in result.stdout  # the one run.sh created
    assert "TOKEN=hp_" in result.stdout


def test_a_second_run_uses_the_database_the_env_file_names(sqlite_demo):
    env_file, database, _ = sqlite_demo

    result = run(["./scripts/run.sh", "--no-server"], HOMEPOT_ENV_FILE=str(env_file))

    assert result.returncode == 0, result.stderr
    assert f"Database: from {env_file} (DATABASE_URL=sqlite:///{database})" in result.stdout
    assert "Demo data already loaded" in result.stdout


def test_a_taken_port_is_refused_with_its_number_and_how_to_choose_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - as runserver binds
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            ["./scripts/run.sh"],
            PORT=str(port),
            HOMEPOT_ENV_FILE=str(tmp_path / ".env"),
            DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        )

    assert result.returncode != 0
    assert f"Port {port} is already in use" in result.stderr
    assert f"PORT={port + 1} ./scripts/run.sh" in result.stderr
    assert "is ready" not in result.stdout
    assert not (tmp_path / ".env").exists()  # refused before any set-up


# --- The API on the embedded SQLite file ---------------------------------------------------

ON_SQLITE = """
import json, django
django.setup()
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient
from accounts.tests.factories import AdminUserFactory
from accounts.services import api_token_issue
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from jobs_app.tests.factories import DeliveryFactory, JobFactory

call_command("migrate", verbosity=0)
device = DeviceFactory()
delivery = DeliveryFactory(device=device, job=JobFactory(site=device.site), status="sent")
_, token = api_token_issue(user=AdminUserFactory(), name="t")
_, credential = device_credential_issue(actor=None, device=device)
api, agent = APIClient(), APIClient()
api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
agent.credentials(HTTP_AUTHORIZATION=f"Device {credential}")
d = delivery.pk
calls = [
    (agent, "get", "/api/v1/agent/me", None),
    (agent, "post", "/api/v1/agent/heartbeat", {}),
    (agent, "post", "/api/v1/agent/health", {"status": "healthy", "response_time_ms": 80}),
    (agent, "post", "/api/v1/agent/health/batch", {"reports": [{"status": "healthy"}]}),
    (agent, "get", "/api/v1/agent/commands", None),
    (agent, "post", f"/api/v1/agent/deliveries/{d}/ack", {}),
    (agent, "post", f"/api/v1/agent/deliveries/{d}/result", {"status": "completed", "details": {}}),
    (api, "post", "/jobs", {"site_id": device.site.site_id, "action": "update_config", "payload": {"v": 1}}),
    (api, "get", "/api/v1/fleet/summary", None),
    (api, "get", f"/api/v1/fleet/devices/{device.device_id}/timeline", None),
    (api, "get", f"/api/v1/fleet/sites/{device.site.site_id}/timeline", None),
    (api, "get", "/api/v1/health-checks", None),
]
answers = {}
for client, method, path, body in calls:
    response = getattr(client, method)(path, body, format="json")
    is_json = response["Content-Type"].startswith("application/json")
    error = response.json().get("error", {}) if is_json else None
    answers[path] = [response.status_code, response["Content-Type"], error and error["code"]]
print(json.dumps(answers))
"""


@pytest.mark.parametrize("debug", ["true", "false"])
def test_on_sqlite_every_endpoint_works_or_answers_needs_postgresql_in_json(tmp_path, debug):
    result = run(
        [sys.executable, "-c", ON_SQLITE],
        DJANGO_SETTINGS_MODULE="homepot.settings",
        HOMEPOT_ENV_FILE="",
        DATABASE_URL=f"sqlite:///{tmp_path / 'api.sqlite3'}",
        DEBUG=debug,
        SECRET_KEY="sqlite-test-key",
        ALLOWED_HOSTS="testserver",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])

    for path, (status, content_type, code) in answers.items():
        assert content_type.startswith("application/json"), (path, status, content_type)
        assert status < 500 or (status, code) == (501, "needs_postgresql"), (path, status, code)
    # The ingest and the deliveries use PostgreSQL's SQL: said so, not a 500.
    for path in ("/api/v1/agent/heartbeat", "/api/v1/agent/health", "/api/v1/agent/health/batch"):
        assert answers[path][::2] == [501, "needs_postgresql"], path
    assert answers["/jobs"][0] == 201
    assert answers["/api/v1/agent/me"][0] == 200
