"""`manage.py import_users FILE`: carry users over from the older HOMEPOT database.

FILE is CSV (with a header row) or JSON (a list of objects, or {"users": [...]}), chosen by
its extension or --format. Each user has `username`, `email`, `hash` (the old
`hashed_password` column is accepted too: a raw bcrypt string such as `$2b$12$...`), and
optionally `is_admin` (default false) and `is_active` (default true).

Imported users log in with their old password; Django re-hashes it in its own format
(bcrypt_sha256) at the first successful login. Admins in the file become administrators.

Safe to run again: a user whose username or email already exists (compared without
regard to case) is skipped and reported, as is every row with a missing field, a malformed
hash or email, or a duplicate earlier in the same file. Each created user is one
`user.created` audit row (see accounts.services.user_import for why one per user).
`--dry-run` checks everything and creates nothing.
"""

import csv
import json
from collections import Counter
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError, transaction

from accounts import services
from accounts.hashers import LegacyBcryptPasswordHasher
from accounts.models import User

REQUIRED = ("username", "email", "hash")
HASH_ALIASES = ("hash", "hashed_password", "password_hash")
_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n", ""}


class Skip(Exception):
    """This row is not imported; `reason` says why, `kind` groups it in the summary."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _DryRun(Exception):
    pass


def _flag(row: dict, name: str, default: bool) -> bool:
    value = row.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        text = value.strip().lower()
        return default if text == "" else text in _TRUE
    raise Skip("invalid value", f"{name} must be true or false, got {value!r}")


def _text(row: dict, name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Skip("invalid value", f"{name} must be text, got {value!r}")
    return value.strip()


class Command(BaseCommand):
    help = "Import users (username, email, bcrypt hash, is_admin, is_active) from a CSV or JSON file."

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="A .csv or .json file.")
        parser.add_argument("--format", choices=["csv", "json"], help="Default: from the file's extension.")
        parser.add_argument("--dry-run", action="store_true", help="Check every row; create nothing.")

    def handle(self, *args, **options):
        path: Path = options["file"]
        self._check_hasher_configured()
        rows = self._read(path, options["format"] or path.suffix.lstrip(".").lower())
        created, skipped = [], []
        seen: dict[str, str] = {}
        try:
            with transaction.atomic():
                for label, row in rows:
                    try:
                        user = self._import_row(row, label, seen, source=path.name)
                    except Skip as skip:
                        skipped.append((label, row, skip))
                        self.stdout.write(f"  skipped {label}{self._who(row)}: {skip.reason}")
                    else:
                        created.append(user)
                        if options["verbosity"] >= 2:
                            self.stdout.write(f"  created {user.get_username()}")
                if options["dry_run"]:
                    raise _DryRun
        except _DryRun:
            pass
        self._summary(path, created, skipped, options["dry_run"])

    # --- reading --------------------------------------------------------------------------

    @staticmethod
    def _check_hasher_configured() -> None:
        dotted = f"{LegacyBcryptPasswordHasher.__module__}.{LegacyBcryptPasswordHasher.__name__}"
        if dotted not in settings.PASSWORD_HASHERS:
            raise CommandError(
                f"{dotted} is not in PASSWORD_HASHERS, so imported users could not log in. "
                "Add it (after the preferred hashers) and run the import again."
            )

    def _read(self, path: Path, fmt: str) -> list[tuple[str, dict]]:
        if fmt not in ("csv", "json"):
            raise CommandError(
                f"Cannot tell the format of {path.name}; use a .csv or .json file, or --format."
            )
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise CommandError(f"No such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from None
        return self._read_csv(text) if fmt == "csv" else self._read_json(text)

    @staticmethod
    def _normalise_keys(row: dict) -> dict:
        row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        for alias in HASH_ALIASES:
            if alias in row and row.get("hash") in (None, ""):
                row["hash"] = row[alias]
        return row

    def _read_csv(self, text: str) -> list[tuple[str, dict]]:
        reader = csv.DictReader(text.splitlines())
        header = {(name or "").strip().lower() for name in reader.fieldnames or []}
        missing = [
            name
            for name in REQUIRED
            if name not in header and not (name == "hash" and header & set(HASH_ALIASES))
        ]
        if missing:
            found = ", ".join(sorted(header)) or "none"
            raise CommandError(f"The CSV header has no {', '.join(missing)} column (found: {found}).")
        rows = []
        try:
            for row in reader:
                rows.append((f"line {reader.line_num}", self._normalise_keys(row)))
        except csv.Error as exc:
            raise CommandError(f"Malformed CSV at line {reader.line_num}: {exc}") from None
        return rows

    def _read_json(self, text: str) -> list[tuple[str, dict]]:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"Malformed JSON: {exc}") from None
        if isinstance(data, dict) and isinstance(data.get("users"), list):
            data = data["users"]
        if not isinstance(data, list):
            raise CommandError('Expected a JSON list of users (or {"users": [...]}).')
        return [
            (f"item {index}", self._normalise_keys(item) if isinstance(item, dict) else {"_not_object": item})
            for index, item in enumerate(data, start=1)
        ]

    # --- importing ------------------------------------------------------------------------

    def _import_row(self, row: dict, label: str, seen: dict[str, str], *, source: str) -> User:
        if "_not_object" in row:
            raise Skip("invalid value", "not a JSON object")
        values = {name: _text(row, name) for name in REQUIRED}
        missing = [name for name in REQUIRED if not values[name]]
        if missing:
            raise Skip("missing field", f"missing {', '.join(missing)}")
        is_admin = _flag(row, "is_admin", False)
        is_active = _flag(row, "is_active", True)

        # Earlier rows of this file first: "already exists" would hide that the file itself
        # names the same person twice.
        for key in (f"username:{values['username'].lower()}", f"email:{values['email'].lower()}"):
            if key in seen:
                raise Skip("duplicate in file", f"{key.split(':')[0]} repeats {seen[key]}")
        existing = self._existing(values["username"], values["email"])
        if existing:
            raise Skip("already exists", existing)

        try:
            with transaction.atomic():
                user = services.user_import(
                    username=values["username"],
                    email=values["email"],
                    legacy_hash=values["hash"],
                    is_admin=is_admin,
                    is_active=is_active,
                    source=source,
                )
        except ValidationError as exc:
            codes = {error.code for errors in exc.error_dict.values() for error in errors}
            kind = (
                "bad hash"
                if "hash" in exc.error_dict
                else "already exists"
                if "unique" in codes
                else "invalid value"
            )
            raise Skip(kind, self._describe(exc)) from None
        except IntegrityError:
            # Someone created the same user between our check and the insert.
            raise Skip("already exists", "created by someone else meanwhile") from None
        for key in (f"username:{values['username'].lower()}", f"email:{values['email'].lower()}"):
            seen[key] = label
        return user

    @staticmethod
    def _existing(username: str, email: str) -> str:
        if User.objects.filter(username__iexact=username).exists():
            return f"a user named {username!r} already exists"
        if User.objects.filter(email__iexact=email).exists():
            return f"email {email!r} is already used by another user"
        return ""

    @staticmethod
    def _describe(exc: ValidationError) -> str:
        return "; ".join(
            f"{'record' if field == '__all__' else field}: {' '.join(messages)}"
            for field, messages in exc.message_dict.items()
        )

    @staticmethod
    def _who(row: dict) -> str:
        name = row.get("username")
        return f" ({name})" if isinstance(name, str) and name.strip() else ""

    def _summary(self, path: Path, created: list, skipped: list, dry_run: bool) -> None:
        verb = "would be created" if dry_run else "created"
        line = f"{path.name}: {len(created)} user(s) {verb}, {len(skipped)} skipped"
        if skipped:
            kinds = Counter(skip.kind for _, _, skip in skipped)
            line += " (" + ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) + ")"
        self.stdout.write(self.style.SUCCESS(line + ".") if not skipped else self.style.WARNING(line + "."))
        if dry_run:
            self.stdout.write("Dry run: nothing was saved.")
