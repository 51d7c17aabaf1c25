"""Agent endpoints of the devices app: what a device may ask about itself."""

from django.db import connection
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from devices_app.authentication import DeviceCredentialAuthentication, IsDevice
from devices_app.models import Device


class AgentDeviceSerializer(serializers.ModelSerializer):
    site = serializers.CharField(source="site.site_id", read_only=True)

    class Meta:
        model = Device
        fields = ["device_id", "name", "device_type", "site", "status", "firmware_version", "config"]
        read_only_fields = fields


class AgentView(APIView):
    """Base of every agent endpoint: device credentials only, acting on `request.user.device`.

    Any authenticated request counts as the device being seen (docs/monitoring.md, "Seen"):
    a terminal that polls for work, acknowledges or reports is alive and reaching us, whether
    or not it also sends heartbeats. Recording it is the heartbeat's own service, so it costs
    nothing for a device seen within the touch window, and one Redis HSET otherwise."""

    authentication_classes = [DeviceCredentialAuthentication]
    permission_classes = [IsDevice]
    records_seen = True  # False where the view records the device's report itself

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # On the embedded SQLite file there is no monitoring (no sweep, no heartbeat ingest:
        # it uses PostgreSQL's SQL), so a request is not recorded as a sighting there and the
        # endpoints that need nothing else keep working.
        if self.records_seen and connection.vendor == "postgresql":
            from monitoring_app.ingest import heartbeat_record

            heartbeat_record(device=request.user.device)


class AgentMeView(AgentView):
    @extend_schema(
        summary="The calling device: who it is and its current configuration", responses=AgentDeviceSerializer
    )
    def get(self, request):
        return Response(AgentDeviceSerializer(request.user.device).data)
