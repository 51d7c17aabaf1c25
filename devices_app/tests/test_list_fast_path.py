"""The device list's fast path (devices_app.api.list_fast, in front of Django's handler in
homepot.wsgi): a plain page answers exactly what the DRF view answers, byte for byte and
header for header, for every user and page; everything else reaches the DRF view.

Requests go through `homepot.wsgi.application`, the object gunicorn serves, in this process;
the DRF view's answer to the same request comes from Django's own handler behind it."""

import datetime
import json
from base64 import b64encode
from urllib.parse import urlsplit

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.services import api_token_issue, api_token_revoke
from accounts.tests.factories import AdminUserFactory, SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot import metrics
from homepot.tests.wsgi_call import wsgi_call
from homepot.wsgi import application
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

FAST = application.django_app  # DeviceListFastPath (inside the heartbeat's wrapper)
DJANGO = FAST.django_app  # Django's handler: the DRF view


class Answer:
    def __init__(self, status, headers, content):
        self.status, self.headers, self.content = status, dict(headers), content

    def json(self):
        return json.loads(self.content)


def wsgi_get(app, path, **headers):
    """One GET to `app` as gunicorn would make it (homepot.tests.wsgi_call), with a fixed
    request id, so the two answers can be compared whole."""
    headers = {"HTTP_X_REQUEST_ID": "list-fast-path-test", **headers}
    return Answer(*wsgi_call(app, "GET", path, host="testserver", **headers))


@pytest.fixture
def django_calls(monkeypatch) -> list:
    """The requests the fast path handed on to Django's handler."""
    calls = []

    def counted(environ, start_response):
        calls.append(environ["PATH_INFO"] + "?" + environ["QUERY_STRING"])
        return DJANGO(environ, start_response)

    monkeypatch.setattr(FAST, "django_app", counted)
    return calls


def both(path, **headers) -> tuple[Answer, Answer]:
    """The same request through the served application and through the DRF view alone."""
    return wsgi_get(application, path, **headers), wsgi_get(DJANGO, path, **headers)


def bearer(user) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {api_token_issue(user=user, name='list', ttl_days=1)[1]}"}


@pytest.fixture
def fleet():
    """Three sites of devices whose rows carry every kind of value a page renders."""
    sites = [SiteFactory() for _ in range(3)]
    for number in range(36):
        site = sites[number % 3]
        device = DeviceFactory(
            site=site,
            ip_address=None if number % 5 == 0 else f"10.1.{number}.7",
            mac_address=None if number % 7 == 0 else f"02:00:00:00:01:{number:02X}",
            config={
                "gateway": "https://p.example.com",
                "ünï": "çødé \u2028",
                "n": [1, 2.5, None, {"x": True}],
                # what the page's JSON reading must read as json.loads does
                "numbers": [0.00001, 1e300, -0.0, 12345678901234567890123, 10.10],
                "escapes": 'quote " back \\ tab \t line \n \u0001 /',
            }
            if number % 2
            else {},
        )
        seen = timezone.now() - datetime.timedelta(minutes=number)
        if number % 3 == 0:
            seen = seen.replace(microsecond=0)  # whole seconds are written without a fraction
        if number % 4 == 0:
            seen = None
        Device.objects.filter(pk=device.pk).update(last_seen=seen)
    return sites


def walk(path, headers) -> list[tuple[Answer, Answer]]:
    """Every page from `path`, following the served answer's `next` (equal to the view's)."""
    pages = []
    while path:
        served, view = both(path, **headers)
        pages.append((served, view))
        following = served.json().get("next") if served.status.startswith("200") else None
        path = None
        if following:
            parts = urlsplit(following)
            path = f"{parts.path}?{parts.query}"
    return pages


def assert_same(served: Answer, view: Answer) -> None:
    assert served.status == view.status
    assert served.headers == view.headers
    assert served.content == view.content


@pytest.mark.parametrize("root", ["/api/v1/devices", "/devices", "/api/v1/devices/", "/devices/"])
@pytest.mark.parametrize("page_size", [None, "7", "1", "500", "100000", ""])
def test_every_page_for_an_admin_is_the_views_byte_for_byte_without_reaching_django(
    fleet, django_calls, root, page_size
):
    headers = bearer(AdminUserFactory())
    path = root if page_size is None else f"{root}?page_size={page_size}"
    pages = walk(path, headers)
    for served, view in pages:
        assert_same(served, view)
    assert django_calls == []
    devices = [row["device_id"] for served, _ in pages for row in served.json()["results"]]
    assert devices == list(Device.objects.order_by("id").values_list("device_id", flat=True))
    if page_size == "7":
        assert len(pages) == 6  # 36 devices: five pages of 7 and one of 1
        assert pages[1][0].json()["previous"] is not None


@pytest.mark.parametrize("role", [MembershipRole.MANAGER, MembershipRole.VIEWER])
def test_a_members_pages_are_the_views_and_show_only_their_sites(fleet, django_calls, role):
    member = UserFactory()
    SiteMembershipFactory(user=member, site=fleet[0], role=role)
    SiteMembershipFactory(user=member, site=fleet[2], role=role)
    pages = walk("/api/v1/devices?page_size=5", bearer(member))
    for served, view in pages:
        assert_same(served, view)
    assert django_calls == []
    seen = {row["site"] for served, _ in pages for row in served.json()["results"]}
    assert seen == {fleet[0].site_id, fleet[2].site_id}
    assert sum(len(served.json()["results"]) for served, _ in pages) == 24


def test_a_user_of_no_site_gets_the_views_403(fleet, django_calls):
    served, view = both("/api/v1/devices", **bearer(UserFactory()))
    assert served.status.startswith("403")
    assert_same(served, view)
    assert django_calls == ["/api/v1/devices?"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer hp_not-a-token"},
        {"HTTP_AUTHORIZATION": "Bearer"},
        {"HTTP_AUTHORIZATION": "Bearer a b"},
        {"HTTP_AUTHORIZATION": "Basic YWRtaW46cGFzc3dvcmQ="},
        {"HTTP_AUTHORIZATION": "Bearer h\xe9"},
    ],
)
def test_no_usable_token_gets_the_views_401(fleet, django_calls, headers):
    served, view = both("/api/v1/devices", **headers)
    assert served.status.startswith("401")
    assert_same(served, view)
    assert len(django_calls) == 1


def test_a_revoked_token_and_an_inactive_user_get_the_views_401(fleet, django_calls):
    admin = AdminUserFactory()
    token, raw = api_token_issue(user=admin, name="list", ttl_days=1)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert wsgi_get(application, "/api/v1/devices", **headers).status.startswith("200")
    api_token_revoke(actor=admin, token=token)
    served, view = both("/api/v1/devices", **headers)
    assert served.status.startswith("401")
    assert_same(served, view)

    other = AdminUserFactory()
    headers = bearer(other)
    other.is_active = False
    other.save(update_fields=["is_active"])
    served, view = both("/api/v1/devices", **headers)
    assert served.status.startswith("401")
    assert_same(served, view)


def _cursor(text: str) -> str:
    return b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "query",
    [
        "page_size=0",
        "page_size=abc",
        "page_size=-1",
        f"cursor={_cursor('p=abc')}",
        "cursor=%%%",
        f"cursor={_cursor('p=1' + chr(0))}",
        f"cursor={_cursor('p=99999999999999999999')}",
        "site=nowhere",
        "status=bogus",
        "ordering=name",
        "search=terminal",
        "format=json",
        "page_size=5&page_size=6",
        f"cursor={_cursor('r=1&p=20')}",
        f"cursor={_cursor('o=2&p=3')}",
        "cursor=",
    ],
)
def test_anything_but_a_plain_page_reaches_the_view_and_gets_its_answer(fleet, django_calls, query):
    served, view = both(f"/api/v1/devices?{query}", **bearer(AdminUserFactory()))
    assert_same(served, view)
    assert django_calls == [f"/api/v1/devices?{query}"]


def test_filters_and_the_backward_cursor_still_page_through_the_view(fleet, django_calls):
    headers = bearer(AdminUserFactory())
    for served, view in walk(f"/api/v1/devices?site={fleet[1].site_id}&page_size=4", headers):
        assert_same(served, view)
        assert {row["site"] for row in served.json()["results"]} == {fleet[1].site_id}
    third = walk("/api/v1/devices?page_size=4", headers)[2][0].json()
    parts = urlsplit(third["previous"])
    served, view = both(f"{parts.path}?{parts.query}", **headers)  # r=1: the view's
    assert_same(served, view)
    assert len(served.json()["results"]) == 4
    assert django_calls and all("site=" in call or "cursor=" in call for call in django_calls)


def test_a_browser_gets_the_browsable_api_from_the_view(fleet, django_calls):
    served, view = both("/api/v1/devices", **bearer(AdminUserFactory()), HTTP_ACCEPT="text/html")
    # The page carries a fresh CSRF token each time: the same page, not the same bytes.
    assert served.status == view.status == "200 OK"
    assert served.headers["Content-Type"] == view.headers["Content-Type"] == "text/html; charset=utf-8"
    assert django_calls == ["/api/v1/devices?"]


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_ACCEPT": "application/json; indent=4"},
        {"HTTP_COOKIE": "sessionid=x"},
        {"HTTP_HOST": "evil.example.com"},
    ],
)
def test_what_the_middleware_or_negotiation_acts_on_reaches_django(fleet, django_calls, headers):
    served, view = both("/api/v1/devices", **bearer(AdminUserFactory()), **headers)
    assert_same(served, view)
    assert len(django_calls) == 1


@pytest.mark.parametrize("accept", ["*/*", "application/json"])
def test_a_json_accept_header_is_answered_here(fleet, django_calls, accept):
    served, view = both("/api/v1/devices", **bearer(AdminUserFactory()), HTTP_ACCEPT=accept)
    assert_same(served, view)
    assert django_calls == []


def test_https_behind_a_trusted_proxy_gets_the_views_links_and_headers(
    fleet, django_calls, settings, monkeypatch
):
    # (Django's middlewares read their settings once, when the handler is built, and so does
    # this path: only the per-request one is changed here.)
    monkeypatch.setattr(FAST, "_headers", {})
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    served, view = both(
        "/api/v1/devices?page_size=3", **bearer(AdminUserFactory()), HTTP_X_FORWARDED_PROTO="https"
    )
    assert_same(served, view)
    assert served.json()["next"].startswith("https://testserver/api/v1/devices?")
    assert django_calls == []


def test_a_page_is_two_statements_and_a_database_error_is_left_to_the_view(fleet, django_calls, monkeypatch):
    headers = bearer(AdminUserFactory())
    wsgi_get(application, "/api/v1/devices", **headers)  # the token's use recorded (once a minute)
    with CaptureQueriesContext(connection) as queries:
        assert wsgi_get(application, "/api/v1/devices", **headers).status.startswith("200")
    assert len(queries.captured_queries) == 2  # the token, the page
    assert django_calls == []

    def unavailable(**kwargs):
        raise OperationalError("the server closed the connection unexpectedly")

    monkeypatch.setattr("devices_app.api.list_fast.device_page_after", unavailable)
    served, view = both("/api/v1/devices", **headers)
    assert_same(served, view)  # the view reads its own way; here it answers the page
    assert django_calls == ["/api/v1/devices?"]


def _request_counts() -> dict:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in metrics.http_requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _counted(app, path, headers) -> list:
    before = _request_counts()
    assert wsgi_get(app, path, **headers).status.startswith("200")
    return [labels for labels, value in _request_counts().items() if value != before.get(labels, 0)]


@pytest.mark.parametrize("path", ["/api/v1/devices", "/devices/"])
def test_a_page_served_here_is_counted_as_the_view_counts_it(fleet, django_calls, path):
    headers = bearer(AdminUserFactory())
    by_view = _counted(DJANGO, path, headers)
    assert len(by_view) == 1
    assert _counted(application, path, headers) == by_view
    assert django_calls == []


def test_two_members_one_after_the_other_each_get_their_own_sites_at_the_default_page_size(
    fleet, django_calls
):
    # The statement is kept per process only for users who see every site: a member's scope
    # is compiled for their own request, never another's.
    for site in fleet:
        member = UserFactory()
        SiteMembershipFactory(user=member, site=site, role=MembershipRole.VIEWER)
        served, view = both("/api/v1/devices", **bearer(member))
        assert_same(served, view)
        assert {row["site"] for row in served.json()["results"]} == {site.site_id}
    admin_pages = [both("/api/v1/devices", **bearer(AdminUserFactory())) for _ in range(2)]
    for served, view in admin_pages:
        assert_same(served, view)
        assert len(served.json()["results"]) == 36
    assert django_calls == []


def _prepared_statements() -> set[str]:
    """The statements homepot.db.prepared has prepared on this test's connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE name LIKE 'homepot%%'")
        return {row[0] for row in cursor.fetchall()}


def test_the_token_and_the_page_are_planned_once_per_connection(fleet, django_calls):
    headers = bearer(AdminUserFactory())
    wsgi_get(application, "/api/v1/devices", **headers)  # prepares both (the token's use recorded)
    prepared = _prepared_statements()
    assert any('FROM "accounts_apitoken"' in text for text in prepared)
    assert any('FROM "devices_app_device"' in text for text in prepared)
    with CaptureQueriesContext(connection) as queries:
        served, view = both("/api/v1/devices?page_size=50", **headers)
    assert_same(served, view)
    executed = [query["sql"] for query in queries.captured_queries]
    assert executed[0].startswith("EXECUTE homepot_") and executed[1].startswith("EXECUTE homepot_")
    assert executed[2].startswith("EXECUTE homepot_")  # the view's token lookup is the same statement
    assert _prepared_statements() == prepared  # nothing prepared twice
    assert django_calls == []


def test_with_prepared_statements_off_nothing_is_prepared_and_the_pages_are_the_same(
    fleet, django_calls, settings
):
    settings.HOMEPOT_DB_PREPARED_STATEMENTS = False  # behind a pooler in transaction mode
    before = _prepared_statements()  # an earlier test's, on the same connection
    headers = bearer(AdminUserFactory())
    with CaptureQueriesContext(connection) as queries:
        pages = walk("/api/v1/devices?page_size=50", headers)
    for served, view in pages:
        assert_same(served, view)
    assert _prepared_statements() == before
    assert not [query for query in queries.captured_queries if "EXECUTE" in query["sql"]]
    assert django_calls == []


@pytest.mark.django_db(transaction=True)
def test_statements_missing_on_the_server_are_prepared_again_and_the_page_is_still_answered(
    fleet, django_calls
):
    # What a pooler's server reset (DISCARD ALL) or another server connection looks like:
    # the server has none of the statements this process prepared. Outside a transaction,
    # the plain statement answers and the next request prepares them again.
    headers = bearer(AdminUserFactory())
    first = wsgi_get(application, "/api/v1/devices", **headers)
    assert len(_prepared_statements()) == 2
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    served, view = both("/api/v1/devices", **headers)
    assert_same(served, view)
    assert served.content == first.content
    assert_same(*both("/api/v1/devices", **headers))
    assert len(_prepared_statements()) == 2
    # And the other way round: prepared on the server, forgotten by this process.
    connection._homepot_prepared = None
    assert_same(*both("/api/v1/devices", **headers))
    assert django_calls == []
