"""Waves end to end: a real Celery worker dispatches, simulated terminals (simulate_fleet,
real HTTP clients against a live server) answer, and the gate decides, with no test code
between them: a bad change stops after its canary, a good one reaches every device."""

import pytest
from django.core.management import call_command

from devices_app.tests.factories import DeviceFactory
from homepot.tests.celery_worker import running_worker
from jobs_app import services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_worker import TEST_BROKER, wait_for
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(settings):
    settings.HOMEPOT_JOBS_REDISPATCH_SECONDS = 0.05
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-test-waves"):
        yield


def play(live_server, tmp_path, fail_share: str, seconds: float) -> None:
    """The terminals answer for `seconds` (generous: the machine may be shared and slow;
    issuing their credentials alone takes seconds)."""
    call_command(
        "simulate_fleet",
        "--devices=12",
        f"--base-url={live_server.url}",
        "--poll-interval=0.05",
        "--work-seconds=0",
        f"--fail-share={fail_share}",
        f"--duration={seconds}",
        f"--credentials-file={tmp_path / 'terminals.json'}",
    )


def chain_job(admin_user):
    stores = SiteFactory.create_batch(4)
    for store in stores:
        DeviceFactory.create_batch(3, site=store)
    return services.job_create(
        actor=admin_user,
        site=stores[0],
        extra_sites=stores[1:],
        action="update_config",
        payload={"tax": 0.2},
        rollout_canary=4,
        rollout_waves=[50],
        wave_gate_percent=90,
    )


def test_a_bad_change_stops_after_the_canary(worker, live_server, admin_user, tmp_path):
    job = chain_job(admin_user)

    play(live_server, tmp_path, fail_share="0.5", seconds=10)

    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.PAUSED)
    job.refresh_from_db()
    assert job.status_reason.startswith("Canary below its gate: 2 of 4 answers succeeded")
    touched = Delivery.objects.filter(job=job).exclude(status=DeliveryStatus.PENDING)
    assert set(touched.values_list("wave", flat=True)) == {0}
    assert Delivery.objects.filter(job=job, wave__gt=0, status=DeliveryStatus.PENDING).count() == 8
    assert not AuditLog.objects.filter(job_id=job.pk, event_type="job.wave_opened").exists()


def test_a_good_change_reaches_every_device_wave_by_wave(worker, live_server, admin_user, tmp_path):
    job = chain_job(admin_user)

    play(live_server, tmp_path, fail_share="0", seconds=20)

    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED)
    assert Delivery.objects.filter(job=job, status=DeliveryStatus.COMPLETED).count() == 12
    opened = AuditLog.objects.filter(job_id=job.pk, event_type="job.wave_opened")
    assert sorted(row.new_values["wave_open"] for row in opened) == [1, 2]
