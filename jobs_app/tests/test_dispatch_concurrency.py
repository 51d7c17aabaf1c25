"""Dispatch passes of one job running at once, in real threads against PostgreSQL.

Beat's tick and a held pass's own follow-up can each start a pass of the same job, so
passes do meet in production. Each thread here has its own database connection (Django's
connections are per thread) and data must be committed to be seen: transaction=True.
"""

import contextlib
import threading

import pytest
from django.db import connection

from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus
from jobs_app.models import Delivery
from jobs_app.tests.factories import JobFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSES = 4


class RendezvousChannel:
    """A push that waits (briefly) for every other pass to reach the channel too, so that
    passes which may push at once are made to overlap instead of being lucky."""

    def __init__(self, parties):
        self.barrier = threading.Barrier(parties, timeout=0.5)
        self.pushed = []

    def push(self, batch):
        self.pushed.extend(item.delivery_id for item in batch)
        # Fewer passes than started reached the channel: nobody else to wait for.
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()


def run_together(target, count):
    start = threading.Barrier(count)
    errors = []

    def run():
        try:
            start.wait()
            target()
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_concurrent_passes_keep_the_per_site_in_flight_limit(monkeypatch):
    stores = [SiteFactory(), SiteFactory()]
    for store in stores:
        DeviceFactory.create_batch(4, site=store)
    # Made by the factory, not job_create: nothing may reach a broker from this test.
    job = JobFactory(site=stores[0], batch_size=1, max_in_flight_per_site=1)
    job.extra_sites.set(stores[1:])
    services.deliveries_materialise(job.pk)
    channel = RendezvousChannel(PASSES)
    monkeypatch.setattr("jobs_app.dispatch.get_channel", lambda name: channel)

    run_together(lambda: dispatch.dispatch_pass(job.pk), PASSES)

    # Nothing finishes meanwhile, so what is in flight now is the most there ever was.
    in_flight = services.in_flight_by_site(job.pk, [store.pk for store in stores])
    assert in_flight == {store.pk: 1 for store in stores}
    sent = Delivery.objects.filter(job=job, status=DeliveryStatus.SENT)
    assert sorted(channel.pushed) == sorted(sent.values_list("pk", flat=True))
