"""Site-wide plain Django views: the liveness and readiness probes, the Prometheus metrics
endpoint and JSON error pages for API paths."""

import functools
import hmac
import logging
import sys

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import Http404, HttpResponse, JsonResponse
from django.views import defaults
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from homepot import metrics as homepot_metrics
from homepot import mqtt_probe, outage, sqlite_limits
from homepot.redis_clients import redis_client

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


def _check_database(timeout: float) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # A server that accepts the connection but hangs must not hold the probe either.
            cursor.execute("SET LOCAL statement_timeout = %s", [int(timeout * 1000)])
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_redis(timeout: float) -> None:
    redis_client(settings.REDIS_URL, timeout=timeout).ping()


def _check_mqtt(timeout: float) -> None:
    # A full MQTT login (CONNECT/CONNACK), as the push channel and the bridge log in: a broker
    # that accepts TCP but is wedged, or that refuses our login, cannot deliver our work.
    username = password = None
    if settings.HOMEPOT_MQTT_AUTH:
        username, password = settings.HOMEPOT_MQTT_BRIDGE_USERNAME, settings.HOMEPOT_MQTT_BRIDGE_PASSWORD
    mqtt_probe.probe(
        settings.HOMEPOT_JOBS_MQTT_HOST,
        settings.HOMEPOT_JOBS_MQTT_PORT,
        timeout=timeout,
        username=username,
        password=password,
    )


READINESS_CHECKS = {"database": _check_database, "redis": _check_redis, "mqtt": _check_mqtt}


@never_cache
@require_safe
def readyz(request):
    """Readiness: can this instance do its work? 200 when PostgreSQL, Redis and the MQTT
    broker each answer within HOMEPOT_READYZ_TIMEOUT_SECONDS (the broker: an MQTT login, not
    just a TCP connection), else 503 naming which did not, as "unreachable" or, for a broker
    that refused our login, "refused" (names only: no hosts, no error text). Unauthenticated
    like /healthz; a load balancer stops sending work while it answers 503, where /healthz
    says whether to restart."""
    timeout = settings.HOMEPOT_READYZ_TIMEOUT_SECONDS
    checks = {}
    for name, check in READINESS_CHECKS.items():
        try:
            check(timeout)
        except mqtt_probe.BrokerRefused as exc:
            logger.warning("Readiness: %s refused our login (%s)", name, exc)
            checks[name] = "refused"
        except (DatabaseError, redis.RedisError, OSError):
            logger.warning("Readiness: %s did not answer", name, exc_info=True)
            checks[name] = "unreachable"
        else:
            checks[name] = "ok"
    ready = all(state == "ok" for state in checks.values())
    response = JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks})
    if not ready:
        response.status_code = 503
        response["Retry-After"] = str(outage.retry_after_seconds())
    return response


@never_cache
@require_safe
def metrics(request):
    """Prometheus text exposition of every HOMEPOT metric (homepot.metrics), for a scraper
    holding HOMEPOT_METRICS_TOKEN as a bearer token. Without a configured token the endpoint
    does not exist (404); a missing or wrong token, a user session or a device credential
    answers 401. Nothing here queries the database: the fleet gauges come from the ticks."""
    token = settings.HOMEPOT_METRICS_TOKEN
    if not token:
        raise Http404
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        response = HttpResponse("Unauthorized.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="homepot-metrics"'
        return response
    body, content_type = homepot_metrics.render()
    return HttpResponse(body, content_type=content_type)


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
