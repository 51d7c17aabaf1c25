"""Staged rollouts when a dependency goes away and comes back: a real Celery worker, the
operator API, the agent API the tills use, and `manage.py jobs_tick` (what beat runs).

The broker (Redis) is "away" by pointing Celery at a port nothing listens on
(homepot.tests.celery_worker.celery_broker_away); PostgreSQL refuses the worker's
connections through a TCP proxy that is cut and restored (homepot/tests/tcp_proxy.py), the
shared server is never stopped. What must hold whatever happens: each device gets the work
once, a wave opens only after the one before it passed its gate, a rollback reaches only
the devices that took the change, the job finishes once the dependency is back, and the
audit chain still verifies.
"""

import os
import signal
import subprocess
import sys
import uuid

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from rest_framework.test import APIClient

from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.celery import app
from homepot.tests.celery_worker import celery_broker_away, reset_broker_connections, running_worker
from homepot.tests.tcp_proxy import TcpProxy
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_worker import TEST_BROKER, wait_for
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_recovery(settings):
    # A pass whose message was lost is re-enqueued by the next tick at once (30 s by default).
    settings.HOMEPOT_JOBS_DISPATCH_LOST_SECONDS = 0
    settings.HOMEPOT_JOBS_REDISPATCH_SECONDS = 0.05


@pytest.fixture
def worker(fast_recovery):
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-test-outage"):
        yield


class Tills:
    """Four stores of three tills, each with a credential, answering through the agent API."""

    def __init__(self, stores=None):
        self.stores = stores if stores is not None else SiteFactory.create_batch(4)
        self.clients = {}
        for store in self.stores:
            for device in DeviceFactory.create_batch(3, site=store, config={"tax": 0.1}):
                client = APIClient()
                secret = device_credential_issue(actor=None, device=device)[1]
                client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
                self.clients[device.pk] = client

    def answer(self, outcome: str = "completed") -> int:
        """Every till takes the work it was sent and reports `outcome`; returns how many."""
        answered = 0
        for client in self.clients.values():
            for command in client.get("/api/v1/agent/commands").json()["commands"]:
                delivery = command["delivery_id"]
                assert client.post(f"/api/v1/agent/deliveries/{delivery}/ack").status_code == 200
                body = {"status": outcome, "previous_config": {"tax": 0.1}}
                if outcome == "failed":
                    body["error"] = "the till refused it"
                response = client.post(f"/api/v1/agent/deliveries/{delivery}/result", body, format="json")
                assert response.status_code == 200, response.content
                answered += 1
        return answered

    def defer(self, seconds: int = 1) -> int:
        """Every till says "not now" to the work it was sent; returns how many."""
        deferred = 0
        for client in self.clients.values():
            for command in client.get("/api/v1/agent/commands").json()["commands"]:
                body = {"delay_seconds": seconds, "reason": "a sale in progress"}
                url = f"/api/v1/agent/deliveries/{command['delivery_id']}/defer"
                response = client.post(url, body, format="json")
                assert response.status_code == 200, response.content
                deferred += 1
        return deferred


def create_job(admin_api, tills, **policy) -> Job:
    body = {
        "site_id": tills.stores[0].site_id,
        "extra_sites": [store.site_id for store in tills.stores[1:]],
        "action": "update_config",
        "payload": {"tax": 0.2},
        **policy,
    }
    response = admin_api.post("/api/v1/jobs", body, format="json")
    assert response.status_code == 201, response.content
    return Job.objects.get(pk=response.json()["id"])


def sent(job) -> int:
    return Delivery.objects.filter(job=job, status=DeliveryStatus.SENT).count()


def later_waves_sent(job) -> bool:
    return Delivery.objects.filter(job=job, wave__gt=0).exclude(status=DeliveryStatus.PENDING).exists()


def tick() -> None:
    call_command("jobs_tick", stdout=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process


def run_to_the_end(job, tills, timeout: float = 60) -> None:
    """Tick and answer until the job is finished, as beat and the tills would."""

    def finished():
        tick()
        tills.answer()
        return Job.objects.get(pk=job.pk).status in (JobStatus.COMPLETED, JobStatus.FAILED)

    wait_for(finished, timeout=timeout)


def assert_waves_kept_their_order(job) -> None:
    """Each device got the work once; every wave was sent only after the wave before it
    had all its answers in."""
    rows = list(
        Delivery.objects.filter(job=job).values("device_id", "wave", "status", "sent_at", "completed_at")
    )
    assert len(rows) == 12 == len({row["device_id"] for row in rows})
    assert {row["status"] for row in rows} == {DeliveryStatus.COMPLETED}
    for wave in range(1, job.wave_count):
        first_sent = min(row["sent_at"] for row in rows if row["wave"] == wave)
        last_answer = max(row["completed_at"] for row in rows if row["wave"] == wave - 1)
        assert first_sent >= last_answer, f"wave {wave} went out before wave {wave - 1} had answered"
    opened = AuditLog.objects.filter(job_id=job.pk, event_type="job.wave_opened").order_by("id")
    assert [row.new_values["wave_open"] for row in opened] == list(range(1, job.wave_count))


def assert_audit_chain_verifies() -> None:
    call_command("verify_audit", stdout=open(os.devnull, "w"))  # noqa: SIM115 - raises when broken


WAVES = {"rollout_canary": 4, "rollout_waves": [50], "wave_gate_percent": 90}


def test_a_job_in_waves_created_and_gated_while_the_broker_is_away(worker, admin_api):
    tills = Tills()
    with celery_broker_away():
        job = create_job(admin_api, tills, **WAVES)  # answered 201: the enqueue after commit failed
        tick()  # beat's tick cannot enqueue either
        assert not Delivery.objects.filter(job=job).exists()
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED

    tick()  # the broker is back: the tick re-enqueues the lost pass
    wait_for(lambda: sent(job) == 4)  # the canary, and nothing more

    with celery_broker_away():
        assert tills.answer() == 4  # the reports are kept; their follow-up passes are lost
        tick()
        assert not later_waves_sent(job)

    run_to_the_end(job, tills)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert_waves_kept_their_order(job)
    assert_audit_chain_verifies()


def test_a_rollback_asked_while_the_broker_is_away_reaches_only_the_devices_that_took_the_change(
    worker, admin_api
):
    tills = Tills()
    job = create_job(admin_api, tills, **WAVES)
    tick()
    wait_for(lambda: sent(job) == 4)
    with celery_broker_away():
        # Paused during its canary (no next wave), the canary answers, then the rollback.
        assert admin_api.post(f"/api/v1/jobs/{job.pk}/pause", {}, format="json").status_code == 200
        assert tills.answer() == 4
        response = admin_api.post(f"/api/v1/jobs/{job.pk}/rollback", {}, format="json")
        assert response.status_code == 201, response.content
        rollback = Job.objects.get(pk=response.json()["id"])
        tick()
        assert not Delivery.objects.filter(job=rollback).exclude(status=DeliveryStatus.PENDING).exists()

    run_to_the_end(rollback, tills)
    rollback.refresh_from_db()
    assert rollback.status == JobStatus.COMPLETED
    took = set(
        Delivery.objects.filter(job=job, status=DeliveryStatus.COMPLETED).values_list("device_id", flat=True)
    )
    restored = dict(
        Delivery.objects.filter(job=rollback, status=DeliveryStatus.COMPLETED).values_list(
            "device_id", "payload"
        )
    )
    assert len(took) == 4 and set(restored) == took
    assert all(payload == {"tax": 0.1} for payload in restored.values()), restored
    assert Delivery.objects.filter(job=job, status=DeliveryStatus.PENDING).count() == 8  # never sent
    assert_audit_chain_verifies()


def test_work_deferred_while_the_broker_is_away_is_offered_again_once_it_is_back(worker, admin_api):
    tills = Tills()
    job = create_job(admin_api, tills, max_deferrals=3)
    tick()
    wait_for(lambda: sent(job) == 12)
    with celery_broker_away():
        assert tills.defer(seconds=1) == 12  # kept; the pass that would re-offer them is lost
        tick()
        assert Delivery.objects.filter(job=job, status=DeliveryStatus.PENDING).count() == 12

    run_to_the_end(job, tills)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    rows = list(Delivery.objects.filter(job=job).values_list("device_id", "status", "defer_count"))
    assert len(rows) == 12 == len({device for device, _, _ in rows})
    assert {(status, defers) for _, status, defers in rows} == {(DeliveryStatus.COMPLETED, 1)}
    assert_audit_chain_verifies()


# --- PostgreSQL refusing the worker's connections -----------------------------------------------


@pytest.fixture
def queue(fast_recovery):
    name = f"homepot-test-outage-{uuid.uuid4().hex}"
    saved = {key: app.conf[key] for key in ("broker_url", "task_default_queue", "task_always_eager")}
    app.conf.update(broker_url=TEST_BROKER, task_default_queue=name, task_always_eager=False)
    reset_broker_connections()
    yield name
    app.conf.update(saved)
    reset_broker_connections()


@pytest.fixture
def cut_off_worker(queue):
    """A `celery worker` process whose every database connection goes through a proxy the
    test cuts (jobs_app/tests/outage_worker_settings.py)."""
    db = connection.settings_dict
    with TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "jobs_app.tests.outage_worker_settings",
            "DATABASE_URL": f"postgres://{credentials}@127.0.0.1:{proxy.port}/{db['NAME']}",
            "HOMEPOT_TEST_BROKER_URL": TEST_BROKER,
            "HOMEPOT_TEST_QUEUE": queue,
        }
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "celery", "-A", "homepot", "worker", "--pool=solo", "-Q", queue]
            + ["-l", "WARNING"],
            cwd=django_settings.BASE_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(os.environ.get("HOMEPOT_TEST_WORKER_LOG", os.devnull), "a"),  # noqa: SIM115
        )
        try:
            yield process, proxy
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_job_in_waves_survives_postgresql_refusing_the_worker(cut_off_worker, admin_api):
    process, proxy = cut_off_worker
    tills = Tills()
    job = create_job(admin_api, tills, **WAVES)
    # The worker starts (slowly on a loaded machine: generous), then sends the canary.
    wait_for(lambda: sent(job) == 4, timeout=300)

    proxy.cut()
    try:
        # The tills report (the API is up); every pass the worker now runs fails to connect.
        assert tills.answer() == 4
        for _ in range(3):
            tick()
        assert not later_waves_sent(job)
    finally:
        proxy.restore()

    run_to_the_end(job, tills, timeout=300)
    assert process.poll() is None, "the worker must outlive the outage"
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert_waves_kept_their_order(job)
    assert_audit_chain_verifies()
