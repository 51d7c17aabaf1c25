"""/api/v1/audit-logs, /api/v1/alerts and /api/v1/health-checks (mounted by homepot.urls)."""

from homepot.api.routers import resource_urls
from monitoring_app.api.views import AlertViewSet, AuditLogViewSet, HealthCheckViewSet

urlpatterns = resource_urls(
    [
        ("audit-logs", AuditLogViewSet, "auditlog"),
        ("alerts", AlertViewSet, "alert"),
        ("health-checks", HealthCheckViewSet, "healthcheck"),
    ]
)
