"""Reads of the accounts app: who a login names, what a user may reach, whose tokens one sees."""

from django.db.models import QuerySet

from accounts.models import ApiToken, SiteMembership, User
from homepot.compiled_sql import column_converter, compiled
from homepot.db import prepared


def _is_admin(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_superuser)


def may_use_console(user) -> bool:
    """Whether `user` may sign in to the operator console (the Django admin).

    Active admins and staff may; so may anyone active holding a role on at least one site,
    with no separate flag to set: granting a site manager their store is what lets them in,
    and revoking their last membership is what shuts them out. What they then see is the
    scoping rule's business. Cached on the user object, which lives for one request, so the
    admin's every permission check costs at most one EXISTS query.
    """
    if user is None or not user.is_authenticated or not user.is_active or getattr(user, "is_device", False):
        return False
    if user.is_staff or user.is_superuser:
        return True
    if not hasattr(user, "_homepot_console_access"):
        user._homepot_console_access = SiteMembership.objects.filter(user=user).exists()
    return user._homepot_console_access


def user_for_login(identifier: str) -> User | None:
    """The account a login form names, by username or email, both without regard to case.

    Something with an "@" is tried as an email first: usernames may contain "@" too, and this
    order keeps another account's username from shadowing someone's email address.
    """
    identifier = (identifier or "").strip()
    if not identifier:
        return None
    if "@" in identifier:
        user = User.objects.filter(email__iexact=identifier).first()
        if user is not None:
            return user
    return User.objects.filter(username__iexact=identifier).first()


def login_account_key(identifier: str) -> str:
    """What the per-account login limit counts: the account itself when the name resolves,
    so switching between username and email does not double the allowance."""
    user = user_for_login(identifier)
    return f"user:{user.pk}" if user is not None else f"name:{(identifier or '').strip().lower()}"


def user_site_access(user: User) -> dict:
    """What `user` may reach: every site for admins, else their sites with the role on each."""
    if _is_admin(user):
        return {"all_sites": True, "sites": []}
    memberships = SiteMembership.objects.filter(user=user).select_related("site").order_by("site__site_id")
    return {
        "all_sites": False,
        "sites": [
            {"id": m.site.pk, "site_id": m.site.site_id, "name": m.site.name, "role": m.role}
            for m in memberships
        ],
    }


def user_list(*, actor) -> QuerySet[User]:
    """Every user for admins; nobody else lists users (they see themselves through /auth/me)."""
    return User.objects.all() if _is_admin(actor) else User.objects.none()


def membership_list(*, actor) -> QuerySet[SiteMembership]:
    """Every membership for admins; nobody else may read who holds which role."""
    if not _is_admin(actor):
        return SiteMembership.objects.none()
    return SiteMembership.objects.select_related("user", "site")


def api_token_list(*, actor, user: User | None = None) -> QuerySet[ApiToken]:
    """`user`'s tokens (default: the actor's own), newest first. Only admins see another
    user's tokens; for anyone else that answer is empty."""
    owner = user if user is not None else actor
    if not actor.is_authenticated or (owner.pk != actor.pk and not _is_admin(actor)):
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user=owner).order_by("-created_at", "-id")


def api_token_for_actor(*, actor, pk) -> ApiToken:
    """The token `pk` if `actor` owns it or is an admin; ApiToken.DoesNotExist otherwise, so
    other people's tokens look exactly like missing ones."""
    tokens = ApiToken.objects.select_related("user")
    if not _is_admin(actor):
        tokens = tokens.filter(user=actor)
    return tokens.get(pk=pk)


def api_token_with_user(key_hash: str) -> ApiToken | None:
    """The token whose hash is `key_hash`, its user attached, or None: one indexed lookup.

    What `ApiToken.objects.select_related("user").filter(key_hash=...).first()` answers,
    from SQL written once per process: building and compiling that query on every
    authenticated request was a fifth of the device list's CPU (docs/performance.md).
    Every column of both rows, through Django's converters, so the instances are the ORM's.
    """
    from django.db import connections, router

    using = router.db_for_read(ApiToken)
    plan = compiled(("accounts.api_token_with_user",), using, _build_token_plan)
    with connections[using].cursor() as cursor:
        prepared.execute(cursor, plan.sql, [key_hash])  # planned once per connection
        row = cursor.fetchone()
    if row is None:
        return None
    values = [convert(value) for convert, value in zip(plan.converters, row, strict=True)]
    split = len(plan.token_names)
    token = ApiToken.from_db(using, plan.token_names, values[:split])
    user = User.from_db(using, plan.user_names, values[split:])
    ApiToken._meta.get_field("user").set_cached_value(token, user)
    return token


class _TokenPlan:
    __slots__ = ("converters", "sql", "token_names", "user_names")


def _build_token_plan(connection) -> _TokenPlan:
    quote = connection.ops.quote_name
    token_fields = ApiToken._meta.concrete_fields
    user_fields = User._meta.concrete_fields
    columns = [f"t.{quote(f.column)}" for f in token_fields] + [f"u.{quote(f.column)}" for f in user_fields]
    plan = _TokenPlan()
    plan.sql = (
        f"SELECT {', '.join(columns)} FROM {quote(ApiToken._meta.db_table)} t "  # noqa: S608 - model metadata, quoted
        f"INNER JOIN {quote(User._meta.db_table)} u "
        f"ON u.{quote(User._meta.pk.column)} = t.{quote(ApiToken._meta.get_field('user').column)} "
        f"WHERE t.{quote(ApiToken._meta.get_field('key_hash').column)} = %s"
    )
    plan.token_names = [f.attname for f in token_fields]
    plan.user_names = [f.attname for f in user_fields]
    plan.converters = [column_converter(field, connection) for field in (*token_fields, *user_fields)]
    return plan
