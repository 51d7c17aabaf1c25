"""The heartbeat's hot path: every terminal of the chain, every minute (1,667 requests a second
for 100,000 terminals).

A well-formed heartbeat from a device with a usable credential is answered here, in front of
Django's handler (homepot.wsgi wraps the application in HeartbeatFastPath): no request object,
no middleware stack, no URL resolution, no DRF machinery, which together cost several times
the work itself. What a heartbeat must still do is done here: the same credential rule
and the same services (monitoring_app.ingest.heartbeat_by_credential: in the steady case
one Redis call and no PostgreSQL query) and JSON answer, Django's
request signals for a request that may reach PostgreSQL (database connections kept and
closed as for any request, before its first query; a request answered from Redis alone
touches no connection and sends none), the request metrics under the view's route, the
request id and the security headers of the middleware stack.

Health reports (a single one or a batch, 201) take the same way in front of Django: their
body is checked and stored by monitoring_app.api.health_fast.answer, the function the
Django-side wrapper of the DRF views calls too (for requests that reach Django, and for
Django's test client), so the middleware stack and URL resolution (about half of a buffered
report's CPU, measured) are skipped for them as well.

Everything else (another method, a missing or bad credential, a body this path does not
recognise, a host Django would refuse, a request to redirect to HTTPS, a database error) goes
to Django unchanged, the body already read handed on, and gets the API's usual answers and
errors: this path never decides an error.
"""

import datetime
import io
import json
import time
from json.encoder import encode_basestring_ascii

from django.conf import settings
from django.core import signals
from django.db import Error as DatabaseError
from django.http.request import split_domain_port, validate_host

from homepot import hot_path
from homepot.api.fields import iso_datetime
from homepot.fast_path import RouteMetrics, middleware_headers
from homepot.request_context import new_request_id
from monitoring_app import ingest
from monitoring_app.api import health_fast
from monitoring_app.api.agent import HeartbeatSerializer, next_report_in

PATHS = frozenset({"/api/v1/agent/heartbeat", "/api/v1/agent/heartbeat/"})
# Health reports (a single one, a batch): path -> the parser of its body (health_fast).
HEALTH_PATHS = {
    "/api/v1/agent/health": health_fast.parse_single,
    "/api/v1/agent/health/": health_fast.parse_single,
    "/api/v1/agent/health/batch": health_fast.parse_batch,
    "/api/v1/agent/health/batch/": health_fast.parse_batch,
}
# Larger bodies are not heartbeats this path needs to understand; Django's view bounds them.
_MAX_BODY_BYTES = 1024
_NOT_HANDLED = object()


class HeartbeatFastPath:
    """WSGI middleware around Django's application (see the module docstring)."""

    def __init__(self, django_app):
        self.django_app = django_app
        self._allowed_hosts = {}  # Host header -> whether Django would accept it
        self._headers = {}  # secure? -> the headers Django's middleware adds to a 200
        self._metrics = RouteMetrics("POST")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if environ.get("REQUEST_METHOD") != "POST" or (path not in PATHS and path not in HEALTH_PATHS):
            return self.django_app(environ, start_response)
        started = time.perf_counter()
        health = HEALTH_PATHS.get(path)
        key, secure = self._precheck(environ, health=health is not None)
        if key is None:
            return self.django_app(environ, start_response)
        body = _read_body(environ)
        if health is None:
            reported_at = _reported_at(environ, body)
            if reported_at is _NOT_HANDLED:
                return self.django_app(environ, start_response)
            device = ingest.heartbeat_from_redis(raw_key=key, reported_at=reported_at)
            payload = None if device is None else _heartbeat_answer(device)
        else:
            reports = health_fast.parsed(body, health)
            if reports is health_fast.NOT_HANDLED:
                return self.django_app(environ, start_response)
            payload, device = health_fast.answer_from_redis(key, reports, health)
        # Django's request signals (connections past CONN_MAX_AGE or broken closed, the query
        # log reset, caches closed) for a request that may reach PostgreSQL, before it does. A
        # request answered from Redis alone touched no connection and no cache: the signals,
        # a fifth of its CPU (measured), would find nothing to do.
        signalled = payload is None
        if signalled:
            signals.request_started.send(sender=self.__class__, environ=environ)
            try:
                if health is None:
                    payload = _heartbeat(key, reported_at)
                else:
                    payload = health_fast.answer_from_database(key, reports, device)
            except DatabaseError:
                payload = _NOT_HANDLED  # Django's view answers the outage (503), as for any view
        if payload is _NOT_HANDLED or payload is health_fast.NOT_HANDLED:
            return self.django_app(environ, start_response)
        request_id = environ.get("HTTP_X_REQUEST_ID", "")[:64] or new_request_id()
        if signalled:
            signals.request_finished.send(sender=self.__class__)
        status = "200 OK" if health is None else "201 Created"
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("X-Request-ID", request_id),
                *self._security_headers(secure),
            ],
        )
        self._metrics.observe(path, status[:3], time.perf_counter() - started)
        return [payload]

    def _precheck(self, environ, *, health: bool) -> tuple[str | None, bool]:
        """(the credential, whether the request is HTTPS) when this path may answer, judged
        from the headers alone; (None, _) hands the request to Django."""
        scheme, _, key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "device" or not key or " " in key:
            return None, False
        if "HTTP_TRANSFER_ENCODING" in environ or not self._host_allowed(environ):
            return None, False
        secure = _is_secure(environ)
        if _ssl_redirect() and not secure:
            return None, False
        if health:
            announced = environ.get("CONTENT_TYPE", ""), environ.get("CONTENT_LENGTH")
            return (key, secure) if health_fast.body_may_be_handled(*announced) else (None, False)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None, False
        if length > _MAX_BODY_BYTES or (length and _content_type(environ) != "application/json"):
            return None, False
        return key, secure

    def _host_allowed(self, environ) -> bool:
        # Django's rule (HttpRequest.get_host, which CommonMiddleware applies to every
        # request), remembered per Host value; a stranger's hosts are not remembered.
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        allowed = self._allowed_hosts.get(host)
        if allowed is None:
            domain, _port = split_domain_port(host)
            allowed = bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)
            if allowed and len(self._allowed_hosts) < 64:
                self._allowed_hosts[host] = allowed
        return allowed

    def _security_headers(self, secure: bool) -> list[tuple[str, str]]:
        """The headers Django's middleware adds to this answer, built once per `secure`."""
        headers = self._headers.get(secure)
        if headers is None:
            headers = self._headers[secure] = middleware_headers("POST", next(iter(PATHS)), secure=secure)
        return headers


def _heartbeat(key: str, reported_at):
    """The answer's bytes after PostgreSQL was asked (Redis was, just before, in vain), or
    _NOT_HANDLED when the credential is not usable."""
    device = ingest.heartbeat_by_credential(raw_key=key, reported_at=reported_at, redis_asked=True)
    if device is None:
        return _NOT_HANDLED
    return _heartbeat_answer(device)


def _heartbeat_answer(device) -> bytes:
    """agent.heartbeat_answer as DRF renders it (compact JSON, the datetime in ISO 8601 with
    microseconds, UTC as "Z"), written out directly: building the dict and dumping it took a
    tenth of a steady heartbeat's Python (measured). test_heartbeat_fast_path holds it equal
    to the view's answer."""
    server_time = iso_datetime(datetime.datetime.now(datetime.UTC), datetime.UTC)
    return (
        f'{{"device_id":{encode_basestring_ascii(device.device_id)},'
        f'"status":{encode_basestring_ascii(device.status)},"server_time":"{server_time}",'
        f'"next_report_in":{_next_report_in()}}}'
    ).encode()


@hot_path.setting_derived
def _next_report_in() -> str:
    return json.dumps(next_report_in())


def _read_body(environ) -> bytes:
    """The request body (at most _MAX_BODY_BYTES, checked before), left readable for Django."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _reported_at(environ, body: bytes):
    """The device's timestamp (None when the body is empty or `{}`), or _NOT_HANDLED when
    the body is anything but a valid heartbeat."""
    if not body or body == b"{}":  # what terminals send: no timestamp
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return _NOT_HANDLED
    if data == {}:
        return None
    if not isinstance(data, dict):
        return _NOT_HANDLED
    serializer = HeartbeatSerializer(data=data)
    if not serializer.is_valid():
        return _NOT_HANDLED
    return serializer.validated_data.get("timestamp")


def _content_type(environ) -> str:
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


@hot_path.setting_derived
def _ssl_redirect() -> bool:
    return bool(settings.SECURE_SSL_REDIRECT)


@hot_path.setting_derived
def _proxy_ssl_header():
    return settings.SECURE_PROXY_SSL_HEADER


def _is_secure(environ) -> bool:
    # HttpRequest.is_secure: a trusted proxy's header when configured, else the WSGI scheme.
    proxy_header = _proxy_ssl_header()
    if proxy_header:
        header, secure_value = proxy_header
        value = environ.get(header)
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return environ.get("wsgi.url_scheme") == "https"
