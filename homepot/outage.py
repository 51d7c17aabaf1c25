"""PostgreSQL away: answer 503 with Retry-After, never 500.

A request that cannot reach the database (refused, reset, closed under it, the server
shutting down or out of connection slots) is not a bug in HOMEPOT and will work again by
itself: the client is told so, with `Retry-After`, in the API's JSON error shape on API
paths and as a plain page elsewhere (the admin). Nothing was acknowledged, so nothing is
lost: the client repeats the request.

Three doors, one rule (`database_unavailable`):
- DRF views, including authentication, which runs inside the view: the API's exception
  handler (homepot.api.errors);
- plain Django views (the heartbeat's fast path, the admin): `DatabaseUnavailableMiddleware`
  (process_exception);
- middleware (the session loaded or saved outside any view): Django turns the exception
  into the 500 handler, `homepot.views.server_error`, which asks the same question.

Only connection-level failures qualify. A query the server refused (bad SQL, bad data, a
deadlock, a statement timeout) stays a 4xx/500 and is logged as the bug it is.

The connection a failure leaves behind is dropped by Django at the end of the request
(`errors_occurred` makes it run the full health check), and one the server closed while
idle is caught by the per-request health check (homepot/db/postgresql), so the first
request after the database is back gets a fresh connection.
"""

import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

# SQLSTATEs that name the server's state, not the statement: class 08 (connection
# exception), admin/crash shutdown and "starting up" (57P01-57P03), no free connection slot
# (53300, 53400 is the per-role/database form).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08",)
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "53400"}

API_CODE = "database_unavailable"
API_MESSAGE = "The database is briefly unavailable; try again shortly."


def retry_after_seconds() -> int:
    return settings.HOMEPOT_OUTAGE_RETRY_AFTER_SECONDS


def database_unavailable(exc: BaseException | None) -> bool:
    """Whether `exc` says the database cannot be reached (not that a query was wrong).

    psycopg reports a connection it cannot make or has lost ("connection failed",
    "server closed the connection unexpectedly", "the connection is closed") without a
    SQLSTATE; the server itself, when it refuses or ends a session, with one of the codes
    above. Django wraps both in its OperationalError / InterfaceError.
    """
    if isinstance(exc, InterfaceError):
        # Also raised for misuse ("the cursor is closed"): only a lost connection counts.
        return _a_connection_is_lost()
    if not isinstance(exc, OperationalError):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    if sqlstate is None:
        return True
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES) or sqlstate in _UNAVAILABLE_SQLSTATES


def _a_connection_is_lost() -> bool:
    for wrapper in connections.all(initialized_only=True):
        raw = wrapper.connection
        if raw is None or getattr(raw, "closed", False):
            return True
    return False


def log_unavailable(request, exc: BaseException) -> None:
    # A warning without the traceback: during an outage every request ends here, and the
    # cause is the same for all of them.
    logger.warning("Database unavailable, answered 503: %s %s: %s", request.method, request.path, exc)


def is_api_path(request) -> bool:
    from homepot.views import is_api_path as api_path  # homepot.views imports this module

    return api_path(request.path)


def unavailable_response(request) -> HttpResponse:
    """503 with Retry-After: the JSON error shape on API paths, a plain page elsewhere."""
    status = 503
    if is_api_path(request):
        # Mirrors homepot.api.errors.error_response for requests outside a DRF view.
        response = JsonResponse(
            {"error": {"status": status, "code": API_CODE, "message": API_MESSAGE}}, status=status
        )
    else:
        response = HttpResponse(
            "<!doctype html><title>Service unavailable</title><h1>Service unavailable</h1>"
            "<p>HOMEPOT cannot reach its database right now. Try again in a moment.</p>",
            status=status,
        )
    response["Retry-After"] = str(retry_after_seconds())
    return response


class DatabaseUnavailableMiddleware:
    """503 instead of 500 for a plain Django view that could not reach the database."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not database_unavailable(exception):
            return None  # Django's usual handling: a real error is a 500, logged
        log_unavailable(request, exception)
        return unavailable_response(request)
