"""The operator console in a real browser: what an admin and a site manager do, end to end.

Each test drives headless Chromium against the live server through the page helpers of
console.py (selectors live there), screenshots each main page and checks it with axe-core.
"""

import datetime

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.choices import MembershipRole
from accounts.tests.factories import AdminUserFactory, SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app.models import Job
from monitoring_app.choices import AlertKind, AlertSeverity, AuditEvent
from monitoring_app.models import Alert, AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin():
    return AdminUserFactory(username="ada")


@pytest.fixture
def two_sites():
    north = SiteFactory(site_id="site-north", name="North Branch")
    south = SiteFactory(site_id="site-south", name="South Branch")
    DeviceFactory(site=north, device_id="pos-north-01", name="North till 1")
    DeviceFactory(site=north, device_id="pos-north-02", name="North till 2")
    DeviceFactory(site=south, device_id="pos-south-01", name="South till 1")
    return north, south


@pytest.fixture
def manager(two_sites):
    north, _ = two_sites
    user = UserFactory(username="manny", is_staff=True)
    SiteMembershipFactory(user=user, site=north, role=MembershipRole.MANAGER)
    return user


def test_admin_logs_in_and_sees_the_landing_pages(console, admin, two_sites):
    console.login("ada", check=True)
    console.open_index()
    assert {"Devices", "Jobs", "Sites"} <= {s.split(" ")[0] for s in console.index_sections()}, (
        console.index_sections()
    )
    console.check("index")

    console.open_fleet_dashboard()
    counts = console.dashboard_counts()
    assert counts["total"] == "3", counts
    console.check("fleet-dashboard")

    console.logout()


def test_a_site_manager_sees_only_their_sites(console, manager, two_sites):
    console.login("manny")
    console.open_index()
    console.check("index-manager")

    console.open_changelist("devices_app/device")
    rows = "\n".join(console.result_rows())
    assert "pos-north-01" in rows and "pos-north-02" in rows
    assert "pos-south-01" not in rows
    console.check("device-list-manager")

    console.open_sites()
    rows = "\n".join(console.result_rows())
    assert "site-north" in rows and "site-south" not in rows, rows
    console.check("site-list-manager")
    console.open_row("site-north")
    expect(console.page.get_by_text("North Branch").first).to_be_visible()
    console.check("site-page")

    console.open_fleet_dashboard()
    assert console.dashboard_counts()["total"] == "2"


def test_an_operator_finds_a_device_and_opens_it(console, admin, two_sites):
    console.login("ada")
    console.find_device("north-02")
    rows = console.result_rows()
    assert len(rows) == 1 and "pos-north-02" in rows[0], rows
    console.check("device-search")

    console.open_device("pos-north-02")
    expect(console.page.get_by_text("North till 2").first).to_be_visible()
    console.check("device-page")


def test_a_job_made_in_the_form_runs_to_completed_on_simulated_terminals(
    console, admin, two_sites, job_worker, terminals
):
    north, _ = two_sites
    terminals(list(north.devices.all()), admin)
    console.login("ada")

    console.open_new_job()
    console.fill_job(site="site-north", action="Update configuration", description="Browser test rollout")
    preview = console.preview_job()
    assert "2 devices at 1 site" in preview, preview
    console.check("job-form-preview")

    job_id = console.save_job()
    console.wait_for_job_status(job_id, "Completed")
    console.check("job-page-completed")
    assert Job.objects.get(pk=job_id).description == "Browser test rollout"


def test_an_operator_pauses_and_resumes_a_running_job(console, admin, two_sites, job_worker):
    from jobs_app.services import job_create

    north, _ = two_sites
    # No terminal answers, so the job stays running (sent) until it is paused.
    job = job_create(actor=admin, site=north, action="restart_pos_app")
    console.login("ada")
    console.wait_for_job_status(job.pk, "Sent")

    console.open_changelist("jobs_app/job")
    console.check("job-list")
    console.open_job(job.pk)
    console.check("job-page-running")
    assert "Paused" in console.job_control(job.pk, "Pause", reason="store is busy")
    assert console.job_status() == "Paused"
    job.refresh_from_db()
    assert job.status == "paused"

    assert "Resumed" in console.job_control(job.pk, "Resume")
    job.refresh_from_db()
    assert job.status != "paused"
    assert console.job_status() != "Paused"


def test_a_site_manager_acknowledges_an_alert(console, manager, two_sites):
    north, _ = two_sites
    now = timezone.now()
    alert = Alert.objects.create(
        site=north,
        device=north.devices.first(),
        kind=AlertKind.DEVICE_OFFLINE,
        severity=AlertSeverity.CRITICAL,
        message="pos-north-01 has been offline for 10 minutes",
        opened_at=now - datetime.timedelta(minutes=10),
        last_seen_at=now,
    )
    console.login("manny")
    console.open_fleet_dashboard()
    expect(console.page.locator("#open-alerts")).to_contain_text("pos-north-01 has been offline")
    console.check("fleet-dashboard-alert")

    answer = console.acknowledge_alert("pos-north-01 has been offline")
    assert "Acknowledged 1 alert." in answer, answer
    console.check("alert-list")
    alert.refresh_from_db()
    assert alert.acknowledged_at is not None and alert.acknowledged_by.username == "manny"


def test_an_admin_exports_the_audit_trail_as_csv(console, admin, two_sites):
    north, _ = two_sites
    console.login("ada")
    console.open_changelist("monitoring_app/auditlog")
    console.check("audit-list")

    rows = console.export_audit_csv()
    assert rows[0][:3] == ["id", "created_at", "event_type"], rows[0]
    login = AuditLog.objects.filter(event_type=AuditEvent.USER_LOGIN).latest("id")
    assert [str(login.pk), AuditEvent.USER_LOGIN] in [row[:1] + row[2:3] for row in rows[1:]], rows[:5]
