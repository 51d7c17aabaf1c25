"""GET /metrics through the door Prometheus uses (a bearer token), its refusals, and the
exact counts after a known sequence: a job run by a real Celery worker, answered by a
device, heartbeats (one refused) and a sweep. Counters are compared as deltas: the registry
lives as long as the test process."""

import datetime
import json
import socket
import subprocess
import sys
import time

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from jobs_app import services as job_services
from jobs_app.choices import DeliveryStatus
from jobs_app.models import Delivery
from jobs_app.tests.test_worker import counts, launch, wait_for, worker  # noqa: F401 (fixture)
from monitoring_app import tasks as monitoring_tasks
from monitoring_app.models import MonitoringState

TOKEN = "metrics-test-token-0123456789"
HEARTBEAT = "/api/v1/agent/heartbeat"
HEARTBEAT_ROUTE = "api/v1/agent/heartbeat/?$"


@pytest.fixture
def token(settings):
    settings.HOMEPOT_METRICS_TOKEN = TOKEN
    settings.HOMEPOT_METRICS_MULTIPROC_DIR = ""
    return TOKEN


def scrape(client=None) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from GET /metrics with the token."""
    response = (client or Client()).get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# --- Who may read it ---------------------------------------------------------------------


@pytest.mark.django_db
def test_without_a_configured_token_the_endpoint_does_not_exist(settings):
    settings.HOMEPOT_METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN],
)
def test_a_missing_or_wrong_token_is_refused(token, authorization):
    response = Client().get("/metrics", HTTP_AUTHORIZATION=authorization)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"homepot_" not in response.content


@pytest.mark.django_db
def test_an_operator_session_or_a_device_credential_is_refused(token, admin_user):
    browser = Client()
    browser.force_login(admin_user)
    assert browser.get("/metrics").status_code == 401
    device = DeviceFactory()
    secret = device_credential_issue(actor=None, device=device)[1]
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Device {secret}").status_code == 401
    # Nor is it anywhere under the devices' API.
    assert Client().get("/api/v1/agent/metrics", HTTP_AUTHORIZATION=f"Device {secret}").status_code == 404


@pytest.mark.django_db
def test_http_requests_are_counted_by_route_template_not_raw_path(token, admin_api):
    devices = DeviceFactory.create_batch(2)
    before = scrape()
    for device in devices:
        assert admin_api.get(f"/api/v1/devices/{device.device_id}/").status_code == 200
    after = scrape()
    counted = {
        dict(labels)["route"]: n
        for (name, labels), n in after.items()
        if name == "homepot_http_requests_total" and dict(labels)["method"] == "GET"
    }
    assert not any(device.device_id in route for route in counted for device in devices)
    detail = "api/v1/devices/(?P<device_id>[^/]+)/$"
    assert delta(before, after, "homepot_http_requests_total", route=detail, method="GET", status="200") == 2


# --- A known sequence ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_counts_after_a_job_heartbeats_and_a_sweep(token, worker, admin_user):  # noqa: F811
    before = scrape()

    # A job, dispatched by the real worker, answered by one device.
    job = launch(admin_user, devices=3)
    wait_for(lambda: counts(job) == {"sent": 3})
    delivery = Delivery.objects.select_related("device").filter(job=job).order_by("pk").first()
    job_services.delivery_acknowledge(device=delivery.device, delivery_id=delivery.pk)
    job_services.delivery_report(device=delivery.device, delivery_id=delivery.pk, outcome="completed")
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.COMPLETED

    # Three heartbeats accepted, one refused (a clock that is not a time).
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    secret = device_credential_issue(actor=None, device=device)[1]
    auth = {"HTTP_AUTHORIZATION": f"Device {secret}"}
    for _ in range(3):
        assert Client().post(HEARTBEAT, data=b"", content_type="application/json", **auth).status_code == 200
    refused = Client().post(
        HEARTBEAT, data=json.dumps({"timestamp": "not a time"}), content_type="application/json", **auth
    )
    assert refused.status_code == 400

    # A sweep that finds one silent device (monitoring has been running: no resume grace).
    now = timezone.now()
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={
            "last_sweep_at": now - datetime.timedelta(seconds=5),
            "resumed_at": now - datetime.timedelta(days=1),
        },
    )
    Device.objects.filter(last_seen__isnull=True).update(last_seen=now)  # the job's devices: heard from
    DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(hours=1))
    monitoring_tasks.monitoring_tick()

    after = scrape()
    action, channel = job.action, delivery.device.push_channel
    assert delta(before, after, "homepot_ingest_accepted_total", kind="heartbeat") == 3
    assert delta(before, after, "homepot_ingest_refused_total", kind="heartbeat", reason="invalid") == 1
    assert (
        delta(
            before, after, "homepot_http_requests_total", route=HEARTBEAT_ROUTE, method="POST", status="200"
        )
        == 3
    )
    assert (
        delta(
            before, after, "homepot_http_requests_total", route=HEARTBEAT_ROUTE, method="POST", status="400"
        )
        == 1
    )
    assert (
        delta(
            before, after, "homepot_http_request_duration_seconds_count", route=HEARTBEAT_ROUTE, method="POST"
        )
        == 4
    )
    assert delta(before, after, "homepot_sweep_devices_marked_offline_total") == 1
    assert delta(before, after, "homepot_sweep_duration_seconds_count") == 1
    assert value(after, "homepot_sweep_last_run_timestamp_seconds") >= now.timestamp()
    stage = {"action": action, "channel": channel}
    assert delta(before, after, "homepot_delivery_stage_seconds_count", stage="pending_to_sent", **stage) == 3
    assert (
        delta(before, after, "homepot_delivery_stage_seconds_count", stage="sent_to_acknowledged", **stage)
        == 1
    )
    assert (
        delta(
            before, after, "homepot_delivery_stage_seconds_count", stage="acknowledged_to_completed", **stage
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "homepot_celery_task_duration_seconds_count",
            task="jobs_app.tasks.dispatch_job",
            state="SUCCESS",
        )
        >= 1
    )
    assert delta(before, after, "homepot_dispatch_batch_duration_seconds_count") >= 1
    # Gauges are the counts of the tick, not deltas: 3 job devices + the heartbeating one online,
    # the silent one offline.
    assert value(after, "homepot_devices", status="online") == 4
    assert value(after, "homepot_devices", status="offline") == 1
    assert value(after, "homepot_devices", status="maintenance") == 0


@pytest.mark.django_db
def test_health_reports_and_their_refusals_are_counted(token):
    device = DeviceFactory()
    secret = device_credential_issue(actor=None, device=device)[1]
    auth = {"HTTP_AUTHORIZATION": f"Device {secret}"}
    before = scrape()
    ok = Client().post(
        "/api/v1/agent/health",
        data=json.dumps({"status": "healthy", "timestamp": timezone.now().isoformat()}),
        content_type="application/json",
        **auth,
    )
    assert ok.status_code == 201, ok.content
    assert (
        Client().post("/api/v1/agent/health", data="{}", content_type="application/json", **auth).status_code
        == 400
    )
    assert Client().post("/api/v1/agent/heartbeat", HTTP_AUTHORIZATION="Device nope").status_code == 401
    after = scrape()
    assert delta(before, after, "homepot_ingest_accepted_total", kind="health") == 1
    assert delta(before, after, "homepot_ingest_refused_total", kind="health", reason="invalid") == 1
    assert (
        delta(before, after, "homepot_ingest_refused_total", kind="heartbeat", reason="unauthenticated") == 1
    )


# --- Several processes ---------------------------------------------------------------------

_CHILD = """
import sys
from homepot import metrics
metrics.HEARTBEAT_ACCEPTED.inc(int(sys.argv[1]))
metrics.devices.labels(status="online").set(int(sys.argv[2]))
"""


@pytest.mark.django_db
def test_multiprocess_mode_adds_up_every_process_of_every_kind(token, settings, tmp_path):
    # Two process kinds (web, worker) in their own subdirectories of one tree, as in compose.
    for kind, accepted, online in (("web", 2, 10), ("web", 3, 11), ("worker", 5, 12)):
        directory = tmp_path / kind
        directory.mkdir(exist_ok=True)
        subprocess.run(  # noqa: S603 - this interpreter, a fixed script
            [sys.executable, "-c", _CHILD, str(accepted), str(online)],
            env={
                "PROMETHEUS_MULTIPROC_DIR": str(directory),
                "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(settings.BASE_DIR),
            },
            check=True,
            cwd=settings.BASE_DIR,
        )
    settings.HOMEPOT_METRICS_MULTIPROC_DIR = str(tmp_path)
    samples = scrape()
    assert value(samples, "homepot_ingest_accepted_total", kind="heartbeat") == 10
    assert value(samples, "homepot_devices", status="online") == 12  # mostrecent: the last tick wins


# --- Readiness -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_checks_database_redis_and_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok", "mqtt": "ok"}}


@pytest.mark.django_db
def test_readyz_names_what_is_down_and_answers_503(client, settings):
    settings.HOMEPOT_JOBS_MQTT_PORT = 9  # discard: nothing listens
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.HOMEPOT_READYZ_TIMEOUT_SECONDS = 0.5
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response["Retry-After"]
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "redis": "unreachable", "mqtt": "unreachable"},
    }


@pytest.mark.django_db
def test_readyz_wants_an_mqtt_connack_not_just_a_tcp_connection(client, settings):
    # Something that accepts TCP on the broker's port and never speaks MQTT (a wedged broker,
    # a wrong service): not ready, and the probe gives up within its timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        settings.HOMEPOT_JOBS_MQTT_PORT = silent.getsockname()[1]
        settings.HOMEPOT_READYZ_TIMEOUT_SECONDS = 0.5
        started = time.monotonic()
        response = client.get("/readyz")
        took = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "mqtt": "unreachable"}
    assert took < 2


# --- Counted after commit ----------------------------------------------------------------------


class _RolledBack(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_delivery_counts_made_in_a_transaction_that_rolls_back_are_not_counted(token):
    # The dispatcher counts a batch's deferrals, push failures and sends inside the batch's
    # transaction; a batch that rolls back is claimed again later and must count once.
    from django.db import transaction

    from homepot import metrics

    labels = {"action": "health_check", "channel": "poll"}
    before = scrape()
    with pytest.raises(_RolledBack), transaction.atomic():
        metrics.deliveries_deferred.labels(**labels).inc(3)
        metrics.deliveries_failed.labels(reason="push", **labels).inc(2)
        metrics.delivery_stage.labels(stage="pending_to_sent", **labels).observe(1.5)
        raise _RolledBack
    rolled_back = scrape()
    with transaction.atomic():
        metrics.deliveries_deferred.labels(**labels).inc(3)
        metrics.delivery_stage.labels(stage="pending_to_sent", **labels).observe(1.5)
        assert delta(before, scrape(), "homepot_deliveries_deferred_total", **labels) == 0  # not yet
    committed = scrape()
    metrics.deliveries_failed.labels(reason="push", **labels).inc(2)  # outside a transaction: at once
    after = scrape()

    assert delta(before, rolled_back, "homepot_deliveries_deferred_total", **labels) == 0
    assert delta(before, rolled_back, "homepot_deliveries_failed_total", reason="push", **labels) == 0
    assert (
        delta(before, rolled_back, "homepot_delivery_stage_seconds_count", stage="pending_to_sent", **labels)
        == 0
    )
    assert delta(before, committed, "homepot_deliveries_deferred_total", **labels) == 3
    assert (
        delta(before, committed, "homepot_delivery_stage_seconds_count", stage="pending_to_sent", **labels)
        == 1
    )
    assert delta(committed, after, "homepot_deliveries_failed_total", reason="push", **labels) == 2


@pytest.mark.django_db
def test_devices_by_status_is_counted_once_per_period_by_whichever_tick_comes_first(token, settings):
    from django.db import connection

    from homepot.redis_clients import redis_client

    settings.HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS = 300
    claim = redis_client(settings.REDIS_URL, 1.0)
    key = f"homepot:metrics:device-count:{connection.settings_dict['NAME']}"
    claim.delete(key)
    try:
        DeviceFactory.create_batch(2, status=DeviceStatus.ONLINE, last_seen=timezone.now())
        monitoring_tasks.monitoring_tick()
        assert value(scrape(), "homepot_devices", status="online") == 2
        assert 0 < claim.ttl(key) <= 300

        DeviceFactory(status=DeviceStatus.ONLINE, last_seen=timezone.now())
        monitoring_tasks.monitoring_tick()  # within the period: the gauge keeps the last count
        assert value(scrape(), "homepot_devices", status="online") == 2

        claim.delete(key)  # the period is over (its key expired)
        monitoring_tasks.monitoring_tick()
        assert value(scrape(), "homepot_devices", status="online") == 3
    finally:
        claim.delete(key)
