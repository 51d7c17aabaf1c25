import datetime
import json

from django.db import connections
from django.db.models import Prefetch
from django.utils import timezone
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from homepot.api.pagination import CursorPagination
from homepot.csv_export import csv_response
from homepot.db import stream
from monitoring_app import alerts, offday
from monitoring_app.api.serializers import (
    AlertNoteInputSerializer,
    AlertSerializer,
    AuditLogSerializer,
    HealthCheckSerializer,
)
from monitoring_app.filters import AlertFilter, AuditLogFilter, HealthCheckFilter
from monitoring_app.models import Alert, AlertNote, AuditLog, HealthCheck

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


def _csv_row(log: AuditLog) -> list:
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
    return [values[column] for column in CSV_COLUMNS]


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

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR}, filters=True)
    @action(detail=False, methods=["get"], url_path="export", pagination_class=None)
    def export(self, request):
        """The same filtered, scoped trail as CSV, streamed so any size fits in flat memory."""
        logs = stream(self.filter_queryset(self.get_queryset()).order_by("-id"), chunk_size=2000)
        # csv_response quotes cells a spreadsheet would run as formulas (CSV injection).
        return csv_response(CSV_COLUMNS, (_csv_row(log) for log in logs), "homepot-audit.csv")


class AlertPermissions(permissions.BasePermission):
    """Reading alerts needs what reading device health needs; handling them (acknowledge,
    resolve, note) what changing a device needs (site managers). Which alerts: for_user."""

    def has_permission(self, request, view):
        user = request.user
        if not (user and user.is_authenticated) or getattr(user, "is_device", False):
            return False
        if request.method in permissions.SAFE_METHODS:
            return user.has_perm("monitoring_app.view_healthcheck")
        return user.has_perm("devices_app.change_device")


class AlertCursorPagination(CursorPagination):
    ordering = "-id"  # newest first; ids follow opening order


class AlertViewSet(viewsets.ReadOnlyModelViewSet):
    """Alerts of the caller's sites, newest first; acknowledge, resolve and annotate them.

    An alert of a site the caller cannot see is a 404; one they see but may not change
    (viewers) is a 403.
    """

    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    pagination_class = AlertCursorPagination
    filter_backends = [DjangoFilterBackend]
    permission_classes = [AlertPermissions]
    queryset = Alert.objects.none()  # for the schema; get_queryset scopes per request
    lookup_value_regex = "[0-9]{1,18}"

    def get_queryset(self):
        return (
            Alert.objects.for_user(self.request.user)
            .select_related("site", "device", "acknowledged_by", "resolved_by")
            .prefetch_related(Prefetch("notes", queryset=AlertNote.objects.select_related("author")))
        )

    def _answer(self, alert, status_code=200):
        return Response(AlertSerializer(self.get_queryset().get(pk=alert.pk)).data, status=status_code)

    @extend_schema(request=None, responses=AlertSerializer, summary="Acknowledge an alert")
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        return self._answer(alerts.alert_acknowledge(actor=request.user, alert=self.get_object()))

    @extend_schema(request=None, responses=AlertSerializer, summary="Resolve an alert by hand")
    @action(detail=True, methods=["post"])
    def resolve(self, request, pk=None):
        return self._answer(alerts.alert_resolve(actor=request.user, alert=self.get_object()))

    @extend_schema(request=AlertNoteInputSerializer, responses={201: AlertSerializer}, summary="Add a note")
    @action(detail=True, methods=["post"])
    def notes(self, request, pk=None):
        alert = self.get_object()
        serializer = AlertNoteInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        alerts.alert_add_note(actor=request.user, alert=alert, text=serializer.validated_data["text"])
        return self._answer(alert, status.HTTP_201_CREATED)


class HealthCheckCursorPagination(CursorPagination):
    """Newest first. Ids, not checked_at: a cursor needs a unique order, and ids follow the
    order reports arrived in (checked_at is the device's own clock, and may tie).

    A forward page is read from the newest days first (today, then since yesterday) when
    that provably gives the same rows: unbounded, "newest ids first" over day partitions
    reads every row of the list's devices in every day kept (a device's latest check, a store
    manager's list: docs/performance.md, issue 11, reads). A bound on checked_at prunes the
    older days, but ids are not ordered by checked_at (a report may arrive up to
    HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS late, a buffered one later, an import any time),
    so the window's page is kept only when no row of the list from before the window has an
    id above the smallest one fetched: one EXISTS on the older days, each answered from the
    top of its primary key index (the window starts at a UTC midnight, so no day is split).
    Otherwise the page is read as before. Backward pages are always read as before.

    The proof asks the record of reports written outside their day first
    (monitoring_app.offday: one index probe, whatever the days kept; a device's latest check
    is then flat in the days kept), and looks at the older days only when the record cannot
    tell (rows older than the record, a page whose smallest row was written early, many
    records at once).
    """

    ordering = "-id"
    window_days = (0, 1)  # windows tried: since today's UTC midnight, then yesterday's

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        if connections[queryset.db].vendor == "postgresql":
            self.ordering = self.get_ordering(request, queryset, view)  # what decode_cursor checks
            cursor = self.decode_cursor(request)
            if cursor is None or not (cursor.reverse or cursor.offset):
                for days in self.window_days:
                    page = self._newest_days_page(queryset, request, view, cursor, days)
                    if page is not None:
                        return page
        return super().paginate_queryset(queryset, request, view)

    def _newest_days_page(self, queryset, request, view, cursor, days: int):
        """The page read from the days since the UTC midnight `days` ago, or None when those
        days do not provably hold all of it (then nothing of this attempt is kept)."""
        today = timezone.now().astimezone(datetime.UTC).date()
        since = datetime.datetime.combine(
            today - datetime.timedelta(days=days), datetime.time(), datetime.UTC
        )
        page = super().paginate_queryset(queryset.filter(checked_at__gte=since), request, view)
        if not self.has_next:  # fewer rows than a page and its successor: look further back
            return None
        # The smallest id fetched is the next page's position; rows of the list older than the
        # window with an id between it and this page's own position would belong here.
        below = cursor.position if cursor is not None and cursor.position is not None else None
        # A device's list: the record is probed for its rows' device alone.
        devices = sorted({row.device_id for row in page}) if request.query_params.get("device") else None
        proven = offday.window_page_proven(
            queryset,
            since=since,
            smallest=int(self.next_position),
            below=None if below is None else int(below),
            device_ids=devices,
        )
        if proven is not None:
            return page if proven else None
        older = queryset.filter(checked_at__lt=since, id__gt=self.next_position)
        if below is not None:
            older = older.filter(id__lt=below)
        return None if older.exists() else page


@extend_schema_view(list=extend_schema(summary="List health checks (the health history)"))
class HealthCheckViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The health reports devices made, newest first, of the caller's sites (admins: all).

    Read-only: reports arrive from the devices (/api/v1/agent/health) and are pruned by
    retention, never written here. Keyset-paged: follow `next`.
    """

    serializer_class = HealthCheckSerializer
    filterset_class = HealthCheckFilter
    pagination_class = HealthCheckCursorPagination
    filter_backends = [DjangoFilterBackend]  # one order, the cursor's
    queryset = HealthCheck.objects.none()  # for the schema; get_queryset scopes per request

    def get_queryset(self):
        return HealthCheck.objects.for_user(self.request.user).select_related("device__site")
