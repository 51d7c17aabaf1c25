"""One JSON error shape for the whole API.

    {"error": {"status": 400, "code": "invalid", "message": "...",
               "fields": {"mac_address": ["Enter a valid MAC address, ..."]}}}

`fields` is present when specific inputs are at fault. Duplicates answer 409. A database
that cannot be reached answers 503 with Retry-After (homepot.outage).
"""

import logging
import re

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from homepot import outage, sqlite_limits
from homepot.errors import ServiceError

logger = logging.getLogger(__name__)

_DUPLICATE_CODES = {"unique", "unique_together", "duplicate"}


def _field_errors(detail) -> dict:
    """Flatten DRF's nested detail into {"field.sub": [messages]}."""
    fields: dict[str, list[str]] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value):
            for index, sub in enumerate(value):
                walk(f"{prefix}.{index}" if prefix else str(index), sub)
        else:
            items = value if isinstance(value, list) else [value]
            fields.setdefault(prefix or "non_field_errors", []).extend(str(v) for v in items)

    walk("", detail)
    return fields


def _codes(codes) -> set[str]:
    if isinstance(codes, dict):
        return set().union(*(_codes(v) for v in codes.values())) if codes else set()
    if isinstance(codes, list):
        return set().union(*(_codes(v) for v in codes)) if codes else set()
    return {codes}


_UNIQUE_KEY = re.compile(r"^Key \(([\w, ]+)\)=")


def _duplicate_columns(exc: IntegrityError) -> list[str]:
    """The plain columns of a PostgreSQL unique violation ("Key (site_id)=(...) already
    exists."), which are the API's field names for the unique fields it offers."""
    diag = getattr(exc.__cause__, "diag", None)
    if getattr(diag, "sqlstate", None) != "23505":
        return []
    match = _UNIQUE_KEY.match(getattr(diag, "message_detail", None) or "")
    return [column.strip() for column in match.group(1).split(",")] if match else []


def error_response(status_code: int, code: str, message: str, fields: dict | None = None, headers=None):
    body = {"error": {"status": status_code, "code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return Response(body, status=status_code, headers=headers)


def _from_django_validation(exc: DjangoValidationError) -> exceptions.ValidationError:
    if hasattr(exc, "error_dict"):
        detail = {
            ("non_field_errors" if name == "__all__" else name): [
                exceptions.ErrorDetail(str(m), code=e.code or "invalid") for e in errors for m in e.messages
            ]
            for name, errors in exc.error_dict.items()
        }
    else:
        detail = {
            "non_field_errors": [exceptions.ErrorDetail(m, code=exc.code or "invalid") for m in exc.messages]
        }
    return exceptions.ValidationError(detail)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = _from_django_validation(exc)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()

    if sqlite_limits.needs_postgresql(exc):
        # Before the outage check: SQLite answered, it just cannot run PostgreSQL's SQL.
        return error_response(sqlite_limits.STATUS, sqlite_limits.CODE, sqlite_limits.MESSAGE)
    if outage.database_unavailable(exc):
        # Anywhere in the view, authentication included (DRF runs it inside the view).
        outage.log_unavailable(context["request"], exc)
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            outage.API_CODE,
            outage.API_MESSAGE,
            headers={"Retry-After": str(outage.retry_after_seconds())},
        )
    if isinstance(exc, RequestDataTooBig):
        # Django's own check on request.body (DRF reads JSON through it) fires before any parser.
        return error_response(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            f"Request body exceeds the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
        )
    if isinstance(exc, ServiceError):
        fields = {exc.field: [exc.message]} if exc.field else None
        return error_response(exc.status_code, exc.code, exc.message, fields)
    if isinstance(exc, ProtectedError):
        return error_response(
            status.HTTP_409_CONFLICT, "protected", "Other records still depend on this one."
        )
    if isinstance(exc, IntegrityError):
        # A race lost against a concurrent insert of the same unique value (the serializer's
        # and the service's checks both passed before the other insert committed).
        logger.info("Integrity error answered with 409: %s", exc)
        columns = _duplicate_columns(exc)
        if columns:
            message = f"Another record already has this {' and '.join(columns)}."
            return error_response(
                status.HTTP_409_CONFLICT, "duplicate", message, {column: [message] for column in columns}
            )
        return error_response(
            status.HTTP_409_CONFLICT, "conflict", "The change conflicts with existing data."
        )

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real server error: logged by Django, answered with 500

    if isinstance(exc, exceptions.ValidationError):
        fields = _field_errors(exc.detail)
        codes = _codes(exc.get_codes())
        if codes and codes <= _DUPLICATE_CODES:
            first = next(iter(fields.values()))[0]
            return error_response(status.HTTP_409_CONFLICT, "duplicate", first, fields)
        return error_response(
            status.HTTP_400_BAD_REQUEST, "invalid", "The request has invalid fields.", fields
        )

    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    message = detail if isinstance(detail, str) else str(detail)
    headers = {k: v for k, v in response.items() if k in ("WWW-Authenticate", "Retry-After", "Allow")}
    if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        # A dependency is away (e.g. Redis for the login limiter failing closed): say when to
        # come back, as every 503 of the API does.
        headers.setdefault("Retry-After", str(outage.retry_after_seconds()))
    return error_response(
        response.status_code, code if isinstance(code, str) else "error", message, None, headers
    )
