"""API tokens: stored hashed, expire, revoke, listed and revoked by their owner and admins."""

import datetime

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken
from accounts.services import api_token_issue
from accounts.tests.factories import UserFactory
from homepot.tests.api_helpers import bearer
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog

pytestmark = pytest.mark.django_db

TOKENS = "/api/v1/auth/tokens"
ME = "/api/v1/auth/me"


@pytest.fixture
def owner():
    user = UserFactory(username="owner")
    token, raw = api_token_issue(user=user, name="till 1")
    user.token, user.raw = token, raw
    user.api = bearer(raw)
    return user


# --- authentication rules ----------------------------------------------------------------


def test_a_token_is_stored_only_as_its_hash(owner):
    assert owner.token.key_hash == ApiToken.hash_key(owner.raw)
    assert not ApiToken.objects.filter(key_hash__contains=owner.raw[3:]).exists()
    assert owner.api.get(ME).status_code == 200


def test_an_expired_token_is_refused(owner):
    ApiToken.objects.filter(pk=owner.token.pk).update(
        expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )

    response = owner.api.get(ME)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid, expired or revoked token."


def test_tokens_expire_after_the_configured_lifetime(settings):
    settings.HOMEPOT_API_TOKEN_TTL_DAYS = 7
    token, _ = api_token_issue(user=UserFactory())
    assert token.expires_at - token.created_at == pytest.approx(
        datetime.timedelta(days=7), abs=datetime.timedelta(seconds=5)
    )


def test_a_revoked_token_is_refused(owner):
    ApiToken.objects.filter(pk=owner.token.pk).update(revoked_at=timezone.now())
    assert owner.api.get(ME).status_code == 401


def test_the_tokens_of_an_inactive_user_are_refused(owner):
    owner.is_active = False
    owner.save()
    assert owner.api.get(ME).status_code == 401


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer hp_not-a-real-token", "Token hp_nope"])
def test_malformed_or_unknown_tokens_are_refused(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get(ME).status_code == 401


def test_use_is_recorded_on_the_token(owner):
    assert owner.token.last_used_at is None
    owner.api.get(ME)
    owner.token.refresh_from_db()
    assert owner.token.last_used_at is not None


# --- listing -----------------------------------------------------------------------------


def test_owners_list_their_own_tokens_without_secrets(owner):
    api_token_issue(user=owner, name="till 2")
    api_token_issue(user=UserFactory(), name="someone else's")

    response = owner.api.get(TOKENS)

    assert response.status_code == 200
    rows = response.json()["results"]
    assert [row["name"] for row in rows] == ["till 2", "till 1"]  # newest first
    assert set(rows[0]) == {
        "id",
        "name",
        "key_prefix",
        "user",
        "username",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "is_active",
    }
    body = response.content.decode()
    assert owner.raw not in body and owner.token.key_hash not in body


def test_revoked_and_expired_tokens_are_listed_as_inactive(owner):
    token, _ = api_token_issue(user=owner, name="old")
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())

    rows = {row["name"]: row for row in owner.api.get(TOKENS).json()["results"]}

    assert rows["old"]["is_active"] is False and rows["old"]["revoked_at"] is not None
    assert rows["till 1"]["is_active"] is True


def test_admins_list_any_users_tokens(owner, admin_api):
    response = admin_api.get(TOKENS, {"user": owner.pk})
    assert [row["id"] for row in response.json()["results"]] == [owner.token.pk]
    # Without ?user they see their own.
    assert {row["username"] for row in admin_api.get(TOKENS).json()["results"]} == {admin_api.user.username}


def test_non_admins_cannot_list_other_users_tokens(owner):
    other = UserFactory()
    response = owner.api.get(TOKENS, {"user": other.pk})
    assert response.status_code == 403
    assert owner.api.get(TOKENS, {"user": owner.pk}).status_code == 200


@pytest.mark.parametrize("value", ["abc", "-1", "99999999999999999999999"])
def test_a_malformed_user_filter_is_a_400(admin_api, value):
    response = admin_api.get(TOKENS, {"user": value})
    assert response.status_code == 400
    assert "user" in response.json()["error"]["fields"]


def test_listing_needs_authentication():
    assert APIClient().get(TOKENS).status_code == 401


def test_listing_takes_a_bounded_number_of_queries(owner, django_assert_max_num_queries):
    for n in range(20):
        api_token_issue(user=owner, name=f"till {n}")
    with django_assert_max_num_queries(4):
        assert owner.api.get(TOKENS).status_code == 200


# --- issuing and revoking ----------------------------------------------------------------


def test_owners_issue_named_tokens_shown_once(owner):
    response = owner.api.post(TOKENS, {"name": "back office sync", "ttl_days": 90}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("hp_") and body["name"] == "back office sync"
    assert bearer(body["token"]).get(ME).status_code == 200
    listed = owner.api.get(f"{TOKENS}/{body['id']}").json()
    assert "token" not in listed


def test_owners_revoke_their_tokens(owner):
    second, raw2 = api_token_issue(user=owner, name="till 2")

    response = owner.api.delete(f"{TOKENS}/{second.pk}")

    assert response.status_code == 204
    assert bearer(raw2).get(ME).status_code == 401
    assert owner.api.get(ME).status_code == 200
    [row] = AuditLog.objects.filter(event_type=AuditEvent.TOKEN_REVOKED)
    assert row.actor_id == owner.pk and row.new_values["token"] == second.key_prefix


def test_revoking_twice_is_harmless_and_audited_once(owner):
    second, _ = api_token_issue(user=owner, name="till 2")
    assert owner.api.delete(f"{TOKENS}/{second.pk}").status_code == 204
    assert owner.api.delete(f"{TOKENS}/{second.pk}").status_code == 204
    assert AuditLog.objects.filter(event_type=AuditEvent.TOKEN_REVOKED).count() == 1


def test_another_users_token_is_a_404_and_stays_valid(owner):
    intruder = UserFactory()
    _, raw = api_token_issue(user=intruder)

    assert bearer(raw).delete(f"{TOKENS}/{owner.token.pk}").status_code == 404
    assert bearer(raw).get(f"{TOKENS}/{owner.token.pk}").status_code == 404
    assert owner.api.get(ME).status_code == 200


def test_a_missing_token_is_a_404(owner):
    assert owner.api.delete(f"{TOKENS}/999999999").status_code == 404
    assert owner.api.delete(f"{TOKENS}/99999999999999999999").status_code == 404


def test_admins_revoke_anyones_token(owner, admin_api):
    assert admin_api.delete(f"{TOKENS}/{owner.token.pk}").status_code == 204
    assert owner.api.get(ME).status_code == 401
    [row] = AuditLog.objects.filter(event_type=AuditEvent.TOKEN_REVOKED)
    assert row.actor_id == admin_api.user.pk


@pytest.mark.parametrize("body", [{"ttl_days": 0}, {"ttl_days": "30"}, {"name": "x" * 101}])
def test_bad_token_requests_are_400(owner, body):
    assert owner.api.post(TOKENS, body, format="json").status_code == 400


def test_the_token_lookup_reads_the_rows_the_orm_would(owner):
    """The authentication's lookup is SQL written once (accounts.selectors); its token and
    user must be the ORM's, field for field, and an unknown hash finds nothing."""
    from django.forms.models import model_to_dict

    from accounts.selectors import api_token_with_user

    owner.api.get(ME)  # sets last_used_at: a timestamp that is not null
    looked_up = api_token_with_user(owner.token.key_hash)
    orm = ApiToken.objects.select_related("user").get(key_hash=owner.token.key_hash)

    assert model_to_dict(looked_up) == model_to_dict(orm) and looked_up.last_used_at is not None
    assert [getattr(looked_up, f.attname) for f in ApiToken._meta.concrete_fields] == [
        getattr(orm, f.attname) for f in ApiToken._meta.concrete_fields
    ]
    assert [getattr(looked_up.user, f.attname) for f in orm.user._meta.concrete_fields] == [
        getattr(orm.user, f.attname) for f in orm.user._meta.concrete_fields
    ]
    assert api_token_with_user(ApiToken.hash_key("not-a-token")) is None
