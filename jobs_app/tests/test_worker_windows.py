"""A maintenance window opening in the middle of a job, through a real Celery worker against
Redis: the first pass sends only to the site whose window is open, asks for its next pass at
the other site's opening (a countdown, not a pass every few seconds), and that pass sends.

The worker runs in a thread of this process (homepot/tests/celery_worker.py); data must be
committed for its connection to see it: transaction=True."""

import datetime

import pytest
from celery.signals import task_prerun
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from homepot.tests.celery_worker import running_worker
from jobs_app import services
from jobs_app.choices import DeliveryStatus
from jobs_app.models import Delivery
from jobs_app.tests.test_windows import window_from
from jobs_app.tests.test_worker import wait_for
from sites_app.tests.factories import SiteFactory

TEST_BROKER = "redis://127.0.0.1:6379/14"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(settings):
    settings.HOMEPOT_JOBS_REDISPATCH_SECONDS = 0.05
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-test-windows"):
        yield


def test_a_window_opening_mid_job_is_served_at_its_opening(worker, admin_user):
    open_site = SiteFactory(timezone="Asia/Tokyo")
    DeviceFactory.create_batch(3, site=open_site)
    window_from(open_site, -datetime.timedelta(minutes=1))
    later_site = SiteFactory(timezone="America/New_York")
    DeviceFactory.create_batch(2, site=later_site)
    opens = window_from(later_site, datetime.timedelta(seconds=3))
    passes = []

    def count_pass(**kwargs):
        passes.append(timezone.now())

    task_prerun.connect(count_pass, weak=False)
    try:
        job = services.job_create(
            actor=admin_user,
            site=open_site,
            extra_sites=[later_site],
            action="update_config",
            within_maintenance_windows=True,
        )

        wait_for(
            lambda: Delivery.objects.filter(job=job, site=open_site, status=DeliveryStatus.SENT).count() == 3
        )
        assert (
            not Delivery.objects.filter(job=job, site=later_site)
            .exclude(status=DeliveryStatus.PENDING)
            .exists()
        )
        wait_for(
            lambda: Delivery.objects.filter(job=job, site=later_site, status=DeliveryStatus.SENT).count() == 2
        )
    finally:
        task_prerun.disconnect(count_pass)

    sent_at = list(Delivery.objects.filter(job=job, site=later_site).values_list("sent_at", flat=True))
    assert all(at >= opens for at in sent_at)
    # Waiting three seconds took a pass or two, not one every 0.05 s.
    assert len(passes) <= 4, passes
