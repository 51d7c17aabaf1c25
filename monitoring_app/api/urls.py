"""/api/v1/audit-logs (mounted by homepot.urls)."""

from homepot.api.routers import resource_urls
from monitoring_app.api.views import AuditLogViewSet

urlpatterns = resource_urls([("audit-logs", AuditLogViewSet, "auditlog")])
