"""/api/v1/agent/... endpoints of the jobs app (mounted by homepot.urls)."""

from django.urls import re_path

from jobs_app.api.agent import AgentAckView, AgentCommandsView, AgentDeferView, AgentResultView

urlpatterns = [
    re_path(r"^commands/?$", AgentCommandsView.as_view(), name="agent-commands"),
    re_path(r"^deliveries/(?P<delivery_id>[0-9]{1,18})/ack/?$", AgentAckView.as_view(), name="agent-ack"),
    re_path(
        r"^deliveries/(?P<delivery_id>[0-9]{1,18})/result/?$", AgentResultView.as_view(), name="agent-result"
    ),
    re_path(
        r"^deliveries/(?P<delivery_id>[0-9]{1,18})/defer/?$", AgentDeferView.as_view(), name="agent-defer"
    ),
]
