"""A worker killed with SIGKILL in the middle of a batch loses and duplicates nothing.

A real `celery worker` process (see worker_settings.py: its poll channel takes 0.25 s per
batch) is killed once some batches are out; the batch it held rolls back with its
transaction, its unacknowledged message comes back (acks_late), and a second worker
finishes the job. Every delivery ends `sent` exactly once (one send per row).
"""

import os
import signal
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.db import connection

from devices_app.tests.factories import DeviceFactory
from homepot.celery import app
from homepot.tests.celery_worker import reset_broker_connections
from jobs_app import services, tasks
from jobs_app.models import Delivery
from jobs_app.tests.test_worker import TEST_BROKER, wait_for
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


def start_worker_process(queue):
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "jobs_app.tests.worker_settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "HOMEPOT_TEST_BROKER_URL": TEST_BROKER,
        "HOMEPOT_TEST_QUEUE": queue,
    }
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "homepot",
            "worker",
            "--pool=solo",
            "-Q",
            queue,
            "-l",
            "WARNING",
        ],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("HOMEPOT_TEST_WORKER_LOG", os.devnull), "a"),  # noqa: SIM115
    )


@pytest.fixture
def queue():
    name = f"homepot-test-{uuid.uuid4().hex}"
    saved = {key: app.conf[key] for key in ("broker_url", "task_default_queue", "task_always_eager")}
    app.conf.update(broker_url=TEST_BROKER, task_default_queue=name, task_always_eager=False)
    reset_broker_connections()
    yield name
    app.conf.update(saved)
    reset_broker_connections()


def sent(job):
    return Delivery.objects.filter(job=job, status="sent").count()


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(admin_user, queue):
    site = SiteFactory()
    DeviceFactory.create_batch(40, site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config", batch_size=4)

    first = start_worker_process(queue)
    processes = [first]
    try:
        wait_for(lambda: sent(job) >= 8, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = sent(job)
        assert killed_at < 40, "the kill must land before the end of the job"

        processes.append(start_worker_process(queue))
        # The killed worker's message comes back once the broker's visibility timeout
        # passes; the beat tick's safety net re-enqueues the dispatcher sooner. Either way
        # the database decides which rows are still pending.
        tasks.finish_rollups.delay()
        wait_for(lambda: sent(job) == 40, timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    rows = list(Delivery.objects.filter(job=job).values_list("device_id", "status", "attempts"))
    assert len(rows) == 40 == len({device for device, _, _ in rows})
    assert {(status, attempts) for _, status, attempts in rows} == {("sent", 1)}
