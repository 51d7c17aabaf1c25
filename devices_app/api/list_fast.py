"""The device list's hot path: `GET /api/v1/devices` (and `/devices`), a page as an
integration polls it, answered in front of Django's handler.

homepot.wsgi wraps Django's application in DeviceListFastPath. A plain request for a page
of the list (a bearer token that is usable and may view devices, no parameter but `cursor`
and `page_size`, a JSON answer accepted) is answered here: no middleware stack, no URL
resolution, no DRF request, view, permission, filter, paginator or renderer objects, which
together cost more than the page itself (docs/performance.md, list3). What the page must
still be, it is, from the same code the DRF view runs:

- the token is checked by the service DRF's authentication calls
  (`accounts.services.api_token_authenticate`), the permission is the one ModelPermissions
  names for a GET, and the rows are those of the one scoping rule (`for_user`, through
  `devices_app.selectors.device_page_after`);
- each device is written by the serializer's own row function
  (`device_row_representation`), the cursor is decoded by the API's `CursorPagination`
  and the `next`/`previous` links are built by it, the body by DRF's JSON renderer;
- the headers are those of the DRF view and of the middleware stack (security headers,
  X-Frame-Options, X-Request-ID, Allow, Vary), the request signals are sent (database
  connections kept and closed as for any request), and the request is counted in the
  metrics under the view's route.

Anything else (another method, no token or a bad one, a user who may not view devices, a
filter, a search, an ordering, a backward cursor or one with an offset, a bad cursor or
page size, a cookie, another Accept, a host Django would refuse, an HTTPS redirect to make,
a database error) goes to Django unchanged and gets the API's usual answer: this path
never decides an error. devices_app/tests/test_list_fast_path.py holds its answers equal
to the DRF view's, byte for byte and header for header.
"""

import time

from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.db import Error as DatabaseError
from django.urls import resolve
from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer

from accounts.services import api_token_authenticate
from devices_app.api.serializers import device_row_representation
from devices_app.models import Device
from devices_app.selectors import device_page_after
from homepot.api.pagination import CursorPagination
from homepot.api.permissions import ModelPermissions
from homepot.fast_path import RouteMetrics, middleware_headers
from homepot.request_context import new_request_id

PATHS = frozenset({"/devices", "/devices/", "/api/v1/devices", "/api/v1/devices/"})
# The only query parameters this path reads; any other (a filter, `search`, `ordering`,
# `format`) is the DRF view's.
_PARAMETERS = frozenset({"cursor", "page_size"})
# What DRF's content negotiation answers with its JSON renderer, headers included, for sure.
_ACCEPTS = frozenset({"", "*/*", "application/json"})
_KEYWORDS = (b"bearer", b"token")  # accounts.authentication.ApiTokenAuthentication's
_BIGINT = range(-(2**63), 2**63)  # the ids a position can compare with in PostgreSQL
_RENDERER = JSONRenderer()


class DeviceListFastPath:
    """WSGI middleware around Django's application (see the module docstring)."""

    def __init__(self, django_app):
        self.django_app = django_app
        self._headers = {}  # secure? -> the headers of a 200 besides type, length and request id
        self._metrics = RouteMetrics("GET")

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO")
        if environ.get("REQUEST_METHOD") != "GET" or path not in PATHS or not _may_answer(environ):
            return self.django_app(environ, start_response)
        started = time.perf_counter()
        request = WSGIRequest(environ)
        try:
            request.get_host()  # Django's ALLOWED_HOSTS rule; refused, Django answers 400
        except DisallowedHost:
            return self.django_app(environ, start_response)
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            body = _page(request)
        except (DatabaseError, APIException):
            body = None  # Django's view answers it (503 for an outage, the API's 4xx)
        if body is None:
            return self.django_app(environ, start_response)
        request_id = environ.get("HTTP_X_REQUEST_ID", "")[:64] or new_request_id()
        signals.request_finished.send(sender=self.__class__)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("X-Request-ID", request_id),
                *self._response_headers(request.is_secure()),
            ],
        )
        self._metrics.observe(path, "200", time.perf_counter() - started)
        return [body]

    def _response_headers(self, secure: bool) -> list[tuple[str, str]]:
        """The DRF view's own headers (Allow, Vary) and those the middleware stack adds to
        this answer, taken from the view and the middlewares themselves once (they depend on
        the view's methods and renderers, on settings and on HTTPS only)."""
        headers = self._headers.get(secure)
        if headers is None:
            match = resolve("/api/v1/devices")
            view = match.func.cls(**match.func.initkwargs)
            for method, action in match.func.actions.items():
                setattr(view, method, getattr(view, action))
            if hasattr(view, "get") and not hasattr(view, "head"):
                view.head = view.get  # as DRF's ViewSetMixin.as_view binds it
            added = middleware_headers("GET", "/api/v1/devices", secure=secure)
            headers = self._headers[secure] = [*view.default_response_headers.items(), *added]
        return headers


def _may_answer(environ) -> bool:
    """Whether the headers alone leave this path able to answer as Django would: anything
    the middleware stack or DRF's negotiation would act on goes to Django."""
    return not (
        "HTTP_COOKIE" in environ  # a session (and what its middleware does with a bad one)
        or environ.get("HTTP_ACCEPT", "") not in _ACCEPTS
        or "HTTP_TRANSFER_ENCODING" in environ
        or environ.get("CONTENT_LENGTH") not in (None, "", "0")
        or settings.SECURE_SSL_REDIRECT
        or settings.PREPEND_WWW
        or settings.DISALLOWED_USER_AGENTS
    )


def _bearer_key(request) -> str | None:
    """The raw token of `Authorization: Bearer <token>`, split as DRF's authentication
    splits it; None for anything it would refuse or leave to another authentication."""
    try:
        header = request.META.get("HTTP_AUTHORIZATION", "").encode("iso-8859-1").split()
    except UnicodeEncodeError:  # not from a WSGI server (its headers are ISO-8859-1 text)
        return None
    if len(header) != 2 or header[0].lower() not in _KEYWORDS:
        return None
    try:
        return header[1].decode()
    except UnicodeDecodeError:
        return None


class _Parameters:
    """What CursorPagination reads from a DRF request (its query parameters)."""

    def __init__(self, request):
        self.query_params = request.GET


def _page(request) -> bytes | None:
    """The page's JSON, or None when the DRF view must answer this request."""
    params = request.GET
    if not params.keys() <= _PARAMETERS or any(len(params.getlist(name)) != 1 for name in params):
        return None
    zone = timezone.get_current_timezone()
    if getattr(zone, "key", None) != "UTC":
        return None  # the view formats the times in Python then; so does it alone
    raw_key = _bearer_key(request)
    token = api_token_authenticate(raw_key) if raw_key else None
    if token is None:
        return None
    user = token.user
    if not user.has_perms(ModelPermissions().get_required_permissions("GET", Device)):
        return None
    paginator = CursorPagination()
    paginator._model = Device
    paginator.ordering = ("id",)  # the view's (DeviceViewSet.ordering), no `ordering` given
    query = _Parameters(request)
    paginator.page_size = paginator.get_page_size(query)  # a bad one raises the view's 400
    cursor = paginator.decode_cursor(query)  # a bad one raises the view's 404
    after = None
    if cursor is not None:
        if cursor.reverse or cursor.offset or cursor.position is None:
            return None
        after = int(cursor.position)
        if after not in _BIGINT:
            return None
    rows = device_page_after(user=user, after=after, limit=paginator.page_size + 1)
    results = [device_row_representation(row, zone) for row in rows[: paginator.page_size]]
    _set_page_state(paginator, request, cursor, rows)
    data = {"next": paginator.get_next_link(), "previous": paginator.get_previous_link(), "results": results}
    return _RENDERER.render(data)


def _set_page_state(paginator, request, cursor, rows) -> None:
    """What DRF's CursorPagination.paginate_queryset leaves on the paginator for a forward
    cursor (its links are then built by its own get_next_link and get_previous_link)."""
    paginator.base_url = request.build_absolute_uri()
    paginator.cursor = cursor
    paginator.page = rows[: paginator.page_size]
    paginator.has_next = len(rows) > paginator.page_size
    paginator.next_position = str(rows[-1]["id"]) if paginator.has_next else None
    paginator.has_previous = cursor is not None
    paginator.previous_position = cursor.position if cursor is not None else None
