"""Who gets into the operator console: a site role is enough, no separate staff flag.

The whole path goes through the doors people use: an admin creates the manager and grants
the role over the API (naming the user by username), the manager signs in on the admin's
login page, sees their own sites only, and is shut out once the last role is revoked.
"""

import pytest
from django.urls import reverse

from accounts.models import SiteMembership
from accounts.tests.factories import UserFactory
from homepot.tests.api_helpers import assert_error
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

PASSWORD = "harbour-lights-47-tide"
USERS = "/api/v1/users"
MEMBERSHIPS = "/api/v1/memberships"


@pytest.fixture
def own():
    return SiteFactory(site_id="site-own")


def grant(admin_api, user, role="viewer"):
    return admin_api.post(MEMBERSHIPS, {"user": user, "site": "site-own", "role": role}, format="json")


def sign_in(client, username):
    return client.post(
        reverse("admin:login"), {"username": username, "password": PASSWORD, "next": "/admin/"}
    )


def listed_site_ids(response) -> set[str]:
    return {site.site_id for site in response.context["cl"].result_list}


def test_a_manager_created_over_the_api_signs_in_with_the_membership_alone(admin_api, client, own):
    SiteFactory(site_id="site-other")
    created = admin_api.post(
        USERS, {"username": "mgr", "email": "mgr@example.com", "password": PASSWORD}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["is_staff"] is False

    # Before any role: the login page refuses them.
    assert sign_in(client, "mgr").status_code == 200
    assert "_auth_user_id" not in client.session

    granted = grant(admin_api, "MGR", "manager")
    assert granted.status_code == 201, granted.content
    assert (granted.json()["user"], granted.json()["username"]) == (created.json()["id"], "mgr")

    assert sign_in(client, "mgr").status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200
    assert listed_site_ids(client.get(reverse("admin:sites_app_site_changelist"))) == {"site-own"}

    membership = SiteMembership.objects.get(user__username="mgr")
    assert admin_api.delete(f"{MEMBERSHIPS}/{membership.pk}").status_code == 204

    # The same session, the next page: out, sent to the login page.
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and response.url.startswith(reverse("admin:login"))
    assert sign_in(client, "mgr").status_code == 200


def test_an_inactive_user_with_a_role_stays_out(client, own):
    user = UserFactory(username="gone", is_active=False)
    SiteMembership.objects.create(user=user, site=own, role="manager")
    client.force_login(user)
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_membership_names_its_user_by_id_too(admin_api, own):
    user = UserFactory(username="1234")  # a username of digits is still a username
    other = UserFactory()

    by_id = grant(admin_api, other.pk)
    by_name = grant(admin_api, "1234")

    assert by_id.status_code == 201 and by_id.json()["user"] == other.pk
    assert by_name.status_code == 201 and by_name.json()["user"] == user.pk


@pytest.mark.parametrize("value", ["nobody", "", 999999, True, None, ["mgr"], 2**70])
def test_an_unknown_or_malformed_user_is_a_400_naming_the_field(admin_api, own, value):
    response = grant(admin_api, value)
    assert_error(response, 400, field="user")
    assert not SiteMembership.objects.exists()


def test_memberships_filter_by_username_or_id(admin_api, own):
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    for user in (alice, bob):
        SiteMembership.objects.create(user=user, site=own, role="viewer")

    by_name = admin_api.get(MEMBERSHIPS, {"user": "ALICE"}).json()["results"]
    by_id = admin_api.get(MEMBERSHIPS, {"user": bob.pk}).json()["results"]

    assert [row["username"] for row in by_name] == ["alice"]
    assert [row["username"] for row in by_id] == ["bob"]
