"""/api/v1/agent/... endpoints of the monitoring app (mounted by homepot.urls)."""

from django.urls import re_path

from monitoring_app.api.agent import HealthBatchView, HealthView, heartbeat_endpoint

urlpatterns = [
    re_path(r"^heartbeat/?$", heartbeat_endpoint, name="agent-heartbeat"),
    re_path(r"^health/?$", HealthView.as_view(), name="agent-health"),
    re_path(r"^health/batch/?$", HealthBatchView.as_view(), name="agent-health-batch"),
]
