"""Fixtures shared by every app's tests."""

import uuid

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.test import APIClient

from accounts.tests.factories import AdminUserFactory, UserFactory


@pytest.fixture
def admin_user(db):
    return AdminUserFactory()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def api_client():
    """An anonymous API client."""
    return APIClient()


@pytest.fixture
def admin_api(admin_user):
    """An API client authenticated as an admin with a real bearer token."""
    from homepot.tests.api_helpers import token_client

    return token_client(admin_user)


@pytest.fixture
def admin_browser(client, admin_user):
    """Django's test client logged into the admin as an admin."""
    client.force_login(admin_user)
    return client


@pytest.fixture(autouse=True)
def isolated_throttle(settings):
    """Rate-limit counters of this test only: a Redis key prefix of its own, deleted after.

    Without it, tests that log in from the test client's one address would share counters
    and trip each other's limits.
    """
    prefix = f"homepot:throttle:test-{uuid.uuid4().hex}:"
    settings.HOMEPOT_ACCOUNTS_THROTTLE_KEY_PREFIX = prefix
    client = redis.Redis.from_url(django_settings.REDIS_URL)  # before a test points it elsewhere
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def isolated_heartbeat_buffer(settings):
    """Buffered heartbeats of this test only (a key prefix of its own, deleted after): a
    leftover entry would be flushed onto another test's device with the same id."""
    prefix = f"homepot:seen:test-{uuid.uuid4().hex}:"
    settings.HOMEPOT_MONITORING_SEEN_KEY_PREFIX = prefix
    client = redis.Redis.from_url(django_settings.REDIS_URL)  # before a test points it elsewhere
    yield prefix
    _delete_keys(client, prefix)


@pytest.fixture(autouse=True)
def isolated_identity_store(settings, monkeypatch):
    """Credential identities stored in Redis by this test only (a key prefix of its own,
    deleted after): test databases reuse device pks. The process's memory that Redis was
    away starts afresh too."""
    from devices_app import identity_store

    monkeypatch.setattr(identity_store, "_down_until", 0.0)
    prefix = f"homepot:identity:test-{uuid.uuid4().hex}:"
    settings.HOMEPOT_DEVICES_IDENTITY_KEY_PREFIX = prefix
    client = redis.Redis.from_url(django_settings.REDIS_URL)  # before a test points it elsewhere
    yield prefix
    _delete_keys(client, prefix)


def _delete_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def isolated_health_buffer(settings, monkeypatch):
    """Buffered health reports of this test only (a stream key prefix of its own, deleted
    after): a leftover entry would be drained onto another test's device with the same id.
    The process's memory of whether that Redis is durable starts afresh too."""
    from monitoring_app import health_buffer

    monkeypatch.setattr(health_buffer, "_durability_checked", (float("-inf"), False))
    prefix = f"homepot:health:test-{uuid.uuid4().hex}:"
    settings.HOMEPOT_MONITORING_HEALTH_KEY_PREFIX = prefix
    client = redis.Redis.from_url(django_settings.HOMEPOT_MONITORING_HEALTH_REDIS_URL)
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session", autouse=True)
def flush_may_empty_the_audit_trail():
    """Transactional tests end with Django's flush, one TRUNCATE of every table, which the
    audit trail's trigger refuses (migration monitoring_app 0009). The tests' flush runs
    with triggers off (`session_replication_role = replica`, a superuser's right, as the
    tests' role is), exactly what an operator would have to do on purpose."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, **kwargs):
        statements = original(self, style, tables, **kwargs)
        if not statements:
            return statements
        # SET LOCAL: execute_sql_flush runs the statements in one transaction.
        return ["SET LOCAL session_replication_role = replica", *statements, *_rows_migrations_leave(tables)]

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = original


def _rows_migrations_leave(tables) -> list[str]:
    """The rows a migration writes that the code relies on, put back after the flush: without
    the off-day record's start (migration monitoring_app 0022) every history page is proven the
    slow way, and the next tests on a reused test database fail for a reason not theirs. The
    emptied table's rows were all written with the recording trigger in place: start at 0."""
    from monitoring_app.offday import SINCE_TABLE

    if SINCE_TABLE not in tables:
        return []
    return [f"INSERT INTO {SINCE_TABLE} (id, check_id) VALUES (1, 0) ON CONFLICT (id) DO NOTHING"]  # noqa: S608
