"""Several MQTT bridges (one per application host) apply overlapping batches at once: a
delivery's ack reaches one bridge, its result another. In real threads against PostgreSQL,
two batches over the same deliveries in opposite orders must both apply, not deadlock (a
deadlock stopped a bridge in the multi-host proof, bench/multihost.py)."""

import threading

import pytest
from django.db import connection

from devices_app.tests.factories import DeviceFactory
from jobs_app import events
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery
from jobs_app.tests.factories import DeliveryFactory, JobFactory

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 3
SIZE = 150


def _apply_together(*batches):
    start = threading.Barrier(len(batches))
    errors = []

    def run(batch):
        try:
            start.wait()
            events.deliveries_apply_events(batch)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_two_bridges_applying_crossing_batches_do_not_deadlock():
    job = JobFactory(status=JobStatus.SENT)
    devices = DeviceFactory.create_batch(SIZE, site=job.site)
    for round_ in range(ROUNDS):
        deliveries = [
            DeliveryFactory(
                job=job if round_ == 0 else JobFactory(site=job.site, status=JobStatus.SENT),
                device=device,
                status=DeliveryStatus.SENT,
            )
            for device in devices
        ]
        acks = [events.DeviceEvent(d.device.device_id, d.pk, events.ACK) for d in deliveries]
        results = [
            events.DeviceEvent(d.device.device_id, d.pk, events.RESULT, DeliveryStatus.COMPLETED, {}, "")
            for d in reversed(deliveries)
        ]

        assert _apply_together(acks, results) == []

        ids = [d.pk for d in deliveries]
        assert set(Delivery.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
            DeliveryStatus.COMPLETED
        }
