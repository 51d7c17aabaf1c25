"""The delivery state machine, the job rollup and the dispatcher, through the services."""

import datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.channels import PushError
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

PENDING, SENT, ACK = DeliveryStatus.PENDING, DeliveryStatus.SENT, DeliveryStatus.ACKNOWLEDGED
COMPLETED, FAILED, TIMED_OUT, CANCELLED = (
    DeliveryStatus.COMPLETED,
    DeliveryStatus.FAILED,
    DeliveryStatus.TIMED_OUT,
    DeliveryStatus.CANCELLED,
)


def launched(admin_user, devices=3, **fields):
    site = SiteFactory()
    DeviceFactory.create_batch(devices, site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config", **fields)
    return job


def statuses(job):
    return sorted(Delivery.objects.filter(job=job).values_list("status", flat=True))


def set_status(delivery, status):
    Delivery.objects.filter(pk=delivery.pk).update(status=status)
    delivery.refresh_from_db()
    return delivery


# --- Materialising ------------------------------------------------------------------------


def test_deliveries_are_created_once_one_per_targeted_device(admin_user):
    job = launched(admin_user, devices=4)
    DeviceFactory(site=SiteFactory())  # another site's device is not targeted

    assert services.deliveries_materialise(job.pk) == 4
    assert services.deliveries_materialise(job.pk) == 0  # a replay inserts nothing
    assert Delivery.objects.filter(job=job).count() == 4


def test_segment_extra_sites_and_hand_picked_devices_narrow_the_targets(admin_user):
    first, second, third = SiteFactory(), SiteFactory(), SiteFactory()
    old = DeviceFactory(site=first, firmware_version="4.1.7")
    DeviceFactory(site=first, firmware_version="4.2.1")
    on_second = DeviceFactory(site=second, firmware_version="4.1.7")
    DeviceFactory(site=third, firmware_version="4.1.7")

    segmented = services.job_create(
        actor=admin_user,
        site=first,
        extra_sites=[second],
        action="software_update",
        payload={"version": "4.2.1"},
        segment={"firmware_version": ["4.1.7"]},
    )
    picked = services.job_create(actor=admin_user, site=first, action="update_config", target_devices=[old])
    services.deliveries_materialise(segmented.pk)
    services.deliveries_materialise(picked.pk)

    assert set(segmented.deliveries.values_list("device", flat=True)) == {old.pk, on_second.pk}
    assert list(picked.deliveries.values_list("device", flat=True)) == [old.pk]


@pytest.mark.parametrize(
    "segment", [["pos"], {"colour": ["red"]}, {"device_type": ["toaster"]}, {"status": []}, {"status": [1]}]
)
def test_a_malformed_segment_is_refused(admin_user, segment):
    with pytest.raises(ValidationError) as refused:
        services.job_create(actor=admin_user, site=SiteFactory(), action="update_config", segment=segment)
    assert "segment" in refused.value.message_dict
    assert not Job.objects.exists()


def test_hand_picked_devices_must_be_at_the_jobs_sites(admin_user):
    stray = DeviceFactory()
    with pytest.raises(ValidationError) as refused:
        services.job_create(
            actor=admin_user, site=SiteFactory(), action="update_config", target_devices=[stray]
        )
    assert "target_devices" in refused.value.message_dict


def test_a_job_scheduled_for_later_waits_and_starts_when_due(admin_user, django_capture_on_commit_callbacks):
    later = timezone.now() + datetime.timedelta(hours=1)
    job = launched(admin_user, scheduled_at=later)
    assert job.status == JobStatus.SCHEDULED

    assert services.jobs_start_due() == []
    with django_capture_on_commit_callbacks() as enqueued:
        assert services.jobs_start_due(now=later + datetime.timedelta(seconds=1)) == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and len(enqueued) == 1
    assert services.jobs_start_due(now=later + datetime.timedelta(seconds=1)) == []  # no repeat


# --- The state machine --------------------------------------------------------------------

ALLOWED_ACK = {PENDING: ACK, SENT: ACK}
ALLOWED_REPORT = {PENDING: "to", SENT: "to", ACK: "to", TIMED_OUT: "to"}


@pytest.mark.parametrize("start", [PENDING, SENT, ACK, COMPLETED, FAILED, TIMED_OUT, CANCELLED])
def test_acknowledge_moves_only_pending_or_sent(admin_user, start):
    job = launched(admin_user, devices=1)
    services.deliveries_materialise(job.pk)
    delivery = set_status(Delivery.objects.get(job=job), start)

    services.delivery_acknowledge(device=delivery.device, delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert delivery.status == ALLOWED_ACK.get(start, start)


@pytest.mark.parametrize("outcome", [COMPLETED, FAILED])
@pytest.mark.parametrize("start", [PENDING, SENT, ACK, COMPLETED, FAILED, TIMED_OUT, CANCELLED])
def test_reports_move_only_unfinished_or_timed_out_deliveries(admin_user, start, outcome):
    job = launched(admin_user, devices=1)
    services.deliveries_materialise(job.pk)
    delivery = set_status(Delivery.objects.get(job=job), start)

    services.delivery_report(
        device=delivery.device, delivery_id=delivery.pk, outcome=outcome, error="disk full"
    )

    delivery.refresh_from_db()
    assert delivery.status == (outcome if start in ALLOWED_REPORT else start)
    if start in ALLOWED_REPORT:
        assert delivery.acknowledged_at is not None  # a result implies the ack that may have been lost
        assert (delivery.last_error == "disk full") is (outcome == FAILED)


def test_mark_sent_is_a_no_op_on_a_replay(admin_user):
    job = launched(admin_user, devices=2)
    services.deliveries_materialise(job.pk)
    ids = list(Delivery.objects.filter(job=job).values_list("pk", flat=True))

    assert services.deliveries_mark_sent(ids) == 2
    assert services.deliveries_mark_sent(ids) == 0
    assert set(Delivery.objects.filter(job=job).values_list("attempts", flat=True)) == {1}


def test_a_device_cannot_touch_another_devices_delivery(admin_user):
    job = launched(admin_user, devices=2)
    services.deliveries_materialise(job.pk)
    mine, theirs = Delivery.objects.filter(job=job).select_related("device")

    with pytest.raises(Http404):
        services.delivery_acknowledge(device=mine.device, delivery_id=theirs.pk)
    with pytest.raises(Http404):
        services.delivery_report(device=mine.device, delivery_id=10**12, outcome=COMPLETED)
    theirs.refresh_from_db()
    assert theirs.status == PENDING


# --- Dispatch and rollup -----------------------------------------------------------------------


def test_dispatch_sends_everything_in_keyset_batches_and_rolls_up(admin_user, django_assert_max_num_queries):
    job = launched(admin_user, devices=7, batch_size=3)

    result = dispatch.dispatch_pass(job.pk)

    assert (result.sent, result.batches) == (7, 3)
    assert statuses(job) == [SENT] * 7
    job.refresh_from_db()
    assert job.status == JobStatus.SENT and job.started_at is not None
    assert AuditLog.objects.filter(event_type="job.started", job_id=job.pk).count() == 1
    # A replay changes nothing and is cheap.
    with django_assert_max_num_queries(20):
        assert dispatch.dispatch_pass(job.pk).sent == 0


def test_queries_per_batch_do_not_grow_with_batch_size(admin_user):
    small = launched(admin_user, devices=4, batch_size=2)
    large = launched(admin_user, devices=40, batch_size=20)
    counted = []
    for job in (small, large):
        services.deliveries_materialise(job.pk)
        with CaptureQueriesContext(connection) as queries:
            result = dispatch.dispatch_pass(job.pk)
        counted.append(len(queries) / result.batches)
    assert counted[0] == counted[1]


def test_the_job_follows_its_deliveries_to_completed(admin_user):
    job = launched(admin_user, devices=2)
    dispatch.dispatch_pass(job.pk)
    first, second = Delivery.objects.filter(job=job).select_related("device")

    services.delivery_acknowledge(device=first.device, delivery_id=first.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SENT  # not all have answered yet
    services.delivery_acknowledge(device=second.device, delivery_id=second.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.ACKNOWLEDGED
    services.delivery_report(device=first.device, delivery_id=first.pk, outcome=COMPLETED)
    services.delivery_report(device=second.device, delivery_id=second.pk, outcome=COMPLETED)
    services.delivery_report(device=second.device, delivery_id=second.pk, outcome=COMPLETED)  # repeat

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.completed_at >= job.started_at
    assert AuditLog.objects.filter(event_type="job.completed", job_id=job.pk).count() == 1
    progress = services.job_progress(job)
    assert (progress["total"], progress["counts"]["completed"], progress["percent"]) == (2, 2, 100.0)


def test_a_job_with_a_failed_delivery_ends_failed_with_the_reason(admin_user):
    job = launched(admin_user, devices=2)
    dispatch.dispatch_pass(job.pk)
    first, second = Delivery.objects.filter(job=job).select_related("device")
    services.delivery_report(device=first.device, delivery_id=first.pk, outcome=COMPLETED)
    services.delivery_report(device=second.device, delivery_id=second.pk, outcome=FAILED, error="bad key")

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.status_reason == "1 of 2 deliveries failed or timed out."


def test_a_job_matching_no_device_fails_saying_so(admin_user):
    job = services.job_create(actor=admin_user, site=SiteFactory(), action="update_config")
    dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert (job.status, job.status_reason) == (JobStatus.FAILED, "No device matches the job's targets.")


def test_max_in_flight_per_site_keeps_the_store_selling(admin_user):
    job = launched(admin_user, devices=5, max_in_flight_per_site=2)

    result = dispatch.dispatch_pass(job.pk)
    assert (result.sent, result.held) == (2, 3)
    assert dispatch.dispatch_pass(job.pk).sent == 0  # still two busy

    busy = Delivery.objects.filter(job=job, status=SENT).select_related("device").first()
    services.delivery_report(device=busy.device, delivery_id=busy.pk, outcome=COMPLETED)
    assert dispatch.dispatch_pass(job.pk).sent == 1
    assert statuses(job).count(SENT) == 2


class FlakyChannel:
    failures_left = 0

    def push(self, batch):
        if FlakyChannel.failures_left:
            FlakyChannel.failures_left -= 1
            raise PushError("broker unreachable")


@pytest.fixture
def flaky_poll(monkeypatch):
    monkeypatch.setattr("jobs_app.dispatch.get_channel", lambda name: FlakyChannel())
    return FlakyChannel


def test_a_failed_push_leaves_the_batch_pending_then_retries_after_its_backoff(
    admin_user, flaky_poll, settings
):
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 60
    job = launched(admin_user, devices=2)
    flaky_poll.failures_left = 1

    before = timezone.now()
    first = dispatch.dispatch_pass(job.pk)
    assert (first.sent, first.push_failures, first.retry_push) == (0, 2, True)
    failed_pushes = Delivery.objects.filter(job=job)
    assert set(failed_pushes.values_list("last_error", flat=True)) == {"Push failed: broker unreachable"}
    # Backoff of the first attempt: 30-60 s, with jitter.
    for next_attempt_at in failed_pushes.values_list("next_attempt_at", flat=True):
        assert before + datetime.timedelta(seconds=30) <= next_attempt_at
        assert next_attempt_at <= timezone.now() + datetime.timedelta(seconds=60)
    assert dispatch.dispatch_pass(job.pk).sent == 0  # however often the dispatcher runs
    assert services.deliveries_next_attempt_at(job.pk) == min(
        failed_pushes.values_list("next_attempt_at", flat=True)
    )

    failed_pushes.update(next_attempt_at=timezone.now())  # the backoff is over
    assert dispatch.dispatch_pass(job.pk).sent == 2
    assert set(failed_pushes.values_list("attempts", "next_attempt_at")) == {(2, None)}


def test_a_delivery_out_of_push_attempts_fails_with_the_error(admin_user, flaky_poll, settings):
    settings.HOMEPOT_JOBS_PUSH_MAX_ATTEMPTS = 2
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 0  # try again at once
    job = launched(admin_user, devices=1)
    flaky_poll.failures_left = 5

    dispatch.dispatch_pass(job.pk)
    last = dispatch.dispatch_pass(job.pk)

    assert (last.failed, last.retry_push) == (1, False)
    delivery = Delivery.objects.get(job=job)
    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        FAILED,
        2,
        "Push failed: broker unreachable",
    )


def test_at_most_one_dispatch_pass_is_pending_per_job(
    admin_user, settings, django_capture_on_commit_callbacks
):
    settings.HOMEPOT_JOBS_DISPATCH_LOST_SECONDS = 30
    job = launched(admin_user, devices=1)  # job_create took the ticket for its first pass
    soon = timezone.now() + datetime.timedelta(seconds=5)
    later = soon + datetime.timedelta(minutes=5)

    with django_capture_on_commit_callbacks() as enqueued:
        assert not services.dispatch_request(job.pk, sooner=False)  # beat's tick: one is pending
        assert not services.dispatch_request(job.pk, at=later)  # due sooner already
        Job.objects.filter(pk=job.pk).update(dispatch_due_at=later)
        assert services.dispatch_request(job.pk, at=soon)  # sooner than the pending one
        assert not services.dispatch_request(job.pk, at=soon)  # a repeat
        assert not services.dispatch_ticket_release(job.pk, later.isoformat())  # a stray
    assert len(enqueued) == 1
    job.refresh_from_db()
    assert job.dispatch_due_at == soon

    # Its message was lost: once it is overdue, beat's tick asks again.
    Job.objects.filter(pk=job.pk).update(dispatch_due_at=timezone.now() - datetime.timedelta(seconds=31))
    with django_capture_on_commit_callbacks() as enqueued:
        assert services.dispatch_request(job.pk, sooner=False)
    assert len(enqueued) == 1

    job.refresh_from_db()
    assert services.dispatch_ticket_release(job.pk, job.dispatch_due_at.isoformat())
    job.refresh_from_db()
    assert job.dispatch_due_at is None
    services.job_pause(actor=admin_user, job=job)
    assert not services.dispatch_request(job.pk)  # only for a running job


def test_backoff_grows_exponentially_with_jitter(settings):
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 2
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_MAX_SECONDS = 20
    for attempt, full in [(1, 2), (2, 4), (3, 8), (6, 20)]:
        delays = {dispatch.push_backoff(attempt) for _ in range(20)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered


def test_deliveries_past_their_deadline_time_out(admin_user):
    job = launched(admin_user, devices=2, ttl=datetime.timedelta(minutes=5))
    dispatch.dispatch_pass(job.pk)
    done = Delivery.objects.filter(job=job).select_related("device").first()
    services.delivery_report(device=done.device, delivery_id=done.pk, outcome=COMPLETED)

    assert services.deliveries_time_out() == 0
    later = timezone.now() + datetime.timedelta(minutes=6)
    assert services.deliveries_time_out(now=later) == 1
    assert services.deliveries_time_out(now=later) == 0
    assert statuses(job) == [COMPLETED, TIMED_OUT]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED


def test_crossing_the_failure_threshold_pauses_the_rollout(admin_user, settings):
    settings.HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 2
    job = launched(admin_user, devices=6, failure_threshold_percent=40, batch_size=2)
    dispatch.dispatch_pass(job.pk)
    first, second, third = Delivery.objects.filter(job=job).select_related("device")[:3]
    services.delivery_report(device=first.device, delivery_id=first.pk, outcome=COMPLETED)
    services.delivery_report(device=second.device, delivery_id=second.pk, outcome=FAILED)  # 50% > 40%

    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert "Failure threshold crossed: 1 of 2 answers failed" in job.status_reason
    assert AuditLog.objects.filter(event_type="job.paused", job_id=job.pk).count() == 1
    services.delivery_report(device=third.device, delivery_id=third.pk, outcome=FAILED)
    assert AuditLog.objects.filter(event_type="job.paused", job_id=job.pk).count() == 1


# --- Operator controls -------------------------------------------------------------------------


def test_pause_stops_the_rollout_and_resume_carries_on(admin_user, django_capture_on_commit_callbacks):
    job = launched(admin_user, devices=3)
    services.job_pause(actor=admin_user, job=job, reason="store is busy")
    services.job_pause(actor=admin_user, job=job)  # a repeat records nothing

    assert dispatch.dispatch_pass(job.pk).sent == 0
    with django_capture_on_commit_callbacks() as enqueued:
        services.job_resume(actor=admin_user, job=job)
    services.job_resume(actor=admin_user, job=job)
    assert len(enqueued) == 1
    assert dispatch.dispatch_pass(job.pk).sent == 3
    events = list(AuditLog.objects.filter(job_id=job.pk).values_list("event_type", flat=True))
    assert events.count("job.paused") == 1 and events.count("job.resumed") == 1


def test_cancel_drops_pending_and_sent_deliveries_but_not_acknowledged(admin_user):
    job = launched(admin_user, devices=3, batch_size=1)
    services.deliveries_materialise(job.pk)
    a, b, _c = Delivery.objects.filter(job=job).select_related("device")
    set_status(a, SENT)
    services.delivery_acknowledge(device=b.device, delivery_id=b.pk)

    services.job_cancel(actor=admin_user, job=job)

    assert statuses(job) == [ACK, CANCELLED, CANCELLED]
    # The device that was sent the work hears `cancelled` when it reports.
    assert services.delivery_acknowledge(device=a.device, delivery_id=a.pk).status == CANCELLED


@pytest.mark.parametrize("finished", [JobStatus.COMPLETED, JobStatus.CANCELLED])
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_finished_jobs_cannot_be_paused_or_resumed(admin_user, finished, action):
    from homepot.errors import Conflict

    job = launched(admin_user)
    Job.objects.filter(pk=job.pk).update(status=finished)
    with pytest.raises(Conflict):
        getattr(services, f"job_{action}")(actor=admin_user, job=job)


def test_retry_sends_failed_and_timed_out_deliveries_again(admin_user):
    from homepot.errors import Conflict

    job = launched(admin_user, devices=3)
    dispatch.dispatch_pass(job.pk)
    a, b, c = Delivery.objects.filter(job=job).select_related("device")
    services.delivery_report(device=a.device, delivery_id=a.pk, outcome=COMPLETED)
    services.delivery_report(device=b.device, delivery_id=b.pk, outcome=FAILED)
    Delivery.objects.filter(pk=c.pk).update(status=TIMED_OUT)
    services.job_rollup(job.pk)

    assert services.job_retry(actor=admin_user, job=job) == 2
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.completed_at is None
    assert statuses(job) == [COMPLETED, PENDING, PENDING]
    dispatch.dispatch_pass(job.pk)
    assert statuses(job) == [COMPLETED, SENT, SENT]
    with pytest.raises(Conflict):
        services.job_retry(actor=admin_user, job=job)  # nothing left to retry
    assert AuditLog.objects.filter(event_type="job.retried", job_id=job.pk).count() == 1


def test_clone_copies_work_targets_and_policy(admin_user):
    site = SiteFactory()
    extra = SiteFactory()
    job = services.job_create(
        actor=admin_user,
        site=site,
        extra_sites=[extra],
        action="update_pos_payment_config",
        payload={"gateway_url": "https://v2"},
        segment={"device_type": ["pos_terminal"]},
        max_in_flight_per_site=2,
        failure_threshold_percent=10,
    )
    copy = services.job_clone(actor=admin_user, job=job)

    assert copy.pk != job.pk and copy.cloned_from == job and copy.status == JobStatus.QUEUED
    assert (copy.payload, copy.segment, copy.max_in_flight_per_site, copy.failure_threshold_percent) == (
        job.payload,
        job.segment,
        2,
        10,
    )
    assert list(copy.extra_sites.all()) == [extra]
    assert AuditLog.objects.filter(event_type="job.cloned", job_id=copy.pk).count() == 1


def test_preview_counts_matching_online_and_busy_devices(admin_user):
    site = SiteFactory()
    online = DeviceFactory.create_batch(3, site=site, status="online")
    DeviceFactory(site=site, status="offline")
    busy_job = services.job_create(
        actor=admin_user, site=site, action="update_config", target_devices=online[:1]
    )
    services.deliveries_materialise(busy_job.pk)

    numbers = services.job_preview(actor=admin_user, site=site, max_in_flight_per_site=2)

    assert numbers == {
        "matching": 4,
        "online": 3,
        "with_unfinished_work": 1,
        "sites": 1,
        "largest_site_devices": 4,
        "batches": 1,
        "waves": 2,
        "expected_duration_seconds": 2 * 30,
        "expected_duration_basis": "2 wave(s) of at most 2 device(s) per site, about 30 s each "
        "(a default: no job has finished yet to measure)",
        "within_maintenance_windows": False,
        "sites_open_now": None,
        "last_window_opens_at": None,
    }
    assert not AuditLog.objects.filter(event_type="job.created").exclude(job_id=busy_job.pk).exists()


def test_the_expected_duration_is_measured_from_recent_finished_jobs(admin_user):
    site = SiteFactory()
    DeviceFactory.create_batch(3, site=site)
    start = timezone.now() - datetime.timedelta(hours=1)
    for seconds in (2, 3, 40):  # the median, not the mean: one slow job does not skew it
        JobFactory(
            site=site,
            status=JobStatus.COMPLETED,
            started_at=start,
            completed_at=start + datetime.timedelta(seconds=seconds),
        )
    JobFactory(
        site=site,
        status=JobStatus.COMPLETED,
        max_in_flight_per_site=1,
        started_at=start,
        completed_at=start + datetime.timedelta(hours=1),
    )  # throttled: not one wave

    numbers = services.job_preview(actor=admin_user, site=site)

    assert (numbers["waves"], numbers["expected_duration_seconds"]) == (1, 3)
    assert numbers["expected_duration_basis"] == (
        "1 wave (no per-site limit: every device at once), about 3 s each "
        "(the median of the last 3 finished job(s))"
    )


def test_a_scheduled_job_paused_and_resumed_before_its_time_keeps_waiting(admin_user):
    job = launched(admin_user, scheduled_at=timezone.now() + datetime.timedelta(hours=1))
    services.job_pause(actor=admin_user, job=job)
    services.job_resume(actor=admin_user, job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.SCHEDULED
    assert dispatch.dispatch_pass(job.pk).sent == 0
