"""Health reports of devices that keep their status are acknowledged once a Redis Stream holds
them and drained to PostgreSQL (monitoring_app.health_buffer). What a 201 promises is tested
here against a Redis of the test's own, with an append-only file fsynced on every write, that
the test kills with SIGKILL and restarts, and against a real Celery worker process killed (SIGKILL) in
the middle of a drain: every acknowledged report arrives once, none twice."""

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.celery import app
from homepot.tests.celery_worker import reset_broker_connections
from homepot.tests.served import free_port
from monitoring_app import health_buffer
from monitoring_app.models import HealthCheck, MonitoringState
from monitoring_app.sweep import sweep_offline
from monitoring_app.tasks import drain_health_reports

HEALTH = "/api/v1/agent/health"
BATCH = "/api/v1/agent/health/batch"
BASE_DIR = Path(__file__).resolve().parent.parent.parent


def ago(**kwargs):
    return timezone.now() - datetime.timedelta(**kwargs)


class OwnRedis:
    """A redis-server of this test on a free port, persisting every write before answering
    (appendonly yes, appendfsync always) into `directory`."""

    def __init__(self, directory: Path, *, durable: bool = True):
        self.directory, self.port, self.process = directory, free_port(), None
        fsynced = ["--appendonly", "yes", "--appendfsync", "always"]
        self.persistence = fsynced if durable else ["--appendonly", "no"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
            + [*self.persistence, "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)  # no chance to save anything on the way out
        self.process.wait()


@pytest.fixture
def own_redis(tmp_path, settings, monkeypatch):
    server = OwnRedis(tmp_path)
    server.start()
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL = server.url
    settings.HOMEPOT_MONITORING_BUFFER_HEALTH = True
    monkeypatch.setattr(health_buffer, "_down_until", 0.0)
    yield server
    if server.process.poll() is None:
        server.kill()


def reporting_device(**fields) -> Device:
    """An online device, seen a moment ago, with a credential whose use is already recorded."""
    device = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(seconds=5), **fields)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device_credential_issue(actor=None, device=device)[1]}")
    device.agent = client
    return device


def report_every(devices, rounds: int) -> int:
    """Each device reports `rounds` times (distinct timestamps); returns how many were acknowledged."""
    acknowledged = 0
    for round_ in range(rounds):
        for device in devices:
            stamp = ago(seconds=60 - round_)
            body = {"status": "healthy", "cpu_percent": round_, "timestamp": stamp.isoformat()}
            response = device.agent.post(HEALTH, body, format="json")
            assert response.status_code == 201, response.content
            acknowledged += response.json()["stored"]
    return acknowledged


def stored_per_device(devices) -> dict:
    return {
        device.pk: sorted(
            HealthCheck.objects.filter(device=device).values_list("metrics__cpu_percent", flat=True)
        )
        for device in devices
    }


@pytest.mark.django_db
def test_a_buffered_health_report_writes_no_sql_in_the_request_and_the_drain_stores_it(own_redis):
    device = reporting_device()
    device.agent.post(HEALTH, {"status": "healthy"}, format="json")  # credential use recorded

    with CaptureQueriesContext(connection) as queries:
        response = device.agent.post(HEALTH, {"status": "degraded", "app_version": "7.4.0"}, format="json")

    assert response.status_code == 201 and response.json() == {"stored": 1}
    assert len(queries) == 0  # the credential's identity is in Redis (identity_store), the report too
    assert not HealthCheck.objects.exists()
    assert Device.objects.get(pk=device.pk).health_status == ""  # nothing known yet

    assert health_buffer.drain() == 2
    assert sorted(HealthCheck.objects.values_list("status", flat=True)) == ["degraded", "healthy"]
    device.refresh_from_db()
    assert (device.health_status, device.app_version, device.status) == ("degraded", "7.4.0", "online")
    assert health_buffer.drain() == 0  # drained entries are gone from the stream


@pytest.mark.django_db
def test_a_device_coming_back_online_is_written_at_once(own_redis):
    device = reporting_device()
    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.OFFLINE, last_seen=ago(hours=1))

    response = device.agent.post(HEALTH, {"status": "healthy"}, format="json")

    assert response.status_code == 201
    assert HealthCheck.objects.filter(device=device).count() == 1  # no drain needed
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE


@pytest.mark.django_db
def test_the_sweep_does_not_take_a_device_whose_report_waits_in_the_buffer_for_silent(own_redis):
    reporting, silent = reporting_device(), reporting_device()
    Device.objects.update(last_seen=ago(seconds=170))  # both just inside the offline threshold
    assert reporting.agent.post(HEALTH, {"status": "healthy"}, format="json").status_code == 201
    Device.objects.update(last_seen=ago(seconds=400))  # as the rows alone say: both silent
    MonitoringState.objects.update_or_create(
        pk=1, defaults={"last_sweep_at": ago(seconds=10), "resumed_at": ago(hours=1)}
    )

    assert sweep_offline().marked_offline == 1

    assert Device.objects.get(pk=silent.pk).status == DeviceStatus.OFFLINE
    assert Device.objects.get(pk=reporting.pk).status == DeviceStatus.ONLINE
    assert not HealthCheck.objects.exists()  # the report itself still waits for the drain
    assert health_buffer.drain() == 1
    assert Device.objects.get(pk=reporting.pk).status == DeviceStatus.ONLINE


@pytest.mark.django_db
def test_with_its_redis_away_a_report_is_written_directly_never_lost_nor_a_500(settings, monkeypatch):
    settings.HOMEPOT_MONITORING_BUFFER_HEALTH = True
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    monkeypatch.setattr(health_buffer, "_down_until", 0.0)
    device = reporting_device()

    response = device.agent.post(HEALTH, {"status": "unhealthy"}, format="json")

    assert response.status_code == 201
    assert list(HealthCheck.objects.values_list("status", flat=True)) == ["unhealthy"]
    assert Device.objects.get(pk=device.pk).health_status == "unhealthy"


@pytest.mark.django_db
def test_a_redis_that_keeps_nothing_on_disk_is_not_trusted_with_a_201(tmp_path, settings, monkeypatch):
    """A Redis without its fsynced append-only file (a cache, a default install) would lose
    acknowledged reports when it restarts: reports are written to PostgreSQL before the 201,
    unless the operator vouches for that Redis (HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY)."""
    server = OwnRedis(tmp_path, durable=False)
    server.start()
    try:
        settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL = server.url
        settings.HOMEPOT_MONITORING_BUFFER_HEALTH = True
        monkeypatch.setattr(health_buffer, "_down_until", 0.0)
        device = reporting_device()

        assert device.agent.post(HEALTH, {"status": "degraded"}, format="json").status_code == 201
        assert list(HealthCheck.objects.values_list("status", flat=True)) == ["degraded"]
        assert not redis.Redis.from_url(server.url).keys("*")  # nothing waits in the stream

        settings.HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY = "assume"
        assert device.agent.post(HEALTH, {"status": "healthy"}, format="json").status_code == 201
        assert HealthCheck.objects.count() == 1  # this one waits for the drain
        assert health_buffer.drain() == 1
        assert sorted(HealthCheck.objects.values_list("status", flat=True)) == ["degraded", "healthy"]
    finally:
        server.kill()


@pytest.mark.django_db
def test_bad_input_is_still_a_400_naming_the_field_and_nothing_is_buffered(own_redis):
    device = reporting_device()
    for body, field in [
        ({"status": "healthy", "cpu_percent": 101}, "cpu_percent"),
        ({"status": "healthy", "surprise": 1}, "surprise"),
        ({"status": ["healthy"]}, "status"),
        ({"status": "healthy", "timestamp": "2026-01-01T00:00:00"}, "timestamp"),
    ]:
        response = device.agent.post(HEALTH, body, format="json")
        assert response.status_code == 400, body
        assert field in str(response.json()), response.json()
    response = device.agent.post(
        BATCH, {"reports": [{"status": "healthy"}, {"status": "fine"}]}, format="json"
    )
    assert response.status_code == 400 and "reports.1.status" in str(response.json())

    assert health_buffer.drain() == 0
    assert not HealthCheck.objects.exists()


@pytest.mark.django_db
def test_values_the_serializer_converts_are_stored_as_it_converts_them(own_redis):
    device = reporting_device()
    body = {"status": "healthy", "cpu_percent": "12.5", "app_version": " 7.3.0 ", "response_time_ms": 7.0}

    assert device.agent.post(HEALTH, body, format="json").status_code == 201
    health_buffer.drain()

    check = HealthCheck.objects.get()
    assert check.metrics == {"cpu_percent": 12.5, "app_version": "7.3.0"}
    assert check.response_time_ms == 7


@pytest.mark.django_db(transaction=True)
def test_acknowledged_reports_survive_a_redis_kill_and_restart(own_redis):
    devices = [reporting_device() for _ in range(4)]
    acknowledged = report_every(devices, rounds=3)
    batch = [
        {"status": "degraded", "cpu_percent": 50 + i, "timestamp": ago(seconds=i).isoformat()}
        for i in range(20)
    ]
    assert devices[0].agent.post(BATCH, {"reports": batch}, format="json").status_code == 201
    acknowledged += len(batch)
    assert not HealthCheck.objects.exists()  # all of it in Redis only

    own_redis.kill()
    own_redis.start()  # same port and directory: Redis replays its append-only file

    assert health_buffer.drain(wait=True) == acknowledged == 32
    per_device = stored_per_device(devices)
    assert per_device[devices[0].pk] == [0, 1, 2, *range(50, 70)]
    assert all(per_device[device.pk] == [0, 1, 2] for device in devices[1:])
    assert Device.objects.get(pk=devices[0].pk).health_status == "degraded"  # its newest, by its clock


@pytest.mark.django_db(transaction=True)
def test_a_drain_stopped_after_its_commit_stores_nothing_twice(own_redis, monkeypatch):
    devices = [reporting_device() for _ in range(3)]
    acknowledged = report_every(devices, rounds=2)

    def crash(*args, **kwargs):
        raise redis.ConnectionError("the worker died before trimming")

    monkeypatch.setattr(redis.client.Pipeline, "execute", crash)  # only the trim uses a pipeline here
    assert health_buffer.drain() == acknowledged  # committed; the trim failed
    monkeypatch.undo()
    assert redis.Redis.from_url(own_redis.url).xlen(health_buffer.stream_key()) == acknowledged

    assert health_buffer.drain() == 0  # the stored id covers them
    assert HealthCheck.objects.count() == acknowledged
    assert all(values == [0, 1] for values in stored_per_device(devices).values())


def _worker_env(own_redis) -> dict:
    settings_dict = connection.settings_dict
    from django.conf import settings

    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{settings_dict['USER']}@{settings_dict['HOST']}:{settings_dict['PORT']}/"
        f"{settings_dict['NAME']}",
        "SECRET_KEY": "test-worker",
        "HOMEPOT_ENV_FILE": "",
        "REDIS_URL": own_redis.url,
        "CELERY_BROKER_URL": own_redis.url,
        "HOMEPOT_MONITORING_HEALTH_REDIS_URL": own_redis.url,
        "HOMEPOT_MONITORING_HEALTH_KEY_PREFIX": settings.HOMEPOT_MONITORING_HEALTH_KEY_PREFIX,
        "HOMEPOT_MONITORING_SEEN_KEY_PREFIX": settings.HOMEPOT_MONITORING_SEEN_KEY_PREFIX,
    }


@contextlib.contextmanager
def celery_broker(url: str):
    """Tasks sent meanwhile go to `url`, the worker process's broker."""
    saved = app.conf.broker_url
    app.conf.broker_url = url
    reset_broker_connections()
    try:
        yield
    finally:
        app.conf.broker_url = saved
        reset_broker_connections()


def _wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_killed_in_the_middle_of_a_drain_loses_and_duplicates_nothing(
    own_redis,
):
    devices = [reporting_device() for _ in range(4)]
    acknowledged = report_every(devices, rounds=3)
    dsn = connection.get_connection_params()

    # The test holds one device row: the worker's drain inserts the history rows, then waits
    # for that row lock in the middle of its transaction.
    with psycopg.connect(
        dbname=connection.settings_dict["NAME"], host=dsn.get("host"), user=dsn.get("user")
    ) as lock:
        lock.execute("SELECT 1 FROM devices_app_device WHERE id = %s FOR UPDATE", [devices[-1].pk])
        queue = f"health-drain-test-{uuid.uuid4().hex}"
        worker = subprocess.Popen(  # noqa: S603 - fixed arguments
            [sys.executable, "-m", "celery", "-A", "homepot", "worker", "-P", "solo", "-Q", queue]
            + ["--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "WARNING"],
            cwd=BASE_DIR,
            env=_worker_env(own_redis),
        )
        try:
            with celery_broker(own_redis.url):
                drain_health_reports.apply_async(queue=queue)

            def drain_waits_on_the_lock():
                lock.execute("SELECT pg_stat_clear_snapshot()")  # a fresh look, inside this transaction
                row = lock.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%unnest%%' AND datname = current_database()"
                ).fetchone()
                return row[0] > 0

            _wait_for(drain_waits_on_the_lock)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        lock.rollback()

    assert health_buffer.drain(wait=True) == acknowledged == 12
    assert HealthCheck.objects.count() == acknowledged
    assert all(values == [0, 1, 2] for values in stored_per_device(devices).values())
