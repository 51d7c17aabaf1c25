"""simulate_fleet (real HTTP clients against a live server) and jobs_tick."""

import datetime
import io
import json
import re
import stat

import pytest
from django.core.management import call_command
from django.utils import timezone

from devices_app.models import Device, DeviceCredential
from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.choices import JobStatus
from jobs_app.models import Delivery, Job
from monitoring_app.models import HealthCheck
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("failure_rate", "outcome"), [("0", "completed"), ("1", "failed")])
def test_simulated_terminals_poll_and_answer_over_http(
    live_server, admin_user, failure_rate, outcome, tmp_path
):
    site = SiteFactory()
    DeviceFactory.create_batch(3, site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    dispatch.dispatch_pass(job.pk)

    call_command(
        "simulate_fleet",
        "--devices=3",
        f"--base-url={live_server.url}",
        "--poll-interval=0.05",
        "--work-seconds=0",
        f"--failure-rate={failure_rate}",
        "--duration=2",
        f"--credentials-file={tmp_path / 'terminals.json'}",
    )

    assert set(Delivery.objects.filter(job=job).values_list("status", flat=True)) == {outcome}
    job.refresh_from_db()
    assert job.status == (JobStatus.COMPLETED if outcome == "completed" else JobStatus.FAILED)


@pytest.mark.django_db
def test_jobs_tick_starts_due_jobs_and_times_out_late_deliveries(
    admin_user, settings, django_capture_on_commit_callbacks
):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # what run.sh does without Redis
    from homepot.celery import app

    app.conf.task_always_eager = True
    try:
        site = SiteFactory()
        DeviceFactory.create_batch(2, site=site)
        late = services.job_create(
            actor=admin_user, site=site, action="update_config", ttl=datetime.timedelta(minutes=1)
        )
        dispatch.dispatch_pass(late.pk)
        Delivery.objects.filter(job=late).update(deadline=timezone.now() - datetime.timedelta(seconds=1))
        due = services.job_create(
            actor=admin_user,
            site=site,
            action="restart_pos_app",
            scheduled_at=timezone.now() + datetime.timedelta(hours=1),
        )
        Job.objects.filter(pk=due.pk).update(scheduled_at=timezone.now() - datetime.timedelta(seconds=1))

        # The tick commits as it goes (autocommit); here, inside the test's transaction,
        # the dispatcher it enqueues after commit runs when the block ends.
        with django_capture_on_commit_callbacks(execute=True):
            call_command("jobs_tick", verbosity=0)
    finally:
        app.conf.task_always_eager = False

    late.refresh_from_db()
    due.refresh_from_db()
    assert late.status == JobStatus.FAILED
    assert due.status == JobStatus.SENT  # started, dispatched in-process, and rolled up
    assert set(Delivery.objects.filter(job=due).values_list("status", flat=True)) == {"sent"}


def play_demo(live_server, credentials, out) -> None:
    call_command(
        "simulate_fleet",
        "--demo",
        f"--base-url={live_server.url}",
        "--poll-interval=0.1",
        "--heartbeat-interval=0.5",
        "--health-interval=0.5",
        "--work-seconds=0",
        "--duration=3",
        f"--credentials-file={credentials}",
        stdout=out,
    )


@pytest.mark.django_db(transaction=True)
def test_the_demo_fleet_keeps_the_chain_alive_finishes_its_jobs_and_keeps_its_credentials(
    live_server, tmp_path
):
    call_command("loaddata", "demo", verbosity=0)
    loaded_at = timezone.now()
    credentials = tmp_path / "var" / "terminals.json"
    out = io.StringIO()

    play_demo(live_server, credentials, out)

    # The jobs in flight went to played terminals, which finished them; nothing hangs.
    assert not Delivery.objects.filter(status__in=["sent", "acknowledged"]).exists()
    assert set(
        Job.objects.filter(
            site__site_id__in=["site-123", "site-112"], completed_at__gt=loaded_at
        ).values_list("status", flat=True)
    ) == {JobStatus.COMPLETED}
    # The living reported their health (a store in its staged outage may have been silent).
    reporters = set(
        HealthCheck.objects.filter(checked_at__gt=loaded_at).values_list("device__device_id", flat=True)
    )
    assert {"site-123-pos-terminal-1", "site-123-pos-terminal-4", "site-112-pos-terminal-1"} <= reporters
    # The pilot's terminals now report the version they installed.
    assert Device.objects.get(device_id="site-123-pos-terminal-1").firmware_version == "4.2.2"
    # The staged faults stay as staged: offline ones silent, errors still errors.
    assert not reporters & {"site-456-pos-terminal-3", "site-334-pos-terminal-1", "site-556-pos-terminal-1"}
    assert Device.objects.get(device_id="site-456-pos-terminal-3").status == "offline"
    assert Device.objects.get(device_id="site-112-pos-terminal-1").status == "error"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert "0 stored credentials reused, 24 issued" in out.getvalue()
    # The stores live in their own time zones: the demo says where a maintenance window is open.
    active = Site.objects.filter(is_active=True).count()
    assert re.search(rf"demo: maintenance windows open at \d+ of {active} stores", out.getvalue())

    # A restart reuses every stored credential: nothing revoked, nothing issued.
    issued = DeviceCredential.objects.count()
    out = io.StringIO()
    play_demo(live_server, credentials, out)
    assert "24 stored credentials reused, 0 issued" in out.getvalue()
    assert DeviceCredential.objects.count() == issued
    assert not DeviceCredential.objects.filter(revoked_at__isnull=False).exists()


@pytest.mark.django_db(transaction=True)
def test_a_stored_credential_that_no_longer_authenticates_is_replaced(live_server, tmp_path):
    site = SiteFactory()
    devices = DeviceFactory.create_batch(2, site=site)
    credentials = tmp_path / "terminals.json"
    credentials.write_text(json.dumps({devices[0].device_id: "hpd_not-a-credential"}))
    args = ["simulate_fleet", "--devices=2", f"--base-url={live_server.url}", "--duration=0.5"]
    out = io.StringIO()

    call_command(*args, f"--credentials-file={credentials}", stdout=out)

    assert "0 stored credentials reused, 2 issued" in out.getvalue()
    assert set(json.loads(credentials.read_text())) == {d.device_id for d in devices}
