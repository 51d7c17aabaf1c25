"""A membership's role alone decides what kinds of object a user may touch (no hand-given
Django permissions), through the doors users use."""

import pytest
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

NEW_DEVICE = {"device_id": "pos-terminal-77", "name": "POS Terminal 77", "device_type": "pos_terminal"}


def _client_for(role, site):
    user = SiteMembershipFactory(site=site, role=role).user
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_manager_registers_moves_and_retires_devices_of_their_store_by_role_alone():
    store = SiteFactory(site_id="site-a")
    client = _client_for(MembershipRole.MANAGER, store)

    created = client.post("/devices", {**NEW_DEVICE, "site_id": "site-a"}, format="json")
    updated = client.patch("/devices/pos-terminal-77", {"status": "maintenance"}, format="json")
    deleted = client.delete("/devices/pos-terminal-77")

    assert (created.status_code, updated.status_code, deleted.status_code) == (201, 200, 204)
    assert not Device.objects.filter(device_id="pos-terminal-77").exists()


def test_a_viewer_reads_their_store_but_changes_nothing():
    store = SiteFactory(site_id="site-a")
    DeviceFactory(site=store, device_id="till-1")
    client = _client_for(MembershipRole.VIEWER, store)

    assert client.get("/devices/till-1").status_code == 200
    assert client.get("/sites/site-a").status_code == 200
    assert client.post("/devices", {**NEW_DEVICE, "site_id": "site-a"}, format="json").status_code == 403
    assert client.patch("/devices/till-1", {"status": "error"}, format="json").status_code == 403
    assert Device.objects.get(device_id="till-1").status == "online"


def test_roles_on_one_site_do_not_reach_another():
    mine, theirs = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    DeviceFactory(site=theirs, device_id="their-till")
    client = _client_for(MembershipRole.MANAGER, mine)

    assert client.get("/devices/their-till").status_code == 404
    response = client.post("/devices", {**NEW_DEVICE, "site_id": "site-b"}, format="json")
    assert response.status_code == 400
    assert "site_id" in response.json()["error"]["fields"]


def test_revoking_the_membership_takes_the_permissions_away():
    store = SiteFactory(site_id="site-a")
    membership = SiteMembershipFactory(site=store, role=MembershipRole.MANAGER)
    client = APIClient()
    client.force_authenticate(membership.user)
    assert client.get("/devices").status_code == 200

    membership.delete()
    client.force_authenticate(type(membership.user).objects.get(pk=membership.user.pk))

    assert client.get("/devices").status_code == 403
