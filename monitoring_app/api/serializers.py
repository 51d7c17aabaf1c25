from rest_framework import serializers

from monitoring_app.models import AuditLog


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
