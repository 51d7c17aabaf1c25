"""The job page's Roll back control, the rollout policy's new fields and the deferral
column on the job and device pages, through the admin client."""

import pytest
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.choices import JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_admin import ADD, change_url, form_data
from jobs_app.tests.test_api import device_client
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def finished_config_job(admin_user, devices=2):
    site = SiteFactory()
    for _ in range(devices):
        DeviceFactory(site=site, config={"tax": 0.1})
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 0.2})
    dispatch.dispatch_pass(job.pk)
    for delivery in job.deliveries.select_related("device"):
        device_client(delivery.device).post(
            f"/api/v1/agent/deliveries/{delivery.pk}/result", {"status": "completed"}, format="json"
        )
    assert Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED
    return job


def test_roll_back_asks_for_confirmation_then_opens_the_rollback_job(admin_browser, admin_user):
    job = finished_config_job(admin_user)
    url = reverse("admin:jobs_app_job_control", args=[job.pk, "rollback"])
    assert f'href="{url}"' in admin_browser.get(change_url(job)).text
    confirm = admin_browser.get(url)
    assert confirm.status_code == 200 and "what it had before" in confirm.text
    assert not Job.objects.filter(rollback_of=job).exists()  # a GET changes nothing

    response = admin_browser.post(url)

    rollback = Job.objects.get(rollback_of=job)
    assert response["Location"] == change_url(rollback)
    page = admin_browser.get(change_url(rollback)).text
    assert "Rolls back" in page and change_url(job) in page
    original = admin_browser.get(change_url(job)).text
    assert "Rolled back by" in original and change_url(rollback) in original
    assert f'href="{url}"' not in original  # once only
    assert AuditLog.objects.filter(event_type="job.rolled_back", job_id=job.pk).count() == 1
    # Each device is sent its own previous settings.
    assert list(Delivery.objects.filter(job=rollback).values_list("payload", flat=True)) == [{"tax": 0.1}] * 2


def test_roll_back_is_not_offered_for_running_or_settingless_jobs(admin_browser, admin_user):
    site = SiteFactory()
    DeviceFactory(site=site)
    running = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 1})
    dispatch.dispatch_pass(running.pk)
    url = reverse("admin:jobs_app_job_control", args=[running.pk, "rollback"])
    assert url not in admin_browser.get(change_url(running)).text
    # Posted anyway: refused with the reason, nothing created.
    response = admin_browser.post(url, follow=True)
    assert "was not rolled back" in response.text and "pause it or let it finish" in response.text
    assert not Job.objects.filter(rollback_of=running).exists()


def test_a_viewer_cannot_roll_back(client, admin_user):
    job = finished_config_job(admin_user, devices=1)
    viewer = UserFactory(is_staff=True)
    grant_perms(viewer, "jobs_app.view_job")
    SiteMembershipFactory(user=viewer, site=job.site, role=MembershipRole.VIEWER)
    client.force_login(viewer)
    url = reverse("admin:jobs_app_job_control", args=[job.pk, "rollback"])
    assert url not in client.get(change_url(job)).text
    assert client.post(url).status_code == 403
    assert not Job.objects.filter(rollback_of=job).exists()


def test_the_new_job_form_takes_the_deferral_policy_and_rollback_under_advanced(admin_browser):
    site = SiteFactory()
    page = admin_browser.get(ADD).text
    for name in ("max_deferrals", "max_deferral_seconds", "deferral_exhausted", "rollback_on_failure"):
        assert f'name="{name}"' in page

    admin_browser.post(
        ADD,
        form_data(
            site,
            max_deferrals="1",
            max_deferral_seconds="600",
            deferral_exhausted="skip",
            rollback_on_failure="on",
        ),
    )

    job = Job.objects.get()
    assert (job.max_deferrals, job.max_deferral_seconds, job.deferral_exhausted, job.rollback_on_failure) == (
        1,
        600,
        "skip",
        True,
    )
    created = AuditLog.objects.get(event_type="job.created").new_values
    assert created["deferral_exhausted"] == "skip" and created["rollback_on_failure"] is True


def test_a_deferred_delivery_shows_on_the_job_and_device_pages(admin_browser, admin_user):
    site = SiteFactory()
    device = DeviceFactory(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 1})
    dispatch.dispatch_pass(job.pk)
    delivery = job.deliveries.get()
    device_client(device).post(
        f"/api/v1/agent/deliveries/{delivery.pk}/defer",
        {"delay_seconds": 300, "reason": "sale in progress"},
        format="json",
    )
    delivery.refresh_from_db()
    shown = f"1× (sale in progress), next offer {delivery.next_attempt_at:%H:%M} UTC"

    job_page = admin_browser.get(change_url(job)).text
    assert shown in job_page
    assert "1 device deferred (a sale in progress), not counted as busy" in job_page
    device_page = admin_browser.get(reverse("admin:devices_app_device_change", args=[device.pk])).text
    assert shown in device_page
