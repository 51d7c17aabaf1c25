"""Device-side deferral ("sale in progress"): a device answers "not now" over the agent API
or MQTT, the job's policy bounds it, and the rollout carries on around it."""

import datetime
import json

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.management.commands.mqtt_bridge import handle_event
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_api import device_client
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def sent_job(admin_user, devices=1, **policy):
    site = SiteFactory()
    DeviceFactory.create_batch(devices, site=site)
    job = services.job_create(
        actor=admin_user, site=site, action="update_config", payload={"k": "v"}, **policy
    )
    dispatch.dispatch_pass(job.pk)
    return job


def defer(client, delivery_id, delay=60, reason="sale in progress"):
    return client.post(
        f"/api/v1/agent/deliveries/{delivery_id}/defer",
        {"delay_seconds": delay, "reason": reason},
        format="json",
    )


def due_now(job):
    """The deferral's delay has passed (moved back in time rather than waited for)."""
    Delivery.objects.filter(job=job, status=DeliveryStatus.PENDING).update(
        next_attempt_at=timezone.now() - datetime.timedelta(seconds=1)
    )


def test_a_deferred_delivery_waits_its_delay_and_is_offered_again(admin_user):
    job = sent_job(admin_user, ttl=datetime.timedelta(minutes=10))
    delivery = job.deliveries.get()
    deadline = delivery.deadline
    client = device_client(delivery.device)

    before = timezone.now()
    answer = defer(client, delivery.pk, delay=120).json()

    assert answer["status"] == "pending" and answer["defer_count"] == 1 and answer["forced"] is False
    assert answer["deferred_seconds"] == 120
    next_offer = datetime.datetime.fromisoformat(answer["next_attempt_at"])
    assert (
        before + datetime.timedelta(seconds=119)
        < next_offer
        < timezone.now() + datetime.timedelta(seconds=121)
    )
    delivery.refresh_from_db()
    assert delivery.defer_reason == "sale in progress"
    # The device asked for time and got it: its deadline moves by the delay granted.
    assert delivery.deadline == deadline + datetime.timedelta(seconds=120)
    # Not in its mailbox, not sent again before its time.
    assert client.get("/api/v1/agent/commands").json()["commands"] == []
    assert dispatch.dispatch_pass(job.pk).sent == 0

    due_now(job)
    assert dispatch.dispatch_pass(job.pk).sent == 1
    [command] = client.get("/api/v1/agent/commands").json()["commands"]
    assert (command["delivery_id"], command["force"]) == (delivery.pk, False)


def test_a_deferral_is_audited_once_per_job_and_batch(admin_user):
    job = sent_job(admin_user)
    delivery = job.deliveries.get()
    defer(device_client(delivery.device), delivery.pk, reason="lunch rush")

    row = AuditLog.objects.get(event_type="deliveries.deferred")
    assert row.job_id == job.pk
    assert row.new_values["deferred"] == 1
    assert row.new_values["devices"] == [delivery.device.device_id]
    assert "lunch rush" in row.description


def test_a_deferred_till_frees_its_stores_slot(admin_user):
    """With one device per store at a time, the till that says "not now" lets the next one go."""
    job = sent_job(admin_user, devices=2, max_in_flight_per_site=1)
    first = Delivery.objects.get(job=job, status=DeliveryStatus.SENT)
    assert Delivery.objects.filter(job=job, status=DeliveryStatus.PENDING).count() == 1

    defer(device_client(first.device), first.pk)
    assert dispatch.dispatch_pass(job.pk).sent == 1
    second = Delivery.objects.get(job=job, status=DeliveryStatus.SENT)
    assert second.pk != first.pk


def test_the_total_delay_is_capped_by_the_policy(admin_user):
    job = sent_job(admin_user, max_deferrals=5, max_deferral_seconds=100)
    delivery = job.deliveries.get()
    client = device_client(delivery.device)

    assert defer(client, delivery.pk, delay=60).json()["deferred_seconds"] == 60
    due_now(job)
    dispatch.dispatch_pass(job.pk)
    # Only 40 s are left of the 100: that is what the second deferral gets.
    answer = defer(client, delivery.pk, delay=60).json()
    assert (answer["defer_count"], answer["deferred_seconds"]) == (2, 100)


def use_up_deferrals(job, client, delivery):
    """The device defers once (all its policy allows), is offered the work again, and asks
    to defer again: the policy's limit."""
    assert defer(client, delivery.pk).json()["status"] == "pending"
    due_now(job)
    assert dispatch.dispatch_pass(job.pk).sent == 1
    return defer(client, delivery.pk).json()


def test_past_the_limit_force_offers_the_work_again_and_ignores_further_deferrals(admin_user):
    job = sent_job(admin_user, max_deferrals=1, deferral_exhausted="force")
    delivery = job.deliveries.get()
    client = device_client(delivery.device)

    answer = use_up_deferrals(job, client, delivery)
    assert (answer["status"], answer["forced"], answer["next_attempt_at"]) == ("pending", True, None)
    assert dispatch.dispatch_pass(job.pk).sent == 1
    [command] = client.get("/api/v1/agent/commands").json()["commands"]
    assert command["force"] is True
    # A forced offer cannot be deferred: the answer says it is still the device's to do.
    assert defer(client, delivery.pk).json()["status"] == "sent"
    client.post(f"/api/v1/agent/deliveries/{delivery.pk}/result", {"status": "completed"}, format="json")
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED


def test_past_the_limit_skip_ends_the_devices_delivery_cancelled(admin_user):
    job = sent_job(admin_user, devices=2, max_deferrals=1, deferral_exhausted="skip")
    delivery, other = job.deliveries.order_by("id")
    client = device_client(delivery.device)

    answer = use_up_deferrals(job, client, delivery)
    assert answer["status"] == "cancelled"
    delivery.refresh_from_db()
    assert "beyond the job's limit" in delivery.last_error and "sale in progress" in delivery.last_error
    device_client(other.device).post(
        f"/api/v1/agent/deliveries/{other.pk}/result", {"status": "completed"}, format="json"
    )
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED  # a skipped till is not a failure


def test_past_the_limit_fail_fails_the_delivery(admin_user):
    job = sent_job(admin_user, max_deferrals=1, deferral_exhausted="fail")
    delivery = job.deliveries.get()
    answer = use_up_deferrals(job, device_client(delivery.device), delivery)
    assert answer["status"] == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    row = AuditLog.objects.filter(event_type="deliveries.deferred").latest("id")
    assert row.new_values["failed"] == 1


def test_zero_deferrals_applies_the_policy_at_once(admin_user):
    job = sent_job(admin_user, max_deferrals=0, deferral_exhausted="skip")
    delivery = job.deliveries.get()
    assert defer(device_client(delivery.device), delivery.pk).json()["status"] == "cancelled"


def test_bad_deferrals_are_refused_naming_the_field(admin_user):
    job = sent_job(admin_user, devices=2)
    mine, theirs = job.deliveries.order_by("id")
    client = device_client(mine.device)
    assert_error(
        client.post(f"/api/v1/agent/deliveries/{mine.pk}/defer", {}, format="json"), 400, "delay_seconds"
    )
    assert_error(defer(client, mine.pk, delay=0), 400, "delay_seconds")
    assert_error(defer(client, mine.pk, delay=86401), 400, "delay_seconds")
    assert_error(defer(client, theirs.pk), 404)
    assert_error(defer(client, 999999999), 404)
    assert set(job.deliveries.values_list("status", flat=True)) == {"sent"}


def test_a_finished_or_pending_delivery_cannot_be_deferred(admin_user):
    job = sent_job(admin_user)
    delivery = job.deliveries.get()
    client = device_client(delivery.device)
    client.post(f"/api/v1/agent/deliveries/{delivery.pk}/result", {"status": "completed"}, format="json")
    assert defer(client, delivery.pk).json()["status"] == "completed"
    assert not AuditLog.objects.filter(event_type="deliveries.deferred").exists()


def test_the_policy_is_set_and_checked_through_the_api(admin_api):
    site = SiteFactory()
    DeviceFactory(site=site)
    body = {"site_id": site.site_id, "action": "update_config", "payload": {"k": "v"}}
    created = admin_api.post(
        "/jobs",
        {**body, "max_deferrals": 2, "max_deferral_seconds": 900, "deferral_exhausted": "skip"},
        format="json",
    )
    assert created.status_code == 201, created.content
    job = created.json()
    assert (job["max_deferrals"], job["max_deferral_seconds"], job["deferral_exhausted"]) == (2, 900, "skip")
    assert_error(admin_api.post("/jobs", {**body, "max_deferrals": -1}, format="json"), 400, "max_deferrals")
    assert_error(
        admin_api.post("/jobs", {**body, "deferral_exhausted": "later"}, format="json"),
        400,
        "deferral_exhausted",
    )
    assert_error(
        admin_api.post("/jobs", {**body, "max_deferral_seconds": "soon"}, format="json"),
        400,
        "max_deferral_seconds",
    )


def test_the_deliveries_list_shows_the_deferral(admin_user, admin_api):
    job = sent_job(admin_user)
    delivery = job.deliveries.get()
    defer(device_client(delivery.device), delivery.pk, delay=30, reason="queue at till 2")
    [row] = admin_api.get(f"/jobs/{job.pk}/deliveries").json()["results"]
    assert (row["status"], row["defer_count"], row["deferred_seconds"], row["defer_reason"]) == (
        "pending",
        1,
        30,
        "queue at till 2",
    )
    assert row["next_attempt_at"] is not None
    progress = admin_api.get(f"/jobs/{job.pk}").json()["progress"]
    assert progress["deferred"] == 1 and progress["counts"]["pending"] == 1
    assert parse_datetime(progress["next_offer_at"]) == parse_datetime(row["next_attempt_at"])


# --- MQTT ------------------------------------------------------------------------------------


def mqtt_event(device, body):
    return handle_event(f"homepot/devices/{device.device_id}/events", json.dumps(body).encode())


def test_a_deferral_over_mqtt_is_the_same_transition(admin_user):
    job = sent_job(admin_user, devices=2, max_deferrals=1, deferral_exhausted="fail")
    delivery, theirs = job.deliveries.order_by("id")
    device = delivery.device
    body = {"delivery_id": delivery.pk, "event": "defer", "delay_seconds": 30, "reason": "sale in progress"}

    assert mqtt_event(theirs.device, body) == "ignored: unknown delivery or no change"
    assert mqtt_event(device, {**body, "delay_seconds": 0}) == "ignored: delay_seconds: between 1 and 86400."
    # What PostgreSQL cannot store is refused here, not left to fail the bridge's batch.
    assert mqtt_event(device, {**body, "reason": "busy\u0000"}) == "ignored: reason: give a text."
    assert mqtt_event(device, {**body, "reason": "busy \ud800"}) == "ignored: reason: give a text."
    assert mqtt_event(device, body) == "deferred"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.defer_count, delivery.defer_reason) == (
        "pending",
        1,
        "sale in progress",
    )

    due_now(job)
    dispatch.dispatch_pass(job.pk)
    assert mqtt_event(device, body) == "failed"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


def test_a_job_is_rolled_up_to_queued_while_a_deferred_delivery_waits(admin_user):
    job = sent_job(admin_user)
    delivery = job.deliveries.get()
    assert Job.objects.get(pk=job.pk).status == JobStatus.SENT
    defer(device_client(delivery.device), delivery.pk)
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED
