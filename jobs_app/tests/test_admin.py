"""The Jobs pages of the operator console, driven through the admin client."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from jobs_app.choices import JobStatus
from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:jobs_app_job_changelist")
ADD = reverse("admin:jobs_app_job_add")


def change_url(job):
    return reverse("admin:jobs_app_job_change", args=[job.pk])


def form_data(site, **overrides):
    data = {
        "site": site.pk,
        "action": "update_pos_payment_config",
        "priority": "high",
        "description": "Switch payment gateway",
        "payload": json.dumps({"gateway_url": "https://payments-v2.example.com"}),
        "status": "queued",
        "started_at_0": "",
        "started_at_1": "",
        "completed_at_0": "",
        "completed_at_1": "",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def listed(response):
    assert response.status_code == 200
    return [job.pk for job in response.context["cl"].result_list]


def test_changelist_shows_status_and_target_site(admin_browser):
    job = JobFactory(status=JobStatus.FAILED)

    response = admin_browser.get(CHANGELIST)

    assert listed(response) == [job.pk]
    site_url = reverse("admin:sites_app_site_change", args=[job.site.pk])
    assert f'<a href="{site_url}">{job.site}</a>' in response.text
    assert '<span class="hp-badge hp-badge--bad">Failed</span>' in response.text


@pytest.mark.parametrize(("term", "found"), [("gateway", True), ("site-777", True), ("firmware-xyz", False)])
def test_search_matches_description_and_site(admin_browser, term, found):
    job = JobFactory(description="Switch payment gateway", site=SiteFactory(site_id="site-777"))
    JobFactory(description="Restart tills", site=SiteFactory(site_id="site-888"))

    assert listed(admin_browser.get(CHANGELIST, {"q": term})) == ([job.pk] if found else [])


def test_filters_by_status_and_site(admin_browser):
    queued = JobFactory(status=JobStatus.QUEUED)
    JobFactory(status=JobStatus.COMPLETED)

    assert listed(admin_browser.get(CHANGELIST, {"status__exact": "queued"})) == [queued.pk]
    assert listed(admin_browser.get(CHANGELIST, {"site": queued.site.pk})) == [queued.pk]


def test_add_and_change_pages_render(admin_browser):
    job = JobFactory()

    assert admin_browser.get(ADD).status_code == 200
    assert admin_browser.get(change_url(job)).status_code == 200


def test_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    JobFactory.create_batch(3)  # each with its own site and creator
    with CaptureQueriesContext(connection) as few:
        assert admin_browser.get(CHANGELIST).status_code == 200
    JobFactory.create_batch(27)

    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(CHANGELIST)

    assert len(response.context["cl"].result_list) == 30
    assert len(few) <= 10


def test_adding_a_job_records_who_created_it(admin_browser, admin_user):
    site = SiteFactory()

    response = admin_browser.post(ADD, form_data(site))

    assert response.status_code == 302
    job = Job.objects.get()
    assert job.created_by == admin_user
    assert job.site == site
    assert job.payload == {"gateway_url": "https://payments-v2.example.com"}


def test_completion_before_start_is_a_form_error_not_a_500(admin_browser):
    data = form_data(
        SiteFactory(),
        status="completed",
        started_at_0="2025-01-02",
        started_at_1="10:00:00",
        completed_at_0="2025-01-01",
        completed_at_1="10:00:00",
    )

    response = admin_browser.post(ADD, data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert not Job.objects.exists()


def test_a_site_manager_sees_and_targets_only_their_site(client):
    mine, other = SiteFactory(), SiteFactory()
    own_job = JobFactory(site=mine)
    JobFactory(site=other)
    user = UserFactory(is_staff=True)
    grant_perms(user, "jobs_app.view_job", "jobs_app.add_job", "jobs_app.change_job")
    SiteMembershipFactory(user=user, site=mine, role=MembershipRole.MANAGER)
    client.force_login(user)

    assert listed(client.get(CHANGELIST)) == [own_job.pk]
    refused = client.post(ADD, form_data(other))
    assert refused.status_code == 200
    assert "site" in refused.context["adminform"].form.errors
    assert client.post(ADD, form_data(mine)).status_code == 302
    assert Job.objects.filter(site=mine).count() == 2
    assert Job.objects.filter(site=other).count() == 1
