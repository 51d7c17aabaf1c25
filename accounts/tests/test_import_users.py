"""`manage.py import_users` and logging in with a bcrypt hash from the older HOMEPOT database."""

import csv
import io
import json

import bcrypt
import pytest
from django.contrib.auth.hashers import identify_hasher
from django.core.management import CommandError, call_command
from django.test import override_settings

from accounts.models import User
from accounts.tests.factories import UserFactory
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login"
LEGACY = "accounts.hashers.LegacyBcryptPasswordHasher"
# The production list (bcrypt_sha256 preferred) with the legacy hasher after it.
REAL_HASHERS = [
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.BCryptPasswordHasher",
    LEGACY,
]
# Fast for tests that only import: MD5 preferred, the legacy one still known.
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", LEGACY]

FIELDS = ["username", "email", "hash", "is_admin", "is_active"]


@pytest.fixture
def fast_hashers(settings):
    settings.PASSWORD_HASHERS = FAST_HASHERS


def legacy_hash(password: str, cost: int = 4, prefix: bytes = b"2b") -> str:
    """What the older HOMEPOT stored: bcrypt.hashpw(password, gensalt()) as text."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost, prefix=prefix)).decode()


def write_csv(tmp_path, rows, fields=FIELDS, name="users.csv"):
    path = tmp_path / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_import(*args) -> str:
    out = io.StringIO()
    call_command("import_users", *map(str, args), stdout=out)
    return out.getvalue()


def login(api_client, username, password):
    return api_client.post(LOGIN, {"username": username, "password": password}, format="json")


@override_settings(PASSWORD_HASHERS=REAL_HASHERS)
def test_a_cost_12_legacy_user_logs_in_and_is_rehashed_in_djangos_format(tmp_path, api_client):
    old_hash = legacy_hash("Old-Homepot-Pass1", cost=12)
    assert old_hash.startswith("$2b$12$")
    path = write_csv(tmp_path, [{"username": "maria", "email": "maria@example.com", "hash": old_hash}])
    run_import(path)
    user = User.objects.get(username="maria")
    assert user.password == f"legacy_bcrypt${old_hash}"

    assert login(api_client, "maria", "wrong-password").status_code == 401
    user.refresh_from_db()
    assert user.password == f"legacy_bcrypt${old_hash}"  # a failed attempt changes nothing

    response = login(api_client, "maria", "Old-Homepot-Pass1")

    assert response.status_code == 200, response.content
    user.refresh_from_db()
    hasher = identify_hasher(user.password)
    assert hasher.algorithm == "bcrypt_sha256"
    assert hasher.decode(user.password)["work_factor"] == 12
    assert old_hash not in user.password
    [row] = AuditLog.objects.filter(event_type=AuditEvent.USER_LOGIN)
    assert row.new_values["password_rehashed_from"] == "legacy_bcrypt"
    # And the new hash opens the account from now on.
    assert login(api_client, "maria@example.com", "Old-Homepot-Pass1").status_code == 200


@pytest.mark.parametrize("prefix", [b"2a", b"2b", b"2y"])
def test_every_bcrypt_variant_the_old_system_may_have_written_logs_in(
    tmp_path, api_client, fast_hashers, prefix
):
    # $2y$ is PHP's spelling of $2b$ (same algorithm); gensalt does not write it itself.
    old_hash = legacy_hash("Old-Homepot-Pass1", prefix=b"2b" if prefix == b"2y" else prefix)
    old_hash = f"${prefix.decode()}${old_hash[4:]}"
    run_import(write_csv(tmp_path, [{"username": "maria", "email": "m@example.com", "hash": old_hash}]))

    assert login(api_client, "maria", "Old-Homepot-Pass1").status_code == 200
    assert not User.objects.get(username="maria").password.startswith("legacy_bcrypt$")


def test_a_password_longer_than_bcrypts_72_bytes_still_logs_in(tmp_path, api_client, fast_hashers):
    # The old bcrypt library cut passwords at 72 bytes without a word; bcrypt 5 refuses them.
    password = "a-very-long-passphrase-" * 5
    old_hash = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4)).decode()
    run_import(write_csv(tmp_path, [{"username": "maria", "email": "m@example.com", "hash": old_hash}]))

    assert login(api_client, "maria", password).status_code == 200


def test_an_inactive_imported_user_cannot_log_in(tmp_path, api_client, fast_hashers):
    old_hash = legacy_hash("Old-Homepot-Pass1")
    row = {"username": "left", "email": "left@example.com", "hash": old_hash, "is_active": "false"}
    run_import(write_csv(tmp_path, [row]))

    assert User.objects.get(username="left").is_active is False
    assert login(api_client, "left", "Old-Homepot-Pass1").status_code == 401


def test_import_creates_valid_rows_skips_the_rest_with_reasons_and_is_idempotent(tmp_path, fast_hashers):
    UserFactory(username="existing", email="existing@example.com")
    good = legacy_hash("whatever")
    rows = [
        {
            "username": "ana",
            "email": "Ana@Example.com",
            "hash": good,
            "is_admin": "false",
            "is_active": "true",
        },
        {"username": "boss", "email": "boss@example.com", "hash": good, "is_admin": "t", "is_active": "t"},
        {"username": "EXISTING", "email": "new@example.com", "hash": good},
        {"username": "newname", "email": "EXISTING@example.com", "hash": good},
        {"username": "badhash", "email": "badhash@example.com", "hash": "5f4dcc3b5aa765d61d8327deb882cf99"},
        {"username": "badmail", "email": "not-an-email", "hash": good},
        {"username": "nomail", "email": "", "hash": good},
        {"username": "ANA", "email": "ana2@example.com", "hash": good},
        {"username": "flag", "email": "flag@example.com", "hash": good, "is_admin": "maybe"},
        {"username": "bad name!", "email": "bn@example.com", "hash": good},
    ]
    path = write_csv(tmp_path, rows)

    out = run_import(path)

    assert set(User.objects.values_list("username", flat=True)) == {"existing", "ana", "boss"}
    ana, boss = User.objects.get(username="ana"), User.objects.get(username="boss")
    assert ana.email == "ana@example.com" and not ana.is_superuser and not ana.is_staff
    assert boss.is_superuser and boss.is_staff
    assert "users.csv: 2 user(s) created, 8 skipped" in out
    assert "(2 already exists, 1 bad hash, 1 duplicate in file, 3 invalid value, 1 missing field)" in out
    assert "skipped line 4 (EXISTING): a user named 'EXISTING' already exists" in out
    assert "skipped line 5 (newname): email 'EXISTING@example.com' is already used by another user" in out
    assert "skipped line 6 (badhash): hash: Not a bcrypt hash" in out
    assert "skipped line 7 (badmail): email: Enter a valid email address." in out
    assert "skipped line 8 (nomail): missing email" in out
    assert "skipped line 9 (ANA): username repeats line 2" in out
    assert "skipped line 10 (flag): is_admin must be true or false, got 'maybe'" in out
    assert "skipped line 11 (bad name!): username:" in out
    # One audit row per created user, by the system.
    created_rows = AuditLog.objects.filter(event_type=AuditEvent.USER_CREATED)
    assert sorted(r.new_values["username"] for r in created_rows) == ["ana", "boss"]
    assert all(r.actor_id is None and "users.csv" in r.description for r in created_rows)

    again = run_import(path)

    assert "0 user(s) created, 10 skipped" in again
    assert User.objects.count() == 3
    assert AuditLog.objects.filter(event_type=AuditEvent.USER_CREATED).count() == 2


def test_json_files_with_the_old_column_name_and_json_booleans(tmp_path, fast_hashers):
    good = legacy_hash("whatever")
    path = tmp_path / "export.json"
    path.write_text(
        json.dumps(
            {
                "users": [
                    {
                        "username": "ana",
                        "email": "ana@example.com",
                        "hashed_password": good,
                        "is_admin": True,
                    },
                    {"username": "ben", "email": "ben@example.com", "hash": good, "is_active": False},
                    "not an object",
                    {"username": 7, "email": "seven@example.com", "hash": good},
                ]
            }
        )
    )

    out = run_import(path)

    assert User.objects.get(username="ana").is_superuser is True
    assert User.objects.get(username="ben").is_active is False
    assert "2 user(s) created, 2 skipped" in out
    assert "skipped item 3: not a JSON object" in out
    assert "skipped item 4: username must be text, got 7" in out


def test_a_dry_run_checks_everything_and_creates_nothing(tmp_path, fast_hashers):
    path = write_csv(tmp_path, [{"username": "ana", "email": "ana@example.com", "hash": legacy_hash("x")}])

    out = run_import(path, "--dry-run")

    assert "1 user(s) would be created, 0 skipped" in out
    assert not User.objects.exists()
    assert not AuditLog.objects.exists()


def test_the_import_refuses_to_run_when_imported_users_could_not_log_in(tmp_path, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    path = write_csv(tmp_path, [{"username": "ana", "email": "ana@example.com", "hash": legacy_hash("x")}])

    with pytest.raises(CommandError, match="LegacyBcryptPasswordHasher is not in PASSWORD_HASHERS"):
        run_import(path)
    assert not User.objects.exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("users.txt", "username,email,hash\n", "Cannot tell the format"),
        ("users.json", "{not json", "Malformed JSON"),
        ("users.json", '{"people": []}', "Expected a JSON list"),
        ("users.csv", "username,hash\nana,x\n", "no email column"),
    ],
)
def test_unreadable_files_stop_with_a_clear_error(tmp_path, fast_hashers, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        run_import(path)


def test_a_missing_file_is_a_clear_error(tmp_path, fast_hashers):
    with pytest.raises(CommandError, match="No such file"):
        run_import(tmp_path / "nope.csv")
