"""`manage.py import_homepot` against a scratch database shaped like the older HOMEPOT's."""

import io
import json

import bcrypt
import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import User
from devices_app.models import Device, DeviceCredential
from homepot.tests.api_helpers import bearer
from jobs_app.models import Job
from legacy_app.tests.legacy_db import scratch_database
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.selectors import audit_chain_verify
from sites_app.models import Site

pytestmark = pytest.mark.django_db

OLD_PASSWORD = "correct horse battery"
OLD_HASH = bcrypt.hashpw(OLD_PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def _fill(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            """
            INSERT INTO sites (id, site_id, name, description, location, created_at) VALUES
              (1, 'site-123', 'Downtown', 'Main store', '1 Main St', '2023-01-02 10:00'),
              (2, 'site-456', NULL, NULL, NULL, NULL),                -- missing fields
              (3, 'site-123', 'Downtown again', '', '', now()),       -- duplicate site_id
              (4, 'bad id!', 'Broken', '', '', now()),                -- invalid business id
              (5, 'site-789', 'Future', '', '', now() + interval '3 days');  -- clock skew
            """
        )
        c.execute(
            """
            INSERT INTO devices (id, device_id, name, device_type, site_id, ip_address, mac_address,
                                 status, config, created_at) VALUES
              (1, 'pos-terminal-001', 'POS 1', 'pos_terminal', 1, '192.168.1.10', '00:1b:44:11:3a:b7',
               'online', '{"gateway_url": "https://payments.example.com"}', '2023-02-01'),
              (2, 'pos-terminal-002', 'POS 2', 'pos_terminal', 1, '192.168.1.11', '00-1B-44-11-3A-B8',
               'offline', NULL, NULL),
              (3, 'pos-terminal-003', NULL, 'weird_type', 2, NULL, NULL, 'zombie', NULL, now()),
              (4, 'pos-terminal-004', 'Bad MAC', 'pos_terminal', 1, NULL, 'not-a-mac', 'online', NULL, now()),
              (5, 'pos-terminal-005', 'Dup MAC', 'pos_terminal', 1, NULL, '00:1B:44:11:3A:B7', 'online',
               NULL, now()),
              (6, 'pos-terminal-001', 'Dup id', 'pos_terminal', 1, NULL, NULL, 'online', NULL, now()),
              (7, 'pos-terminal-007', 'Orphan', 'pos_terminal', 4, NULL, NULL, 'online', NULL, now()),
              (8, 'pos-terminal-008', 'Bad IP', 'pos_terminal', 1, '999.1.1.1', NULL, 'online', NULL, now()),
              (9, NULL, 'No id', 'pos_terminal', 1, NULL, NULL, 'online', NULL, now());
            """
        )
        c.execute(
            "INSERT INTO users (id, username, email, hashed_password, is_admin, is_active) VALUES "
            "(1, 'alice', 'Alice@Example.com', %(h)s, true, true),"
            "(2, 'bob', 'bob@example.com', %(h)s, false, true),"
            "(3, 'carol', NULL, %(h)s, false, true),"  # missing email
            "(4, 'dave', 'dave@example.com', 'plaintext', false, true),"  # not a bcrypt hash
            "(5, 'ALICE', 'alice2@example.com', %(h)s, false, true),"  # duplicate username
            "(6, 'erin', 'erin@example.com', %(h)s, false, false)",  # inactive
            {"h": OLD_HASH},
        )
        c.execute(
            """
            INSERT INTO jobs (id, job_id, action, description, site_id, payload, priority, status,
                              created_at, started_at, completed_at) VALUES
              (1, 'job-1', 'update_pos_payment_config', 'Rotate gateway', 1, '{"k": 1}', 'high', 'completed',
               '2023-03-01 09:00', '2023-03-01 09:01', '2023-03-01 09:05'),
              (2, 'job-2', 'restart_pos_app', 'Restart', 1, NULL, NULL, 'sent', '2023-03-02', NULL, NULL),
              (3, 'job-3', 'launch_rockets', 'Unknown', 1, NULL, 'normal', 'completed', now(), NULL, NULL),
              (4, 'job-4', 'update_config', 'Skewed', 2, NULL, 'low', 'failed',
               '2023-03-03', '2023-03-03 10:00', '2023-03-03 09:00'),
              (5, 'job-5', 'update_config', 'Orphan', 4, NULL, 'low', 'completed', now(), NULL, NULL);
            """
        )
        c.execute(
            """
            INSERT INTO health_checks (device_id, is_healthy, response_time_ms, response_data, error_message,
                                       timestamp)
            SELECT 1, g % 5 <> 0, 40 + g, json_build_object('cpu', g), NULL,
                   '2024-01-01'::timestamp + g * interval '5 minutes'
            FROM generate_series(1, 50) g;
            INSERT INTO health_checks (device_id, is_healthy, response_data, timestamp) VALUES
              (2, false, '[1, 2]', '2024-01-02'),       -- metrics not an object
              (4, true, NULL, '2024-01-02'),            -- device not imported (bad MAC)
              (1, NULL, NULL, '2024-01-02'),            -- no status
              (1, true, NULL, NULL),                    -- no time
              (1, true, NULL, now() + interval '1 day');  -- clock skew
            """
        )
        c.execute(
            """
            INSERT INTO audit_logs (event_type, description, user_id, job_id, device_id, site_id,
                                    new_values, ip_address, user_agent, created_at) VALUES
              ('job_created', 'Job job-1 created', 1, 1, NULL, 1, '{"status": "queued"}', '10.0.0.5',
               'curl/8', '2023-03-01 09:00'),
              ('device_updated', 'POS 1 renamed', 2, NULL, 1, 1, NULL, NULL, NULL, '2023-03-04'),
              (NULL, 'no type', NULL, NULL, NULL, NULL, NULL, NULL, NULL, now()),
              ('login', 'skewed', 1, NULL, NULL, NULL, NULL, 'not-an-ip', NULL, now() + interval '1 hour');
            """
        )


@pytest.fixture
def legacy_url():
    with scratch_database() as url:
        _fill(url)
        yield url


def _run(url, *args) -> str:
    out = io.StringIO()
    call_command("import_homepot", "--from", url, "--no-progress", *args, stdout=out)
    return out.getvalue()


def _login(username: str, password: str):
    from rest_framework.test import APIClient

    return APIClient().post("/api/v1/auth/login", {"username": username, "password": password}, format="json")


def test_import_takes_what_it_can_and_says_why_not(legacy_url):
    out = _run(legacy_url)

    assert set(Site.objects.values_list("site_id", flat=True)) == {"site-123", "site-456", "site-789"}
    assert Site.objects.get(site_id="site-456").name == "site-456"  # missing name: the id
    assert "duplicate site_id 'site-123'" in out and "'bad id!' is not a valid business id" in out

    assert set(Device.objects.values_list("device_id", flat=True)) == {
        "pos-terminal-001",
        "pos-terminal-002",
        "pos-terminal-003",
    }
    pos2 = Device.objects.get(device_id="pos-terminal-002")
    assert pos2.mac_address == "00:1B:44:11:3A:B8" and pos2.status == "offline"
    pos3 = Device.objects.get(device_id="pos-terminal-003")
    assert (pos3.device_type, pos3.status, pos3.site.site_id) == ("other", "unknown", "site-456")
    assert "MAC address 'not-a-mac' is invalid" in out
    assert "MAC address 00:1B:44:11:3A:B7 is duplicated" in out
    assert "duplicate device_id 'pos-terminal-001'" in out
    assert "its site 'bad id!' was not imported" in out
    assert "IP address '999.1.1.1' is invalid" in out and "missing device_id" in out
    # The older schema holds no per-terminal key: terminals are re-provisioned here.
    assert not DeviceCredential.objects.exists()

    alice = User.objects.get(username="alice")
    assert alice.is_superuser and alice.is_staff and alice.email == "alice@example.com"
    bob = User.objects.get(username="bob")
    assert not bob.is_superuser and not bob.is_staff and not bob.memberships.exists()
    assert not User.objects.get(username="erin").is_active
    assert not User.objects.filter(username__in=["carol", "dave"]).exists()
    assert "missing email" in out and "not a bcrypt hash" in out and "username repeats older id 1" in out

    completed = Job.objects.get(legacy_id=1)
    assert (completed.status, completed.priority, completed.payload) == ("completed", "high", {"k": 1})
    assert completed.created_at.isoformat().startswith("2023-03-01T09:00")
    unfinished = Job.objects.get(legacy_id=2)
    assert unfinished.status == "paused" and "while sent" in unfinished.status_reason
    skewed = Job.objects.get(legacy_id=4)
    assert skewed.started_at is None and skewed.completed_at is not None
    assert not Job.objects.filter(legacy_id__in=[3, 5]).exists()
    assert "'launch_rockets' is not one this HOMEPOT runs" in out

    pos1 = Device.objects.get(device_id="pos-terminal-001")
    assert HealthCheck.objects.filter(device=pos1).count() == 51  # 50 + the skewed one
    assert HealthCheck.objects.filter(device=pos2).get().metrics == {"response_data": [1, 2]}
    assert "health_checks: 55 read, 52 created" in out
    pos1.refresh_from_db()
    assert pos1.health_status and pos1.last_health_at is not None

    imported = AuditLog.objects.filter(event_type=AuditEvent.LEGACY_IMPORTED_EVENT).order_by("id")
    assert imported.count() == 3
    first = imported[0]
    assert first.actor == alice and first.actor_ref == "alice" and first.site.site_id == "site-123"
    assert first.job == completed and first.source_ip == "10.0.0.5"
    assert first.new_values["original_time"].startswith("2023-03-01T09:00")
    assert first.new_values["original_event_type"] == "job_created"
    per_table = AuditLog.objects.filter(event_type=AuditEvent.LEGACY_IMPORTED)
    assert {row.new_values["table"] for row in per_table} == {
        "sites",
        "devices",
        "users",
        "jobs",
        "health_checks",
        "audit_logs",
    }
    assert per_table.get(new_values__table="devices").new_values["created"] == 3
    assert audit_chain_verify().intact


def test_second_run_updates_and_adds_never_doubles(legacy_url):
    _run(legacy_url)
    counts = (Site.objects.count(), Device.objects.count(), User.objects.count(), Job.objects.count())
    checks, audits = HealthCheck.objects.count(), AuditLog.objects.count()

    with psycopg.connect(legacy_url, autocommit=True) as c:
        c.execute("UPDATE sites SET name = 'Downtown (renovated)' WHERE id = 1")
        c.execute("UPDATE devices SET ip_address = '192.168.1.99' WHERE id = 1")
        c.execute("UPDATE jobs SET status = 'completed', completed_at = '2023-03-02 10:00' WHERE id = 2")
        c.execute(
            "INSERT INTO health_checks (device_id, is_healthy, timestamp) VALUES (2, true, '2024-02-01')"
        )
        c.execute("INSERT INTO audit_logs (event_type, description, created_at) VALUES ('x', 'new', now())")
    out = _run(legacy_url)

    assert (Site.objects.count(), Device.objects.count(), User.objects.count(), Job.objects.count()) == counts
    assert Site.objects.get(site_id="site-123").name == "Downtown (renovated)"
    assert Device.objects.get(device_id="pos-terminal-001").ip_address == "192.168.1.99"
    assert Job.objects.get(legacy_id=2).status == "completed"
    assert HealthCheck.objects.count() == checks + 1
    # One more imported event, plus one legacy.imported row per table.
    assert AuditLog.objects.count() == audits + 1 + 6
    assert "sites: 5 read, 0 created, 1 updated, 2 unchanged, 2 skipped" in out
    assert audit_chain_verify().intact


def test_dry_run_reports_and_keeps_nothing(legacy_url):
    before = AuditLog.objects.count()
    out = _run(legacy_url, "--dry-run")
    assert "devices: 9 read, 3 would be created" in out
    assert "MAC address 'not-a-mac' is invalid" in out
    assert "Dry run: nothing was saved." in out
    assert not Site.objects.exists() and not Device.objects.exists() and not HealthCheck.objects.exists()
    assert AuditLog.objects.count() == before


def test_imported_users_log_in_with_their_old_password_and_see_the_api(legacy_url):
    _run(legacy_url)

    assert _login("bob", "wrong password").status_code == 401
    assert _login("erin", OLD_PASSWORD).status_code == 401  # inactive in the older system
    response = _login("alice", OLD_PASSWORD)
    assert response.status_code == 200, response.content
    # Re-hashed in our own format at the first login.
    assert not User.objects.get(username="alice").password.startswith("legacy_bcrypt$")
    api = bearer(response.json()["token"])

    sites = api.get("/api/v1/sites").json()["results"]
    assert {s["site_id"] for s in sites} == {"site-123", "site-456", "site-789"}
    devices = api.get("/api/v1/devices").json()["results"]
    assert {d["device_id"] for d in devices} == {"pos-terminal-001", "pos-terminal-002", "pos-terminal-003"}
    jobs = api.get("/api/v1/jobs").json()["results"]
    assert {j["status"] for j in jobs} == {"completed", "paused", "failed"}
    checks = api.get("/api/v1/health-checks", {"page_size": 100}).json()["results"]
    assert len(checks) == 52

    # A non-admin imported user logs in too, and has no right until given a site here.
    bob = _login("bob", OLD_PASSWORD)
    assert bob.status_code == 200
    assert bearer(bob.json()["token"]).get("/api/v1/devices").status_code == 403


def test_a_later_run_does_not_reset_a_password_changed_here(legacy_url):
    _run(legacy_url)
    assert _login("bob", OLD_PASSWORD).status_code == 200  # re-hashed here now
    _run(legacy_url)
    assert _login("bob", OLD_PASSWORD).status_code == 200
    assert not User.objects.get(username="bob").password.startswith("legacy_bcrypt$")


def test_the_older_database_is_opened_read_only(legacy_url, monkeypatch):
    from legacy_app import importer

    conn = importer.open_legacy(legacy_url)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO sites (site_id, name) VALUES ('x', 'x')")
    finally:
        conn.close()


def test_unreachable_database_is_a_clean_error():
    with pytest.raises(CommandError, match="Cannot connect"):
        _run("postgresql://postgres@127.0.0.1:5432/homepot_no_such_db_" + "x" * 8)


def test_json_values_survive_the_chain(legacy_url):
    _run(legacy_url, "--only", "sites", "users", "jobs", "audit_logs")
    row = AuditLog.objects.filter(event_type=AuditEvent.LEGACY_IMPORTED_EVENT).order_by("id").first()
    assert json.loads(json.dumps(row.new_values))["new_values"] == {"status": "queued"}
    assert audit_chain_verify().intact


def test_nul_characters_in_old_json_are_removed_and_the_rows_named():
    """The older `json` columns keep "\\u0000" as written; our jsonb cannot hold it, and one such
    value used to stop the whole table's COPY. The NUL goes, the row comes in, and the report
    names it; a backslash followed by the text u0000 is not a NUL and stays."""
    with scratch_database() as url:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(
                r"""
                INSERT INTO sites (id, site_id, name) VALUES (1, 'site-1', 'One');
                INSERT INTO users (id, username, email, hashed_password)
                  VALUES (1, 'al', 'al@example.com', 'x');
                INSERT INTO devices (id, device_id, name, device_type, site_id, status, config) VALUES
                  (1, 'pos-1', 'POS 1', 'pos_terminal', 1, 'online',
                   '{"label": "till\u0000 1", "k\u0000": 2}'),
                  (2, 'pos-2', 'POS 2', 'pos_terminal', 1, 'online', '{"path": "C:\\u0000dir"}');
                INSERT INTO jobs (id, job_id, action, site_id, payload, priority, status) VALUES
                  (1, 'job-1', 'update_config', 1, '{"v": ["a\u0000b"]}', 'normal', 'completed');
                INSERT INTO health_checks (id, device_id, is_healthy, response_data, timestamp) VALUES
                  (1, 1, true, '{"msg": "ok\u0000"}', '2024-01-01'),
                  (2, 1, true, '{"path": "C:\\u0000dir", "nul": "\\\u0000"}', '2024-01-01 00:05'),
                  (3, 1, true, '{"cpu": 5}', '2024-01-01 00:10');
                INSERT INTO audit_logs (id, event_type, description, user_id, new_values, created_at) VALUES
                  (1, 'login', 'logged in', 1, '{"agent": "x\u0000"}', '2024-01-01');
                """
            )
        out = _run(url)

    assert Device.objects.get(device_id="pos-1").config == {"label": "till 1", "k": 2}
    assert Device.objects.get(device_id="pos-2").config == {"path": "C:\\u0000dir"}  # not a NUL
    assert Job.objects.get(legacy_id=1).payload == {"v": ["ab"]}
    metrics = dict(HealthCheck.objects.filter(legacy_id__isnull=False).values_list("legacy_id", "metrics"))
    assert metrics == {1: {"msg": "ok"}, 2: {"path": "C:\\u0000dir", "nul": "\\"}, 3: {"cpu": 5}}
    event = AuditLog.objects.get(event_type=AuditEvent.LEGACY_IMPORTED_EVENT)
    assert "\x00" not in json.dumps(event.new_values) and "x" in json.dumps(event.new_values)
    assert audit_chain_verify().intact
    for line in (
        "cleaned devices id=1: NUL characters removed from config",
        "cleaned jobs id=1: NUL characters removed from payload",
        "cleaned health_checks id=1: NUL characters removed from response_data",
        "cleaned health_checks id=2: NUL characters removed from response_data",
        "cleaned audit_logs id=1: NUL characters removed from new_values",
    ):
        assert line in out, out
    assert "cleaned devices id=2" not in out and "cleaned health_checks id=3" not in out
