"""/api/v1/agent/... endpoints of the jobs app (mounted by homepot.urls)."""

from django.urls import re_path

from jobs_app.api.agent import AgentAckView, AgentCommandsView, AgentResultView

urlpatterns = [
    re_path(r"^commands/?$", AgentCommandsView.as_view(), name="agent-commands"),
    re_path(r"^deliveries/(?P<delivery_id>[0-9]{1,18})/ack/?$", AgentAckView.as_view(), name="agent-ack"),
    re_path(
        r"^deliveries/(?P<delivery_id>[0-9]{1,18})/result/?$", AgentResultView.as_view(), name="agent-result"
    ),
]
