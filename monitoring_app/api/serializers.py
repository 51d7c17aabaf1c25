from rest_framework import serializers

from homepot.api.fields import StrictCharField
from monitoring_app.models import Alert, AlertNote, AuditLog, HealthCheck


class AuditLogSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_ref", read_only=True)
    site = serializers.CharField(source="site_ref", read_only=True)
    device = serializers.CharField(source="device_ref", read_only=True)

    class Meta:
        model = AuditLog
        fields = [
            "id",
            "created_at",
            "event_type",
            "actor_id",
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
        read_only_fields = fields


class AlertNoteSerializer(serializers.ModelSerializer):
    author = serializers.SerializerMethodField()

    class Meta:
        model = AlertNote
        fields = ["id", "author", "text", "created_at"]
        read_only_fields = fields

    def get_author(self, note) -> str:
        return note.author.get_username() if note.author else ""


class AlertSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.site_id", read_only=True)
    device = serializers.CharField(source="device.device_id", read_only=True, allow_null=True, default=None)
    state = serializers.CharField(read_only=True, help_text="open, acknowledged or resolved.")
    acknowledged_by = serializers.SerializerMethodField()
    resolved_by = serializers.SerializerMethodField()
    notes = AlertNoteSerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "kind",
            "severity",
            "state",
            "message",
            "site",
            "device",
            "opened_at",
            "last_seen_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "resolved_by",
            "notified_at",
            "notes",
        ]
        read_only_fields = fields

    def get_acknowledged_by(self, alert) -> str | None:
        return alert.acknowledged_by.get_username() if alert.acknowledged_by else None

    def get_resolved_by(self, alert) -> str | None:
        return alert.resolved_by.get_username() if alert.resolved_by else None


class AlertNoteInputSerializer(serializers.Serializer):
    text = StrictCharField(max_length=5000)


class HealthCheckSerializer(serializers.ModelSerializer):
    """One report a device made about itself, named by business ids."""

    device = serializers.CharField(source="device.device_id", read_only=True)
    site = serializers.CharField(source="device.site.site_id", read_only=True)

    class Meta:
        model = HealthCheck
        fields = [
            "id",
            "device",
            "site",
            "status",
            "response_time_ms",
            "metrics",
            "error_message",
            "checked_at",
        ]
        read_only_fields = fields
