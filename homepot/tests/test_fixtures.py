"""The demo chain (`fixtures/demo.json`) as `manage.py loaddata demo` installs it."""

import datetime as dt
import importlib.util
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from accounts.models import User
from devices_app.models import Device
from devices_app.validators import normalize_mac
from jobs_app.choices import JobStatus
from jobs_app.models import Delivery, Job
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.models import (
    Alert,
    AuditLog,
    DemoClock,
    FleetSnapshot,
    HealthCheck,
    MonitoringState,
)
from monitoring_app.services import audit_record
from monitoring_app.sweep import sweep_offline
from sites_app.models import BlackoutPeriod, Site

pytestmark = pytest.mark.django_db

FIXTURE = Path(settings.BASE_DIR) / "fixtures" / "demo.json"
BUILDER = Path(settings.BASE_DIR) / "scripts" / "build_demo_fixture.py"
DEMO_NOW = datetime(2026, 11, 25, 8, 45, tzinfo=UTC)  # what the file's dates lead up to
MODELS = (Site, Device, Job, Delivery, HealthCheck, FleetSnapshot, AuditLog)


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
    assert loaded == {
        "Site": 14,
        "Device": 30,
        "Job": 13,
        "Delivery": 23,
        "HealthCheck": 327,
        "FleetSnapshot": 14 * (96 + 145),  # every site: a day of 15-minute buckets, a week of hours
    }
    assert 24 <= audit_rows <= 60  # "a few dozen"


def test_every_loaded_object_passes_model_validation(demo):
    # loaddata writes raw rows, skipping validators; the data must satisfy them anyway.
    for model in MODELS:
        for obj in model.objects.all():
            obj.full_clean()


def test_jobs_cover_every_status_with_consistent_timestamps(demo):
    jobs = list(Job.objects.all())
    assert {job.status for job in jobs} == set(JobStatus.values)
    now = timezone.now()
    for job in jobs:
        assert job.created_at <= now
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
            assert device.last_seen <= timezone.now()


def test_sites_are_spread_over_regions_and_time_zones(demo):
    sites = list(Site.objects.all())
    assert all(re.fullmatch(r"site-\d{3}", s.site_id) for s in sites)
    assert len({s.region for s in sites}) >= 5
    assert len({s.timezone for s in sites}) >= 5
    assert all(s.location and s.name for s in sites)
    assert {"site-123", "site-456"} <= {s.site_id for s in sites}


def test_stores_keep_trading_hours_in_their_own_time_zones(demo):
    from sites_app.windows import next_openings

    with_windows = Site.objects.filter(maintenance_windows__isnull=False).distinct()
    assert with_windows.count() == 13  # the food court takes work any time
    assert with_windows.values("timezone").distinct().count() >= 7
    assert BlackoutPeriod.objects.exists()
    # Every store's window opens within the coming week, each at its own local hour.
    openings = next_openings(Site.objects.all())
    assert set(openings) == set(Site.objects.values_list("pk", flat=True))


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
    assert rows[0]["model"] == "monitoring_app.democlock"  # first: it decides the shift
    assert rows[0]["fields"]["built_at"] == "2026-11-25T08:45:00Z"
    assert {row["model"] for row in rows} == {
        "monitoring_app.democlock",
        "sites_app.site",
        "sites_app.maintenancewindow",
        "sites_app.blackoutperiod",
        "devices_app.device",
        "jobs_app.job",
        "jobs_app.delivery",
        "monitoring_app.healthcheck",
        "monitoring_app.fleetsnapshot",
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
    # The file's dates lead up to DEMO_NOW; only a scheduled job's start lies ahead.
    past = [
        value
        for row in rows
        for name, value in row["fields"].items()
        if (name.endswith("_at") or name == "last_seen") and name != "scheduled_at" and value
    ]
    assert max(past) <= "2026-11-25T08:45:00Z"
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


def _near_now(moment, within=dt.timedelta(minutes=5)):
    return abs(timezone.now() - moment) < within


def test_loading_on_any_date_moves_every_date_to_lead_up_to_now(demo):
    clock = DemoClock.objects.get()
    assert clock.built_at == DEMO_NOW and _near_now(clock.loaded_at)
    assert clock.shift == clock.loaded_at.replace(microsecond=0) - DEMO_NOW or abs(
        clock.shift - (clock.loaded_at - DEMO_NOW)
    ) < dt.timedelta(seconds=1)
    newest_check = HealthCheck.objects.latest("checked_at").checked_at
    assert _near_now(newest_check) and newest_check <= timezone.now()
    newest_seen = Device.objects.exclude(last_seen=None).latest("last_seen").last_seen
    assert newest_seen <= timezone.now() and _near_now(newest_seen, dt.timedelta(minutes=1))
    assert _near_now(Job.objects.latest("created_at").created_at, dt.timedelta(minutes=10))
    assert _near_now(Delivery.objects.latest("sent_at").sent_at, dt.timedelta(minutes=10))
    assert _near_now(AuditLog.objects.latest("id").created_at, dt.timedelta(days=1))
    # The charts: the newest snapshot is this bucket or the one before, on a bucket boundary.
    newest = FleetSnapshot.objects.latest("bucket_at").bucket_at
    assert timezone.now() - dt.timedelta(minutes=30) < newest <= timezone.now()
    assert newest.minute % 15 == 0 and newest.second == 0
    # The scheduled job still starts later today, after closing.
    scheduled = Job.objects.get(status=JobStatus.SCHEDULED)
    assert scheduled.scheduled_at > timezone.now()


def test_the_first_sweep_and_evaluation_after_loading_raise_only_the_staged_faults(demo):
    # A sweep that really judges (monitoring has been running: no fresh grace period).
    MonitoringState.objects.update_or_create(pk=1, defaults={"last_sweep_at": timezone.now()})
    online = set(Device.objects.filter(status="online").values_list("device_id", flat=True))
    assert len(online) == 20
    result = sweep_offline()
    assert result.marked_offline == 0 and not result.resumed
    assert set(Device.objects.filter(status="online").values_list("device_id", flat=True)) == online
    alerts_evaluate()
    opened = set(Alert.objects.values_list("kind", "device__device_id"))
    assert opened == {
        ("device_offline", "site-456-pos-terminal-3"),
        ("device_offline", "site-345-pos-terminal-2"),
        ("device_offline", "site-678-card-reader-1"),
        ("device_offline", "site-334-pos-terminal-1"),
        ("device_error", "site-123-receipt-printer-1"),
        ("device_error", "site-234-pos-terminal-2"),
        ("device_error", "site-112-pos-terminal-1"),
    }


def test_the_demo_jobs_deliveries_add_up_to_their_jobs(demo):
    for job in Job.objects.all():
        statuses = Counter(Delivery.objects.filter(job=job).values_list("status", flat=True))
        if job.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.ACKNOWLEDGED, JobStatus.SENT):
            assert statuses and set(statuses) == {job.status}, job
            assert job.materialised_at is not None
        else:
            assert not statuses, job  # not sent out yet (or withdrawn before sending)
        if job.status == JobStatus.PAUSED:
            assert job.status_reason
    # The running ones went to devices that still answer (the simulator plays them).
    running = Delivery.objects.filter(status__in=["sent", "acknowledged"]).select_related("device")
    assert {d.device.status for d in running} <= {"online", "error"}
    completed = Job.objects.get(site__site_id="site-123", status=JobStatus.COMPLETED)
    assert completed.deliveries.count() == 5  # "all 5 terminals applied ..."


def test_devices_carry_their_latest_health(demo):
    for device in Device.objects.exclude(status="unknown"):
        latest = device.health_checks.latest("checked_at")
        assert (device.health_status, device.last_health_at) == (latest.status, latest.checked_at)
    assert Device.objects.get(device_id="site-456-receipt-printer-1").health_status == "degraded"
