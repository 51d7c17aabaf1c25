"""simulate_fleet (real HTTP clients against a live server) and jobs_tick."""

import datetime

import pytest
from django.core.management import call_command
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.choices import JobStatus
from jobs_app.models import Delivery, Job
from sites_app.tests.factories import SiteFactory


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("failure_rate", "outcome"), [("0", "completed"), ("1", "failed")])
def test_simulated_terminals_poll_and_answer_over_http(live_server, admin_user, failure_rate, outcome):
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
