"""HOMEPOT's URLs: the operator console, the REST API (at / as the guide writes it, and at
/api/v1/), its OpenAPI schema and readers, the liveness and readiness probes and the Prometheus metrics."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from homepot.api import urls as api_urls
from homepot.api.docs import RedocView, SchemaView, SwaggerView
from homepot.views import healthz, metrics, readyz

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # For Prometheus (bearer token), outside /api/: the devices' API never serves it.
    path("metrics", metrics, name="metrics"),
    re_path(r"^api/schema/?$", SchemaView.as_view(), name="schema"),
    re_path(r"^docs/?$", SwaggerView.as_view(), name="swagger-ui"),
    re_path(r"^redoc/?$", RedocView.as_view(), name="redoc"),
    path("api/v1/", include("accounts.api.urls")),
    # Devices calling in as themselves (Authorization: Device <credential>).
    path("api/v1/agent/", include("devices_app.api.agent_urls")),
    path("api/v1/agent/", include("jobs_app.api.agent_urls")),
    path("api/v1/agent/", include("monitoring_app.api.agent_urls")),
    path("api/v1/fleet/", include("monitoring_app.api.fleet_urls")),
    path("api/v1/", include("monitoring_app.api.urls")),
    path("api/v1/", include((api_urls.v1_urlpatterns, "api"), namespace="api-v1")),
    path("", include((api_urls.urlpatterns, "api"), namespace="api")),
]

handler404 = "homepot.views.not_found"
handler500 = "homepot.views.server_error"
