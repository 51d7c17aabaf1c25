"""Site-wide plain Django views: the liveness probe and JSON error pages for API paths."""

import functools
import logging
import sys

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from homepot import outage, sqlite_limits

logger = logging.getLogger(__name__)


@functools.cache
def api_path_roots() -> frozenset[str]:
    """First path segments served by the API: `api` (everything under /api/) and the root of
    every resource homepot.api.urls mounts at / (sites, devices, jobs, segments, ...), read
    from that configuration so a new resource cannot be forgotten here."""
    from homepot.api.urls import RESOURCES  # the URL configuration imports this module

    return frozenset({"api", *(prefix.split("/", 1)[0] for prefix, _viewset, _basename in RESOURCES)})


def is_api_path(path: str) -> bool:
    """Whether a 404 or 500 at `path` answers with the API's JSON error shape."""
    return path.lstrip("/").split("/", 1)[0] in api_path_roots()


@never_cache
@require_safe
def healthz(request):
    """Liveness for load balancers and compose: 200 {"status": "ok"} when the process
    answers and the database runs a trivial query, 503 otherwise. No authentication and
    no data: it reveals nothing but "up" or "down"."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        logger.warning("Health check: the database did not answer", exc_info=True)
        response = JsonResponse({"status": "unavailable", "database": "unreachable"}, status=503)
        response["Retry-After"] = str(outage.retry_after_seconds())
        return response
    return JsonResponse({"status": "ok"})


def _error(status: int, code: str, message: str) -> JsonResponse:
    # Mirrors homepot.api.errors.error_response for requests that never reached a DRF view.
    return JsonResponse({"error": {"status": status, "code": code, "message": message}}, status=status)


def not_found(request, exception=None):
    if is_api_path(request.path):
        return _error(404, "not_found", "No such endpoint.")
    return defaults.page_not_found(request, exception)


class ApiNotFoundMiddleware:
    """An unknown path under the API answers the JSON error shape with DEBUG on too.

    handler404 (not_found above) covers production, but with DEBUG on Django answers a 404
    with its technical HTML page and never calls handler404, and run.sh runs with DEBUG on:
    a client of the demo would get HTML. Only a 404 that is not JSON already is replaced, so
    the API's own 404s (with their messages) pass through untouched.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code == 404
            and is_api_path(request.path)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return not_found(request)
        return response


def server_error(request):
    # Django calls this while handling the exception, so it is still current. One raised in a
    # middleware (the session loaded or saved outside any view) arrives only here.
    exc = sys.exc_info()[1]
    if sqlite_limits.needs_postgresql(exc) and is_api_path(request.path):
        return JsonResponse(sqlite_limits.body(), status=sqlite_limits.STATUS)
    if outage.database_unavailable(exc):
        outage.log_unavailable(request, exc)
        return outage.unavailable_response(request)
    if is_api_path(request.path):
        return _error(500, "server_error", "Something went wrong on our side; it has been logged.")
    return defaults.server_error(request)
