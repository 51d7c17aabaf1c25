"""Agent endpoints of the monitoring app: heartbeats and health reports (device credentials).

A device reports about itself; a gateway device may also report for devices of its own
site (the batch form). Bad input answers 400 naming the field, and nothing is stored.
"""

import datetime
import json

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from devices_app.api.agent import AgentView
from devices_app.choices import DeviceType
from devices_app.models import Device
from homepot import metrics
from homepot.api.fields import StrictCharField
from monitoring_app import ingest
from monitoring_app.choices import HealthStatus


def validate_device_clock(value: datetime.datetime) -> datetime.datetime:
    """The device's timestamp, refused when in the future (beyond the allowed skew) or older
    than the max report age: a wrong clock must never keep a device "online" or write
    history that retention would remove at once."""
    now = timezone.now()
    skew = datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS)
    max_age = datetime.timedelta(hours=settings.HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS)
    if value > now + skew:
        raise serializers.ValidationError(
            f"Is in the future (server time {now.isoformat()}); check the device clock."
        )
    if value < now - max_age:
        raise serializers.ValidationError(
            f"Is more than {settings.HOMEPOT_MONITORING_MAX_REPORT_AGE_HOURS} hours old; "
            "such reports are not kept."
        )
    return value


class RejectUnknownFields:
    """A typo'd field name is a 400 naming it, not a silently dropped measurement."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class HeartbeatSerializer(RejectUnknownFields, serializers.Serializer):
    timestamp = serializers.DateTimeField(
        required=False, validators=[validate_device_clock], help_text="The device's clock (ISO 8601)."
    )


class HealthReportSerializer(RejectUnknownFields, serializers.Serializer):
    status = serializers.ChoiceField(choices=HealthStatus.choices)
    timestamp = serializers.DateTimeField(
        required=False,
        validators=[validate_device_clock],
        help_text="When the device measured this (its clock); defaults to the server's time.",
    )
    response_time_ms = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=3_600_000
    )
    cpu_percent = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    memory_percent = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    disk_percent = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    app_version = StrictCharField(required=False, max_length=64, allow_blank=True)
    firmware_version = StrictCharField(required=False, max_length=64, allow_blank=True)
    error_message = StrictCharField(required=False, max_length=2000, allow_blank=True)
    metrics = serializers.DictField(required=False, help_text="Free-form measurements (small JSON object).")

    def validate_metrics(self, value):
        problem = metrics_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value

    def to_report(self, data=None) -> ingest.HealthReport:
        return report_from(self.validated_data if data is None else data)


def metrics_problem(value: dict) -> str | None:
    """Why the free-form `metrics` object cannot be stored, or None."""
    text = json.dumps(value)
    if len(text.encode()) > settings.HOMEPOT_MONITORING_METRICS_MAX_BYTES:
        return f"Must be at most {settings.HOMEPOT_MONITORING_METRICS_MAX_BYTES} bytes as JSON."
    if "\\u0000" in text:  # PostgreSQL's jsonb cannot hold NUL
        return "Must not contain NUL characters."
    return None


def report_from(data: dict) -> ingest.HealthReport:
    """The report a validated body (HealthReportSerializer's fields) describes."""
    metrics = {"extra": data["metrics"]} if data.get("metrics") else {}
    for name in ("cpu_percent", "memory_percent", "disk_percent", "app_version", "firmware_version"):
        if data.get(name) is not None:
            metrics[name] = data[name]
    return ingest.HealthReport(
        status=data["status"],
        checked_at=data.get("timestamp") or timezone.now(),
        response_time_ms=data.get("response_time_ms"),
        error_message=data.get("error_message", ""),
        metrics=metrics,
        app_version=data.get("app_version"),
        firmware_version=data.get("firmware_version"),
    )


class BatchReportSerializer(HealthReportSerializer):
    device_id = StrictCharField(
        required=False,
        max_length=64,
        help_text="Whose report (a gateway reports for its site); default: the caller.",
    )


class HealthBatchSerializer(RejectUnknownFields, serializers.Serializer):
    reports = serializers.ListField(child=BatchReportSerializer(), allow_empty=False)

    def validate_reports(self, value):
        if len(value) > settings.HOMEPOT_MONITORING_BATCH_MAX_REPORTS:
            raise serializers.ValidationError(
                f"At most {settings.HOMEPOT_MONITORING_BATCH_MAX_REPORTS} reports per request."
            )
        return value


class HeartbeatAnswerSerializer(serializers.Serializer):
    device_id = serializers.CharField()
    status = serializers.CharField()
    server_time = serializers.DateTimeField()
    next_report_in = serializers.IntegerField(help_text="Seconds until the next report is expected.")


class StoredAnswerSerializer(serializers.Serializer):
    stored = serializers.IntegerField(help_text="How many health reports were stored.")


def heartbeat_answer(device) -> dict:
    # monitoring_app.api.heartbeat_fast writes the same answer out itself: keep them alike.
    return {
        "device_id": device.device_id,
        "status": device.status,
        "server_time": timezone.now(),
        "next_report_in": next_report_in(),
    }


def next_report_in() -> int:
    """When the terminal should report again (seconds): the interval the sweep expects."""
    return settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS


class IngestView(AgentView):
    """Heartbeats and health reports read only the device's identity and state: the
    narrower lookup of the same credential rule (every terminal calls these every minute)."""

    device_lookup = "identity"  # see DeviceCredentialAuthentication.lookup
    records_seen = False  # a heartbeat or health report records the device as seen itself
    ingest_kind = "heartbeat"  # the `kind` label of homepot_ingest_refused

    def finalize_response(self, request, response, *args, **kwargs):
        # Refusals are counted here, where the API decides them (the fast path never refuses);
        # acceptances in monitoring_app.ingest, which every accepted report goes through.
        if response.status_code >= 400:
            reason = _REFUSAL_REASONS.get(response.status_code, "error")
            metrics.ingest_refused.labels(kind=self.ingest_kind, reason=reason).inc()
        return super().finalize_response(request, response, *args, **kwargs)


# Status code -> the bounded `reason` label of homepot_ingest_refused.
_REFUSAL_REASONS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "unknown",
    405: "invalid",
    413: "too_large",
    415: "invalid",
    429: "throttled",
    503: "unavailable",
}


class HeartbeatView(IngestView):
    @extend_schema(
        summary="I am alive",
        description="Marks the calling device as seen now (server time). Cheap: the device row "
        "is written only when its state changes or every few seconds.",
        request=HeartbeatSerializer,
        responses=HeartbeatAnswerSerializer,
    )
    def post(self, request):
        # The hot path of the whole agent API (every terminal, every minute): an empty body
        # skips the serializer, and the answer is a plain dict (the same JSON the answer
        # serializer would give), rendered once.
        reported_at = None
        # No body (or `{}`) is "alive, now"; anything else, `null` and `[]` included, must be
        # a valid heartbeat object (the serializer refuses what is not an object).
        if request.data != {}:
            serializer = HeartbeatSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            reported_at = serializer.validated_data.get("timestamp")
        device = request.user.device
        ingest.heartbeat_record(device=device, reported_at=reported_at)
        return Response(heartbeat_answer(device))


# Well-formed heartbeats are answered before Django (monitoring_app.api.heartbeat_fast, wired
# in homepot.wsgi); this view answers the rest, and every request of Django's test client.
heartbeat_endpoint = HeartbeatView.as_view()


class HealthView(IngestView):
    ingest_kind = "health"

    @extend_schema(
        summary="Report my health",
        description="Stores one health report (history) and the device's latest health; "
        "also counts as a heartbeat. A 201 means the report is kept: in PostgreSQL, or in the "
        "durable Redis buffer that the drain writes to PostgreSQL within seconds "
        '(docs/monitoring.md, "What a 201 guarantees").',
        request=HealthReportSerializer,
        responses={201: StoredAnswerSerializer},
    )
    def post(self, request):
        serializer = HealthReportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = health_store(request.user.device, [serializer.validated_data])
        return Response(body, status=status.HTTP_201_CREATED)


class HealthBatchView(IngestView):
    ingest_kind = "health"

    @extend_schema(
        summary="Report many health reports at once",
        description="For a terminal catching up after an outage, or a store gateway reporting for "
        "the devices of its own site (`device_id` per report). All or nothing; a 201 means "
        "what it means for a single report.",
        request=HealthBatchSerializer,
        responses={201: StoredAnswerSerializer},
    )
    def post(self, request):
        serializer = HealthBatchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = health_store(request.user.device, serializer.validated_data["reports"])
        return Response(body, status=status.HTTP_201_CREATED)


def health_store(caller, reports: list[dict]) -> dict:
    """Store validated reports sent by `caller` (a device loaded by the identity lookup);
    the answer's body. Raises ValidationError naming a report whose device is unknown."""
    targets, devices = batch_targets(caller, reports)
    device_reports = [(targets[index], report_from(report)) for index, report in enumerate(reports)]
    stored = ingest.health_reports_record(device_reports=device_reports, devices=devices)
    return {"stored": stored}


def batch_targets(caller, reports) -> tuple[dict[int, int], dict[int, Device]]:
    """Report index -> device pk, and those devices (status and last seen loaded). Devices
    act as themselves; only a gateway may name other devices, and only of its own site.
    Others are "unknown" (never revealed)."""
    named = {r["device_id"] for r in reports if r.get("device_id") and r["device_id"] != caller.device_id}
    known = {}
    if named and caller.device_type == DeviceType.GATEWAY:
        known = {
            device_id: Device(pk=pk, device_id=device_id, status=status, last_seen=last_seen)
            for device_id, pk, status, last_seen in Device.objects.filter(
                site_id=caller.site_id, device_id__in=named
            ).values_list("device_id", "pk", "status", "last_seen")
        }
    known[caller.device_id] = caller
    targets, errors = {}, {}
    for index, report in enumerate(reports):
        device_id = report.get("device_id") or caller.device_id
        if device_id not in known:
            errors[f"reports.{index}.device_id"] = [f"Unknown device {device_id!r}."]
        else:
            targets[index] = known[device_id].pk
    if errors:
        raise serializers.ValidationError(errors)
    return targets, {device.pk: device for device in known.values()}
