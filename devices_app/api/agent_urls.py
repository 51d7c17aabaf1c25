"""/api/v1/agent/... endpoints of the devices app (mounted by homepot.urls)."""

from django.urls import re_path

from devices_app.api.agent import AgentMeView

urlpatterns = [
    re_path(r"^me/?$", AgentMeView.as_view(), name="agent-me"),
]
