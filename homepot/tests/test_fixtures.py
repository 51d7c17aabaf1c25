"""The demo chain (`fixtures/demo.json`) as `manage.py loaddata demo` installs it."""

import importlib.util
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from accounts.models import User
from devices_app.models import Device
from devices_app.validators import normalize_mac
from jobs_app.choices import JobStatus
from jobs_app.models import Job
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.services import audit_record
from sites_app.models import Site

pytestmark = pytest.mark.django_db

FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "demo.json"
BUILDER = Path(settings.BASE_DIR) / "scripts" / "build_demo_fixture.py"
DEMO_NOW = datetime(2026, 11, 25, 8, 45, tzinfo=UTC)
MODELS = (Site, Device, Job, HealthCheck, AuditLog)


def load_demo():
    call_command("loaddata", "demo", verbosity=0)


def counts():
    return {model.__name__: model.objects.count() for model in MODELS}


@pytest.fixture
def demo():
    load_demo()


def test_demo_has_the_documented_counts(demo):
    loaded = counts()
    audit_rows = loaded.pop("AuditLog")
    assert loaded == {"Site": 14, "Device": 30, "Job": 13, "HealthCheck": 68}
    assert 24 <= audit_rows <= 60  # "a few dozen"


def test_every_loaded_object_passes_model_validation(demo):
    # loaddata writes raw rows, skipping validators; the data must satisfy them anyway.
    for model in MODELS:
        for obj in model.objects.all():
            obj.full_clean()


def test_jobs_cover_every_status_with_consistent_timestamps(demo):
    jobs = list(Job.objects.all())
    assert {job.status for job in jobs} == set(JobStatus.values)
    for job in jobs:
        assert job.created_at <= DEMO_NOW
        if job.status == JobStatus.QUEUED:
            assert job.started_at is None and job.completed_at is None, job
        if job.status in (JobStatus.SENT, JobStatus.ACKNOWLEDGED):
            assert job.started_at is not None and job.completed_at is None, job
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED):
            assert job.created_at <= job.started_at <= job.completed_at, job
        if job.status == JobStatus.CANCELLED:
            assert job.completed_at is not None and job.created_at <= job.completed_at, job
    assert {job.action for job in jobs} >= {"update_pos_payment_config", "software_update", "restart_pos_app"}


def test_devices_are_numbered_within_their_site_with_fleet_unique_ids(demo):
    devices = list(Device.objects.select_related("site"))
    assert len({d.device_id for d in devices}) == 30
    by_site_and_type = defaultdict(list)
    for device in devices:
        by_site_and_type[device.site.site_id, device.device_type].append(device)
    slugs = {
        "pos_terminal": "pos-terminal",
        "card_reader": "card-reader",
        "receipt_printer": "receipt-printer",
    }
    for (site_id, device_type), group in by_site_and_type.items():
        numbers = sorted(int(d.name.rsplit(" ", 1)[1]) for d in group)
        assert numbers == list(range(1, len(group) + 1)), (site_id, device_type)
        for device in group:
            number = device.name.rsplit(" ", 1)[1]
            assert device.device_id == f"{site_id}-{slugs[device_type]}-{number}"
    pos = [d for d in devices if d.device_type == "pos_terminal"]
    assert len(pos) > len(devices) / 2  # mostly POS terminals
    assert all(re.fullmatch(r"POS Terminal [1-5]", d.name) for d in pos)
    assert {d.device_type for d in devices} == {"pos_terminal", "card_reader", "receipt_printer"}


def test_devices_have_varied_states_and_canonical_unique_addresses(demo):
    devices = list(Device.objects.all())
    assert {d.status for d in devices} == {"online", "offline", "maintenance", "error", "unknown"}
    macs = [d.mac_address for d in devices]
    assert all(mac == normalize_mac(mac) for mac in macs)
    assert len(set(macs)) == len(macs)
    assert all(d.ip_address and d.firmware_version and d.config for d in devices)
    for device in devices:
        # Never-seen devices have no last_seen; the others reported before "now".
        assert (device.last_seen is None) == (device.status == "unknown"), device
        if device.last_seen:
            assert device.last_seen <= DEMO_NOW


def test_sites_are_spread_over_regions_and_time_zones(demo):
    sites = list(Site.objects.all())
    assert all(re.fullmatch(r"site-\d{3}", s.site_id) for s in sites)
    assert len({s.region for s in sites}) >= 5
    assert len({s.timezone for s in sites}) >= 5
    assert all(s.location and s.name for s in sites)
    assert {"site-123", "site-456"} <= {s.site_id for s in sites}


def test_health_checks_follow_their_devices(demo):
    checks = list(HealthCheck.objects.select_related("device"))
    assert {c.status for c in checks} == {"healthy", "degraded", "unhealthy"}
    assert not HealthCheck.objects.filter(device__status="unknown").exists()
    for check in checks:
        assert check.checked_at <= check.device.last_seen, check
        for key in ("cpu_percent", "memory_percent", "disk_percent"):
            assert 0 <= check.metrics[key] <= 100
        assert check.metrics["app_version"]
        assert bool(check.error_message) == (check.status == "unhealthy"), check
    per_device = Counter(c.device_id for c in checks)
    assert min(per_device.values()) >= 2  # a history, not a single point


def test_audit_trail_is_a_valid_chain_that_later_writes_extend(demo, capsys):
    assert set(AuditLog.objects.values_list("event_type", flat=True)) >= {
        "site.created",
        "devices.bulk_created",
        "device.created",
        "job.created",
        "job.completed",
    }
    for row in AuditLog.objects.exclude(site=None):
        assert Site.objects.get(pk=row.site_id).site_id == row.site_ref
    for row in AuditLog.objects.exclude(device=None):
        assert Device.objects.get(pk=row.device_id).device_id == row.device_ref
    audit_record(event_type="site.updated", description="after the demo")  # gets the next id
    call_command("verify_audit")
    assert f"{AuditLog.objects.count()} row(s) verified" in capsys.readouterr().out


def test_fixture_has_no_users_and_aware_utc_datetimes():
    rows = json.loads(FIXTURE.read_text())
    assert {row["model"] for row in rows} == {
        "sites_app.site",
        "devices_app.device",
        "jobs_app.job",
        "monitoring_app.healthcheck",
        "monitoring_app.auditlog",
    }
    assert all("pk" in row for row in rows)  # explicit keys: a reload updates, never duplicates
    stamps = [
        value
        for row in rows
        for name, value in row["fields"].items()
        if name.endswith("_at") or name == "last_seen"
        if value is not None
    ]
    assert stamps and all(value.endswith("Z") for value in stamps)
    assert all(value.startswith("2026-11-") for value in stamps)
    load_demo()
    assert User.objects.count() == 0


def test_fixture_file_is_what_its_generator_builds():
    # The fixture is generated; a hand edit would be lost at the next rebuild.
    spec = importlib.util.spec_from_file_location("build_demo_fixture", BUILDER)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    assert builder.build() == json.loads(FIXTURE.read_text())


def test_loading_the_demo_twice_changes_nothing(demo):
    before = counts()
    chain_head = AuditLog.objects.order_by("-id").values_list("row_hash", flat=True).first()
    load_demo()
    assert counts() == before
    assert AuditLog.objects.order_by("-id").values_list("row_hash", flat=True).first() == chain_head
