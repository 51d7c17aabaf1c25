"""The OpenAPI schema and its two readers, Swagger UI (/docs) and ReDoc (/redoc).

They are public on purpose: the schema describes endpoints and fields, never data, and
every endpoint it describes still demands a token. A store manager can open /docs before
logging in, then use "Authorize" with a token (or their admin session) to try requests.
Their scripts and styles come from drf-spectacular-sidecar's static files, so the pages
work on a machine with no internet access.
"""

from django.template import engines
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny
from rest_framework.renderers import TemplateHTMLRenderer

import homepot.api.schema  # noqa: F401  (registers the bearer-token scheme with drf-spectacular)

# drf-spectacular's ReDoc page links Google Fonts; offline, the page would wait on them.
_OFFLINE_REDOC = """{% extends "drf_spectacular/redoc.html" %}
{% block head %}
<title>{{ title|default:"Redoc" }}</title>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body { margin: 0; padding: 0; }</style>
{% endblock head %}"""


class _OfflineRedocRenderer(TemplateHTMLRenderer):
    def resolve_template(self, template_names):
        return engines["django"].from_string(_OFFLINE_REDOC)


class SchemaView(SpectacularAPIView):
    permission_classes = [AllowAny]


class SwaggerView(SpectacularSwaggerView):
    permission_classes = [AllowAny]
    url_name = "schema"


class RedocView(SpectacularRedocView):
    permission_classes = [AllowAny]
    renderer_classes = [_OfflineRedocRenderer]
    url_name = "schema"
