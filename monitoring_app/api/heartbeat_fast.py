"""The heartbeat's hot path: every terminal of the chain, every minute (1,667 requests a second
for 100,000 terminals).

A well-formed heartbeat from a device with a usable credential is answered here, in plain
Django: the same credential rule (a narrower lookup: devices_app.services.device_identify),
the same service call, the same JSON answer, without
Django REST framework's request machinery (request wrapper, negotiation, parsers, renderers),
which costs more than the work itself. Everything else (a missing or bad credential, a body
this path does not recognise, a clock refused, another method) is handed to the DRF view,
which gives the API's usual answers and errors: the fast path never decides an error.
"""

import functools
import json

from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from devices_app.services import device_identify
from monitoring_app import ingest

# Larger bodies are not heartbeats this path needs to understand; the DRF view bounds them.
_MAX_BODY_BYTES = 1024
_NOT_HANDLED = object()


def with_fast_path(drf_view, *, serializer_class, answer):
    """Wrap the DRF heartbeat view. `answer(device)` is the response body (a dict); the
    wrapper keeps `cls`/`initkwargs` so URL introspection and the OpenAPI schema still see
    the DRF view."""

    @csrf_exempt
    @functools.wraps(drf_view)  # keeps cls, initkwargs and view_class
    def heartbeat(request, *args, **kwargs):
        handled = _heartbeat(request, serializer_class, answer)
        if handled is _NOT_HANDLED:
            return drf_view(request, *args, **kwargs)
        return handled

    return heartbeat


def _heartbeat(request, serializer_class, answer):
    if request.method != "POST":
        return _NOT_HANDLED
    scheme, _, key = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "device" or not key or " " in key:
        return _NOT_HANDLED
    reported_at = _reported_at(request, serializer_class)
    if reported_at is _NOT_HANDLED:
        return _NOT_HANDLED
    device = device_identify(key)
    if device is None:
        return _NOT_HANDLED
    ingest.heartbeat_record(device=device, reported_at=reported_at)
    body = answer(device)
    # DRF's rendering of a datetime (ISO 8601, microseconds kept, UTC as "Z").
    body["server_time"] = body["server_time"].isoformat().replace("+00:00", "Z")
    return HttpResponse(json.dumps(body, separators=(",", ":")), content_type="application/json")


def _reported_at(request, serializer_class):
    """The device's timestamp (None when the body is empty), or _NOT_HANDLED when the body
    is anything but a valid heartbeat."""
    if "HTTP_TRANSFER_ENCODING" in request.META:
        return _NOT_HANDLED
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _NOT_HANDLED
    if length == 0:
        return None
    if length > _MAX_BODY_BYTES or request.content_type != "application/json":
        return _NOT_HANDLED
    try:
        data = json.loads(request.body)
    except ValueError:
        return _NOT_HANDLED
    if data == {}:
        return None
    serializer = serializer_class(data=data)
    if not isinstance(data, dict) or not serializer.is_valid():
        return _NOT_HANDLED
    return serializer.validated_data.get("timestamp")
