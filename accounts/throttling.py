"""Rate limits for login and signup, counted in Redis so every worker shares them.

Each limit is a fixed window per key: the first attempt creates the counter with the window
as its lifetime (`SET key 0 PX window NX`), every attempt increments it (`INCR`), and the
remaining lifetime (`PTTL`) is the `Retry-After` once the count passes the limit. The three
commands of every key run in one MULTI/EXEC pipeline, so N gunicorn workers on M hosts see
one counter and one clock (Redis's), and a burst cannot slip between a read and a write.

Two counters guard each door: one per client address (someone trying many accounts) and one
per account (many addresses trying one account). Every attempt counts, successful or not:
counting only failures would need a second write after the password check, and the gap
between the two would let a parallel burst through.

When Redis cannot be reached the limiter FAILS OPEN by default: login and signup keep
working, a warning is logged for each unguarded attempt, and failed logins are still
audited. Losing the brake for the minutes of a Redis outage costs less than locking every
operator out of the fleet; bcrypt at cost 12 still slows guessing to a few attempts per
second per core. Set HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN=False to answer 503 instead.

Settings (read on every call, so tests and operators can change them):
- HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_IP (default "10/min"), HOMEPOT_ACCOUNTS_LOGIN_RATE_PER_ACCOUNT
  ("5/min"), HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_IP ("5/min"),
  HOMEPOT_ACCOUNTS_SIGNUP_RATE_PER_ACCOUNT ("3/min"): "<count>/<window>", the window one of
  s, min, h, day, optionally with a multiplier ("20/15min", "3/2s"); empty turns a limit off.
- HOMEPOT_ACCOUNTS_THROTTLE_KEY_PREFIX (default "homepot:throttle:"), REDIS_URL.
- HOMEPOT_ACCOUNTS_THROTTLE_FAIL_OPEN (default True).
"""

import hashlib
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from rest_framework import exceptions, status

from homepot.redis_clients import redis_client
from homepot.request_context import client_ip

logger = logging.getLogger(__name__)

_UNIT_MS = {
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1000),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60_000),
    **dict.fromkeys(("h", "hour", "hours"), 3_600_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000),
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    limit: int
    window_ms: int

    @classmethod
    def parse(cls, text: str | None) -> "Rate | None":
        """ "10/min" → Rate(10, 60000); empty or None → None (no limit)."""
        if not text:
            return None
        match = _RATE_RE.match(text.lower())
        if not match or match.group(3) not in _UNIT_MS:
            raise ValueError(f"Bad rate {text!r}: expected '<count>/<window>', e.g. '10/min' or '3/2s'.")
        count, multiplier, unit = int(match.group(1)), int(match.group(2) or 1), match.group(3)
        if multiplier <= 0:
            raise ValueError(f"Bad rate {text!r}: the window must be longer than zero.")
        return cls(limit=count, window_ms=multiplier * _UNIT_MS[unit])


class ThrottleUnavailable(exceptions.APIException):
    """Redis is down and the limiter is configured to fail closed."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "Sign-in is briefly unavailable; try again in a minute."
    default_code = "throttle_unavailable"


def _setting(name: str):
    # Defaults live in homepot/settings.py, the one place they are written.
    return getattr(settings, f"HOMEPOT_ACCOUNTS_{name}")


def _rate(name: str) -> Rate | None:
    try:
        return Rate.parse(_setting(name))
    except ValueError as exc:
        raise ImproperlyConfigured(f"HOMEPOT_ACCOUNTS_{name}: {exc}") from None


def _key(scope: str, identity: str) -> str:
    # Hashed, so usernames and addresses are not readable by whoever can list Redis keys.
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return f"{_setting('THROTTLE_KEY_PREFIX')}{scope}:{digest}"


def hit(counters: Iterable[tuple[str, str, Rate | None]]) -> int | None:
    """Count one attempt against each (scope, identity, rate) and return the seconds to wait
    if any counter is over its limit, else None. One round trip to Redis for all of them.

    Not idempotent: every call counts. Returns None (fail open) or raises ThrottleUnavailable
    (fail closed) when Redis cannot be reached.
    """
    return _hit(counters)[0]


def _hit(counters: Iterable[tuple[str, str, Rate | None]]) -> tuple[int | None, bool]:
    """hit(), and also whether this attempt is the first one a counter refuses in its
    window (the moment a lockout starts: audited once, not once per refused attempt)."""
    counters = [(scope, identity, rate) for scope, identity, rate in counters if rate and identity]
    if not counters:
        return None, False
    try:
        pipe = redis_client(settings.REDIS_URL, timeout=0.5).pipeline(transaction=True)
        for scope, identity, rate in counters:
            key = _key(scope, identity)
            pipe.set(key, 0, px=rate.window_ms, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
        replies = pipe.execute()
    except redis.RedisError as exc:
        if _setting("THROTTLE_FAIL_OPEN"):
            logger.warning("Rate limiter unavailable, letting the attempt through unthrottled: %s", exc)
            return None, False
        logger.error("Rate limiter unavailable, refusing the attempt (fail closed): %s", exc)
        raise ThrottleUnavailable() from exc

    wait_ms = 0
    lockout_starts = False
    for index, (_, _, rate) in enumerate(counters):
        count, ttl_ms = replies[3 * index + 1], replies[3 * index + 2]
        if count > rate.limit:
            # A key without a lifetime (-1) cannot come from this code; wait a window anyway.
            wait_ms = max(wait_ms, ttl_ms if ttl_ms > 0 else rate.window_ms)
            lockout_starts = lockout_starts or count == rate.limit + 1
    if not wait_ms:
        return None, False
    return max(1, math.ceil(wait_ms / 1000)), lockout_starts


class TooManyAttempts(exceptions.Throttled):
    """Too many login or signup attempts (429 with Retry-After in the API, a form error on the
    admin's login page). `lockout_starts` is true for the first refused attempt of a window."""

    def __init__(self, *, wait: int, detail: str, lockout_starts: bool):
        super().__init__(wait=wait, detail=detail)
        self.lockout_starts = lockout_starts


def _enforce(scope: str, request, accounts: Iterable[str], message: str) -> None:
    ip = client_ip(request)
    counters = [(f"{scope}:ip", ip or "", _rate(f"{scope.upper()}_RATE_PER_IP"))]
    account_rate = _rate(f"{scope.upper()}_RATE_PER_ACCOUNT")
    counters += [(f"{scope}:account", account, account_rate) for account in accounts]
    wait, lockout_starts = _hit(counters)
    if wait is not None:
        logger.warning("%s throttled for %s", scope, ip)
        raise TooManyAttempts(wait=wait, detail=message, lockout_starts=lockout_starts)


def enforce_login(request, account_key: str) -> None:
    """Count a login attempt for the client address and the account; raise TooManyAttempts
    (429 with Retry-After) past either limit. `account_key` identifies the account however it
    was named (see accounts.selectors.login_account_key). Every login door calls this through
    accounts.services.user_authenticate, never on its own."""
    _enforce("login", request, [account_key], "Too many login attempts.")


def enforce_signup(request, *, username: str, email: str) -> None:
    """Count a signup attempt for the client address and for the username and the email."""
    named = {"username": username, "email": email}
    accounts = [f"{kind}:{value.strip().lower()}" for kind, value in named.items() if value and value.strip()]
    _enforce("signup", request, accounts, "Too many signup attempts.")
