"""Agent endpoints of the jobs app: a device fetches its work and reports on it.

Every lookup is by (delivery id, calling device): another device's delivery, or an id
that does not exist, is the same 404. Reports are conditional UPDATEs, so repeats and
reports out of order (a result before its ack, an ack after the result) are harmless;
the answer always carries the delivery's current status (`cancelled`: drop the work).
"""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from devices_app.api.agent import AgentView
from jobs_app import services
from jobs_app.api.serializers import (
    CommandListSerializer,
    CommandSerializer,
    DeferredStateSerializer,
    DeferSerializer,
    DeliveryStateSerializer,
    ResultSerializer,
)
from jobs_app.selectors import device_commands


class AgentCommandsView(AgentView):
    @extend_schema(
        summary="The calling device's work: deliveries sent to it and not yet finished",
        description="Poll this. Work appears here when the rollout hands it to the device "
        "(status `sent`) and stays until the device reports an outcome; acknowledge each "
        "delivery when you take it.",
        responses=CommandListSerializer,
    )
    def get(self, request):
        commands = device_commands(device=request.user.device, limit=settings.HOMEPOT_JOBS_POLL_LIMIT)
        return Response({"commands": CommandSerializer(commands, many=True).data})


class AgentAckView(AgentView):
    @extend_schema(
        summary="Acknowledge a delivery: the device has the work",
        request=None,
        responses=DeliveryStateSerializer,
    )
    def post(self, request, delivery_id):
        delivery = services.delivery_acknowledge(device=request.user.device, delivery_id=delivery_id)
        return Response(DeliveryStateSerializer(delivery).data)


class AgentResultView(AgentView):
    @extend_schema(
        summary="Report a delivery's outcome: completed, or failed with an error",
        request=ResultSerializer,
        responses=DeliveryStateSerializer,
    )
    def post(self, request, delivery_id):
        serializer = ResultSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        delivery = services.delivery_report(
            device=request.user.device,
            delivery_id=delivery_id,
            outcome=data["status"],
            details=data["details"],
            error=data["error"],
            previous_config=data["previous_config"],
        )
        return Response(DeliveryStateSerializer(delivery).data)


class AgentDeferView(AgentView):
    @extend_schema(
        summary='Defer a delivery: "not now" (e.g. a sale in progress), with a reason and a delay',
        description="The work goes back to the rollout and is offered again after the delay "
        "granted (the answer's `next_attempt_at`), within the job's deferral policy. Past the "
        "policy's limit the job decides: the work is forced on the device (`forced`: do it "
        "now; a further deferral is ignored), skipped (`cancelled`) or failed (`failed`). "
        "Deferring a delivery that is not sent or acknowledged changes nothing.",
        request=DeferSerializer,
        responses=DeferredStateSerializer,
    )
    def post(self, request, delivery_id):
        serializer = DeferSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        delivery = services.delivery_defer(
            device=request.user.device, delivery_id=delivery_id, **serializer.validated_data
        )
        return Response(DeferredStateSerializer(delivery).data)
