"""Cancelling one delivery of a job: the service, the API, the admin button, and the cancel
message an MQTT device gets (against the local Mosquitto, 127.0.0.1:1883)."""

import re
import time
import uuid

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from homepot.errors import Conflict
from homepot.tests.api_helpers import assert_error, token_client
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_mqtt import listen
from jobs_app.tests.test_worker import wait_for
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

PENDING, SENT, ACK = DeliveryStatus.PENDING, DeliveryStatus.SENT, DeliveryStatus.ACKNOWLEDGED
COMPLETED, FAILED, TIMED_OUT, CANCELLED = (
    DeliveryStatus.COMPLETED,
    DeliveryStatus.FAILED,
    DeliveryStatus.TIMED_OUT,
    DeliveryStatus.CANCELLED,
)


def launched(actor, devices=2, site=None, **fields):
    """A job to `devices` polling devices of a new site, its deliveries created (pending)."""
    site = site or SiteFactory()
    DeviceFactory.create_batch(devices, site=site)
    job = services.job_create(actor=actor, site=site, action="update_config", **fields)
    services.deliveries_materialise(job.pk)
    return job


def deliveries_of(job):
    return list(Delivery.objects.filter(job=job).select_related("device", "job").order_by("id"))


def set_status(delivery, status):
    Delivery.objects.filter(pk=delivery.pk).update(status=status)
    delivery.refresh_from_db()
    return delivery


def cancel_url(job_id, delivery_id, prefix="/api/v1"):
    return f"{prefix}/jobs/{job_id}/deliveries/{delivery_id}/cancel/"


def member(site, role=MembershipRole.MANAGER, **fields):
    return SiteMembershipFactory(site=site, role=role, user=UserFactory(**fields)).user


# --- The service -------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("status", [PENDING, SENT])
def test_a_pending_or_sent_delivery_is_cancelled_and_audited_once(admin_user, status):
    job = launched(admin_user)
    delivery, other = deliveries_of(job)
    set_status(delivery, status)

    cancelled = services.delivery_cancel(actor=admin_user, delivery=delivery)
    services.delivery_cancel(actor=admin_user, delivery=delivery)  # a repeat is a no-op

    assert cancelled.status == CANCELLED
    delivery.refresh_from_db()
    other.refresh_from_db()
    assert (delivery.status, other.status) == (CANCELLED, PENDING)
    assert delivery.failed_at is not None
    row = AuditLog.objects.get(event_type="delivery.cancelled")
    assert (row.actor, row.job_id, row.device_id, row.site_id, row.device_ref, row.site_ref) == (
        admin_user,
        job.pk,
        delivery.device_id,
        delivery.site_id,
        delivery.device.device_id,
        job.site.site_id,
    )
    assert (row.old_values, row.new_values) == ({"status": status}, {"status": "cancelled"})


@pytest.mark.django_db
@pytest.mark.parametrize("status", [ACK, COMPLETED, FAILED, TIMED_OUT])
def test_a_delivery_the_device_took_or_that_is_over_cannot_be_cancelled(admin_user, status):
    job = launched(admin_user, devices=1)
    (delivery,) = deliveries_of(job)
    set_status(delivery, status)

    with pytest.raises(Conflict) as refused:
        services.delivery_cancel(actor=admin_user, delivery=delivery)

    assert refused.value.code == "delivery_not_cancellable"
    assert refused.value.status_code == 409
    assert (
        f"Delivery #{delivery.pk}" in refused.value.message and "cannot be cancelled" in refused.value.message
    )
    delivery.refresh_from_db()
    assert delivery.status == status
    assert not AuditLog.objects.filter(event_type="delivery.cancelled").exists()


@pytest.mark.django_db
def test_cancelling_the_last_open_delivery_finishes_the_job(admin_user):
    job = launched(admin_user)
    dispatch.dispatch_pass(job.pk)
    done, last = deliveries_of(job)
    services.delivery_report(device=done.device, delivery_id=done.pk, outcome=COMPLETED)
    assert Job.objects.get(pk=job.pk).status == JobStatus.SENT

    services.delivery_cancel(actor=admin_user, delivery=last)

    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED and job.completed_at is not None
    events = list(AuditLog.objects.filter(job_id=job.pk).order_by("id").values_list("event_type", flat=True))
    assert events[-2:] == ["delivery.cancelled", "job.completed"]


@pytest.mark.django_db
def test_the_job_rolls_up_when_its_only_pending_delivery_is_cancelled(admin_user):
    job = launched(admin_user)
    first, second = deliveries_of(job)
    services.deliveries_mark_sent([first.pk])
    services.job_rollup(job.pk)
    assert Job.objects.get(pk=job.pk).status == JobStatus.QUEUED  # `second` still pending

    services.delivery_cancel(actor=admin_user, delivery=second)

    assert Job.objects.get(pk=job.pk).status == JobStatus.SENT


@pytest.mark.django_db
def test_a_polling_device_hears_cancelled_and_its_late_report_changes_nothing(
    admin_user, django_capture_on_commit_callbacks
):
    job = launched(admin_user, devices=1)
    dispatch.dispatch_pass(job.pk)
    (delivery,) = deliveries_of(job)

    with django_capture_on_commit_callbacks() as callbacks:
        services.delivery_cancel(actor=admin_user, delivery=delivery)

    assert callbacks == []  # nothing to push: a poll device learns it from its next ack
    assert services.delivery_acknowledge(device=delivery.device, delivery_id=delivery.pk).status == CANCELLED
    late = services.delivery_report(device=delivery.device, delivery_id=delivery.pk, outcome=COMPLETED)
    assert late.status == CANCELLED


@pytest.mark.django_db
def test_only_a_sent_delivery_on_a_push_channel_is_told(admin_user, django_capture_on_commit_callbacks):
    site = SiteFactory()
    sent = DeviceFactory(site=site, push_channel="mqtt")
    never_sent = DeviceFactory(site=site, push_channel="mqtt")
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    services.deliveries_materialise(job.pk)
    told = Delivery.objects.get(job=job, device=sent)
    services.deliveries_mark_sent([told.pk])

    with django_capture_on_commit_callbacks() as callbacks:
        services.delivery_cancel(actor=admin_user, delivery=told)
    with django_capture_on_commit_callbacks() as nothing:
        services.delivery_cancel(actor=admin_user, delivery=Delivery.objects.get(job=job, device=never_sent))

    assert len(callbacks) == 1 and nothing == []


@pytest.mark.django_db
def test_only_those_who_may_change_the_jobs_site_cancel_and_only_deliveries_they_see(admin_user):
    site, elsewhere = SiteFactory(), SiteFactory()
    DeviceFactory(site=elsewhere)
    # A job of `site` spread over another store too.
    job = launched(admin_user, site=site, devices=1, extra_sites=[elsewhere])
    here = Delivery.objects.get(job=job, site=site)
    there = Delivery.objects.get(job=job, site=elsewhere)

    for outsider in (member(elsewhere), member(site, MembershipRole.VIEWER)):
        with pytest.raises(PermissionDenied):
            services.delivery_cancel(actor=outsider, delivery=here)
    # A manager of the job's site does not see the other store's side of it.
    manager = member(site)
    with pytest.raises(PermissionDenied):
        services.delivery_cancel(actor=manager, delivery=there)

    assert services.delivery_cancel(actor=manager, delivery=here).status == CANCELLED
    assert Delivery.objects.get(pk=there.pk).status == PENDING
    assert AuditLog.objects.filter(event_type="delivery.cancelled").count() == 1


# --- The API -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_api_cancels_a_delivery_and_answers_its_state(admin_api, prefix):
    job = launched(admin_api.user)
    dispatch.dispatch_pass(job.pk)
    delivery, other = deliveries_of(job)

    response = admin_api.post(cancel_url(job.pk, delivery.pk, prefix))
    again = admin_api.post(cancel_url(job.pk, delivery.pk, prefix).rstrip("/"))

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["id"], body["job"], body["device"], body["site"], body["status"]) == (
        delivery.pk,
        job.pk,
        delivery.device.device_id,
        job.site.site_id,
        "cancelled",
    )
    assert body["failed_at"] is not None
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert Delivery.objects.get(pk=other.pk).status == SENT
    assert AuditLog.objects.filter(event_type="delivery.cancelled", job_id=job.pk).count() == 1


@pytest.mark.django_db
def test_api_answers_409_for_a_delivery_the_device_has_taken(admin_api):
    job = launched(admin_api.user, devices=1)
    dispatch.dispatch_pass(job.pk)
    (delivery,) = deliveries_of(job)
    services.delivery_acknowledge(device=delivery.device, delivery_id=delivery.pk)

    error = assert_error(
        admin_api.post(cancel_url(job.pk, delivery.pk)), 409, code="delivery_not_cancellable"
    )

    assert "acknowledged" in error["message"]
    assert Delivery.objects.get(pk=delivery.pk).status == ACK


@pytest.mark.django_db
def test_api_answers_404_for_a_delivery_not_of_the_job_or_a_job_out_of_scope(admin_api):
    job, other_job = launched(admin_api.user, devices=1), launched(admin_api.user, devices=1)
    (delivery,) = deliveries_of(job)
    (foreign,) = deliveries_of(other_job)
    manager_elsewhere = token_client(member(SiteFactory()))

    assert_error(admin_api.post(cancel_url(job.pk, foreign.pk)), 404)
    assert_error(admin_api.post(cancel_url(job.pk, 999_999_999)), 404)
    assert_error(admin_api.post(cancel_url(999_999_999, delivery.pk)), 404)
    assert_error(manager_elsewhere.post(cancel_url(job.pk, delivery.pk)), 404)
    assert admin_api.post(f"/api/v1/jobs/{job.pk}/deliveries/x/cancel/").status_code == 404
    assert set(Delivery.objects.values_list("status", flat=True)) == {PENDING}


@pytest.mark.django_db
def test_api_answers_404_for_another_stores_side_of_a_spread_job(admin_user):
    site, elsewhere = SiteFactory(), SiteFactory()
    DeviceFactory(site=elsewhere)
    job = launched(admin_user, site=site, devices=1, extra_sites=[elsewhere])
    there = Delivery.objects.get(job=job, site=elsewhere)
    manager = token_client(member(site))

    assert_error(manager.post(cancel_url(job.pk, there.pk)), 404)
    assert Delivery.objects.get(pk=there.pk).status == PENDING


@pytest.mark.django_db
def test_api_answers_403_to_those_who_see_the_job_but_may_not_change_it(admin_user):
    site = SiteFactory()
    job = launched(admin_user, site=site, devices=1)
    (delivery,) = deliveries_of(job)
    viewer = token_client(member(site, MembershipRole.VIEWER))
    # A manager of another store who only views this one.
    manager_elsewhere = member(SiteFactory())
    SiteMembershipFactory(user=manager_elsewhere, site=site, role=MembershipRole.VIEWER)

    assert_error(viewer.post(cancel_url(job.pk, delivery.pk)), 403)
    assert_error(token_client(manager_elsewhere).post(cancel_url(job.pk, delivery.pk)), 403)
    assert Delivery.objects.get(pk=delivery.pk).status == PENDING

    manager = token_client(member(site))
    assert manager.post(cancel_url(job.pk, delivery.pk)).json()["status"] == "cancelled"
    row = AuditLog.objects.get(event_type="delivery.cancelled")
    assert row.actor == manager.user and row.source_ip


# --- MQTT, end to end ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_delivery_sent_over_mqtt_tells_that_device_only(admin_user, admin_api):
    site = SiteFactory()
    target, bystander = (
        DeviceFactory(site=site, device_id=f"mqtt-{uuid.uuid4().hex[:12]}", push_channel="mqtt")
        for _ in range(2)
    )
    listener, received = listen([target.device_id, bystander.device_id])
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    assert dispatch.dispatch_pass(job.pk).sent == 2
    delivery = Delivery.objects.get(job=job, device=target)
    try:
        wait_for(lambda: len(received) >= 2)  # both were sent the work
        response = admin_api.post(cancel_url(job.pk, delivery.pk))
        assert response.status_code == 200, response.content
        wait_for(lambda: len(received) >= 3)
        time.sleep(0.5)  # nothing more should arrive (the bystander keeps its work)
    finally:
        listener.loop_stop()
        listener.disconnect()
    assert sorted((device_id, message["type"]) for device_id, message in received) == sorted(
        [(target.device_id, "deliver"), (bystander.device_id, "deliver"), (target.device_id, "cancel")]
    )
    assert received[-1][1] == {"type": "cancel", "delivery_id": delivery.pk, "job_id": job.pk}
    statuses = dict(Delivery.objects.filter(job=job).values_list("device_id", "status"))
    assert statuses == {target.pk: CANCELLED, bystander.pk: SENT}
    assert Job.objects.get(pk=job.pk).status == JobStatus.SENT


# --- The admin -----------------------------------------------------------------------------------


def change_url(job):
    return reverse("admin:jobs_app_job_change", args=[job.pk])


def admin_cancel_url(job_id, delivery_id):
    return reverse("admin:jobs_app_job_cancel_delivery", args=[job_id, delivery_id])


def shown_messages(response):
    return [str(message) for message in response.context["messages"]]


@pytest.mark.django_db
def test_the_job_page_offers_cancel_only_for_deliveries_not_yet_taken(admin_browser, admin_user):
    job = launched(admin_user, devices=3)
    dispatch.dispatch_pass(job.pk)
    taken, open_one, done = deliveries_of(job)
    services.delivery_acknowledge(device=taken.device, delivery_id=taken.pk)
    services.delivery_report(device=done.device, delivery_id=done.pk, outcome=COMPLETED)

    page = admin_browser.get(change_url(job)).content.decode()

    assert re.findall(r'formaction="([^"]+)"', page) == [admin_cancel_url(job.pk, open_one.pk)]
    # The buttons belong to a form of their own after the job form, with its CSRF token.
    cancel_form = re.search(r'<form id="delivery-cancel-form" method="post"[^>]*>(.*?)</form>', page, re.S)
    assert cancel_form and "csrfmiddlewaretoken" in cancel_form.group(1)
    assert page.index('id="job_form"') < page.index('id="delivery-cancel-form"')


@pytest.mark.django_db
def test_the_admin_button_cancels_the_delivery_through_the_service(admin_user):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    job = launched(admin_user, devices=2)
    dispatch.dispatch_pass(job.pk)
    delivery, other = deliveries_of(job)
    page = browser.get(change_url(job)).content.decode()
    token = re.search(
        r'id="delivery-cancel-form".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.S
    ).group(1)
    url = admin_cancel_url(job.pk, delivery.pk)

    assert browser.post(url).status_code == 403  # no CSRF token: refused
    response = browser.post(url, {"csrfmiddlewaretoken": token}, follow=True)

    assert response.redirect_chain == [(change_url(job), 302)]
    assert f"Cancelled delivery #{delivery.pk} to {delivery.device.device_id}." in shown_messages(response)
    assert Delivery.objects.get(pk=delivery.pk).status == CANCELLED
    assert Delivery.objects.get(pk=other.pk).status == SENT
    row = AuditLog.objects.get(event_type="delivery.cancelled")
    assert (row.actor, row.job_id, row.device_id) == (admin_user, job.pk, delivery.device_id)
    # Once cancelled, the row offers no button; a second post says so and changes nothing.
    assert url not in response.content.decode()
    again = browser.post(url, {"csrfmiddlewaretoken": token}, follow=True)
    assert "was already cancelled" in " ".join(shown_messages(again))
    assert AuditLog.objects.filter(event_type="delivery.cancelled").count() == 1


@pytest.mark.django_db
def test_the_admin_reports_a_refusal_and_an_unknown_delivery_on_the_job_page(admin_browser, admin_user):
    job, other_job = launched(admin_user, devices=1), launched(admin_user, devices=1)
    dispatch.dispatch_pass(job.pk)
    (delivery,) = deliveries_of(job)
    (foreign,) = deliveries_of(other_job)
    services.delivery_acknowledge(device=delivery.device, delivery_id=delivery.pk)

    refused = admin_browser.post(admin_cancel_url(job.pk, delivery.pk), follow=True)
    unknown = admin_browser.post(admin_cancel_url(job.pk, foreign.pk), follow=True)

    assert refused.redirect_chain == [(change_url(job), 302)]
    assert "cannot be cancelled (the device has already taken the work)" in " ".join(shown_messages(refused))
    assert shown_messages(unknown) == [f"Job #{job.pk} has no delivery #{foreign.pk}."]
    assert set(Delivery.objects.values_list("status", flat=True)) == {ACK, PENDING}
    assert admin_browser.get(admin_cancel_url(job.pk, delivery.pk)).status_code == 405
    assert not AuditLog.objects.filter(event_type="delivery.cancelled").exists()


@pytest.mark.django_db
def test_the_admin_cancel_is_for_those_who_may_change_the_job(client, admin_user):
    site = SiteFactory()
    job = launched(admin_user, site=site, devices=1)
    (delivery,) = deliveries_of(job)
    url = admin_cancel_url(job.pk, delivery.pk)

    client.force_login(member(site, MembershipRole.VIEWER, is_staff=True))
    page = client.get(change_url(job)).content.decode()
    assert "formaction" not in page and "delivery-cancel-form" not in page
    assert client.post(url).status_code == 403

    client.force_login(member(SiteFactory(), is_staff=True))  # manages another store
    gone = client.post(url)
    assert (gone.status_code, gone["Location"]) == (302, reverse("admin:index"))

    client.force_login(member(site, is_staff=True))
    assert client.post(url)["Location"] == change_url(job)
    assert Delivery.objects.get(pk=delivery.pk).status == CANCELLED
