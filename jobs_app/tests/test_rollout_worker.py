"""Deferral and rollback end to end: a real Celery worker dispatching (its follow-up passes
are what re-offer deferred work), simulated tills as real clients over HTTP (a live server)
and MQTT (the local Mosquitto and a bridge)."""

import threading
import time

import pytest
from django.core.management import call_command

from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from jobs_app import services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_mqtt import bridge_args, mqtt_device
from jobs_app.tests.test_worker import wait_for, worker  # noqa: F401 - the fixture
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


def simulate(live_server, tmp_path, site, seconds, *extra):
    call_command(
        "simulate_fleet",
        "--devices=10",
        f"--site={site.site_id}",
        f"--base-url={live_server.url}",
        "--poll-interval=0.1",
        "--work-seconds=0",
        f"--duration={seconds}",
        f"--credentials-file={tmp_path / 'terminals.json'}",
        *extra,
    )


def simulate_until(done, live_server, tmp_path, site, *extra, deadline=60.0):
    """Run the simulated tills in short rounds until `done()` holds.

    A fixed simulation length is a race against the machine's load (a busy CI host answered a
    6-second run's second offer too late); the rounds reuse the tills' stored credentials, so
    each round is the same fleet polling again.
    """
    give_up = time.monotonic() + deadline
    while not done():
        if time.monotonic() > give_up:
            pytest.fail(f"the simulated tills did not finish within {deadline} s")
        simulate(live_server, tmp_path, site, 2, *extra)


def job_done(job):
    return Job.objects.get(pk=job.pk).status in (JobStatus.COMPLETED, JobStatus.FAILED)


@pytest.mark.parametrize(
    ("exhausted", "delivery_status", "job_status"),
    [("force", "completed", "completed"), ("skip", "cancelled", "completed"), ("fail", "failed", "failed")],
)
def test_busy_tills_over_http_defer_until_the_policy_decides(
    worker,  # noqa: F811
    live_server,
    admin_user,
    tmp_path,
    exhausted,
    delivery_status,
    job_status,
):
    site = SiteFactory()
    DeviceFactory.create_batch(2, site=site)
    job = services.job_create(
        actor=admin_user,
        site=site,
        action="update_config",
        payload={"tax": 0.2},
        max_deferrals=1,
        deferral_exhausted=exhausted,
    )
    # Every till is always busy: it defers each offer it may defer (never a forced one).
    simulate_until(lambda: job_done(job), live_server, tmp_path, site, "--defer-prob=1", "--defer-seconds=1")
    deliveries = list(Delivery.objects.filter(job=job))
    assert {d.status for d in deliveries} == {delivery_status}
    assert {d.defer_count for d in deliveries} == {1}
    assert {d.forced for d in deliveries} == {exhausted == "force"}
    assert Job.objects.get(pk=job.pk).status == job_status


def test_busy_mqtt_tills_are_offered_the_work_again_and_then_forced(worker, admin_user):  # noqa: F811
    site = SiteFactory()
    devices = [mqtt_device(site=site) for _ in range(2)]
    threads = [
        threading.Thread(target=call_command, args=bridge_args(seconds=10), daemon=True),
        threading.Thread(
            target=call_command,
            args=(
                "simulate_fleet",
                "--channel=mqtt",
                "--devices=2",
                "--work-seconds=0",
                "--defer-prob=1",
                "--defer-seconds=1",
                "--duration=10",
            ),
            kwargs={"site": site.site_id},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)  # the terminals subscribe before the first offer is published
    job = services.job_create(
        actor=admin_user,
        site=site,
        action="update_config",
        payload={"tax": 0.2},
        max_deferrals=2,
        deferral_exhausted="force",
    )
    try:
        wait_for(lambda: job_done(job), timeout=15)
    finally:
        for thread in threads:
            thread.join(timeout=15)
    deliveries = list(Delivery.objects.filter(job=job))
    # Two deferrals granted (each re-offer a new MQTT message), then forced and done.
    assert {(d.status, d.defer_count, d.forced) for d in deliveries} == {("completed", 2, True)}
    assert {Device.objects.get(pk=d.pk).config.get("tax") for d in devices} == {0.2}


def test_a_failing_change_rolls_itself_back_and_the_tills_get_their_settings_back(
    worker,  # noqa: F811
    live_server,
    admin_user,
    tmp_path,
    settings,
):
    settings.HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 4
    good, bad = SiteFactory(), SiteFactory()
    for number in range(3):
        DeviceFactory(site=good, config={"gateway": f"https://old-{number}.example", "lang": "en"})
    DeviceFactory.create_batch(3, site=bad, config={"gateway": "https://old.example"})
    job = services.job_create(
        actor=admin_user,
        site=good,
        extra_sites=[bad],
        action="update_config",
        payload={"gateway": "https://new.example"},
        failure_threshold_percent=30,
        rollback_on_failure=True,
        max_in_flight_per_site=2,
    )
    # The first store's tills take the change (and say what they had); the second's fail it.
    took = Delivery.objects.filter(job=job, site=good, status=DeliveryStatus.COMPLETED)
    simulate_until(lambda: took.count() == 3, live_server, tmp_path, good)
    assert {d.config["gateway"] for d in Device.objects.filter(site=good)} == {"https://new.example"}
    simulate_until(
        lambda: Job.objects.filter(rollback_of=job).exists(), live_server, tmp_path, bad, "--failure-rate=1"
    )
    assert Job.objects.get(pk=job.pk).status == JobStatus.PAUSED
    rollback = Job.objects.get(rollback_of=job)
    assert rollback.max_in_flight_per_site == 2
    # The rollback reaches the tills that took the change, and they get their own settings back.
    simulate_until(lambda: job_done(rollback), live_server, tmp_path, good)
    assert Job.objects.get(pk=rollback.pk).status == JobStatus.COMPLETED
    assert sorted(d.config["gateway"] for d in Device.objects.filter(site=good)) == [
        f"https://old-{number}.example" for number in range(3)
    ]
    assert {d.config["lang"] for d in Device.objects.filter(site=good)} == {"en"}
    # What the rollback replaced is recorded too (so it could itself be undone).
    assert {d.previous_config["gateway"] for d in rollback.deliveries.all()} == {"https://new.example"}
