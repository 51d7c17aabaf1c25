"""Agent endpoints of the devices app: what a device may ask about itself."""

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
    """Base of every agent endpoint: device credentials only, acting on `request.user.device`."""

    authentication_classes = [DeviceCredentialAuthentication]
    permission_classes = [IsDevice]


class AgentMeView(AgentView):
    @extend_schema(
        summary="The calling device: who it is and its current configuration", responses=AgentDeviceSerializer
    )
    def get(self, request):
        return Response(AgentDeviceSerializer(request.user.device).data)
