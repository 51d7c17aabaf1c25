"""Signup, login, logout and /auth/me, through the API as clients use them."""

import json

import pytest
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from homepot.tests.api_helpers import bearer
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
PASSWORD = "correct-horse-battery"  # what UserFactory sets


def audit_rows(event_type):
    return list(AuditLog.objects.filter(event_type=event_type).order_by("id"))


# --- signup ------------------------------------------------------------------------------


def test_signup_with_the_guides_body_creates_a_plain_user(api_client):
    response = api_client.post(
        SIGNUP, {"username": "testuser", "email": "Test@HOMEPOT.com", "password": "Test123!"}, format="json"
    )

    assert response.status_code == 201, response.content
    user = User.objects.get(username="testuser")
    assert response.json() == {
        "id": user.pk,
        "username": "testuser",
        "email": "test@homepot.com",
        "is_admin": False,
    }
    assert (user.is_superuser, user.is_staff, user.is_active) == (False, False, True)
    assert not SiteMembership.objects.filter(user=user).exists()
    assert user.check_password("Test123!")
    [row] = audit_rows(AuditEvent.USER_CREATED)
    assert row.actor_id == user.pk
    assert row.new_values["username"] == "testuser" and row.new_values["is_superuser"] is False
    assert "password" not in row.new_values


def test_anonymous_signup_asking_for_admin_is_refused_and_creates_nothing(api_client):
    # The guide's example, verbatim: today's alternatives hand out admin rights here.
    body = {"username": "testuser", "email": "test@homepot.com", "password": "Test123!", "is_admin": True}
    response = api_client.post(SIGNUP, body, format="json")

    assert response.status_code == 403
    assert "Only an administrator can create an administrator" in response.json()["error"]["message"]
    assert not User.objects.filter(username__iexact="testuser").exists()
    assert not audit_rows(AuditEvent.USER_CREATED)


def test_a_non_admin_token_cannot_create_an_admin_either(user):
    from accounts.services import api_token_issue

    _, raw = api_token_issue(user=user)
    body = {
        "username": "sneaky",
        "email": "sneaky@example.com",
        "password": "Tr1cky-Passw0rd!",
        "is_admin": True,
    }
    response = bearer(raw).post(SIGNUP, body, format="json")

    assert response.status_code == 403
    assert not User.objects.filter(username="sneaky").exists()


def test_an_admin_can_create_an_admin_through_signup(admin_api):
    body = {
        "username": "headoffice",
        "email": "ho@example.com",
        "password": "Tr1cky-Passw0rd!",
        "is_admin": True,
    }
    response = admin_api.post(SIGNUP, body, format="json")

    assert response.status_code == 201, response.content
    assert response.json()["is_admin"] is True
    created = User.objects.get(username="headoffice")
    assert created.is_superuser and created.is_staff
    [row] = audit_rows(AuditEvent.USER_CREATED)
    assert row.actor_id == admin_api.user.pk


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short1!", "too short"),
        ("password123", "too common"),
        ("84736251947", "entirely numeric"),
        ("newmanager-x", "too similar"),
    ],
)
def test_weak_passwords_are_refused_naming_the_rule(api_client, password, rule):
    body = {"username": "newmanager", "email": "newmanager@example.com", "password": password}
    response = api_client.post(SIGNUP, body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert list(error["fields"]) == ["password"]
    assert rule in " ".join(error["fields"]["password"])
    assert not User.objects.filter(username="newmanager").exists()


def test_duplicate_email_in_another_case_is_a_409_naming_email(api_client):
    UserFactory(username="anna", email="anna@example.com")
    body = {"username": "anna2", "email": "ANNA@Example.COM", "password": "Tr1cky-Passw0rd!"}
    response = api_client.post(SIGNUP, body, format="json")

    assert response.status_code == 409
    assert response.json()["error"]["fields"] == {"email": ["A user with this email address already exists."]}
    assert User.objects.count() == 1


def test_duplicate_username_in_another_case_is_a_409_naming_username(api_client):
    UserFactory(username="priya")
    body = {"username": "PRIYA", "email": "other@example.com", "password": "Tr1cky-Passw0rd!"}
    response = api_client.post(SIGNUP, body, format="json")

    assert response.status_code == 409
    assert list(response.json()["error"]["fields"]) == ["username"]


def test_a_username_may_not_be_someone_elses_email(api_client):
    # A login accepts either, so each must name one account.
    UserFactory(username="anna", email="anna@example.com")
    body = {"username": "anna@example.com", "email": "imposter@example.com", "password": "Tr1cky-Passw0rd!"}
    response = api_client.post(SIGNUP, body, format="json")

    assert response.status_code == 409
    assert list(response.json()["error"]["fields"]) == ["username"]


def test_signup_switched_off_refuses_everyone_but_admins(api_client, admin_api, settings):
    settings.HOMEPOT_ACCOUNTS_OPEN_SIGNUP = False
    body = {"username": "walkin", "email": "walkin@example.com", "password": "Tr1cky-Passw0rd!"}

    refused = api_client.post(SIGNUP, body, format="json")
    assert refused.status_code == 403
    assert "signup is turned off" in refused.json()["error"]["message"]
    assert not User.objects.filter(username="walkin").exists()

    assert admin_api.post(SIGNUP, body, format="json").status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a@example.com", "password": "Tr1cky-Passw0rd!"}, "username"),
        ({"username": "a", "password": "Tr1cky-Passw0rd!"}, "email"),
        ({"username": "a", "email": "a@example.com"}, "password"),
        ({"username": "a", "email": "not-an-email", "password": "Tr1cky-Passw0rd!"}, "email"),
        ({"username": "has space", "email": "a@example.com", "password": "Tr1cky-Passw0rd!"}, "username"),
        ({"username": 42, "email": "a@example.com", "password": "Tr1cky-Passw0rd!"}, "username"),
        (
            {"username": "a", "email": "a@example.com", "password": "Tr1cky-Passw0rd!", "is_admin": "no"},
            "is_admin",
        ),
        ({"username": "a\x00b", "email": "a@example.com", "password": "Tr1cky-Passw0rd!"}, "username"),
        ({"username": "a", "email": "a@example.com", "password": "Tr1cky-\ud800-Passw0rd"}, "password"),
        ({"username": "a" * 151, "email": "a@example.com", "password": "Tr1cky-Passw0rd!"}, "username"),
    ],
)
def test_bad_signup_input_is_a_400_naming_the_field(api_client, body, field):
    # json.dumps escapes a lone surrogate as \\ud800, as a real client's JSON would.
    response = api_client.post(SIGNUP, json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert User.objects.count() == 0


def test_signup_answers_with_and_without_trailing_slash(api_client):
    body = {"username": "slashy", "email": "slashy@example.com", "password": "Tr1cky-Passw0rd!"}
    assert api_client.post(SIGNUP + "/", body, format="json").status_code == 201


# --- login -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["username", "email"])
def test_login_by_username_or_email_returns_a_working_token(api_client, field):
    user = UserFactory(username="Store.Manager", email="manager@example.com")
    name = {"username": "store.manager", "email": "MANAGER@example.com"}[field]

    response = api_client.post(LOGIN, {field: name, "password": PASSWORD}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["token"].startswith("hp_") and body["token_type"] == "Bearer"
    assert body["expires_at"] is not None
    assert body["user"] == {
        "id": user.pk,
        "username": "Store.Manager",
        "email": user.email,
        "is_admin": False,
    }
    token = ApiToken.objects.get(pk=body["token_id"])
    assert token.key_hash == ApiToken.hash_key(body["token"])  # stored hashed, not in clear
    assert body["token"] not in token.key_hash
    assert bearer(body["token"]).get(ME).json()["username"] == "Store.Manager"
    user.refresh_from_db()
    assert user.last_login is not None


def test_an_email_in_the_username_field_logs_in_too(api_client):
    UserFactory(username="bob", email="bob@example.com")
    response = api_client.post(LOGIN, {"username": "bob@example.com", "password": PASSWORD}, format="json")
    assert response.status_code == 200


def test_successful_login_is_audited_once(api_client):
    user = UserFactory(username="bob")
    response = api_client.post(
        LOGIN, {"username": "bob", "password": PASSWORD}, format="json", HTTP_USER_AGENT="till/1.0"
    )

    [row] = AuditLog.objects.all()
    assert row.event_type == AuditEvent.USER_LOGIN
    assert row.actor_id == user.pk
    assert row.new_values["token"] == response.json()["key_prefix"]
    assert row.source_ip == "127.0.0.1" and row.user_agent == "till/1.0"


def test_wrong_password_is_401_and_one_failed_login_audit_row(api_client):
    UserFactory(username="bob")
    response = api_client.post(LOGIN, {"username": "bob", "password": "guess"}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid credentials."
    [row] = AuditLog.objects.all()
    assert row.event_type == AuditEvent.USER_LOGIN_FAILED
    assert row.actor_id is None
    assert "bob" in row.description
    assert row.source_ip == "127.0.0.1"
    assert not ApiToken.objects.exists()


def test_unknown_user_gets_the_same_answer_and_is_audited(api_client):
    response = api_client.post(LOGIN, {"username": "nobody", "password": "guess"}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid credentials."
    [row] = audit_rows(AuditEvent.USER_LOGIN_FAILED)
    assert "nobody" in row.description and row.new_values["known_account"] is False


def test_inactive_users_cannot_log_in(api_client):
    UserFactory(username="gone", is_active=False)
    response = api_client.post(LOGIN, {"username": "gone", "password": PASSWORD}, format="json")

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid credentials."
    assert not ApiToken.objects.exists()
    assert len(audit_rows(AuditEvent.USER_LOGIN_FAILED)) == 1


def test_a_stale_authorization_header_does_not_block_login(api_client):
    UserFactory(username="bob")
    response = bearer("hp_revoked-long-ago").post(
        LOGIN, {"username": "bob", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": PASSWORD}, "username"),
        ({"username": "  ", "password": PASSWORD}, "username"),
        ({"username": "bob"}, "password"),
        ({"username": ["bob"], "password": PASSWORD}, "username"),
        ({"username": "bob", "password": 12345678}, "password"),
        ({"username": "b\ud800b", "password": PASSWORD}, "username"),
    ],
)
def test_malformed_login_is_a_400_naming_the_field(api_client, body, field):
    response = api_client.post(LOGIN, json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_a_very_long_password_is_refused_without_a_server_error(api_client):
    UserFactory(username="bob")
    response = api_client.post(LOGIN, {"username": "bob", "password": "x" * 5000}, format="json")
    assert response.status_code == 400
    assert "password" in response.json()["error"]["fields"]


# --- logout and me -----------------------------------------------------------------------


def test_logout_revokes_the_token_of_the_request(api_client):
    UserFactory(username="bob")
    raw = api_client.post(LOGIN, {"username": "bob", "password": PASSWORD}, format="json").json()["token"]
    other = api_client.post(LOGIN, {"username": "bob", "password": PASSWORD}, format="json").json()["token"]
    client = bearer(raw)

    assert client.post(LOGOUT).status_code == 204

    assert client.get(ME).status_code == 401
    assert bearer(other).get(ME).status_code == 200  # only the token used was revoked
    [row] = audit_rows(AuditEvent.TOKEN_REVOKED)
    assert row.new_values["token"] == raw[:10]


def test_logout_needs_authentication(api_client):
    assert api_client.post(LOGOUT).status_code == 401


def test_logout_with_a_session_ends_the_session(user):
    client = APIClient()
    client.force_login(user)
    assert client.get(ME).status_code == 200
    assert client.post(LOGOUT).status_code == 204
    assert client.get(ME).status_code == 401


def test_me_shows_a_managers_sites_and_roles(user):
    from accounts.services import api_token_issue

    north, south = SiteFactory(site_id="site-123", name="North"), SiteFactory(site_id="site-456")
    SiteFactory(site_id="site-789")  # not theirs
    SiteMembershipFactory(user=user, site=north, role=MembershipRole.MANAGER)
    SiteMembershipFactory(user=user, site=south, role=MembershipRole.VIEWER)
    _, raw = api_token_issue(user=user)

    body = bearer(raw).get(ME).json()

    assert body["id"] == user.pk and body["username"] == user.username and body["is_admin"] is False
    assert body["all_sites"] is False
    assert [(s["site_id"], s["role"]) for s in body["sites"]] == [
        ("site-123", "manager"),
        ("site-456", "viewer"),
    ]
    assert body["sites"][0] == {"id": north.pk, "site_id": "site-123", "name": "North", "role": "manager"}


def test_me_tells_an_admin_they_reach_every_site(admin_api):
    body = admin_api.get(ME).json()
    assert body["is_admin"] is True and body["all_sites"] is True


def test_me_needs_authentication(api_client):
    response = api_client.get(ME)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_me_takes_a_bounded_number_of_queries(user, django_assert_max_num_queries):
    from accounts.services import api_token_issue

    for n in range(10):
        SiteMembershipFactory(user=user, site=SiteFactory(site_id=f"site-q{n}"))
    _, raw = api_token_issue(user=user)
    client = bearer(raw)
    client.get(ME)  # records the token's first use
    with django_assert_max_num_queries(2):
        assert len(client.get(ME).json()["sites"]) == 10
