"""`manage.py ensure_admin`: the demo administrator that scripts/run.sh creates and prints."""

import binascii
import hashlib
import re
import stat
from io import StringIO

import bcrypt
import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from accounts.models import ApiToken, User
from accounts.services import api_token_authenticate
from accounts.tests.factories import UserFactory
from homepot import settings as production_settings
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog

pytestmark = pytest.mark.django_db

STRONG_PASSWORD = "till-roll-42-receipts"  # noqa: S105 (a test value)


@pytest.fixture
def credentials_file(tmp_path):
    return tmp_path / "var" / "admin-credentials.txt"


@pytest.fixture(autouse=True)
def no_password_from_the_shell(monkeypatch):
    monkeypatch.delenv("HOMEPOT_ADMIN_PASSWORD", raising=False)


def ensure_admin(credentials_file, *args) -> str:
    out = StringIO()
    call_command("ensure_admin", "--credentials-file", str(credentials_file), *args, stdout=out)
    return out.getvalue()


def printed(output: str, label: str) -> str | None:
    match = re.search(rf"^\s*{label}\s*:\s*(\S+)", output, re.MULTILINE)
    return match.group(1) if match else None


def test_creates_an_active_superuser_with_a_generated_password_it_prints_and_keeps(credentials_file):
    output = ensure_admin(credentials_file)

    admin = User.objects.get(username="admin")
    assert (admin.is_active, admin.is_staff, admin.is_superuser) == (True, True, True)
    assert admin.email == "admin@example.com"
    password = printed(output, "password")
    assert password and len(password) >= 16
    assert admin.check_password(password)
    assert "http://127.0.0.1:8000/admin/" in output
    assert f"password={password}" in credentials_file.read_text()
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    assert AuditLog.objects.filter(event_type="user.created").count() == 1


def test_a_rerun_keeps_the_account_and_prints_the_same_credentials(credentials_file):
    first = ensure_admin(credentials_file)
    hash_before = User.objects.get(username="admin").password
    audit_rows = AuditLog.objects.count()

    second = ensure_admin(credentials_file)

    assert User.objects.filter(username__iexact="admin").count() == 1
    assert printed(second, "password") == printed(first, "password")
    assert "kept" in second
    assert User.objects.get(username="admin").password == hash_before
    assert AuditLog.objects.count() == audit_rows


def test_the_kept_password_is_reused_when_the_database_starts_over(credentials_file):
    first = ensure_admin(credentials_file)
    User.objects.all().delete()  # as after `run.sh --reset`

    second = ensure_admin(credentials_file)

    assert printed(second, "password") == printed(first, "password")
    assert User.objects.get(username="admin").check_password(printed(first, "password"))


def test_password_from_the_environment_is_used_and_never_echoed(credentials_file, monkeypatch):
    monkeypatch.setenv("HOMEPOT_ADMIN_PASSWORD", STRONG_PASSWORD)

    output = ensure_admin(credentials_file)

    assert User.objects.get(username="admin").check_password(STRONG_PASSWORD)
    assert STRONG_PASSWORD not in output
    assert "HOMEPOT_ADMIN_PASSWORD" in output
    assert not credentials_file.exists() or STRONG_PASSWORD not in credentials_file.read_text()


def test_password_option_sets_the_password_of_an_existing_admin(credentials_file):
    ensure_admin(credentials_file)

    output = ensure_admin(credentials_file, "--password", STRONG_PASSWORD)

    assert User.objects.get(username="admin").check_password(STRONG_PASSWORD)
    assert "updated" in output and STRONG_PASSWORD not in output


def test_a_weak_password_is_refused_and_nothing_is_created(credentials_file):
    with pytest.raises(CommandError, match="too short"):
        ensure_admin(credentials_file, "--password", "pos1")
    assert not User.objects.exists()


def test_never_prints_a_password_it_did_not_create(credentials_file):
    UserFactory(username="admin", is_staff=True, is_superuser=True)  # made by someone else

    output = ensure_admin(credentials_file)

    assert printed(output, "password") == "the"
    assert "ensure_admin --reset-password" in output and "changepassword admin" in output
    assert User.objects.get(username="admin").check_password("correct-horse-battery")


def test_a_kept_password_is_not_printed_once_someone_changed_it(credentials_file):
    generated = printed(ensure_admin(credentials_file), "password")
    admin = User.objects.get(username="admin")
    admin.set_password(STRONG_PASSWORD)
    admin.save()

    output = ensure_admin(credentials_file)

    assert generated not in output
    assert printed(output, "password") == "the"
    assert "ensure_admin --reset-password" in output


def test_reset_password_prints_a_new_kept_password_that_opens_the_account(credentials_file):
    UserFactory(username="admin", is_staff=True, is_superuser=True)  # a password nobody knows

    output = ensure_admin(credentials_file, "--reset-password")

    new_password = printed(output, "password")
    assert new_password not in ("the", "correct-horse-battery")
    admin = User.objects.get(username="admin")
    assert admin.check_password(new_password) and not admin.check_password("correct-horse-battery")
    assert f"password={new_password}" in credentials_file.read_text()
    assert AuditLog.objects.filter(event_type=AuditEvent.USER_UPDATED).exists()
    # The next plain run prints the same, still-working password.
    assert printed(ensure_admin(credentials_file), "password") == new_password


def test_reset_password_and_a_given_password_are_refused_together(credentials_file):
    with pytest.raises(CommandError, match="not both"):
        ensure_admin(credentials_file, "--reset-password", "--password", STRONG_PASSWORD)


def test_an_existing_account_of_that_name_is_made_an_active_superuser(credentials_file):
    UserFactory(username="Admin", is_active=False)

    output = ensure_admin(credentials_file)

    admin = User.objects.get()
    assert (admin.is_active, admin.is_staff, admin.is_superuser) == (True, True, True)
    assert "updated" in output
    assert AuditLog.objects.filter(event_type=AuditEvent.USER_UPDATED).count() == 1


def test_an_email_taken_by_another_user_is_refused(credentials_file):
    UserFactory(username="anna", email="ADMIN@example.com")
    with pytest.raises(CommandError, match="email"):
        ensure_admin(credentials_file)
    assert not User.objects.filter(username="admin").exists()


def test_with_token_prints_a_working_api_token_and_curl_line_and_reuses_it(credentials_file):
    output = ensure_admin(credentials_file, "--with-token", "--base-url", "http://127.0.0.1:8123")

    token = printed(output, "API token")
    assert token and token.startswith("hp_")
    assert f"export TOKEN={token}" in output
    assert 'curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8123/sites' in output
    assert api_token_authenticate(token).user.username == "admin"

    again = ensure_admin(credentials_file, "--with-token")
    assert printed(again, "API token") == token
    assert ApiToken.objects.count() == 1


def test_a_revoked_kept_token_is_replaced(credentials_file):
    first = printed(ensure_admin(credentials_file, "--with-token"), "API token")
    ApiToken.objects.update(revoked_at="2020-01-01T00:00:00Z")

    second = printed(ensure_admin(credentials_file, "--with-token"), "API token")

    assert second != first
    assert api_token_authenticate(second) is not None


@override_settings(PASSWORD_HASHERS=production_settings.PASSWORD_HASHERS)
def test_the_password_is_stored_with_bcrypt_cost_12(credentials_file):
    """The production hasher list, not the test suite's fast one."""
    password = printed(ensure_admin(credentials_file), "password")

    stored = User.objects.get(username="admin").password
    algorithm, bcrypt_hash = stored.split("$", 1)
    assert algorithm == "bcrypt_sha256"
    assert bcrypt_hash.startswith("$2b$12$")
    # Django's bcrypt_sha256 is bcrypt over the hex SHA-256 of the password.
    prehashed = binascii.hexlify(hashlib.sha256(password.encode()).digest())
    assert bcrypt.checkpw(prehashed, bcrypt_hash.encode())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("args", [(), ("--password", STRONG_PASSWORD)], ids=["create", "set-password"])
@override_settings(PASSWORD_HASHERS=production_settings.PASSWORD_HASHERS)
def test_bcrypt_runs_outside_any_transaction_so_a_poolers_idle_timeout_cannot_end_it(credentials_file, args):
    """PgBouncer (deploy/pgbouncer) ends a transaction idle for longer than its
    idle_transaction_timeout; PostgreSQL's own idle_in_transaction_session_timeout stands in for
    it here, shorter than one bcrypt hash or check (a quarter second at the default cost)."""
    from django.db import connection

    if args:
        UserFactory(username="admin", is_superuser=True, is_staff=True)
    with connection.cursor() as cursor:
        cursor.execute("SET idle_in_transaction_session_timeout = '100ms'")
    try:
        ensure_admin(credentials_file, *args)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # the setting is not to outlive this test

    admin = User.objects.get(username="admin")
    assert admin.check_password(args[1] if args else printed_password(credentials_file))


def printed_password(credentials_file) -> str:
    return dict(line.split("=", 1) for line in credentials_file.read_text().splitlines() if "=" in line)[
        "password"
    ]
