"""/api/v1/users and /api/v1/memberships: admins only, every change audited with before/after."""

import pytest
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from accounts.services import api_token_issue
from accounts.tests.factories import AdminUserFactory, SiteMembershipFactory, UserFactory
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

USERS = "/api/v1/users"
MEMBERSHIPS = "/api/v1/memberships"


def client_for(user) -> APIClient:
    _, raw = api_token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    client.user = user
    return client


def rows(event_type):
    return list(AuditLog.objects.filter(event_type=event_type).order_by("id"))


@pytest.fixture
def manager():
    """A store manager: staff (uses the console), manager of one site, not an admin."""
    user = UserFactory(username="manager", is_staff=True)
    SiteMembershipFactory(user=user, site=SiteFactory(site_id="site-123"), role=MembershipRole.MANAGER)
    return client_for(user)


# --- who may -----------------------------------------------------------------------------

ENDPOINTS = [
    ("get", USERS),
    ("post", USERS),
    ("get", f"{USERS}/{{uid}}"),
    ("patch", f"{USERS}/{{uid}}"),
    ("put", f"{USERS}/{{uid}}"),
    ("post", f"{USERS}/{{uid}}/deactivate"),
    ("post", f"{USERS}/{{uid}}/activate"),
    ("get", MEMBERSHIPS),
    ("post", MEMBERSHIPS),
    ("get", f"{MEMBERSHIPS}/{{mid}}"),
    ("patch", f"{MEMBERSHIPS}/{{mid}}"),
    ("delete", f"{MEMBERSHIPS}/{{mid}}"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_anonymous_gets_401_and_non_admins_get_403(manager, method, url):
    membership = SiteMembership.objects.get(user=manager.user)
    url = url.format(uid=manager.user.pk, mid=membership.pk)
    body = {"role": "viewer", "is_admin": True, "username": "x", "email": "x@example.com"}

    assert getattr(APIClient(), method)(url, body, format="json").status_code == 401
    response = getattr(manager, method)(url, body, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Only administrators may manage users and site memberships."

    manager.user.refresh_from_db()
    assert not manager.user.is_superuser and manager.user.is_active
    assert SiteMembership.objects.get(pk=membership.pk).role == MembershipRole.MANAGER
    assert not AuditLog.objects.exclude(event_type=AuditEvent.TOKEN_ISSUED).exists()


def test_a_non_admin_sees_themselves_through_me(manager):
    assert manager.get("/api/v1/auth/me").json()["username"] == "manager"


# --- users -------------------------------------------------------------------------------


def test_admins_list_and_search_users(admin_api, django_assert_max_num_queries):
    for n in range(15):
        UserFactory(username=f"clerk{n}")
    UserFactory(username="gone", is_active=False)

    with django_assert_max_num_queries(5):
        response = admin_api.get(USERS)
    assert response.status_code == 200
    assert response.json()["count"] == 17
    assert set(response.json()["results"][0]) >= {
        "id",
        "username",
        "email",
        "is_admin",
        "is_staff",
        "is_active",
    }

    assert [u["username"] for u in admin_api.get(USERS, {"is_active": "false"}).json()["results"]] == ["gone"]
    assert admin_api.get(USERS, {"search": "clerk1"}).json()["count"] == 6  # clerk1, clerk10..14
    assert admin_api.get(USERS, {"is_admin": "true"}).json()["count"] == 1


def test_users_filter_by_site(admin_api, manager):
    response = admin_api.get(USERS, {"site": "site-123"})
    assert [u["username"] for u in response.json()["results"]] == ["manager"]


@pytest.mark.parametrize("query", [{"is_active": "perhaps"}, {"ordering": "password"}])
def test_bad_user_filters_are_400(admin_api, query):
    assert admin_api.get(USERS, query).status_code == 400


def test_admins_create_users_audited(admin_api):
    body = {
        "username": "newclerk",
        "email": "NewClerk@example.com",
        "password": "Tr1cky-Passw0rd!",
        "is_staff": True,
    }
    response = admin_api.post(USERS, body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["email"] == "newclerk@example.com"
    user = User.objects.get(username="newclerk")
    assert user.is_staff and not user.is_superuser and user.check_password("Tr1cky-Passw0rd!")
    [row] = rows(AuditEvent.USER_CREATED)
    assert row.actor_id == admin_api.user.pk
    assert row.new_values == {
        "username": "newclerk",
        "email": "newclerk@example.com",
        "first_name": "",
        "last_name": "",
        "is_active": True,
        "is_staff": True,
        "is_superuser": False,
    }


def test_a_user_created_without_password_cannot_log_in_yet(admin_api):
    response = admin_api.post(USERS, {"username": "later", "email": "later@example.com"}, format="json")
    assert response.status_code == 201
    assert not User.objects.get(username="later").has_usable_password()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"username": "x", "email": "x@example.com", "password": "123"}, 400, "password"),
        ({"username": "x", "email": "bad"}, 400, "email"),
        ({"username": "x"}, 400, "email"),
        ({"username": "x", "email": "x@example.com", "is_admin": "yes"}, 400, "is_admin"),
        ({"username": "Existing", "email": "x@example.com"}, 409, "username"),
    ],
)
def test_bad_user_creation_names_the_field(admin_api, body, status, field):
    UserFactory(username="existing")
    response = admin_api.post(USERS, body, format="json")
    assert response.status_code == status
    assert field in response.json()["error"]["fields"]
    assert not rows(AuditEvent.USER_CREATED)


def test_admins_update_users_with_before_and_after(admin_api):
    user = UserFactory(username="clerk", first_name="Ann", is_staff=False)

    response = admin_api.patch(f"{USERS}/{user.pk}", {"first_name": "Anne", "is_staff": True}, format="json")

    assert response.status_code == 200
    assert response.json()["first_name"] == "Anne"
    [row] = rows(AuditEvent.USER_UPDATED)
    assert row.actor_id == admin_api.user.pk
    assert row.old_values == {"first_name": "Ann", "is_staff": False}
    assert row.new_values == {"first_name": "Anne", "is_staff": True}


def test_an_update_that_changes_nothing_records_nothing(admin_api):
    user = UserFactory(username="clerk", first_name="Ann")
    assert admin_api.patch(f"{USERS}/{user.pk}", {"first_name": "Ann"}, format="json").status_code == 200
    assert not rows(AuditEvent.USER_UPDATED)


def test_promoting_to_admin_makes_staff_too(admin_api):
    user = UserFactory()
    admin_api.patch(f"{USERS}/{user.pk}", {"is_admin": True}, format="json")
    user.refresh_from_db()
    assert user.is_superuser and user.is_staff
    [row] = rows(AuditEvent.USER_UPDATED)
    assert row.new_values == {"is_superuser": True, "is_staff": True}


def test_a_password_set_by_an_admin_is_validated_audited_without_hash_and_revokes_tokens(admin_api):
    user = UserFactory()
    _, raw = api_token_issue(user=user)

    weak = admin_api.patch(f"{USERS}/{user.pk}", {"password": "password"}, format="json")
    assert weak.status_code == 400 and "password" in weak.json()["error"]["fields"]

    response = admin_api.patch(f"{USERS}/{user.pk}", {"password": "N3w-Tr1cky-Pass!"}, format="json")

    assert response.status_code == 200
    user.refresh_from_db()
    assert user.check_password("N3w-Tr1cky-Pass!")
    [row] = rows(AuditEvent.USER_UPDATED)
    assert row.new_values == {"password": "(changed)"}
    assert user.password not in str(row.old_values) + str(row.new_values)
    assert not ApiToken.objects.filter(user=user, revoked_at__isnull=True).exists()


def test_deactivating_a_user_stops_login_and_every_token(admin_api, api_client):
    user = UserFactory(username="leaver")
    _, raw = api_token_issue(user=user)

    response = admin_api.post(f"{USERS}/{user.pk}/deactivate")

    assert response.status_code == 200 and response.json()["is_active"] is False
    leaver = APIClient()
    leaver.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert leaver.get("/api/v1/auth/me").status_code == 401
    [row] = rows(AuditEvent.USER_UPDATED)
    assert row.old_values == {"is_active": True} and row.new_values == {"is_active": False}
    assert "1 API token(s) revoked" in row.description
    # Reactivation does not bring old tokens back.
    assert admin_api.post(f"{USERS}/{user.pk}/activate").json()["is_active"] is True
    assert leaver.get("/api/v1/auth/me").status_code == 401


def test_users_are_never_deleted(admin_api):
    user = UserFactory()
    assert admin_api.delete(f"{USERS}/{user.pk}").status_code == 405
    assert User.objects.filter(pk=user.pk).exists()


@pytest.mark.parametrize("body", [{"is_active": False}, {"is_admin": False}])
def test_admins_cannot_lock_themselves_out(admin_api, body):
    response = admin_api.patch(f"{USERS}/{admin_api.user.pk}", body, format="json")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == list(body)
    admin_api.user.refresh_from_db()
    assert admin_api.user.is_active and admin_api.user.is_superuser


def test_another_admin_can_demote_an_admin(admin_api):
    other = AdminUserFactory()
    assert admin_api.patch(f"{USERS}/{other.pk}", {"is_admin": False}, format="json").status_code == 200
    other.refresh_from_db()
    assert not other.is_superuser


def test_email_change_to_anothers_address_is_a_409(admin_api):
    UserFactory(email="taken@example.com")
    user = UserFactory()
    response = admin_api.patch(f"{USERS}/{user.pk}", {"email": "TAKEN@example.com"}, format="json")
    assert response.status_code == 409
    assert list(response.json()["error"]["fields"]) == ["email"]


@pytest.mark.parametrize("path", ["999999", "99999999999999999999", "abc"])
def test_unknown_users_are_404(admin_api, path):
    assert admin_api.get(f"{USERS}/{path}").status_code == 404


# --- memberships -------------------------------------------------------------------------


def test_admins_grant_a_role_by_site_id_audited(admin_api):
    user, site = UserFactory(username="clerk"), SiteFactory(site_id="site-456")

    response = admin_api.post(
        MEMBERSHIPS, {"user": user.pk, "site": "site-456", "role": "viewer"}, format="json"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["user"], body["username"], body["site"], body["site_id"], body["role"]) == (
        user.pk,
        "clerk",
        site.pk,
        "site-456",
        "viewer",
    )
    assert SiteMembership.objects.get(user=user, site=site).role == "viewer"
    [row] = rows(AuditEvent.MEMBERSHIP_GRANTED)
    assert row.actor_id == admin_api.user.pk and row.site_id == site.pk
    assert row.new_values == {
        "user": user.pk,
        "site": site.pk,
        "role": "viewer",
        "username": "clerk",
        "site_id": "site-456",
    }


def test_a_role_is_granted_by_internal_site_id_too(admin_api):
    user, site = UserFactory(), SiteFactory()
    response = admin_api.post(
        MEMBERSHIPS, {"user": user.pk, "site": site.pk, "role": "manager"}, format="json"
    )
    assert response.status_code == 201


def test_a_second_role_on_the_same_site_is_a_409(admin_api, manager):
    site = SiteMembership.objects.get(user=manager.user).site
    response = admin_api.post(
        MEMBERSHIPS, {"user": manager.user.pk, "site": site.site_id, "role": "viewer"}, format="json"
    )
    assert response.status_code == 409
    assert "site" in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": 99999999, "site": "site-123", "role": "viewer"}, "user"),
        ({"user": None, "site": "nowhere", "role": "viewer"}, "site"),
        ({"user": None, "site": "site-123", "role": "owner"}, "role"),
        ({"user": None, "site": True, "role": "viewer"}, "site"),
        ({"user": "abc", "site": "site-123", "role": "viewer"}, "user"),
    ],
)
def test_bad_grants_name_the_field(admin_api, body, field):
    SiteFactory(site_id="site-123")
    if body["user"] is None:
        body["user"] = UserFactory().pk
    response = admin_api.post(MEMBERSHIPS, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not SiteMembership.objects.exists()


def test_admins_change_a_role_audited_with_before_and_after(admin_api, manager):
    membership = SiteMembership.objects.get(user=manager.user)

    response = admin_api.patch(f"{MEMBERSHIPS}/{membership.pk}", {"role": "viewer"}, format="json")

    assert response.status_code == 200 and response.json()["role"] == "viewer"
    [row] = rows(AuditEvent.MEMBERSHIP_CHANGED)
    assert (row.old_values, row.new_values) == ({"role": "manager"}, {"role": "viewer"})
    assert row.site_id == membership.site_id
    # The same role again changes and records nothing.
    admin_api.patch(f"{MEMBERSHIPS}/{membership.pk}", {"role": "viewer"}, format="json")
    assert len(rows(AuditEvent.MEMBERSHIP_CHANGED)) == 1


def test_a_membership_cannot_be_moved_to_another_user_or_site(admin_api, manager):
    membership = SiteMembership.objects.get(user=manager.user)
    response = admin_api.patch(
        f"{MEMBERSHIPS}/{membership.pk}", {"role": "viewer", "site": "site-999"}, format="json"
    )
    assert response.status_code == 400
    assert "site" in response.json()["error"]["fields"]


def test_admins_revoke_a_role_audited(admin_api, manager):
    membership = SiteMembership.objects.get(user=manager.user)

    assert admin_api.delete(f"{MEMBERSHIPS}/{membership.pk}").status_code == 204

    assert not SiteMembership.objects.filter(pk=membership.pk).exists()
    [row] = rows(AuditEvent.MEMBERSHIP_REVOKED)
    assert row.old_values["username"] == "manager" and row.old_values["role"] == "manager"
    assert row.site_id == membership.site_id
    # The revoked manager no longer reaches the site.
    assert manager.get("/api/v1/auth/me").json()["sites"] == []


def test_memberships_list_and_filter(admin_api, django_assert_max_num_queries):
    north, south = SiteFactory(site_id="site-n"), SiteFactory(site_id="site-s")
    for n in range(10):
        SiteMembershipFactory(site=north if n % 2 else south, role="viewer" if n < 4 else "manager")

    with django_assert_max_num_queries(5):
        response = admin_api.get(MEMBERSHIPS)
    assert response.json()["count"] == 10
    assert admin_api.get(MEMBERSHIPS, {"site": "site-n"}).json()["count"] == 5
    assert admin_api.get(MEMBERSHIPS, {"site": str(south.pk)}).json()["count"] == 5
    assert admin_api.get(MEMBERSHIPS, {"role": "viewer"}).json()["count"] == 4
    assert admin_api.get(MEMBERSHIPS, {"role": "owner"}).status_code == 400
