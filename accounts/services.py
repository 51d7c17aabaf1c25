"""Writes of the accounts app: users, signup and login, site memberships, API tokens.

Every change is validated, permission-checked and audited (one row) in one transaction.
"""

import datetime
import secrets

from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.hashers import identify_hasher, make_password
from django.contrib.auth.models import update_last_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q
from django.utils import timezone

from accounts import selectors, throttling
from accounts.hashers import LegacyBcryptPasswordHasher, is_legacy_bcrypt_hash
from accounts.models import ApiToken, SiteMembership, User
from homepot.errors import Conflict, ServiceError
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic, changes, lock_for_change, snapshot

TOKEN_PREFIX = "hp_"  # noqa: S105 (a public prefix, not a secret)


def _token_create(*, user: User, name: str, ttl_days: int | None) -> tuple[ApiToken, str]:
    """Insert a token row (unaudited: each caller records the event it stands for)."""
    ttl_days = settings.HOMEPOT_API_TOKEN_TTL_DAYS if ttl_days is None else ttl_days
    raw_key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_prefix=raw_key[:10],
        key_hash=ApiToken.hash_key(raw_key),
        expires_at=timezone.now() + datetime.timedelta(days=ttl_days) if ttl_days else None,
    )
    return token, raw_key


@audited_atomic()
def api_token_issue(*, user: User, name: str = "", ttl_days: int | None = None) -> tuple[ApiToken, str]:
    """Create a token for `user` and return it with its secret, which is shown only now.

    `ttl_days=None` uses HOMEPOT_API_TOKEN_TTL_DAYS; 0 means the token never expires.
    Audited as token.issued. Each call issues a new token.
    """
    token, raw_key = _token_create(user=user, name=name, ttl_days=ttl_days)
    audit_record(
        event_type=AuditEvent.TOKEN_ISSUED,
        actor=user,
        description=f"API token {token.key_prefix}… issued to {user.get_username()}",
        new_values={"name": name, "expires_at": token.expires_at.isoformat() if token.expires_at else None},
    )
    return token, raw_key


def api_token_authenticate(raw_key: str) -> ApiToken | None:
    """The usable token behind `raw_key`, with its user, or None. One indexed lookup."""
    token = selectors.api_token_with_user(ApiToken.hash_key(raw_key))
    if token is None or not token.is_usable or not token.user.is_active:
        return None
    now = timezone.now()
    # Record use at most once a minute so busy integrations do not write on every request.
    if token.last_used_at is None or now - token.last_used_at > datetime.timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


@audited_atomic()
def api_token_revoke(*, actor, token: ApiToken, reason: str = "revoked") -> bool:
    """Revoke `token` now; its owner or an admin may (`actor=None` is the system).

    Audited as token.revoked. Safe to repeat: revoking a revoked token changes nothing,
    records nothing and returns False.
    """
    if actor is not None and actor.pk != token.user_id and not _is_admin(actor):
        raise PermissionDenied("You may revoke only your own API tokens.")
    now = timezone.now()
    if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        return False
    token.revoked_at = now
    audit_record(
        event_type=AuditEvent.TOKEN_REVOKED,
        actor=actor,
        description=f"API token {token.key_prefix}… of {token.user.get_username()} {reason}",
        old_values={"revoked_at": None},
        new_values={"token": token.key_prefix, "user": token.user_id, "revoked_at": now.isoformat()},
    )
    return True


# --- Users -----------------------------------------------------------------------------

# What the audit trail records of a user (never the password hash).
USER_AUDITED_FIELDS = (
    "username",
    "email",
    "first_name",
    "last_name",
    "is_active",
    "is_staff",
    "is_superuser",
)
USER_UPDATABLE_FIELDS = frozenset(
    {"username", "email", "first_name", "last_name", "is_active", "is_staff", "is_admin", "password"}
)


class InvalidCredentials(ServiceError):
    """A login named no active account with that password. Deliberately says no more."""

    status_code = 401
    code = "invalid_credentials"


def _is_admin(actor) -> bool:
    return bool(actor is not None and actor.is_authenticated and actor.is_active and actor.is_superuser)


def _require_admin(actor, what: str) -> None:
    """Refuse unless `actor` is an admin; `actor=None` is the system (commands) and may."""
    if actor is not None and not _is_admin(actor):
        raise PermissionDenied(f"Only administrators may {what}.")


def _normalize_email(email: str) -> str:
    return User.objects.normalize_email((email or "").strip()).lower()


def _identity_errors(user: User) -> dict[str, list[ValidationError]]:
    """Usernames and emails are unique without regard to case, and neither may equal another
    account's other one: a login accepts either, so they must name one account."""
    others = User.objects.exclude(pk=user.pk) if user.pk else User.objects.all()
    errors = {}
    username, email = user.username, user.email
    if username and others.filter(Q(username__iexact=username) | Q(email__iexact=username)).exists():
        errors["username"] = [ValidationError("A user with this username already exists.", code="unique")]
    if email and others.filter(Q(email__iexact=email) | Q(username__iexact=email)).exists():
        errors["email"] = [ValidationError("A user with this email address already exists.", code="unique")]
    return errors


def _validate_user(user: User, *, password: str | None) -> None:
    """Field checks, uniqueness and Django's password validators, reported together (a
    ValidationError naming each field; duplicates carry code "unique", which the API answers
    with 409)."""
    errors: dict[str, list[ValidationError]] = {}
    try:
        # Uniqueness is checked below, per field and without regard to case.
        user.full_clean(exclude=["password"], validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        for field, field_errors in exc.error_dict.items():
            errors.setdefault(field, []).extend(field_errors)
    for field, field_errors in _identity_errors(user).items():
        errors.setdefault(field, []).extend(field_errors)
    if password is not None:
        try:
            password_validation.validate_password(password, user)
        except ValidationError as exc:
            errors["password"] = exc.error_list
    if errors:
        raise ValidationError(errors)


def _user_insert(*, password: str | None, password_hash: str | None = None, **fields) -> User:
    """Validate and save a new user (not audited: each door records its own user.created).
    `password` is checked by the validators and hashed; `password_hash` is stored as given."""
    # Hashed before the first query: bcrypt's quarter second must not hold a transaction
    # open (PgBouncer ends one idle for idle_transaction_timeout).
    if password is not None:
        password_hash = make_password(password)
    user = User(**fields)
    user.email = _normalize_email(user.email)
    user.username = (user.username or "").strip()
    _validate_user(user, password=password)
    if password_hash is not None:
        user.password = password_hash
    else:
        user.set_unusable_password()
    user.save()
    return user


def _audit_user_created(user: User, *, actor, description: str) -> None:
    audit_record(
        event_type=AuditEvent.USER_CREATED,
        actor=actor,
        description=description,
        new_values=snapshot(user, USER_AUDITED_FIELDS),
    )


def _kind(is_admin: bool) -> str:
    return "Administrator" if is_admin else "User"


@audited_atomic()
def user_signup(*, actor, username: str, email: str, password: str, is_admin: bool = False) -> User:
    """Create an account through the signup door. Audited as user.created (the actor is the
    admin who used the door, or the new user themselves).

    Anyone may sign up while HOMEPOT_ACCOUNTS_OPEN_SIGNUP is on (the default); when it is off
    only admins may. Only an admin may create an admin; anyone else asking is refused
    (PermissionDenied) and nothing is created. New accounts are not staff and hold no site
    memberships. Raises ValidationError for bad, weak or duplicate values. Not idempotent.
    """
    caller_is_admin = _is_admin(actor)
    if is_admin and not caller_is_admin:
        raise PermissionDenied(
            "Only an administrator can create an administrator account (is_admin: true). "
            "Sign up without is_admin, or ask an administrator."
        )
    if not caller_is_admin and not getattr(settings, "HOMEPOT_ACCOUNTS_OPEN_SIGNUP", True):
        raise PermissionDenied(
            "Open signup is turned off on this server; ask an administrator to create your account."
        )
    user = _user_insert(
        password=password,
        username=username,
        email=email,
        is_superuser=bool(is_admin),
        is_staff=bool(is_admin),
    )
    how = f"by {actor.get_username()} through signup" if caller_is_admin else "through signup"
    _audit_user_created(
        user,
        actor=actor if caller_is_admin else user,
        description=f"{_kind(is_admin)} {user.get_username()} created {how}",
    )
    return user


@audited_atomic()
def user_create(
    *,
    actor,
    username: str,
    email: str,
    password: str | None = None,
    is_admin: bool = False,
    is_staff: bool = False,
    is_active: bool = True,
    first_name: str = "",
    last_name: str = "",
) -> User:
    """Create a user (admins only; `actor=None` is the system). Admins are always staff.

    Without a password the account cannot log in until one is set. Audited as user.created.
    Raises ValidationError for bad, weak or duplicate values. Not idempotent.
    """
    _require_admin(actor, "create users")
    user = _user_insert(
        password=password,
        username=username,
        email=email,
        first_name=first_name,
        last_name=last_name,
        is_active=is_active,
        is_superuser=is_admin,
        is_staff=is_admin or is_staff,
    )
    by = f" by {actor.get_username()}" if actor is not None else ""
    _audit_user_created(user, actor=actor, description=f"{_kind(is_admin)} {user.get_username()} created{by}")
    return user


@audited_atomic()
def user_import(
    *,
    username: str,
    email: str,
    legacy_hash: str,
    is_admin: bool = False,
    is_active: bool = True,
    source: str = "",
) -> User:
    """Create a user carried over from the older HOMEPOT database, keeping their raw bcrypt
    hash (`$2b$12$...`) so their old password works; Django re-hashes it in its own format
    at the first successful login (accounts.hashers). The system acts (management command).

    Audited as user.created, one row per user. Raises ValidationError for a malformed hash
    or bad or duplicate values, so a caller can skip the row and say why. Not idempotent
    by itself: a second import of the same user fails as a duplicate.
    """
    if not is_legacy_bcrypt_hash(legacy_hash):
        raise ValidationError(
            {"hash": ["Not a bcrypt hash: expected $2a$, $2b$ or $2y$, a cost of 04-31 and 53 characters."]}
        )
    user = _user_insert(
        password=None,
        password_hash=LegacyBcryptPasswordHasher.from_raw(legacy_hash),
        username=username,
        email=email,
        is_active=is_active,
        is_superuser=is_admin,
        is_staff=is_admin,
    )
    origin = f"the older HOMEPOT database ({source})" if source else "the older HOMEPOT database"
    _audit_user_created(
        user, actor=None, description=f"{_kind(is_admin)} {user.get_username()} imported from {origin}"
    )
    return user


@audited_atomic()
def user_update(*, actor, user: User, **fields) -> User:
    """Change the given fields of `user` (admins only). `is_admin` sets superuser (and staff
    when granted); `password` is validated and hashed.

    Deactivating a user or setting their password revokes their API tokens, so a leaked
    token dies with the change. Nobody may deactivate or demote themselves (the last admin
    could lock everyone out). Audited as user.updated with only what changed (a password
    change appears as "(changed)", never as a hash); a repeat changes and records nothing.
    """
    _require_admin(actor, "change users")
    unknown = set(fields) - USER_UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"user_update cannot change {sorted(unknown)}")
    # Hashed before the row lock, the transaction's first query (see _user_insert).
    password_hash = make_password(fields["password"]) if fields.get("password") is not None else None
    user = lock_for_change(User, user.pk)
    if actor is not None and actor.pk == user.pk:
        for field, value in (("is_active", fields.get("is_active")), ("is_admin", fields.get("is_admin"))):
            if value is False:
                raise ServiceError(
                    "You cannot deactivate or demote your own account; ask another administrator.",
                    field=field,
                    code="self_lockout",
                )
    before = snapshot(user, USER_AUDITED_FIELDS)
    password = fields.pop("password", None)
    is_admin = fields.pop("is_admin", None)
    for name, value in fields.items():
        setattr(user, name, value)
    if is_admin is not None:
        user.is_superuser = is_admin
        user.is_staff = user.is_staff or is_admin
    if "email" in fields:
        user.email = _normalize_email(user.email)
    _validate_user(user, password=password)
    old, new = changes(before, snapshot(user, USER_AUDITED_FIELDS))
    if password is not None:
        user.password = password_hash
        old["password"], new["password"] = "(previous)", "(changed)"
    if not new:
        return user
    user.save()
    revoked = 0
    if (before["is_active"] and not user.is_active) or password is not None:
        revoked = ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    by = f" by {actor.get_username()}" if actor is not None else ""
    tokens = f"; {revoked} API token(s) revoked" if revoked else ""
    audit_record(
        event_type=AuditEvent.USER_UPDATED,
        actor=actor,
        description=f"User {user.get_username()} updated{by}: {', '.join(new)}{tokens}",
        old_values=old,
        new_values=new,
    )
    return user


def user_deactivate(*, actor, user: User) -> User:
    """Switch the account off (admins only): no login, no token works. Its history stays.
    Audited as user.updated; deactivating an inactive user records nothing."""
    return user_update(actor=actor, user=user, is_active=False)


def _hash_algorithm(encoded: str) -> str | None:
    try:
        return identify_hasher(encoded).algorithm
    except ValueError:
        return None


def _audit_login_failed(identifier: str, *, known_account: bool, door: str, reason: str) -> None:
    audit_record(
        event_type=AuditEvent.USER_LOGIN_FAILED,
        description=f"Failed login for {identifier[:150]!r} ({door}: {reason})",
        new_values={
            "identifier": identifier[:150],
            "known_account": known_account,
            "door": door,
            "reason": reason,
        },
    )


def user_authenticate(*, request, identifier: str, password: str, door: str) -> User:
    """THE login rule, shared by every door (the API's token login, the admin's login page):
    count the attempt against the per-address and per-account limits
    (accounts.throttling.enforce_login: the same Redis counters whichever door is used),
    then check the username-or-email and password. Inactive users are refused like wrong
    passwords.

    Raises TooManyAttempts past a limit (the first refused attempt of a window is audited as
    user.login_failed, reason "locked out"; later ones only logged, so a flood cannot
    swamp the audit chain's one-at-a-time writer), or InvalidCredentials (audited as
    user.login_failed: no actor, the attempted name). The caller audits the success, which
    differs by door. Not atomic on purpose: the failure's audit row stays although the
    request fails. Every call counts against the limits.

    A correct password stored with an outdated hasher (a legacy bcrypt import) is re-hashed
    in the preferred format by Django during the check; `user._rehashed_from` names it.
    """
    identifier = (identifier or "").strip()
    try:
        throttling.enforce_login(request, selectors.login_account_key(identifier))
    except throttling.TooManyAttempts as exc:
        if exc.lockout_starts:
            _audit_login_failed(
                identifier,
                known_account=selectors.user_for_login(identifier) is not None,
                door=door,
                reason="locked out",
            )
        raise
    candidate = selectors.user_for_login(identifier)
    previous_algorithm = _hash_algorithm(candidate.password) if candidate is not None else None
    # The backend does the password check, the is_active rule and, for unknown names, a
    # dummy hash so that response times do not reveal which accounts exist.
    user = authenticate(
        request, username=candidate.get_username() if candidate else identifier, password=password
    )
    if user is None:
        _audit_login_failed(
            identifier, known_account=candidate is not None, door=door, reason="invalid credentials"
        )
        raise InvalidCredentials("Invalid credentials.")
    rehashed = previous_algorithm and _hash_algorithm(user.password) != previous_algorithm
    user._rehashed_from = previous_algorithm if rehashed else None
    return user


def user_login(
    *,
    request,
    identifier: str,
    password: str,
    token_name: str = "login",  # noqa: S107 (a token's label, not a secret)
) -> tuple[User, ApiToken, str]:
    """The API's door: user_authenticate (limits, password, failure audit), then a fresh
    API token (secret returned only now). Audited as user.login naming the token. Each
    success issues a new token.
    """
    user = user_authenticate(request=request, identifier=identifier, password=password, door="api")
    with audited_atomic():
        update_last_login(None, user)
        token, raw_key = _token_create(user=user, name=token_name, ttl_days=None)
        new_values = {
            "token": token.key_prefix,
            "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        }
        if user._rehashed_from:
            new_values["password_rehashed_from"] = user._rehashed_from
        audit_record(
            event_type=AuditEvent.USER_LOGIN,
            actor=user,
            description=f"{user.get_username()} logged in; API token {token.key_prefix}… issued",
            new_values=new_values,
        )
    return user, token, raw_key


def user_session_login_check(*, request, identifier: str, password: str, staff_only: bool) -> User:
    """The session door (the admin's login page): user_authenticate, then the console's own
    rule (accounts.selectors.may_use_console: staff, admins, or anyone with a site role)
    about who may sign in there; refused and audited like a wrong password, but with its
    reason. Audits the success as user.login; the caller starts the session.
    """
    user = user_authenticate(request=request, identifier=identifier, password=password, door="admin")
    if staff_only and not selectors.may_use_console(user):
        _audit_login_failed(identifier, known_account=True, door="admin", reason="no console access")
        raise InvalidCredentials("Invalid credentials.")
    new_values = {"session": True}
    if user._rehashed_from:
        new_values["password_rehashed_from"] = user._rehashed_from
    audit_record(
        event_type=AuditEvent.USER_LOGIN,
        actor=user,
        description=f"{user.get_username()} signed in to the operator console",
        new_values=new_values,
    )
    return user


# --- Site memberships ------------------------------------------------------------------


def _membership_values(membership: SiteMembership) -> dict:
    return {
        **snapshot(membership, ("user", "site", "role")),
        "username": membership.user.get_username(),
        "site_id": membership.site.site_id,
    }


@audited_atomic()
def membership_grant(*, actor, user: User, site, role: str) -> SiteMembership:
    """Give `user` a role on `site` (admins only). Audited as membership.granted.

    Conflict if the user already holds a role there (change that membership instead).
    """
    _require_admin(actor, "grant site roles")
    if SiteMembership.objects.filter(user=user, site=site).exists():
        raise Conflict(
            f"{user.get_username()} already has a role on {site.site_id}; change that membership instead.",
            field="site",
            code="duplicate",
        )
    membership = SiteMembership(user=user, site=site, role=role)
    membership.full_clean(validate_unique=False, validate_constraints=False)
    membership.save()
    audit_record(
        event_type=AuditEvent.MEMBERSHIP_GRANTED,
        actor=actor,
        site=site,
        description=f"{user.get_username()} granted {membership.get_role_display()} on {site.site_id}",
        new_values=_membership_values(membership),
    )
    return membership


@audited_atomic()
def membership_change(*, actor, membership: SiteMembership, role: str) -> SiteMembership:
    """Change the role of a membership (admins only). Audited as membership.changed with the
    old and new role; setting the same role changes and records nothing."""
    _require_admin(actor, "change site roles")
    membership = lock_for_change(SiteMembership.objects.select_related("user", "site"), membership.pk)
    old_role = membership.role
    membership.role = role
    membership.full_clean(validate_unique=False, validate_constraints=False)
    if role == old_role:
        return membership
    membership.save(update_fields=["role"])
    audit_record(
        event_type=AuditEvent.MEMBERSHIP_CHANGED,
        actor=actor,
        site=membership.site,
        description=(
            f"{membership.user.get_username()} on {membership.site.site_id}: {old_role} → {membership.role}"
        ),
        old_values={"role": old_role},
        new_values={"role": membership.role},
    )
    return membership


@audited_atomic()
def membership_revoke(*, actor, membership: SiteMembership) -> None:
    """Remove a user's role on a site (admins only). Audited as membership.revoked."""
    _require_admin(actor, "revoke site roles")
    membership = lock_for_change(SiteMembership.objects.select_related("user", "site"), membership.pk)
    audit_record(
        event_type=AuditEvent.MEMBERSHIP_REVOKED,
        actor=actor,
        site=membership.site,
        description=f"{membership.user.get_username()} lost {membership.role} on {membership.site.site_id}",
        old_values=_membership_values(membership),
    )
    membership.delete()
