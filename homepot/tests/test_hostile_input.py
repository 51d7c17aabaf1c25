"""Hostile and malformed input answers 400 (or a JSON 404) naming what is wrong, never 500
and never an HTML page: date filters PostgreSQL cannot hold, text PostgreSQL cannot store,
bodies of the wrong JSON type, bad paging parameters and unknown API paths."""

import json

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot import views
from homepot.api.docs import RedocView, SwaggerView
from homepot.api.filters import StrictIsoDateTimeFilter
from homepot.tests.api_helpers import assert_error
from jobs_app.tests.factories import JobFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def device():
    return DeviceFactory()


@pytest.fixture
def device_api(device) -> APIClient:
    _, secret = device_credential_issue(actor=None, device=device)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    client.secret = secret
    return client


# --- Date filters ---------------------------------------------------------------------------------

DATE_FILTERS = [
    ("/devices", "last_seen_after"),
    ("/devices", "last_seen_before"),
    ("/api/v1/devices", "last_seen_after"),
    ("/jobs", "created_after"),
    ("/jobs", "created_before"),
    ("/api/v1/audit-logs", "since"),
    ("/api/v1/audit-logs", "until"),
    ("/api/v1/audit-logs/export", "since"),
    ("/api/v1/alerts", "since"),
]


@pytest.mark.parametrize(("path", "param"), DATE_FILTERS)
@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "2026-12-29T02:19:54+24:00",  # no such offset
        "2026-13-01T00:00:00Z",
        "yesterday",
    ],
)
def test_a_date_filter_python_cannot_hold_is_a_400_naming_it(admin_api, path, param, value):
    assert_error(admin_api.get(path, {param: value}), 400, field=param)


@pytest.mark.parametrize(("path", "param"), DATE_FILTERS)
def test_a_date_filter_with_an_offset_postgresql_refuses_is_read_in_utc(admin_api, path, param):
    # PostgreSQL refuses offsets beyond ±15:59 in a timestamptz literal; the filter hands it
    # the UTC instant instead, so any offset ISO 8601 allows works.
    response = admin_api.get(path, {param: "2026-12-29T02:19:54-23:29"})
    assert response.status_code == 200, response.content
    if path.endswith("/export"):
        assert b"".join(response.streaming_content).startswith(b"id,")


def test_a_date_filter_with_a_large_offset_compares_the_instant(admin_api):
    site = SiteFactory()
    seen = DeviceFactory(site=site)
    seen.last_seen = seen.created_at
    seen.save(update_fields=["last_seen"])
    # The same instant as last_seen, written with a -23:29 offset.
    from datetime import timedelta, timezone

    local = seen.last_seen.astimezone(timezone(-timedelta(hours=23, minutes=29)))
    ids = [
        row["device_id"]
        for row in admin_api.get("/devices", {"last_seen_after": local.isoformat()}).json()["results"]
    ]
    assert ids == [seen.device_id]
    assert admin_api.get("/devices", {"last_seen_before": local.isoformat()}).json()["results"] == []


def test_every_date_filter_of_every_filter_set_is_the_strict_one():
    # One place validates date-times: a plain django-filter DateTimeFilter would reach
    # PostgreSQL with whatever offset it was given.
    import django_filters

    from devices_app import filters as device_filters
    from jobs_app import filters as job_filters
    from monitoring_app import filters as monitoring_filters
    from sites_app import filters as site_filters

    modules = (device_filters, job_filters, monitoring_filters, site_filters)
    filter_sets = [
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, django_filters.FilterSet)
    ]
    dated = [
        (filter_set.__name__, name)
        for filter_set in filter_sets
        for name, declared in filter_set.base_filters.items()
        if isinstance(declared, (django_filters.DateTimeFilter, django_filters.DateFilter))
    ]
    assert len(dated) == 9  # ... 2 of them the health history's since/until
    for filter_set_name, name in dated:
        declared = next(f for f in filter_sets if f.__name__ == filter_set_name).base_filters[name]
        assert isinstance(declared, StrictIsoDateTimeFilter), (filter_set_name, name)


def test_the_audit_export_refuses_a_bad_date_before_it_streams(admin_api):
    response = admin_api.get("/api/v1/audit-logs/export", {"until": "0001-01-01T00:00:00+05:00"})
    assert_error(response, 400, field="until")
    assert not response.streaming


# --- Text PostgreSQL cannot store -----------------------------------------------------------------

LONE_SURROGATE = '"\\ud800"'  # a JSON escape of half a UTF-16 pair
LONE_SURROGATE_UPPER = '"\\uDFFF"'
NUL = '"\\u0000"'


def post_raw(client, path: str, body: str):
    return client.post(path, body, content_type="application/json")


@pytest.mark.parametrize("text", [LONE_SURROGATE, LONE_SURROGATE_UPPER, NUL])
@pytest.mark.parametrize(
    "template",
    [
        '{"status": "healthy", "metrics": {"k": TEXT}}',
        '{"status": "healthy", "metrics": {TEXT: 1}}',
        '{"status": "healthy", "metrics": {"deep": [{"k": ["x", TEXT]}]}}',
        '{"status": "healthy", "error_message": TEXT}',
    ],
)
def test_unstorable_text_in_a_health_report_is_a_400(device_api, template, text):
    assert_error(post_raw(device_api, "/api/v1/agent/health/", template.replace("TEXT", text)), 400)


@pytest.mark.parametrize("text", [LONE_SURROGATE, NUL])
def test_unstorable_text_in_a_health_batch_is_a_400(device_api, text):
    body = '{"reports": [{"status": "healthy", "metrics": {TEXT: "x"}}]}'.replace("TEXT", text)
    assert_error(post_raw(device_api, "/api/v1/agent/health/batch/", body), 400)


@pytest.mark.parametrize("text", [LONE_SURROGATE, NUL])
def test_unstorable_text_in_a_segment_is_a_400(admin_api, text):
    body = '{"name": "tills", "segment": {"device_type": [TEXT]}}'.replace("TEXT", text)
    assert_error(post_raw(admin_api, "/segments", body), 400)
    body = '{"name": TEXT, "segment": {"device_type": ["pos_terminal"]}}'.replace("TEXT", text)
    assert_error(post_raw(admin_api, "/segments", body), 400)


@pytest.mark.parametrize("text", [LONE_SURROGATE, NUL])
def test_unstorable_text_in_a_job_segment_is_a_400(admin_api, text):
    SiteFactory(site_id="site-123")
    body = '{"site_id": "site-123", "action": "update_config", "segment": {"status": [TEXT]}}'.replace(
        "TEXT", text
    )
    assert_error(post_raw(admin_api, "/jobs", body), 400)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"site_id": TEXT, "name": "x"}', "site_id"),
        ('{"site_id": "s-1", "name": "x", "extra": {"a": [1, {"b": TEXT}]}}', "extra"),
        ('{"site_id": "s-1", "name": "x", "extra": {"a": {"b": TEXT}}}', "extra"),
        ('{"site_id": "s-1", "name": "x", "extra": {TEXT: 1}}', "extra"),
        ("[TEXT]", "0"),
        ("TEXT", "non_field_errors"),
    ],
)
def test_the_parser_names_where_the_unstorable_text_is(admin_api, body, field):
    error = assert_error(
        post_raw(admin_api, "/sites", body.replace("TEXT", LONE_SURROGATE)), 400, field=field
    )
    assert "surrogate" in error["fields"][field][0]


def test_the_parser_says_where_inside_a_field_the_unstorable_text_is(admin_api):
    body = '{"site_id": "s-1", "name": "x", "extra": {"a": [1, {"b": "\\ud800"}]}}'
    error = assert_error(post_raw(admin_api, "/sites", body), 400, field="extra")
    assert error["fields"]["extra"][0].endswith("(at extra.a.1.b)")


def test_paired_surrogates_are_ordinary_text(admin_api):
    # "\ud83d\ude00" is one character (an emoji) written as a UTF-16 pair: valid JSON text.
    response = post_raw(admin_api, "/sites", '{"site_id": "site-emoji", "name": "Caf\\ud83d\\ude00"}')
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "Caf\U0001f600"


# --- Bodies of the wrong JSON type ----------------------------------------------------------------


@pytest.mark.parametrize("body", ["null", "[]", "[1]", "1", '"x"', "true"])
def test_a_heartbeat_body_that_is_not_an_object_is_a_400(device_api, device, body):
    response = Client().post(
        "/api/v1/agent/heartbeat",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Device {device_api.secret}",
    )
    assert_error(response, 400)


@pytest.mark.parametrize("body", ["null", "[]", "1", '"x"'])
@pytest.mark.parametrize(
    "path",
    ["/api/v1/agent/health", "/api/v1/agent/health/batch"],
)
def test_agent_bodies_that_are_not_objects_are_400(device_api, path, body):
    assert_error(post_raw(device_api, path, body), 400)


@pytest.mark.parametrize("body", ["null", "[]", "1"])
@pytest.mark.parametrize("path", ["/sites", "/devices", "/jobs", "/segments", "/api/v1/users"])
def test_create_bodies_that_are_not_objects_are_400(admin_api, path, body):
    assert_error(post_raw(admin_api, path, body), 400)


def test_a_job_action_body_that_is_not_an_object_is_a_400(admin_api):
    job = JobFactory()
    for body in ("null", "[]", "1"):
        assert_error(post_raw(admin_api, f"/jobs/{job.pk}/pause", body), 400)


# --- Paging parameters ----------------------------------------------------------------------------

PAGED = ["/sites", "/devices", "/jobs", "/segments", "/api/v1/audit-logs", "/api/v1/alerts", "/api/v1/users"]


@pytest.mark.parametrize("path", PAGED)
@pytest.mark.parametrize("value", ["-1", "0", "abc", "1.5", ""])
def test_a_bad_page_size_is_a_400_naming_it(admin_api, path, value):
    if value == "":
        assert admin_api.get(path, {"page_size": value}).status_code == 200
        return
    assert_error(admin_api.get(path, {"page_size": value}), 400, field="page_size")


@pytest.mark.parametrize("path", PAGED)
def test_a_page_size_above_the_maximum_is_capped(admin_api, path):
    assert admin_api.get(path, {"page_size": "100000"}).status_code == 200


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_a_bad_page_number_is_a_400_naming_it(admin_api, value):
    assert_error(admin_api.get("/sites", {"page": value}), 400, field="page")


def test_a_page_past_the_end_is_still_a_404(admin_api):
    assert_error(admin_api.get("/sites", {"page": "99"}), 404)


# --- Unknown API paths answer JSON ----------------------------------------------------------------


def _is_json_api_view(callback) -> bool:
    """A DRF view other than the schema's HTML readers (/docs, /redoc)."""
    view_class = getattr(callback, "cls", None)
    return view_class is not None and view_class not in (SwaggerView, RedocView)


def _api_prefixes() -> set[str]:
    """The first path segment of every route served by a DRF view (the API), found by walking
    the URL configuration itself."""
    found = set()

    def walk(patterns, prefix=""):
        for entry in patterns:
            route = prefix + str(entry.pattern).lstrip("^")
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and _is_json_api_view(entry.callback):
                found.add(route.split("/", 1)[0].rstrip("$?"))

    walk(get_resolver().url_patterns)
    return found


def test_every_api_route_prefix_is_an_api_path():
    prefixes = _api_prefixes()
    assert {"api", "sites", "devices", "jobs", "segments"} <= prefixes
    for prefix in prefixes:
        assert views.is_api_path(f"/{prefix}/no-such-thing/really"), prefix


@pytest.mark.parametrize("prefix", sorted(_api_prefixes()))
def test_an_unknown_path_under_every_api_prefix_is_a_json_404(admin_api, prefix):
    response = admin_api.get(f"/{prefix}/no-such-thing/really/not")
    assert_error(response, 404)


def test_non_api_paths_keep_html_404s(admin_api):
    response = admin_api.get("/no-such-page")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert not views.is_api_path("/sitesmap")


def test_an_api_500_is_json():
    request = Client().get("/jobs/x").wsgi_request
    response = views.server_error(request)
    assert response.status_code == 500
    assert json.loads(response.content)["error"]["code"] == "server_error"


# --- Schema and behaviour agree -------------------------------------------------------------------


def test_a_system_jobs_creator_is_null_and_the_schema_says_so(admin_api):
    job = JobFactory(created_by=None)
    assert admin_api.get(f"/jobs/{job.pk}").json()["created_by"] is None
    schema = admin_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for name in ("Job", "JobDetail"):
        assert schema["components"]["schemas"][name]["properties"]["created_by"].get("nullable") is True


def test_the_schema_documents_what_lists_and_the_export_answer(admin_api):
    # Found by the OpenAPI fuzz: a page past the end (404) was undocumented on every list,
    # and the audit export documented neither its filters nor the 400 a bad one gives.
    paths = admin_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    assert "404" in paths["/sites"]["get"]["responses"]
    assert "404" in paths["/devices"]["get"]["responses"]
    export = paths["/api/v1/audit-logs/export"]["get"]
    assert {"since", "until"} <= {param["name"] for param in export["parameters"]}
    assert "400" in export["responses"]


def test_a_site_less_segment_answers_the_documented_site_and_owner_on_every_method(admin_api):
    # Found by the OpenAPI fuzz: a PATCH dropped `site` from the answer (DRF skips a dotted
    # source's default in partial updates), and `site` null was not in the schema.
    created = admin_api.post("/segments", {"name": "all tills", "segment": {"device_type": ["pos_terminal"]}})
    assert created.status_code == 201, created.content
    segment_id = created.json()["id"]
    for response in (
        created,
        admin_api.get(f"/segments/{segment_id}"),
        admin_api.patch(f"/segments/{segment_id}", {"name": "every till"}),
    ):
        body = response.json()
        assert (body["site"], body["site_id"]) == (None, None), body
        assert body["owner"] == admin_api.user.username
    schema = admin_api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    properties = schema["components"]["schemas"]["SavedSegment"]["properties"]
    assert properties["site"]["nullable"] and properties["owner"]["nullable"]
