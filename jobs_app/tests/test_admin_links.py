"""Starting a job from the device and site lists."""

from urllib.parse import parse_qs, urlparse

import pytest
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app.admin_links import MAX_PICKED
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

DEVICES = reverse("admin:devices_app_device_changelist")
SITES = reverse("admin:sites_app_site_changelist")


def _query(response):
    assert response.status_code == 302, response.content
    url = urlparse(response["Location"])
    assert url.path == reverse("admin:jobs_app_job_add")
    return {key: values[0] for key, values in parse_qs(url.query).items()}


def test_push_configuration_opens_the_job_form_with_the_devices_and_their_sites(admin_browser):
    a, b = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    tills = [DeviceFactory(site=a), DeviceFactory(site=a), DeviceFactory(site=b)]

    query = _query(
        admin_browser.post(
            DEVICES, {"action": "push_configuration", "_selected_action": [d.pk for d in tills]}
        )
    )

    assert query["site"] == str(a.pk) and query["extra_sites"] == str(b.pk)
    assert sorted(query["target_devices"].split(",")) == sorted(str(d.pk) for d in tills)
    form = admin_browser.get(
        f"{reverse('admin:jobs_app_job_add')}?{'&'.join(f'{k}={v}' for k, v in query.items())}"
    )
    assert form.status_code == 200
    assert form.context["adminform"].form.initial["site"] == str(a.pk)


def test_create_job_for_selected_sites(admin_browser):
    a, b = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    query = _query(admin_browser.post(SITES, {"action": "create_job", "_selected_action": [b.pk, a.pk]}))
    assert (query["site"], query["extra_sites"]) == (str(a.pk), str(b.pk))
    assert "target_devices" not in query


def test_a_manager_only_targets_devices_they_may_change(client):
    mine, theirs = SiteFactory(), SiteFactory()
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=mine, role=MembershipRole.MANAGER)
    own, foreign = DeviceFactory(site=mine), DeviceFactory(site=theirs)
    client.force_login(user)

    query = _query(
        client.post(DEVICES, {"action": "push_configuration", "_selected_action": [own.pk, foreign.pk]})
    )

    assert query["site"] == str(mine.pk) and "extra_sites" not in query
    assert query["target_devices"] == str(own.pk)


def test_viewers_are_not_offered_the_action(client):
    site = SiteFactory()
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.VIEWER)
    DeviceFactory(site=site)
    client.force_login(user)
    form = client.get(DEVICES).context["action_form"]
    assert form is None or "push_configuration" not in dict(form.fields["action"].choices)


def test_too_large_a_selection_is_refused_with_a_reason(admin_browser, monkeypatch):
    monkeypatch.setattr("devices_app.admin.MAX_PICKED", 2)
    monkeypatch.setattr("jobs_app.admin_links.MAX_PICKED", 2)
    tills = DeviceFactory.create_batch(3, site=SiteFactory())
    response = admin_browser.post(
        DEVICES, {"action": "push_configuration", "_selected_action": [d.pk for d in tills]}, follow=True
    )
    assert "pick at most 2" in response.content.decode()
    assert MAX_PICKED == 500
