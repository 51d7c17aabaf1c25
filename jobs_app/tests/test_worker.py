"""Dispatch, push retry and time-out through a real Celery worker against Redis.

The worker runs in a thread of this process (celery.contrib.testing), consuming a queue of
its own on a separate Redis database, so it never meets the development worker's messages.
Data must be committed for the worker's connection to see it: transaction=True.
"""

import threading
import time

import pytest
from celery.signals import after_task_publish, task_postrun

from devices_app.tests.factories import DeviceFactory
from homepot.tests.celery_worker import running_worker
from jobs_app import services, tasks
from jobs_app.channels import PushError
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from sites_app.tests.factories import SiteFactory

TEST_BROKER = "redis://127.0.0.1:6379/14"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(settings):
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 0.05
    settings.HOMEPOT_JOBS_REDISPATCH_SECONDS = 0.05
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-test"):
        yield


def wait_for(predicate, timeout=20.0):
    """Poll until `predicate()` holds; fail (not a timing assertion: a generous deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up waiting after {timeout} s")


def launch(admin_user, devices=5, **fields):
    site = SiteFactory()
    DeviceFactory.create_batch(devices, site=site)
    # job_create enqueues the dispatcher on commit: the real path, through the broker.
    return services.job_create(actor=admin_user, site=site, action="update_config", **fields)


def counts(job):
    return {s: n for s, n in services.job_progress(job)["counts"].items() if n}


def test_the_worker_dispatches_a_committed_job(worker, admin_user):
    job = launch(admin_user, devices=7, batch_size=3)

    wait_for(lambda: counts(job) == {"sent": 7})
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.SENT)
    assert set(Delivery.objects.filter(job=job).values_list("attempts", flat=True)) == {1}


def test_held_work_is_dispatched_as_devices_finish(worker, admin_user):
    job = launch(admin_user, devices=3, max_in_flight_per_site=1)
    wait_for(lambda: counts(job) == {"sent": 1, "pending": 2})

    for _ in range(3):
        wait_for(lambda: Delivery.objects.filter(job=job, status=DeliveryStatus.SENT).exists())
        delivery = Delivery.objects.select_related("device").get(job=job, status=DeliveryStatus.SENT)
        services.delivery_report(device=delivery.device, delivery_id=delivery.pk, outcome="completed")

    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED)


class FlakyChannel:
    failures_left = 2
    pushes = 0

    def push(self, batch):
        FlakyChannel.pushes += 1
        if FlakyChannel.failures_left > 0:
            FlakyChannel.failures_left -= 1
            raise PushError("broker unreachable")


def test_transient_push_failures_are_retried_with_backoff(worker, admin_user, monkeypatch):
    FlakyChannel.failures_left = 2
    monkeypatch.setattr("jobs_app.dispatch.get_channel", lambda name: FlakyChannel())
    job = launch(admin_user, devices=2)

    wait_for(lambda: counts(job) == {"sent": 2})
    assert set(Delivery.objects.filter(job=job).values_list("attempts", flat=True)) == {3}


def test_pushes_that_keep_failing_fail_the_delivery_with_the_error(worker, admin_user, monkeypatch, settings):
    settings.HOMEPOT_JOBS_PUSH_MAX_ATTEMPTS = 3
    FlakyChannel.failures_left = 10**6
    monkeypatch.setattr("jobs_app.dispatch.get_channel", lambda name: FlakyChannel())
    job = launch(admin_user, devices=2)

    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.FAILED)
    assert list(
        Delivery.objects.filter(job=job).order_by().values_list("status", "attempts", "last_error").distinct()
    ) == [("failed", 3, "Push failed: broker unreachable")]


def test_the_periodic_task_times_out_late_deliveries(worker, admin_user):
    import datetime

    from django.utils import timezone

    job = launch(admin_user, devices=2, ttl=datetime.timedelta(hours=1))
    wait_for(lambda: counts(job) == {"sent": 2})
    Delivery.objects.filter(job=job).update(deadline=timezone.now() - datetime.timedelta(seconds=1))

    tasks.jobs_tick.delay()

    wait_for(lambda: counts(job) == {"timed_out": 2})
    wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.FAILED)


class DispatchMessages:
    """The `dispatch_job` messages published by this process (the test and its worker
    thread) and those the worker has run: what is still pending, counted from outside."""

    def __init__(self):
        self._lock = threading.Lock()
        self.due_now: set[str] = set()
        self.later: set[str] = set()  # published with a countdown
        self.run: set[str] = set()

    def published(self, sender=None, headers=None, **kwargs):
        if sender == tasks.dispatch_job.name:
            with self._lock:
                (self.later if headers.get("eta") else self.due_now).add(headers["id"])

    def finished(self, sender=None, task_id=None, **kwargs):
        if getattr(sender, "name", None) == tasks.dispatch_job.name:
            with self._lock:
                self.run.add(task_id)

    def settled(self) -> bool:
        """Every message due now has been run."""
        with self._lock:
            return self.due_now <= self.run

    def pending(self) -> int:
        with self._lock:
            return len((self.due_now | self.later) - self.run)


@pytest.fixture
def dispatch_messages():
    messages = DispatchMessages()
    after_task_publish.connect(messages.published, weak=False)
    task_postrun.connect(messages.finished, weak=False)
    yield messages
    after_task_publish.disconnect(messages.published)
    task_postrun.disconnect(messages.finished)


def beat_ticks(messages, count):
    """Run beat's tick `count` times, each once the dispatch passes it started are over."""
    for _ in range(count):
        tasks.finish_rollups()
        wait_for(messages.settled)


def test_beat_ticks_and_held_passes_do_not_multiply_the_dispatch_passes_of_a_job(
    worker, dispatch_messages, admin_user, settings
):
    # Held work is looked at again only after an hour here, so every follow-up a pass
    # asks for is still pending when it is counted.
    settings.HOMEPOT_JOBS_REDISPATCH_SECONDS = 3600
    job = launch(admin_user, devices=3, max_in_flight_per_site=1)
    wait_for(lambda: counts(job) == {"sent": 1, "pending": 2})
    wait_for(dispatch_messages.settled)

    for _ in range(10):
        beat_ticks(dispatch_messages, 1)
        # A held pass from a message without the job's ticket (a redelivery after a crash).
        tasks.dispatch_job.delay(job.pk)
        wait_for(dispatch_messages.settled)

    assert dispatch_messages.pending() == 1
    assert counts(job) == {"sent": 1, "pending": 2}


def test_a_push_backoff_longer_than_the_tick_is_honoured(
    worker, dispatch_messages, admin_user, monkeypatch, settings
):
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 3600
    FlakyChannel.failures_left, FlakyChannel.pushes = 1, 0
    monkeypatch.setattr("jobs_app.dispatch.get_channel", lambda name: FlakyChannel())
    job = launch(admin_user, devices=2)
    wait_for(lambda: set(Delivery.objects.filter(job=job).values_list("attempts", flat=True)) == {1})
    wait_for(dispatch_messages.settled)

    beat_ticks(dispatch_messages, 5)

    assert counts(job) == {"pending": 2}
    assert FlakyChannel.pushes == 1


def test_jobs_created_through_the_api_reach_a_real_worker_over_homepot_broker(worker, admin_api, settings):
    """The enqueue's transport (homepot.broker: kombu's Redis transport with a kept client)
    carries a job created through the API to a real worker, publish after publish on one
    client; the worker consumes with the same transport."""
    from homepot.broker import Channel
    from homepot.celery import app

    assert settings.CELERY_BROKER_TRANSPORT == "homepot.broker:Transport"
    site = SiteFactory()
    DeviceFactory.create_batch(3, site=site)
    ids = []
    for _ in range(3):
        response = admin_api.post(
            "/api/v1/jobs", {"site_id": site.site_id, "action": "update_config"}, format="json"
        )
        assert response.status_code == 201, response.content
        ids.append(response.json()["id"])
    for job_id in ids:
        wait_for(lambda job_id=job_id: Job.objects.get(pk=job_id).status == JobStatus.SENT)
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        assert isinstance(channel, Channel)
        assert channel._create_client() is channel._create_client()  # kept, not rebuilt
