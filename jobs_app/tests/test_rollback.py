"""Rollback: previous configuration recorded per delivery, a rollback job restoring it (by an
operator through the API, or by itself when the failure gate trips)."""

import json

import pytest

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.management.commands.mqtt_bridge import handle_event
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_api import device_client
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def report(delivery, status="completed", previous=None):
    body = {"status": status}
    if previous is not None:
        body["previous_config"] = previous
    return device_client(delivery.device).post(
        f"/api/v1/agent/deliveries/{delivery.pk}/result", body, format="json"
    )


def run_job(admin_user, configs, payload, **fields):
    """A job over devices with these configurations, sent; deliveries in device order."""
    site = SiteFactory()
    for config in configs:
        DeviceFactory(site=site, config=config)
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload=payload, **fields)
    dispatch.dispatch_pass(job.pk)
    return job, list(job.deliveries.order_by("device_id").select_related("device"))


def test_the_previous_configuration_is_recorded_from_the_device_or_homepots_record(admin_user):
    job, (told, untold) = run_job(
        admin_user, [{"tax": 0.1}, {"tax": 0.15, "other": 1}], {"tax": 0.2, "tip": True}
    )
    report(told, previous={"tax": 0.11, "tip": None, "unrelated": "x"})
    report(untold)

    told.refresh_from_db()
    untold.refresh_from_db()
    # The device's word wins, for the settings the job touched only.
    assert told.previous_config == {"tax": 0.11, "tip": None}
    # Without it, what HOMEPOT last applied to the device (null: it had no such setting).
    assert untold.previous_config == {"tax": 0.15, "tip": None}
    # And HOMEPOT's record follows the completed change.
    assert Device.objects.get(pk=untold.device_id).config == {"tax": 0.2, "tip": True, "other": 1}


def test_an_operator_rolls_a_finished_job_back_through_the_api(admin_user, admin_api):
    job, deliveries = run_job(
        admin_user, [{"tax": 0.1}, {"tax": 0.15}, {"tax": 0.3}], {"tax": 0.2}, max_in_flight_per_site=2
    )
    report(deliveries[0])
    report(deliveries[1], previous={"tax": 0.16})
    report(deliveries[2], status="failed")
    assert Job.objects.get(pk=job.pk).status == JobStatus.FAILED

    answer = admin_api.post(f"/jobs/{job.pk}/rollback", {}, format="json")

    assert answer.status_code == 201, answer.content
    rollback = answer.json()
    assert rollback["rollback_of"] == job.pk and rollback["max_in_flight_per_site"] == 2
    assert admin_api.get(f"/jobs/{job.pk}").json()["rolled_back_by"] == rollback["id"]
    assert [j["rolled_back_by"] for j in admin_api.get("/jobs").json()["results"] if j["id"] == job.pk] == [
        rollback["id"]
    ]
    # Only the devices that took the change, each with what it had before.
    restored = {
        d.device_id: d.payload for d in Delivery.objects.filter(job_id=rollback["id"]).order_by("device_id")
    }
    assert restored == {deliveries[0].device_id: {"tax": 0.1}, deliveries[1].device_id: {"tax": 0.16}}
    events = {
        r.event_type: r for r in AuditLog.objects.filter(event_type__in=["job.rolled_back", "job.created"])
    }
    assert events["job.rolled_back"].job_id == job.pk
    assert events["job.rolled_back"].new_values["rolled_back_by"] == rollback["id"]
    assert events["job.rolled_back"].new_values["devices"] == 2

    # The rollback goes out like any job: each device is offered its own values.
    dispatch.dispatch_pass(rollback["id"])
    first = Delivery.objects.get(job_id=rollback["id"], device_id=deliveries[0].device_id)
    [command] = device_client(first.device).get("/api/v1/agent/commands").json()["commands"]
    assert command["payload"] == {"tax": 0.1}
    report(first)
    assert Device.objects.get(pk=first.device_id).config == {"tax": 0.1}

    assert_error(
        admin_api.post(f"/jobs/{job.pk}/rollback", {}, format="json"), 409, code="already_rolled_back"
    )


def test_a_rollback_is_refused_while_running_or_with_nothing_to_restore(admin_user, admin_api):
    job, _deliveries = run_job(admin_user, [{}], {"tax": 0.2})
    assert_error(admin_api.post(f"/jobs/{job.pk}/rollback", {}, format="json"), 409, code="job_running")

    site = SiteFactory()
    DeviceFactory(site=site)
    restart = services.job_create(actor=admin_user, site=site, action="restart_pos_app")
    dispatch.dispatch_pass(restart.pk)
    report(restart.deliveries.get())
    assert_error(
        admin_api.post(f"/jobs/{restart.pk}/rollback", {}, format="json"), 409, code="nothing_to_roll_back"
    )
    assert_error(
        admin_api.post(f"/jobs/{restart.pk}/rollback", {"max_in_flight_per_site": 0}, format="json"),
        400,
        field="max_in_flight_per_site",
    )


def test_a_rollback_is_scoped_like_the_jobs_other_controls(admin_user):
    job, deliveries = run_job(admin_user, [{"tax": 0.1}], {"tax": 0.2})
    report(deliveries[0])
    viewer = SiteMembershipFactory(site=job.site, role=MembershipRole.VIEWER).user
    stranger = SiteMembershipFactory(site=SiteFactory()).user

    assert_error(token_client(viewer).post(f"/jobs/{job.pk}/rollback", {}, format="json"), 403)
    assert_error(token_client(stranger).post(f"/jobs/{job.pk}/rollback", {}, format="json"), 404)
    assert not Job.objects.filter(rollback_of=job).exists()


def test_the_failure_gate_pauses_and_rolls_back_by_itself(admin_user, settings):
    settings.HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 4
    job, deliveries = run_job(
        admin_user,
        [{"tax": 0.1}] * 6,
        {"tax": 0.2},
        failure_threshold_percent=25,
        rollback_on_failure=True,
        max_in_flight_per_site=3,
    )
    # Three at once: the first two take the change, the third fails, then the fourth.
    sent = [d for d in deliveries if Delivery.objects.get(pk=d.pk).status == DeliveryStatus.SENT]
    report(sent[0])
    report(sent[1])
    report(sent[2], status="failed")
    dispatch.dispatch_pass(job.pk)
    fourth = Delivery.objects.filter(job=job, status=DeliveryStatus.SENT).select_related("device").first()
    report(fourth, status="failed")

    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    rollback = Job.objects.get(rollback_of=job)
    assert rollback.status in (JobStatus.QUEUED, JobStatus.SENT)
    assert rollback.max_in_flight_per_site == 3 and not rollback.rollback_on_failure
    assert set(rollback.deliveries.values_list("device_id", flat=True)) == {
        sent[0].device_id,
        sent[1].device_id,
    }
    row = AuditLog.objects.get(event_type="job.rolled_back")
    assert row.actor_id is None and row.new_values["trigger"] == "failure_threshold"


def test_without_rollback_on_failure_the_gate_only_pauses(admin_user, settings):
    settings.HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 2
    job, deliveries = run_job(admin_user, [{"tax": 0.1}] * 2, {"tax": 0.2}, failure_threshold_percent=10)
    report(deliveries[0])
    report(deliveries[1], status="failed")
    assert Job.objects.get(pk=job.pk).status == JobStatus.PAUSED
    assert not Job.objects.filter(rollback_of=job).exists()


def test_a_software_update_rolls_back_to_the_previous_version(admin_user, admin_api):
    site = SiteFactory()
    device = DeviceFactory(site=site, firmware_version="4.1.0")
    job = services.job_create(
        actor=admin_user, site=site, action="software_update", payload={"version": "4.2.0"}
    )
    dispatch.dispatch_pass(job.pk)
    report(job.deliveries.get())
    rollback = admin_api.post(f"/jobs/{job.pk}/rollback", {}, format="json").json()
    assert Delivery.objects.get(job_id=rollback["id"], device=device).payload == {"version": "4.1.0"}


def test_the_previous_configuration_comes_over_mqtt_too(admin_user):
    job, (delivery,) = run_job(admin_user, [{"tax": 0.1}], {"tax": 0.2})
    topic = f"homepot/devices/{delivery.device.device_id}/events"
    body = {
        "delivery_id": delivery.pk,
        "event": "result",
        "status": "completed",
        "previous_config": {"tax": 0.09},
    }
    assert handle_event(topic, json.dumps(body).encode()) == "completed"
    delivery.refresh_from_db()
    assert delivery.previous_config == {"tax": 0.09}
