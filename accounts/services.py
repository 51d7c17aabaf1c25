"""Writes of the accounts app: API tokens (users and memberships grow here)."""

import datetime
import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, User
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record

TOKEN_PREFIX = "hp_"  # noqa: S105 (a public prefix, not a secret)


@transaction.atomic
def api_token_issue(*, user: User, name: str = "", ttl_days: int | None = None) -> tuple[ApiToken, str]:
    """Create a token for `user` and return it with its secret, which is shown only now.

    `ttl_days=None` uses HOMEPOT_API_TOKEN_TTL_DAYS; 0 means the token never expires.
    Audited as token.issued. Each call issues a new token.
    """
    ttl_days = settings.HOMEPOT_API_TOKEN_TTL_DAYS if ttl_days is None else ttl_days
    raw_key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        key_prefix=raw_key[:10],
        key_hash=ApiToken.hash_key(raw_key),
        expires_at=timezone.now() + datetime.timedelta(days=ttl_days) if ttl_days else None,
    )
    audit_record(
        event_type=AuditEvent.TOKEN_ISSUED,
        actor=user,
        description=f"API token {token.key_prefix}… issued to {user.get_username()}",
        new_values={"name": name, "expires_at": token.expires_at.isoformat() if token.expires_at else None},
    )
    return token, raw_key


def api_token_authenticate(raw_key: str) -> ApiToken | None:
    """The usable token behind `raw_key`, with its user, or None. One indexed lookup."""
    token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.hash_key(raw_key)).first()
    if token is None or not token.is_usable or not token.user.is_active:
        return None
    now = timezone.now()
    # Record use at most once a minute so busy integrations do not write on every request.
    if token.last_used_at is None or now - token.last_used_at > datetime.timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
