"""A job that keeps to maintenance windows while a dependency is away: a real Celery worker,
the operator API, the agent API the tills use, and `manage.py jobs_tick` (what beat runs).

Outages are made as in test_rollout_outages.py: the broker is "away" for this process's
producers (the API, the tick, the in-process worker's follow-up passes), and PostgreSQL
refuses the worker subprocess through a TCP proxy that is cut and restored. What must hold:
no till is sent the work outside its store's window, whatever was lost is resumed once the
window is open and the dependency back, each till gets the work once, and the audit chain
still verifies.
"""

import datetime

import pytest
from django.utils import timezone

from homepot.tests.celery_worker import celery_broker_away
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests import test_rollout_outages as outages
from jobs_app.tests.test_rollout_outages import Tills, assert_audit_chain_verifies, run_to_the_end, tick
from jobs_app.tests.test_windows import window_from
from jobs_app.tests.test_worker import wait_for
from sites_app.models import MaintenanceWindow
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)

# The outage fixtures of test_rollout_outages.py, used here by name.
worker = outages.worker
fast_recovery = outages.fast_recovery
queue = outages.queue
cut_off_worker = outages.cut_off_worker

HOUR = datetime.timedelta(hours=1)


class StoreTills(Tills):
    """Tills's three tills per store, at stores in the given time zones."""

    def __init__(self, *zones: str):
        super().__init__([SiteFactory(timezone=zone) for zone in zones])


def create_windowed_job(admin_api, stores) -> Job:
    body = {
        "site_id": stores[0].site_id,
        "extra_sites": [store.site_id for store in stores[1:]],
        "action": "update_config",
        "payload": {"tax": 0.2},
        "within_maintenance_windows": True,
    }
    response = admin_api.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["within_maintenance_windows"] is True
    return Job.objects.get(pk=response.json()["id"])


def deliveries_at(job, store, *statuses) -> int:
    rows = Delivery.objects.filter(job=job, site=store)
    return rows.filter(status__in=statuses).count() if statuses else rows.count()


def not_pending_at(job, store) -> int:
    return Delivery.objects.filter(job=job, site=store).exclude(status=DeliveryStatus.PENDING).count()


def assert_sent_once_inside(job, store, opens) -> None:
    """Each of the store's tills completed the work once, sent no earlier than `opens`."""
    rows = list(Delivery.objects.filter(job=job, site=store).values("device_id", "status", "sent_at"))
    assert len(rows) == 3 == len({row["device_id"] for row in rows})
    assert {row["status"] for row in rows} == {DeliveryStatus.COMPLETED}
    early = [row["sent_at"] for row in rows if row["sent_at"] < opens]
    assert not early, f"sent before the window opened at {opens}: {early}"


def tick_until(moment: datetime.datetime, timeout: float = 120) -> None:
    """Run beat's tick over and over until the wall clock passes `moment`."""

    def passed():
        tick()
        return timezone.now() > moment

    wait_for(passed, timeout=timeout)


def test_a_windowed_job_created_while_the_broker_is_away_sends_only_inside_each_window(
    worker,
    admin_api,
):
    tills = StoreTills("Asia/Tokyo", "America/New_York", "Europe/London")
    open_store, later_store, closed_store = tills.stores
    open_since = window_from(open_store, -datetime.timedelta(minutes=1))
    later_opens = window_from(later_store, datetime.timedelta(seconds=15))
    window_from(closed_store, 5 * HOUR)

    with celery_broker_away():
        job = create_windowed_job(admin_api, tills.stores)  # 201: the enqueue after commit failed
        tick()  # beat cannot enqueue either
        assert not Delivery.objects.filter(job=job).exists()

    tick()  # the broker is back: the lost pass is enqueued again
    wait_for(lambda: deliveries_at(job, open_store, DeliveryStatus.SENT) == 3)
    if timezone.now() < later_opens:  # a loaded machine may have taken longer than the 15 s
        assert not_pending_at(job, later_store) == 0

    with celery_broker_away():
        # The reports are kept; the passes they and the tick would start are lost, the window
        # of the later store opens meanwhile.
        assert tills.answer() == 3
        tick_until(later_opens)

    def later_store_done():
        tick()
        tills.answer()
        return deliveries_at(job, later_store, DeliveryStatus.COMPLETED) == 3

    wait_for(later_store_done, timeout=120)
    for _ in range(3):  # more passes: still nothing where the window is closed
        tick()

    assert_sent_once_inside(job, open_store, open_since)
    assert_sent_once_inside(job, later_store, later_opens)
    assert deliveries_at(job, closed_store) == deliveries_at(job, closed_store, DeliveryStatus.PENDING) == 3
    # Not finished: it waits for the closed store's window.
    assert Job.objects.get(pk=job.pk).status not in (JobStatus.COMPLETED, JobStatus.FAILED)
    assert_audit_chain_verifies()


@pytest.fixture
def recheck_windows_often(monkeypatch, settings):
    # A pass waiting for a window opening hours away looks again after this long (900 s by
    # default), in the worker subprocess and in this process's tick, so an edited schedule
    # is seen within the test.
    monkeypatch.setenv("HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS", "1")
    settings.HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS = 1


def test_a_window_that_opens_while_postgresql_refuses_the_worker_is_served_once_it_is_back(
    recheck_windows_often,
    cut_off_worker,
    admin_api,
):
    process, proxy = cut_off_worker
    tills = StoreTills("Asia/Tokyo", "America/New_York")
    open_store, later_store = tills.stores
    open_since = window_from(open_store, -datetime.timedelta(minutes=1))
    window_from(later_store, 5 * HOUR)
    job = create_windowed_job(admin_api, tills.stores)
    # The worker starts (slowly on a loaded machine: generous), then sends where it is open.
    wait_for(lambda: deliveries_at(job, open_store, DeliveryStatus.SENT) == 3, timeout=300)
    assert not_pending_at(job, later_store) == 0

    proxy.cut()
    try:
        # The store's manager moves its window to a few seconds from now; it opens while the
        # worker cannot reach the database. The tills report through the API meanwhile.
        MaintenanceWindow.objects.filter(site=later_store).delete()
        later_opens = window_from(later_store, datetime.timedelta(seconds=3))
        assert tills.answer() == 3
        tick_until(later_opens + datetime.timedelta(seconds=2))
        assert not_pending_at(job, later_store) == 0  # the worker could not send
    finally:
        proxy.restore()

    run_to_the_end(job, tills, timeout=300)
    assert process.poll() is None, "the worker must outlive the outage"
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED
    assert_sent_once_inside(job, open_store, open_since)
    assert_sent_once_inside(job, later_store, later_opens)
    assert_audit_chain_verifies()
