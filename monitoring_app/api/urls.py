"""/api/v1/audit-logs and /api/v1/alerts (mounted by homepot.urls)."""

from homepot.api.routers import resource_urls
from monitoring_app.api.views import AlertViewSet, AuditLogViewSet

urlpatterns = resource_urls([("audit-logs", AuditLogViewSet, "auditlog"), ("alerts", AlertViewSet, "alert")])
