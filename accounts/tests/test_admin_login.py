"""The admin's login page: the same limits and the same audit as the API login."""

import pytest
import redis
from django.conf import settings as django_settings

from accounts.tests.factories import AdminUserFactory, UserFactory
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog

pytestmark = pytest.mark.django_db

ADMIN_LOGIN = "/admin/login/"
API_LOGIN = "/api/v1/auth/login"
PASSWORD = "correct-horse-battery"
ADDRESS = "203.0.113.7"


@pytest.fixture
def rates(settings):
    # Only the per-account limit matters here; the address limit is kept out of the way.
    settings.HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP = "100/min"
    settings.HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT = "5/min"


def admin_login(client, username, password="wrong"):  # noqa: S107 (a wrong guess)
    return client.post(
        ADMIN_LOGIN,
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=ADDRESS,
    )


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def rows(event):
    return list(AuditLog.objects.filter(event_type=event).order_by("id"))


def test_twelve_wrong_passwords_lock_the_account_and_the_right_one_is_refused(client, rates):
    AdminUserFactory(username="ops")
    for _ in range(12):
        assert admin_login(client, "ops").status_code == 200

    response = admin_login(client, "ops", PASSWORD)

    assert response.status_code == 200
    assert not logged_in(client)
    assert "Too many login attempts. Try again in" in response.content.decode()
    failed = rows(AuditEvent.USER_LOGIN_FAILED)
    # Five wrong guesses checked, then one row when the lockout starts; the refused attempts
    # after it are not audited one by one.
    assert [row.new_values["reason"] for row in failed] == ["invalid credentials"] * 5 + ["locked out"]
    assert all(row.source_ip == ADDRESS and row.actor_id is None for row in failed)
    assert all(row.new_values["door"] == "admin" and "ops" in row.description for row in failed)
    assert not rows(AuditEvent.USER_LOGIN)


def test_after_the_window_the_right_password_works_and_is_audited(client, rates, isolated_throttle):
    admin = AdminUserFactory(username="ops")
    for _ in range(6):
        admin_login(client, "ops")
    assert not logged_in(client)

    # The window ends: Redis expires the counters (done now rather than waited for).
    store = redis.Redis.from_url(django_settings.REDIS_URL)
    for key in store.scan_iter(match=isolated_throttle + "*"):
        store.pexpire(key, 1)
    while any(store.exists(key) for key in store.scan_iter(match=isolated_throttle + "*")):
        pass

    response = admin_login(client, "ops", PASSWORD)

    assert response.status_code == 302
    assert logged_in(client)
    [row] = rows(AuditEvent.USER_LOGIN)
    assert row.actor_id == admin.pk and row.source_ip == ADDRESS


def test_a_short_window_set_in_settings_is_the_lockout_the_page_reports(client, settings):
    settings.HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT = "2/7s"
    AdminUserFactory(username="ops")
    admin_login(client, "ops")
    admin_login(client, "ops")

    response = admin_login(client, "ops", PASSWORD)

    assert not logged_in(client)
    wait = int(response.context["form"].errors.as_data()["__all__"][0].params["wait"])
    assert 1 <= wait <= 7


def test_the_api_and_the_admin_count_against_the_same_limit(client, api_client, rates):
    AdminUserFactory(username="ops")
    for _ in range(3):
        api_client.post(API_LOGIN, {"username": "ops", "password": "x"}, format="json", REMOTE_ADDR=ADDRESS)
    for _ in range(2):
        admin_login(client, "ops")

    response = admin_login(client, "ops", PASSWORD)

    assert not logged_in(client)
    assert "Too many login attempts" in response.content.decode()
    api = api_client.post(API_LOGIN, {"username": "ops", "password": PASSWORD}, format="json")
    assert api.status_code == 429


def test_a_successful_sign_in_is_audited_with_the_address(client):
    admin = AdminUserFactory(username="ops")

    response = admin_login(client, "ops", PASSWORD)

    assert response.status_code == 302 and logged_in(client)
    [row] = AuditLog.objects.all()
    assert row.event_type == AuditEvent.USER_LOGIN
    assert row.actor_id == admin.pk and row.source_ip == ADDRESS


def test_a_user_with_no_site_role_and_no_staff_flag_is_refused_and_the_refusal_is_audited(client):
    UserFactory(username="clerk")

    response = admin_login(client, "clerk", PASSWORD)

    assert response.status_code == 200 and not logged_in(client)
    [row] = AuditLog.objects.all()
    assert row.event_type == AuditEvent.USER_LOGIN_FAILED
    assert row.new_values["reason"] == "no console access" and row.source_ip == ADDRESS
