"""The health reports' hot path: 100,000 terminals each reporting every minute are 1,667
requests a second, and Django REST framework's serializer of a dozen fields (about 1 ms of CPU
here) cost more than storing the report.

A well-formed report (or batch) from a device with a usable credential is validated here by
plain checks that accept only what HealthReportSerializer accepts *as it is*: the exact JSON
types, no whitespace to trim, no number given as a string, a timestamp with its zone.
Everything else, whether wrong or just unusual (a missing or bad credential, an unknown field,
a value the serializer would convert, a clock refused, a gateway naming a device it may not),
is handed to the DRF view, which decides and words every error: this path never refuses.
The same service stores the report either way (monitoring_app.api.agent.health_store).
"""

import datetime
import functools
import json
import math

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import parse_header_parameters
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.utils import json as strict_json

from devices_app.services import device_identity_from_postgres
from homepot.api.parsers import SUSPECT_ESCAPE
from monitoring_app.api.agent import (
    HealthBatchView,
    HealthView,
    health_store,
    metrics_problem,
    report_from,
)
from monitoring_app.choices import HealthStatus
from monitoring_app.ingest import (
    health_report_appended,
    health_report_buffered,
    one_trip_reports,
    reported_identity,
)

NOT_HANDLED = _NOT_HANDLED = object()
_STORED_ONE = json.dumps({"stored": 1}, separators=(",", ":")).encode()  # health_store's answer
_STATUSES = frozenset(HealthStatus.values)
_PERCENTS = ("cpu_percent", "memory_percent", "disk_percent")
# Strings of the serializer: name -> (max length, blank allowed)
_TEXTS = {"app_version": (64, True), "firmware_version": (64, True), "error_message": (2000, True)}
_REPORT_FIELDS = frozenset({"status", "timestamp", "response_time_ms", "metrics", *_PERCENTS, *_TEXTS})
_BATCH_ITEM_FIELDS = _REPORT_FIELDS | {"device_id"}


def _fast(drf_view, parse):
    """Wrap a DRF view: `parse(data)` gives the list of validated report dicts or
    _NOT_HANDLED. Keeps `cls`/`initkwargs` so URL introspection and the schema see the view."""

    @csrf_exempt
    @functools.wraps(drf_view)
    def endpoint(request, *args, **kwargs):
        answer = _handle(request, parse)
        return drf_view(request, *args, **kwargs) if answer is _NOT_HANDLED else answer

    return endpoint


def _handle(request, parse):
    if request.method != "POST":
        return _NOT_HANDLED
    scheme, _, key = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "device" or not key or " " in key:
        return _NOT_HANDLED
    if "HTTP_TRANSFER_ENCODING" in request.META:
        return _NOT_HANDLED
    if not body_may_be_handled(request.META.get("CONTENT_TYPE", ""), request.META.get("CONTENT_LENGTH")):
        return _NOT_HANDLED
    body = answer(key, request.body, parse)
    if body is _NOT_HANDLED:
        return _NOT_HANDLED
    return HttpResponse(body, status=201, content_type="application/json")


def body_may_be_handled(content_type: str, content_length: str | None) -> bool:
    """Whether the headers announce a body this path reads: JSON in UTF-8, of a length
    Django's own limit lets through. Judged before reading the body (the WSGI fast path,
    monitoring_app.api.heartbeat_fast, reads it only then)."""
    media_type, params = parse_header_parameters(content_type)
    if media_type != "application/json" or params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        return False
    try:
        length = int(content_length or 0)
    except ValueError:
        return False
    return 0 < length <= settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def answer(key: str, body: bytes, parse):
    """The 201's body (bytes) for reports `parse` accepts from the device behind `key`, once
    stored (monitoring_app.api.agent.health_store); _NOT_HANDLED for anything the DRF view
    must decide (nothing is stored then)."""
    reports = parsed(body, parse)
    if reports is _NOT_HANDLED:
        return _NOT_HANDLED
    stored, device = answer_from_redis(key, reports, parse)
    if stored is not None:
        return stored
    return answer_from_database(key, reports, device)


def parsed(body: bytes, parse):
    """The validated reports `parse` finds in `body`, or _NOT_HANDLED. No I/O."""
    data = _json(body)
    if data is _NOT_HANDLED:
        return _NOT_HANDLED
    return parse(data)


def answer_from_redis(key: str, reports: list, parse) -> tuple[bytes | None, object]:
    """(the 201's body, None) when Redis alone took a single report: the credential's
    identity, the sighting and the report in one or two round trips, no database connection
    touched. Else (None, the device if Redis knew it): answer_from_database goes on from
    there, without asking Redis for the identity again."""
    reported_at = reports[0].get("timestamp") if len(reports) == 1 else None
    single = parse is parse_single
    if single and one_trip_reports():
        if health_report_buffered(raw_key=key, report=report_from(reports[0]), reported_at=reported_at):
            return _STORED_ONE, None  # identity, sighting and report in one Redis round trip
        return None, None  # not answerable from Redis: that script has just said so
    device = reported_identity(key, reported_at=reported_at)
    if (
        single
        and device is not None
        and health_report_appended(device=device, report=report_from(reports[0]))
    ):
        return _STORED_ONE, None  # the identity's round trip, then the stream's: nothing else
    return None, device


def answer_from_database(key: str, reports: list, device):
    """The 201's body once the reports are stored, the device read from PostgreSQL when Redis
    did not know it (`device` None); _NOT_HANDLED for the DRF view to decide."""
    if device is None:
        device = device_identity_from_postgres(key)
    if device is None:
        return _NOT_HANDLED
    try:
        stored = health_store(device, reports)
    except serializers.ValidationError:
        return _NOT_HANDLED  # a device it may not name: the DRF view says so
    return json.dumps(stored, separators=(",", ":")).encode()


def _json(body: bytes):
    if SUSPECT_ESCAPE.search(body):
        return _NOT_HANDLED  # maybe text PostgreSQL cannot store: the parser's check words it
    try:
        return strict_json.loads(body.decode("utf-8"))  # NaN and Infinity refused, as DRF does
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nesting too deep
        return _NOT_HANDLED


def parse_single(data):
    report = clean_report(data, _REPORT_FIELDS, _clock_window())
    return _NOT_HANDLED if report is None else [report]


def parse_batch(data):
    if not isinstance(data, dict) or set(data) != {"reports"}:
        return _NOT_HANDLED
    items = data["reports"]
    if not isinstance(items, list) or not 0 < len(items) <= settings.HOMEPOT_MONITORING_BATCH_MAX_REPORTS:
        return _NOT_HANDLED
    reports, window = [], _clock_window()
    for item in items:
        report = clean_report(item, _BATCH_ITEM_FIELDS, window)
        if report is None:
            return _NOT_HANDLED
        reports.append(report)
    return reports


def clean_report(data, allowed: frozenset, window: tuple) -> dict | None:
    """The serializer's validated data for `data`, or None unless it is sure the serializer
    would accept `data` unchanged (apart from parsing the timestamp and making numbers float).
    `window`: the device clocks accepted (_clock_window)."""
    if not isinstance(data, dict) or not data.keys() <= allowed:
        return None
    if not isinstance(data.get("status"), str) or data["status"] not in _STATUSES:
        return None
    clean = dict(data)
    if "timestamp" in data:
        clean["timestamp"] = _timestamp(data["timestamp"], window)
        if clean["timestamp"] is None:
            return None
    value = data.get("response_time_ms")
    if value is not None and not (type(value) is int and 0 <= value <= 3_600_000):
        return None
    for name in _PERCENTS:
        value = data.get(name)
        if value is None:
            continue
        if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= 100:
            return None
        clean[name] = float(value)
    for name, (max_length, blank) in _TEXTS.items():
        if name in data and not _plain_text(data[name], max_length, blank):
            return None
    if "device_id" in data and not _plain_text(data["device_id"], 64, False):
        return None
    measured = data.get("metrics", {})
    if not isinstance(measured, dict) or (measured and metrics_problem(measured) is not None):
        return None
    return clean


def _clock_window() -> tuple[datetime.datetime, datetime.datetime]:
    """(oldest, newest) device time validate_device_clock accepts now; computed once for a
    whole batch (its settings and clock read once, not per report). A time at the very edge
    that this window refuses goes to the DRF view, which decides it."""
    now = timezone.now()
    skew = datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS)
    max_age = datetime.timedelta(hours=settings.HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS)
    return now - max_age, now + skew


def _timestamp(value, window: tuple):
    """An ISO 8601 string with its zone, within `window`, parsed; else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    oldest, newest = window
    # validate_device_clock's rule (test_health_fast_path checks its edges through both doors)
    return parsed if oldest <= parsed <= newest else None


def _plain_text(value, max_length: int, blank: bool) -> bool:
    """A string the serializer keeps as it is: nothing to trim, no NUL, no lone surrogate."""
    if not isinstance(value, str) or len(value) > max_length or value != value.strip() or "\x00" in value:
        return False
    if not value and not blank:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which the serializer refuses
        return False
    return True


health_endpoint = _fast(HealthView.as_view(), parse_single)
health_batch_endpoint = _fast(HealthBatchView.as_view(), parse_batch)
