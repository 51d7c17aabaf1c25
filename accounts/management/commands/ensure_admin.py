"""`manage.py ensure_admin`: make sure the demo administrator exists and say how to log in.

Safe to run again and again (scripts/run.sh runs it on every start):
- the account is created once, as an active superuser; a later run keeps it as it is;
- the password comes from `--password`, else `HOMEPOT_ADMIN_PASSWORD`, else it is generated
  once and kept in `var/admin-credentials.txt` (mode 600, never committed), so every run
  prints the same credentials;
- a password the command did not generate itself is never printed, and a stored one is
  printed only while it still opens the account;
- `--reset-password` replaces the password with a newly generated one, kept and printed like
  the first (the way back in when the password is not known any more);
- `--with-token` prints an API bearer token with a ready-to-paste curl line; the token is
  kept in the credentials file and reused while it is valid, so re-runs don't pile up tokens.
"""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from accounts.models import ApiToken, User
from accounts.services import api_token_issue, user_create, user_update

PASSWORD_ENV_VAR = "HOMEPOT_ADMIN_PASSWORD"  # noqa: S105 (the variable's name, not a password)
TOKEN_NAME = "ensure_admin"  # noqa: S105 (a label, not a secret)


def default_credentials_file() -> Path:
    return Path(settings.BASE_DIR) / "var" / "admin-credentials.txt"


@dataclass
class StoredCredentials:
    """What an earlier run generated: the account's username, its password and a token."""

    username: str = ""
    password: str = ""
    token: str = ""

    @classmethod
    def read(cls, path: Path) -> "StoredCredentials":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return cls()
        values = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
        return cls(
            username=values.get("username", ""),
            password=values.get("password", ""),
            token=values.get("token", ""),
        )

    def write(self, path: Path) -> None:
        """Replace the file, readable by its owner only from the first byte on."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = (
            "# HOMEPOT demo administrator, written by `manage.py ensure_admin`. Keep it private.\n"
            f"username={self.username}\npassword={self.password}\ntoken={self.token}\n"
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.chmod(tmp, 0o600)  # in case the file existed with wider permissions
        os.replace(tmp, path)


class Command(BaseCommand):
    help = (
        "Create the demo administrator if it does not exist (idempotent) and print how to log in. "
        f"Password: --password, else ${PASSWORD_ENV_VAR}, else generated once and kept in "
        "var/admin-credentials.txt."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="Default: admin.")
        parser.add_argument(
            "--email",
            default="admin@example.com",
            help="Used when the account is created. Default: admin@example.com.",
        )
        parser.add_argument(
            "--password",
            help=f"Set this password (also on an existing account). Default: ${PASSWORD_ENV_VAR}, "
            "else a generated one.",
        )
        parser.add_argument(
            "--reset-password",
            action="store_true",
            help="Replace the password with a newly generated one, kept in the credentials file and "
            "printed (when it is not known any more).",
        )
        parser.add_argument(
            "--with-token", action="store_true", help="Also print an API token and a curl example."
        )
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Where the server answers, for the printed links. Default: http://127.0.0.1:8000.",
        )
        parser.add_argument(
            "--credentials-file",
            type=Path,
            default=None,
            help="Where generated credentials are kept. Default: var/admin-credentials.txt.",
        )

    def handle(self, *args, **options):
        username = options["username"].strip()
        if not username:
            raise CommandError("--username must not be empty.")
        path = options["credentials_file"] or default_credentials_file()
        if options["reset_password"] and options["password"]:
            raise CommandError("Give --password or --reset-password, not both.")
        given_password, given_from = self._given_password(options)
        if options["reset_password"]:
            given_password, given_from = None, ""
        stored = StoredCredentials.read(path)
        if stored.username.lower() != username.lower():
            stored = StoredCredentials(username=username)
        if options["reset_password"]:
            # Kept before the account changes, so a failure later cannot lose it; from here
            # on it is a password this command generated, set and printed like the first.
            stored.password = self._generate_password()
            stored.write(path)
            given_password = stored.password

        # No transaction around these steps: each service call is its own, and bcrypt (a
        # quarter second per hash or check) runs outside any, so a pooler's idle-in-transaction
        # timeout cannot end one on a loaded host. A concurrent run that creates the account
        # first makes this one keep it.
        user = User.objects.filter(username__iexact=username).first()
        if user is None:
            password = given_password or stored.password or self._generate_password()
            if given_password is None:
                # Kept before the account exists, so a failure later cannot lose it.
                stored.password = password
                stored.write(path)
            user, outcome = self._create_admin(username, options["email"], password), "created"
            if user is None:
                user = User.objects.get(username__iexact=username)
                outcome = self._keep_admin(user, given_password)
        else:
            outcome = self._keep_admin(user, given_password)

        # Show only a password this command generated, and only while it still opens the
        # account (someone may have changed it in the admin since).
        shown_password = None
        generated = given_password is None or options["reset_password"]
        if generated and stored.password and user.check_password(stored.password):
            shown_password = stored.password

        token = self._token(user, stored, path) if options["with_token"] else None
        self._report(user, outcome, shown_password, given_from, path, options["base_url"], token)
        if options["reset_password"]:
            self.stdout.write("  (the password was reset; the old one no longer works)")

    # --- steps --------------------------------------------------------------------------

    @staticmethod
    def _given_password(options) -> tuple[str | None, str]:
        if options["password"]:
            return options["password"], "--password"
        if os.environ.get(PASSWORD_ENV_VAR):
            return os.environ[PASSWORD_ENV_VAR], f"${PASSWORD_ENV_VAR}"
        return None, ""

    @staticmethod
    def _generate_password() -> str:
        # 16 URL-safe characters (96 bits): easy to copy from a terminal, hopeless to guess.
        return secrets.token_urlsafe(12)

    @staticmethod
    def _refusal(exc: ValidationError) -> CommandError:
        problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
        return CommandError(f"The admin account was not saved: {problems}")

    def _create_admin(self, username: str, email: str, password: str) -> User | None:
        """A new active superuser (audited as user.created by the accounts service), or None
        when another run created the account meanwhile."""
        try:
            return user_create(actor=None, username=username, email=email, password=password, is_admin=True)
        except ValidationError as exc:
            taken = [e.code for e in exc.error_dict.get("username", [])] == ["unique"]
            if taken and User.objects.filter(username__iexact=username).exists():
                return None
            raise self._refusal(exc) from None
        except IntegrityError:
            # Both runs passed the uniqueness check; the database let only one in.
            if User.objects.filter(username__iexact=username).exists():
                return None
            raise

    def _keep_admin(self, user: User, password: str | None) -> str:
        """Keep an existing account usable as the admin: active superuser staff, with the
        given password if one was given. Changes (and audits) nothing when it already is."""
        wanted = {
            name: True
            for name, holds in (
                ("is_active", user.is_active),
                ("is_staff", user.is_staff),
                ("is_admin", user.is_superuser),
            )
            if not holds
        }
        if password is not None and not user.check_password(password):
            wanted["password"] = password
        if not wanted:
            return "kept"
        try:
            user_update(actor=None, user=user, **wanted)
        except ValidationError as exc:
            raise self._refusal(exc) from None
        user.refresh_from_db()
        return "updated"

    @staticmethod
    def _token(user: User, stored: StoredCredentials, path: Path) -> str:
        """The kept token while it still works for this user, else a newly issued one."""
        if stored.token:
            token = ApiToken.objects.filter(key_hash=ApiToken.hash_key(stored.token), user=user).first()
            if token is not None and token.is_usable:
                return stored.token
        _, raw_key = api_token_issue(user=user, name=TOKEN_NAME)
        stored.username = user.get_username()
        stored.token = raw_key
        stored.write(path)
        return raw_key

    def _report(self, user, outcome, password, given_from, path, base_url, token) -> None:
        base_url = base_url.rstrip("/")
        out = self.stdout
        out.write(self.style.SUCCESS(f"Admin account {user.get_username()!r} {outcome}."))
        out.write(f"  log in at : {base_url}/admin/")
        out.write(f"  username  : {user.get_username()}")
        if password:
            out.write(f"  password  : {password}   (kept in {path})")
        elif given_from:
            out.write(f"  password  : the one given in {given_from}")
        else:
            # Someone chose this password (in the console, with changepassword, or an earlier
            # --password); it is not stored anywhere, so say how to get in anyway.
            out.write("  password  : the one chosen for this account (not stored, so not shown).")
            indent = " " * 14
            out.write(f"{indent}Forgot it? Print a new one: python manage.py ensure_admin --reset-password")
            out.write(f"{indent}or choose it: python manage.py changepassword {user.get_username()}")
        if token:
            out.write(f"  API token : {token}   (kept in {path})")
            out.write("  try it    :")
            out.write(f"    export TOKEN={token}")
            out.write(f'    curl -H "Authorization: Bearer $TOKEN" {base_url}/sites')
