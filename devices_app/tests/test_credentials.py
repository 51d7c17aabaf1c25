import pytest
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.models import DeviceCredential
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

ME = "/api/v1/agent/me"


def device_client(secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    return client


@pytest.fixture
def registered(admin_api):
    """A device registered through the API, as an integration would, and its secret."""
    site = SiteFactory(site_id="site-123")
    body = admin_api.post(
        "/devices",
        {"device_id": "pos-terminal-009", "name": "POS Terminal 9", "site_id": site.site_id},
        format="json",
    ).json()
    return body


def test_registration_answers_the_credential_once_and_stores_only_its_hash(registered, admin_api):
    secret = registered["credential"]
    assert secret.startswith("hpd_") and len(secret) > 40
    assert "credential" not in admin_api.get("/devices/pos-terminal-009").json()
    stored = DeviceCredential.objects.get()
    assert secret not in (stored.key_hash, stored.key_prefix)
    assert AuditLog.objects.filter(device_ref="pos-terminal-009").count() == 1  # one event: registered


def test_the_device_authenticates_as_itself(registered):
    response = device_client(registered["credential"]).get(ME)
    assert response.status_code == 200
    assert (response.json()["device_id"], response.json()["site"]) == ("pos-terminal-009", "site-123")


@pytest.mark.parametrize(
    "header", ["Device hpd_wrong", "Device", "Device a b", "Bearer hpd_wrong", "Device nothing-like-ours"]
)
def test_wrong_or_malformed_credentials_get_401(registered, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(ME)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401


def test_rotation_issues_a_new_secret_and_the_old_one_stops_working(registered, admin_api):
    old = registered["credential"]
    response = admin_api.post("/devices/pos-terminal-009/credential")

    assert response.status_code == 201
    new = response.json()["credential"]
    assert device_client(old).get(ME).status_code == 401
    assert device_client(new).get(ME).status_code == 200
    assert AuditLog.objects.filter(event_type="device.credential_issued").count() == 1


def test_revocation_locks_the_device_out_and_a_repeat_is_harmless(registered, admin_api):
    assert admin_api.delete("/devices/pos-terminal-009/credential").status_code == 204
    assert admin_api.delete("/devices/pos-terminal-009/credential").status_code == 204
    assert device_client(registered["credential"]).get(ME).status_code == 401
    assert AuditLog.objects.filter(event_type="device.credential_revoked").count() == 1


def test_a_device_credential_opens_no_operator_endpoint(registered):
    client = device_client(registered["credential"])
    for url in ("/devices", "/sites", "/api/v1/audit-logs", "/api/v1/auth/me"):
        assert client.get(url).status_code == 401, url


def test_operators_cannot_use_agent_endpoints(admin_api):
    assert admin_api.get(ME).status_code == 401  # a user's token is not a device credential


@pytest.mark.parametrize(("role", "status"), [(MembershipRole.VIEWER, 403), (MembershipRole.MANAGER, 201)])
def test_only_managers_of_the_site_rotate_credentials(role, status):
    device = DeviceFactory(device_id="till-1")
    client = APIClient()
    client.force_authenticate(SiteMembershipFactory(site=device.site, role=role).user)
    assert client.post("/devices/till-1/credential").status_code == status


def test_a_manager_of_another_site_gets_404(db):
    device = DeviceFactory(device_id="till-1")
    client = APIClient()
    client.force_authenticate(SiteMembershipFactory(site=SiteFactory()).user)
    assert client.post("/devices/till-1/credential").status_code == 404
    assert not DeviceCredential.objects.filter(device=device).exists()


def test_lookup_is_one_indexed_query(registered, django_assert_max_num_queries):
    client = device_client(registered["credential"])
    client.get(ME)  # records last use
    with django_assert_max_num_queries(1):
        assert client.get(ME).status_code == 200


def test_a_device_has_at_most_one_usable_credential(admin_user):
    device = DeviceFactory()
    device_credential_issue(actor=admin_user, device=device)
    device_credential_issue(actor=admin_user, device=device)
    assert DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).count() == 1


def test_admin_shows_a_new_devices_secret_once(admin_browser):
    from django.urls import reverse

    site = SiteFactory()
    response = admin_browser.post(
        reverse("admin:devices_app_device_add"),
        {
            "device_id": "kiosk-1",
            "name": "Kiosk 1",
            "device_type": "kiosk",
            "site": site.pk,
            "status": "unknown",
            "config": "{}",
            "_save": "Save",
        },
        follow=True,
    )
    page = response.content.decode()
    assert "Credential of kiosk-1: hpd_" in page
    secret = page.split("Credential of kiosk-1: ")[1].split(" ")[0]
    assert device_client(secret).get(ME).status_code == 200


def test_admin_actions_rotate_and_revoke(admin_browser):
    from django.urls import reverse

    device = DeviceFactory(device_id="till-9")
    changelist = reverse("admin:devices_app_device_changelist")

    rotated = admin_browser.post(
        changelist, {"action": "rotate_credentials", "_selected_action": [device.pk]}, follow=True
    ).content.decode()
    secret = rotated.split("Credential of till-9: ")[1].split(" ")[0]
    assert device_client(secret).get(ME).status_code == 200

    admin_browser.post(changelist, {"action": "revoke_credentials", "_selected_action": [device.pk]})
    assert device_client(secret).get(ME).status_code == 401


def test_the_authenticated_device_carries_its_stored_values(admin_user):
    """The agent's view of itself comes from the same lookup that authenticates it."""
    device = DeviceFactory(
        device_id="till-json", config={"gateway_url": "https://payments.example.com", "retries": 3}
    )
    _, secret = device_credential_issue(actor=admin_user, device=device)

    body = device_client(secret).get(ME).json()

    assert body["config"] == {"gateway_url": "https://payments.example.com", "retries": 3}
    assert (body["device_id"], body["site"]) == ("till-json", device.site.site_id)
