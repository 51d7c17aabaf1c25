"""What every API endpoint shares: authentication, the error shape, body limits, routing,
the OpenAPI schema and its readers, the liveness probe."""

import io
import json
import re

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.db import OperationalError
from django.test import RequestFactory
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from accounts.services import api_token_issue
from homepot import views
from homepot.api.parsers import BoundedJSONParser, PayloadTooLarge
from homepot.tests.api_helpers import assert_error
from sites_app.models import Site

pytestmark = pytest.mark.django_db

SITE = {"site_id": "site-003", "name": "North Branch"}
EXTERNAL = ("cdn.", "jsdelivr", "unpkg", "googleapis", "gstatic", "cloudflare")


# --- Authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("keyword", ["Bearer", "Token", "bearer"])
def test_token_keywords(admin_user, keyword):
    _, raw = api_token_issue(user=admin_user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {raw}")
    assert client.get("/sites").status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer hp_wrong", "Token "])
def test_malformed_or_unknown_tokens_are_401(api_client, header):
    api_client.credentials(HTTP_AUTHORIZATION=header)
    response = api_client.get("/sites")
    assert_error(response, 401)
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_revoked_token_is_401(admin_user):
    token, raw = api_token_issue(user=admin_user)
    token.revoked_at = token.created_at
    token.save()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_error(client.get("/devices"), 401)


def test_session_authentication_reads(admin_user):
    client = APIClient()
    client.force_login(admin_user)
    assert client.get("/sites").status_code == 200
    assert client.get("/api/v1/devices").status_code == 200


def test_session_writes_need_the_csrf_token(admin_user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert_error(client.post("/sites", SITE, format="json"), 403)
    assert not Site.objects.exists()


# --- Bodies --------------------------------------------------------------------------------------


def test_malformed_json_is_a_400(admin_api):
    assert_error(
        admin_api.post("/sites", '{"site_id": "site-003",', content_type="application/json"),
        400,
        code="parse_error",
    )


def test_deeply_nested_json_is_a_400_not_a_crash(admin_api):
    body = '{"site_id": "site-003", "name": "x", "description": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_error(admin_api.post("/sites", body, content_type="application/json"), 400, code="parse_error")


def test_nan_is_not_json(admin_api):
    body = '{"site_id": "site-003", "name": NaN}'
    assert_error(admin_api.post("/sites", body, content_type="application/json"), 400, code="parse_error")


def test_form_bodies_are_415(admin_api):
    body = "site_id=site-003&name=North+Branch"
    assert_error(admin_api.post("/sites", body, content_type="application/x-www-form-urlencoded"), 415)
    assert not Site.objects.exists()


def test_oversized_body_is_a_413(admin_api, settings):
    body = json.dumps({**SITE, "description": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE})
    assert_error(
        admin_api.post("/sites", body, content_type="application/json"), 413, code="payload_too_large"
    )
    assert not Site.objects.exists()


def test_the_limit_follows_the_setting(admin_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 200
    body = json.dumps({**SITE, "description": "x" * 300})
    assert_error(admin_api.post("/sites", body, content_type="application/json"), 413)
    assert admin_api.post("/sites", SITE, format="json").status_code == 201


def test_the_parser_bounds_a_stream_that_declares_no_length(settings):
    """A chunked body has no Content-Length; the parser still stops at the limit."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    request = RequestFactory().post("/sites", b"", content_type="application/json")
    request.META.pop("CONTENT_LENGTH", None)
    stream = io.BytesIO(json.dumps({"description": "x" * 500}).encode())
    with pytest.raises(PayloadTooLarge):
        BoundedJSONParser().parse(stream, parser_context={"request": request})
    assert BoundedJSONParser().parse(io.BytesIO(b'{"a": 1}'), parser_context={"request": request}) == {"a": 1}


# --- Routing and error pages --------------------------------------------------------------------------


def test_root_redirects_to_the_admin(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_the_admin_is_still_wired(client, admin_browser):
    assert client.get("/admin/").status_code in (200, 302)
    assert admin_browser.get("/admin/").status_code == 200


@pytest.mark.parametrize("path", ["/sites/site-1/extra", "/api/v1/nothing", "/devices/a/b/c", "/api/nothing"])
def test_unknown_api_paths_answer_in_the_error_shape(admin_api, path):
    assert_error(admin_api.get(path), 404, code="not_found")


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/devices/a/b/c", "/api/nothing", "/jobs/x/y"])
def test_unknown_api_paths_answer_json_with_debug_on_as_run_sh_serves(admin_api, settings, path):
    # With DEBUG on, Django's technical 404 page never calls handler404.
    settings.DEBUG = True
    assert_error(admin_api.get(path), 404, code="not_found")


def test_with_debug_on_the_apis_own_404s_keep_their_message(admin_api, settings):
    settings.DEBUG = True
    error = assert_error(admin_api.get("/sites/no-such-site"), 404)
    assert error["code"] == "not_found" and error["message"] != "No such endpoint."


def test_with_debug_on_unknown_non_api_paths_keep_the_html_404(client, settings):
    settings.DEBUG = True
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_unknown_non_api_paths_keep_the_html_404(client):
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_server_errors_on_api_paths_answer_in_the_error_shape():
    response = views.server_error(RequestFactory().get("/devices"))
    assert response.status_code == 500
    assert json.loads(response.content)["error"]["code"] == "server_error"


def test_method_not_allowed_uses_the_error_shape(admin_api):
    assert_error(admin_api.delete("/sites"), 405)


# --- Liveness probe -------------------------------------------------------------------------------------


def test_healthz_needs_no_login_and_pings_the_database(api_client, django_assert_num_queries):
    with django_assert_num_queries(1):
        response = api_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_healthz_answers_head_but_not_post(api_client):
    assert api_client.head("/healthz").status_code == 200
    assert api_client.post("/healthz").status_code == 405


def test_healthz_is_503_when_the_database_is_down(api_client, monkeypatch):
    class DownConnection:
        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(views, "connection", DownConnection())
    response = api_client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"


# --- OpenAPI schema and docs ------------------------------------------------------------------------------


@pytest.fixture
def schema(api_client):
    response = api_client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


def test_schema_is_public_and_valid_openapi(schema):
    validate_schema(schema)  # raises on an invalid document
    assert schema["info"]["title"] == "HOMEPOT API"


def test_schema_documents_the_guides_paths_once(schema):
    assert {"/sites", "/sites/{site_id}", "/devices", "/devices/{device_id}"} <= set(schema["paths"])
    resources = [path for path in schema["paths"] if re.search(r"/(sites|devices)\b", path)]
    assert sorted(resources) == [
        "/api/v1/fleet/devices/{device_id}/timeline/",
        "/api/v1/fleet/sites/{site_id}/timeline/",
        "/devices",
        "/devices/export",
        "/devices/export/xlsx",
        "/devices/import",
        "/devices/{device_id}",
        "/devices/{device_id}/credential",
        "/devices/{device_id}/jobs",
        "/sites",
        "/sites/export",
        "/sites/export/xlsx",
        "/sites/import",
        "/sites/{site_id}",
        "/sites/{site_id}/health",
        "/sites/{site_id}/maintenance",
    ]
    assert set(schema["paths"]["/sites"]) == {"get", "post"}
    assert set(schema["paths"]["/devices/{device_id}"]) == {"get", "put", "patch", "delete"}


def test_schema_describes_bearer_tokens_and_the_error_shape(schema):
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    post = schema["paths"]["/devices"]["post"]
    assert {"201", "400", "401", "403", "409", "413"} <= set(post["responses"])
    assert post["responses"]["409"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    site_ref = schema["components"]["schemas"]["DeviceRequest"]["properties"]["site_id"]
    assert {option["type"] for option in site_ref["oneOf"]} == {"integer", "string"}
    listing = schema["paths"]["/devices"]["get"]
    names = {param["name"] for param in listing["parameters"]}
    assert {"site", "device_type", "status", "search", "ordering", "cursor"} <= names
    assert "page" not in names


def test_schema_generates_without_warnings(tmp_path):
    # The command exits with an error on any warning or on an invalid schema.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "/devices/{device_id}" in (tmp_path / "schema.yaml").read_text()


def _local_assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize(("path", "marker"), [("/docs", "swagger-ui"), ("/redoc", "redoc")])
def test_docs_render_with_no_external_resources(api_client, path, marker):
    response = api_client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert marker in html
    for external in EXTERNAL:
        assert external not in html, external
    assets = [url for url in _local_assets(html) if url.startswith("/static/")]
    assert assets, "the page should load its scripts from our own static files"
    for url in assets:
        assert finders.find(url.removeprefix("/static/")), f"{url} is not a shipped static file"


def test_a_lost_race_on_a_unique_value_is_a_409_naming_the_field(admin_user):
    """Both checks pass, then a concurrent insert commits first: the database's unique
    constraint has the last word, and the answer still names the field."""
    from django.db import IntegrityError, transaction

    from homepot.api.errors import exception_handler
    from sites_app.tests.factories import SiteFactory

    SiteFactory(site_id="site-003")
    with pytest.raises(IntegrityError) as caught, transaction.atomic():
        Site.objects.create(site_id="site-003", name="Racer")

    response = exception_handler(caught.value, {})

    assert response.status_code == 409
    assert response.data["error"]["code"] == "duplicate"
    assert list(response.data["error"]["fields"]) == ["site_id"]
