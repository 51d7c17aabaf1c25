"""Login and signup rate limits: per client address and per account, counted in Redis."""

import logging
import time

import pytest
import redis
from django.conf import settings as django_settings

from accounts import throttling
from accounts.models import ApiToken, User
from accounts.tests.factories import UserFactory
from homepot import redis_clients
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login"
SIGNUP = "/api/v1/auth/signup"
PASSWORD = "correct-horse-battery"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(django_settings.REDIS_URL)


@pytest.fixture
def rates(settings):
    def set_rates(**values):
        for name, value in values.items():
            setattr(settings, f"HOMEPOT_ACCOUNTS_{name.upper()}", value)

    return set_rates


def login(client, username, password="wrong", ip="10.0.0.1"):  # noqa: S107 (a wrong guess)
    return client.post(LOGIN, {"username": username, "password": password}, format="json", REMOTE_ADDR=ip)


def signup(client, username, email, ip="10.0.0.1"):
    body = {"username": username, "email": email, "password": "Tr1cky-Passw0rd!"}
    return client.post(SIGNUP, body, format="json", REMOTE_ADDR=ip)


def assert_throttled(response, max_wait):
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= max_wait


# --- rates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit", "window_ms"),
    [("10/min", 10, 60_000), ("3/2s", 3, 2_000), ("20/15min", 20, 900_000), ("5/hour", 5, 3_600_000)],
)
def test_rates_are_read_as_count_per_window(text, limit, window_ms):
    assert throttling.Rate.parse(text) == throttling.Rate(limit, window_ms)


@pytest.mark.parametrize("text", ["ten/min", "5/0s", "5/fortnight", "5"])
def test_bad_rates_are_refused(text):
    with pytest.raises(ValueError, match="Bad rate"):
        throttling.Rate.parse(text)


# --- login -------------------------------------------------------------------------------


def test_login_is_limited_per_client_address(api_client, rates):
    rates(login_rate_per_ip="3/min", login_rate_per_account="100/min")
    UserFactory(username="bob")
    for name in ("ann", "ben", "cat"):
        assert login(api_client, name).status_code == 401

    assert_throttled(login(api_client, "dan"), max_wait=60)
    # Even the right password is refused from that address until the window ends...
    assert_throttled(login(api_client, "bob", PASSWORD), max_wait=60)
    # ...while another address is not affected.
    assert login(api_client, "bob", PASSWORD, ip="10.0.0.2").status_code == 200
    # Throttled attempts never reached the password check: only the first one of the window
    # is audited, as the lockout starting (one row, not one per refused attempt).
    reasons = AuditLog.objects.filter(event_type=AuditEvent.USER_LOGIN_FAILED).order_by("id")
    assert [row.new_values["reason"] for row in reasons] == ["invalid credentials"] * 3 + ["locked out"]


def test_login_is_limited_per_account_across_addresses_and_spellings(api_client, rates):
    rates(login_rate_per_ip="100/min", login_rate_per_account="2/min")
    UserFactory(username="bob", email="bob@example.com")
    UserFactory(username="eve")

    assert login(api_client, "bob", ip="10.0.0.1").status_code == 401
    assert login(api_client, "BOB@example.com", ip="10.0.0.2").status_code == 401

    assert_throttled(login(api_client, "bob", PASSWORD, ip="10.0.0.3"), max_wait=60)
    assert not ApiToken.objects.filter(user__username="bob").exists()
    # Other accounts from the same addresses log in.
    assert login(api_client, "eve", PASSWORD, ip="10.0.0.1").status_code == 200


def test_the_limit_recovers_when_the_window_ends(api_client, rates, isolated_throttle):
    rates(login_rate_per_ip="1/1s", login_rate_per_account="")
    assert login(api_client, "ann").status_code == 401
    response = login(api_client, "ann")
    assert_throttled(response, max_wait=1)

    # Wait for exactly the window Redis still holds (at most a second), not a guess.
    [key] = redis_client().keys(isolated_throttle + "*")
    remaining_ms = redis_client().pttl(key)
    assert 0 < remaining_ms <= 1000
    time.sleep(remaining_ms / 1000 + 0.05)

    assert login(api_client, "ann").status_code == 401


def test_the_limit_recovers_when_its_counters_are_cleared(api_client, rates, isolated_throttle):
    rates(login_rate_per_ip="1/min", login_rate_per_account="")
    UserFactory(username="bob")
    login(api_client, "bob")
    assert_throttled(login(api_client, "bob", PASSWORD), max_wait=60)

    redis_client().delete(*redis_client().keys(isolated_throttle + "*"))

    assert login(api_client, "bob", PASSWORD).status_code == 200


def test_the_counter_is_shared_by_every_worker(api_client, rates, isolated_throttle):
    rates(login_rate_per_ip="2/min", login_rate_per_account="")
    login(api_client, "ann")
    # A second worker process has its own Redis connection: drop ours to play one.
    redis_clients.redis_client.cache_clear()
    login(api_client, "ann")
    redis_clients.redis_client.cache_clear()

    assert_throttled(login(api_client, "ann"), max_wait=60)
    [key] = redis_client().keys(isolated_throttle + "*")
    assert key.decode().startswith(isolated_throttle + "login:ip:")
    assert b"10.0.0.1" not in key  # addresses and names are hashed in key names
    assert int(redis_client().get(key)) == 3
    assert 0 < redis_client().ttl(key) <= 60


def test_an_empty_rate_turns_a_limit_off(api_client, rates):
    rates(login_rate_per_ip="", login_rate_per_account="")
    for _ in range(12):
        assert login(api_client, "ann").status_code == 401


def test_the_default_limits_hold(api_client):
    # 10 per address per minute, 5 per account: the sixth try at one account is refused.
    for n in range(5):
        assert login(api_client, "bob", ip=f"10.0.1.{n}").status_code == 401
    assert_throttled(login(api_client, "bob", ip="10.0.1.99"), max_wait=60)


# --- signup ------------------------------------------------------------------------------


def test_signup_is_limited_per_client_address(api_client, rates):
    rates(signup_rate_per_ip="2/min", signup_rate_per_account="100/min")
    assert signup(api_client, "ann", "ann@example.com").status_code == 201
    assert signup(api_client, "ben", "ben@example.com").status_code == 201

    assert_throttled(signup(api_client, "cat", "cat@example.com"), max_wait=60)
    assert not User.objects.filter(username="cat").exists()
    assert signup(api_client, "cat", "cat@example.com", ip="10.0.0.2").status_code == 201


def test_signup_is_limited_per_email_across_addresses(api_client, rates):
    rates(signup_rate_per_ip="100/min", signup_rate_per_account="1/min")
    assert signup(api_client, "ann", "ann@example.com", ip="10.0.0.1").status_code == 201

    assert_throttled(signup(api_client, "ann2", "ANN@example.com", ip="10.0.0.2"), max_wait=60)
    assert signup(api_client, "ben", "ben@example.com", ip="10.0.0.2").status_code == 201


# --- when Redis is away ------------------------------------------------------------------


def test_without_redis_logins_fail_open_with_a_warning_and_are_still_audited(
    api_client, rates, settings, caplog
):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    rates(login_rate_per_ip="1/min", login_rate_per_account="1/min")
    UserFactory(username="bob")

    with caplog.at_level(logging.WARNING, logger="accounts.throttling"):
        assert login(api_client, "bob").status_code == 401
        assert login(api_client, "bob").status_code == 401
        assert login(api_client, "bob", PASSWORD).status_code == 200

    assert "Rate limiter unavailable" in caplog.text
    assert AuditLog.objects.filter(event_type=AuditEvent.USER_LOGIN_FAILED).count() == 2


def test_without_redis_a_fail_closed_setup_answers_503(api_client, rates, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN = False
    UserFactory(username="bob")

    response = login(api_client, "bob", PASSWORD)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "throttle_unavailable"
    assert not ApiToken.objects.exists()
