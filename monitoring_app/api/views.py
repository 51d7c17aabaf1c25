import csv
import json

from django.http import StreamingHttpResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action

from homepot.api.pagination import CursorPagination
from monitoring_app.api.serializers import AuditLogSerializer
from monitoring_app.filters import AuditLogFilter
from monitoring_app.models import AuditLog

CSV_COLUMNS = [
    "id",
    "created_at",
    "event_type",
    "actor",
    "site",
    "device",
    "job_id",
    "description",
    "old_values",
    "new_values",
    "source_ip",
    "user_agent",
    "request_id",
    "row_hash",
]


class AuditCursorPagination(CursorPagination):
    ordering = "-id"  # ids follow the hash chain: newest first


class _Echo:
    def write(self, value):
        return value


def _csv_safe(value) -> str:
    # A cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection).
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_row(log: AuditLog) -> list[str]:
    values = {
        "id": log.pk,
        "created_at": log.created_at.isoformat(),
        "event_type": log.event_type,
        "actor": log.actor_ref,
        "site": log.site_ref,
        "device": log.device_ref,
        "job_id": log.job_id,
        "description": log.description,
        "old_values": json.dumps(log.old_values, sort_keys=True) if log.old_values is not None else "",
        "new_values": json.dumps(log.new_values, sort_keys=True) if log.new_values is not None else "",
        "source_ip": log.source_ip,
        "user_agent": log.user_agent,
        "request_id": log.request_id,
        "row_hash": log.row_hash,
    }
    return [_csv_safe(values[column]) for column in CSV_COLUMNS]


class AuditLogViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit trail, newest first, limited to the caller's sites (admins see all).

    Read-only: the trail cannot be edited or deleted through the API.
    """

    serializer_class = AuditLogSerializer
    filterset_class = AuditLogFilter
    pagination_class = AuditCursorPagination
    filter_backends = [DjangoFilterBackend]  # the trail's order is the chain's: no re-ordering
    queryset = AuditLog.objects.none()  # for the schema; get_queryset scopes per request

    def get_queryset(self):
        return AuditLog.objects.for_user(self.request.user)

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(detail=False, methods=["get"], url_path="export", pagination_class=None)
    def export(self, request):
        """The same filtered, scoped trail as CSV, streamed so any size fits in flat memory."""
        rows = self.filter_queryset(self.get_queryset()).order_by("-id").iterator(chunk_size=2000)
        writer = csv.writer(_Echo())

        def stream():
            yield writer.writerow(CSV_COLUMNS)
            for log in rows:
                yield writer.writerow(_csv_row(log))

        response = StreamingHttpResponse(stream(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="homepot-audit.csv"'
        return response
