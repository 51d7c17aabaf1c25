"""/api/v1/agent/... endpoints of the monitoring app (mounted by homepot.urls)."""

from django.urls import re_path

from monitoring_app.api.agent import heartbeat_endpoint
from monitoring_app.api.health_fast import health_batch_endpoint, health_endpoint

urlpatterns = [
    re_path(r"^heartbeat/?$", heartbeat_endpoint, name="agent-heartbeat"),
    re_path(r"^health/?$", health_endpoint, name="agent-health"),
    re_path(r"^health/batch/?$", health_batch_endpoint, name="agent-health-batch"),
]
