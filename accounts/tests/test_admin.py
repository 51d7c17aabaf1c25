"""Users, site memberships and API tokens in the operator console."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.models import ApiToken, SiteMembership, User
from accounts.services import api_token_issue
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

USER = "accounts_user"
MEMBERSHIP = "accounts_sitemembership"
TOKEN = "accounts_apitoken"
STRONG_PASSWORD = "harbour-lights-47-tide"


def url(model, view, *args):
    return reverse(f"admin:{model}_{view}", args=args)


def listed(response):
    assert response.status_code == 200
    return [row.pk for row in response.context["cl"].result_list]


def messages_of(response):
    return [str(message) for message in response.context["messages"]]


def assert_changelist_queries_do_not_grow(client, changelist, make_rows, django_assert_max_num_queries):
    make_rows(3)
    with CaptureQueriesContext(connection) as few:
        assert client.get(changelist).status_code == 200
    make_rows(27)

    with django_assert_max_num_queries(len(few)):
        response = client.get(changelist)

    assert len(response.context["cl"].result_list) >= 30
    assert len(few) <= 10


def user_change_data(user, **overrides):
    data = {
        "username": user.username,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_active": "on",
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


# --- Users ----------------------------------------------------------------------------------


def test_user_changelist_shows_site_count(admin_browser):
    member = UserFactory(username="maria")
    SiteMembershipFactory.create_batch(2, user=member)

    response = admin_browser.get(url(USER, "changelist"))

    counts = {user.username: user.site_count for user in response.context["cl"].result_list}
    assert counts["maria"] == 2


@pytest.mark.parametrize(("term", "found"), [("maria", True), ("MARIA@EXAMPLE", True), ("nobody", False)])
def test_user_search_matches_username_and_email(admin_browser, term, found):
    maria = UserFactory(username="maria", email="maria@example.com")

    result = listed(admin_browser.get(url(USER, "changelist"), {"q": term}))

    assert (maria.pk in result) is found


def test_user_add_and_change_pages_render(admin_browser):
    member = SiteMembershipFactory().user

    assert admin_browser.get(url(USER, "add")).status_code == 200
    response = admin_browser.get(url(USER, "change", member.pk))
    assert response.status_code == 200
    assert str(member.memberships.get().site) in response.text


def test_user_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    assert_changelist_queries_do_not_grow(
        admin_browser,
        url(USER, "changelist"),
        lambda n: [SiteMembershipFactory().user for _ in range(n)],
        django_assert_max_num_queries,
    )


def test_adding_a_user_goes_through_the_service(admin_browser, admin_user):
    data = {
        "username": "maria",
        "email": "Maria@Example.COM",
        "usable_password": "true",
        "password1": STRONG_PASSWORD,
        "password2": STRONG_PASSWORD,
        "_save": "Save",
    }

    response = admin_browser.post(url(USER, "add"), data)

    assert response.status_code == 302
    maria = User.objects.get(username="maria")
    assert maria.email == "maria@example.com"
    assert maria.check_password(STRONG_PASSWORD)
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.USER_CREATED
    assert entry.actor == admin_user


@pytest.mark.parametrize("email", ["", "MARIA@example.com"])
def test_email_is_required_and_unique_without_regard_to_case(admin_browser, email):
    UserFactory(username="maria", email="maria@example.com")
    data = {
        "username": "maria2",
        "email": email,
        "usable_password": "true",
        "password1": STRONG_PASSWORD,
        "password2": STRONG_PASSWORD,
    }

    response = admin_browser.post(url(USER, "add"), data)

    assert response.status_code == 200
    assert "email" in response.context["adminform"].form.errors
    assert not User.objects.filter(username="maria2").exists()


def test_changing_a_user_goes_through_the_service(admin_browser):
    maria = UserFactory(username="maria", first_name="Maria", last_name="Lopez")

    response = admin_browser.post(url(USER, "change", maria.pk), user_change_data(maria, is_staff="on"))

    assert response.status_code == 302
    maria.refresh_from_db()
    assert maria.is_staff
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.USER_UPDATED
    assert entry.new_values == {"is_staff": True}


def test_an_admin_cannot_deactivate_themselves_and_gets_a_message(admin_browser, admin_user):
    response = admin_browser.post(
        url(USER, "change", admin_user.pk),
        user_change_data(admin_user, is_active=None, is_staff="on", is_superuser="on"),
        follow=True,
    )

    assert response.status_code == 200
    assert any("cannot deactivate" in message for message in messages_of(response))
    admin_user.refresh_from_db()
    assert admin_user.is_active


def test_granting_a_site_role_inline_goes_through_the_service(admin_browser):
    maria, site = UserFactory(), SiteFactory()
    data = user_change_data(
        maria,
        **{
            "memberships-TOTAL_FORMS": "1",
            "memberships-0-site": site.pk,
            "memberships-0-role": "manager",
            "memberships-0-user": maria.pk,
        },
    )

    response = admin_browser.post(url(USER, "change", maria.pk), data)

    assert response.status_code == 302
    assert SiteMembership.objects.get(user=maria).site == site
    assert AuditLog.objects.get().event_type == AuditEvent.MEMBERSHIP_GRANTED


def test_changing_a_password_goes_through_the_service_and_revokes_tokens(admin_browser):
    maria = UserFactory()
    token, _ = api_token_issue(user=maria, name="till")
    data = {"password1": STRONG_PASSWORD, "password2": STRONG_PASSWORD, "usable_password": "true"}

    response = admin_browser.post(reverse("admin:auth_user_password_change", args=[maria.pk]), data)

    assert response.status_code == 302
    maria.refresh_from_db()
    assert maria.check_password(STRONG_PASSWORD)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditLog.objects.filter(event_type=AuditEvent.USER_UPDATED).count() == 1


# --- Site memberships --------------------------------------------------------------------------


def test_membership_pages_render_and_search(admin_browser):
    membership = SiteMembershipFactory(
        user=UserFactory(username="maria"), site=SiteFactory(site_id="site-321")
    )
    SiteMembershipFactory()

    assert listed(admin_browser.get(url(MEMBERSHIP, "changelist"))) != []
    assert listed(admin_browser.get(url(MEMBERSHIP, "changelist"), {"q": "site-321"})) == [membership.pk]
    assert listed(admin_browser.get(url(MEMBERSHIP, "changelist"), {"q": "maria"})) == [membership.pk]
    assert listed(admin_browser.get(url(MEMBERSHIP, "changelist"), {"q": "nobody"})) == []
    assert admin_browser.get(url(MEMBERSHIP, "add")).status_code == 200
    assert admin_browser.get(url(MEMBERSHIP, "change", membership.pk)).status_code == 200


def test_membership_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    assert_changelist_queries_do_not_grow(
        admin_browser,
        url(MEMBERSHIP, "changelist"),
        lambda n: SiteMembershipFactory.create_batch(n),
        django_assert_max_num_queries,
    )


def test_membership_writes_go_through_the_services(admin_browser):
    maria, site = UserFactory(), SiteFactory()

    added = admin_browser.post(url(MEMBERSHIP, "add"), {"user": maria.pk, "site": site.pk, "role": "viewer"})
    membership = SiteMembership.objects.get()
    changed = admin_browser.post(url(MEMBERSHIP, "change", membership.pk), {"role": "manager"})
    deleted = admin_browser.post(url(MEMBERSHIP, "delete", membership.pk), {"post": "yes"})

    assert (added.status_code, changed.status_code, deleted.status_code) == (302, 302, 302)
    assert not SiteMembership.objects.exists()
    assert list(AuditLog.objects.order_by("id").values_list("event_type", flat=True)) == [
        AuditEvent.MEMBERSHIP_GRANTED,
        AuditEvent.MEMBERSHIP_CHANGED,
        AuditEvent.MEMBERSHIP_REVOKED,
    ]


def test_a_duplicate_membership_is_a_form_error(admin_browser):
    existing = SiteMembershipFactory(role=MembershipRole.VIEWER)

    response = admin_browser.post(
        url(MEMBERSHIP, "add"), {"user": existing.user.pk, "site": existing.site.pk, "role": "manager"}
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors()
    assert SiteMembership.objects.count() == 1


# --- API tokens --------------------------------------------------------------------------------


def test_token_pages_render_and_search_without_showing_the_hash(admin_browser, admin_user):
    token, _ = api_token_issue(user=admin_user, name="pos-sync")

    changelist = admin_browser.get(url(TOKEN, "changelist"))
    page = admin_browser.get(url(TOKEN, "change", token.pk))

    assert listed(changelist) == [token.pk]
    assert listed(admin_browser.get(url(TOKEN, "changelist"), {"q": "pos-sync"})) == [token.pk]
    assert listed(admin_browser.get(url(TOKEN, "changelist"), {"q": "unknown"})) == []
    assert admin_browser.get(url(TOKEN, "add")).status_code == 200
    assert page.status_code == 200
    for response in (changelist, page):
        assert token.key_hash not in response.text
        assert token.key_prefix in response.text


def test_token_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    assert_changelist_queries_do_not_grow(
        admin_browser,
        url(TOKEN, "changelist"),
        lambda n: [api_token_issue(user=UserFactory(), name="t") for _ in range(n)],
        django_assert_max_num_queries,
    )


def test_issuing_a_token_shows_the_secret_once(admin_browser):
    maria = UserFactory(username="maria")

    response = admin_browser.post(
        url(TOKEN, "add"), {"user": maria.pk, "name": "till", "ttl_days": "7"}, follow=True
    )

    token = ApiToken.objects.get()
    secret = next(m for m in messages_of(response) if "copy it now" in m).split(" is ")[1].split(" ")[0]
    assert ApiToken.hash_key(secret) == token.key_hash
    assert token.user == maria
    assert token.expires_at is not None
    assert AuditLog.objects.get().event_type == AuditEvent.TOKEN_ISSUED
    again = admin_browser.get(url(TOKEN, "change", token.pk))
    assert secret not in again.text


def test_revoke_action_revokes_and_audits_each_token_once(admin_browser):
    tokens = [api_token_issue(user=UserFactory(), name="t")[0] for _ in range(2)]
    action = {"action": "revoke_tokens", "_selected_action": [t.pk for t in tokens]}

    first = admin_browser.post(url(TOKEN, "changelist"), action)
    admin_browser.post(url(TOKEN, "changelist"), action)  # a repeat changes nothing

    assert first.status_code == 302
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 0
    assert AuditLog.objects.filter(event_type=AuditEvent.TOKEN_REVOKED).count() == 2


def test_tokens_are_revoked_not_deleted(admin_browser, admin_user):
    token, _ = api_token_issue(user=admin_user, name="t")

    assert admin_browser.post(url(TOKEN, "delete", token.pk), {"post": "yes"}).status_code == 403
    assert ApiToken.objects.filter(pk=token.pk).exists()


# --- Who may see people ------------------------------------------------------------------------


def test_staff_who_are_not_superusers_see_no_users_or_memberships(client):
    staff = UserFactory(is_staff=True)
    grant_perms(staff, "accounts.view_user", "accounts.change_user", "accounts.view_sitemembership")
    client.force_login(staff)

    assert client.get(url(USER, "changelist")).status_code == 403
    assert client.get(url(USER, "change", staff.pk)).status_code == 403
    assert client.get(url(MEMBERSHIP, "changelist")).status_code == 403
    index = client.get(reverse("admin:index"))
    assert url(USER, "changelist") not in index.text


def test_staff_see_and_revoke_only_their_own_tokens(client):
    staff = UserFactory(is_staff=True)
    grant_perms(staff, "accounts.view_apitoken", "accounts.add_apitoken", "accounts.change_apitoken")
    own, _ = api_token_issue(user=staff, name="mine")
    other, _ = api_token_issue(user=UserFactory(), name="theirs")
    client.force_login(staff)

    assert listed(client.get(url(TOKEN, "changelist"))) == [own.pk]
    assert client.get(url(TOKEN, "change", other.pk)).status_code == 302
    client.post(url(TOKEN, "changelist"), {"action": "revoke_tokens", "_selected_action": [own.pk, other.pk]})
    refused = client.post(url(TOKEN, "add"), {"user": other.user.pk, "name": "sneaky"})

    own.refresh_from_db()
    other.refresh_from_db()
    assert own.revoked_at is not None
    assert other.revoked_at is None
    assert refused.status_code == 200
    assert "user" in refused.context["adminform"].form.errors
    assert not ApiToken.objects.filter(name="sneaky").exists()
