"""Health checks and the audit trail in the operator console: read-only history."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.tests.factories import DeviceFactory
from homepot.admin import HistoryCountPaginator
from monitoring_app import partitions
from monitoring_app.choices import AuditEvent, HealthStatus
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.tests.factories import AuditLogFactory, HealthCheckFactory, history_bulk_create
from sites_app.services import site_delete
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

HEALTH = "monitoring_app_healthcheck"
AUDIT = "monitoring_app_auditlog"


def url(model, view, *args):
    return reverse(f"admin:{model}_{view}", args=args)


def listed(response):
    assert response.status_code == 200
    return [row.pk for row in response.context["cl"].result_list]


def assert_changelist_queries_do_not_grow(client, changelist, make_rows, django_assert_max_num_queries):
    make_rows(3)
    with CaptureQueriesContext(connection) as few:
        assert client.get(changelist).status_code == 200
    make_rows(27)

    with django_assert_max_num_queries(len(few)):
        response = client.get(changelist)

    assert len(response.context["cl"].result_list) == 30
    assert len(few) <= 10


# --- Health checks ----------------------------------------------------------------------------


def test_health_changelist_shows_device_site_and_status(admin_browser):
    check = HealthCheckFactory(status=HealthStatus.DEGRADED, error_message="Printer paper low")

    response = admin_browser.get(url(HEALTH, "changelist"))

    assert listed(response) == [check.pk]
    device_url = reverse("admin:devices_app_device_change", args=[check.device.pk])
    assert f'<a href="{device_url}">{check.device}</a>' in response.text
    assert str(check.device.site) in response.text
    assert '<span class="hp-badge hp-badge--warn">Degraded</span>' in response.text


@pytest.mark.parametrize(("term", "found"), [("pos-terminal-042", True), ("site-321", True), ("nope", False)])
def test_health_search_matches_device_and_site(admin_browser, term, found):
    check = HealthCheckFactory(
        device=DeviceFactory(device_id="pos-terminal-042", site=SiteFactory(site_id="site-321"))
    )
    HealthCheckFactory()

    assert listed(admin_browser.get(url(HEALTH, "changelist"), {"q": term})) == ([check.pk] if found else [])


def test_health_filters_by_device_and_site(admin_browser):
    check, other = HealthCheckFactory(), HealthCheckFactory()

    assert listed(admin_browser.get(url(HEALTH, "changelist"), {"device__id__exact": check.device.pk})) == [
        check.pk
    ]
    assert listed(admin_browser.get(url(HEALTH, "changelist"), {"site": other.device.site.pk})) == [other.pk]


def test_health_view_page_renders_read_only(admin_browser):
    check = HealthCheckFactory(metrics={"cpu_percent": 12.5})

    response = admin_browser.get(url(HEALTH, "change", check.pk))

    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert "cpu_percent" in response.text
    assert 'name="_save"' not in response.text


def test_health_checks_cannot_be_added_changed_or_deleted(admin_browser):
    check = HealthCheckFactory(status=HealthStatus.HEALTHY)

    assert admin_browser.get(url(HEALTH, "add")).status_code == 403
    assert admin_browser.post(url(HEALTH, "add"), {"status": "healthy"}).status_code == 403
    assert admin_browser.post(url(HEALTH, "change", check.pk), {"status": "unhealthy"}).status_code == 403
    assert admin_browser.post(url(HEALTH, "delete", check.pk), {"post": "yes"}).status_code == 403
    bulk = admin_browser.post(
        url(HEALTH, "changelist"),
        {"action": "delete_selected", "_selected_action": [check.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    check.refresh_from_db()
    assert check.status == HealthStatus.HEALTHY


def test_health_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    assert_changelist_queries_do_not_grow(
        admin_browser,
        url(HEALTH, "changelist"),
        lambda n: HealthCheckFactory.create_batch(n),  # each on its own device and site
        django_assert_max_num_queries,
    )


def test_a_site_member_sees_only_their_sites_health_checks(client):
    mine, theirs = HealthCheckFactory(), HealthCheckFactory()
    user = UserFactory(is_staff=True)
    grant_perms(user, "monitoring_app.view_healthcheck")
    SiteMembershipFactory(user=user, site=mine.device.site, role=MembershipRole.VIEWER)
    client.force_login(user)

    assert listed(client.get(url(HEALTH, "changelist"))) == [mine.pk]
    assert client.get(url(HEALTH, "change", theirs.pk)).status_code == 302


def checked_ago(delta, **kwargs):
    return HealthCheckFactory(checked_at=timezone.now() - delta, **kwargs)


def test_health_changelist_shows_the_past_day_by_default_and_any_date_on_request(admin_browser):
    recent = checked_ago(datetime.timedelta(hours=2))
    newest = checked_ago(datetime.timedelta(minutes=5))
    old = checked_ago(datetime.timedelta(days=3))

    default = admin_browser.get(url(HEALTH, "changelist"))
    week = admin_browser.get(url(HEALTH, "changelist"), {"window": "7d"})
    any_date = admin_browser.get(url(HEALTH, "changelist"), {"window": "all"})

    assert listed(default) == [newest.pk, recent.pk]
    assert default.context["cl"].result_count == 2
    assert "Past 24 hours" in default.text and "Any date" in default.text
    selected = [c for spec in default.context["cl"].filter_specs for c in spec.choices(default.context["cl"])]
    assert [c["display"] for c in selected if c["selected"]][-1] == "Past 24 hours"
    assert listed(week) == [newest.pk, recent.pk, old.pk]
    assert listed(any_date) == [newest.pk, recent.pk, old.pk]


def test_health_changelist_window_combines_with_status_and_site(admin_browser):
    unhealthy = checked_ago(datetime.timedelta(hours=1), status=HealthStatus.UNHEALTHY)
    checked_ago(datetime.timedelta(hours=1))
    old_unhealthy = checked_ago(
        datetime.timedelta(days=2), status=HealthStatus.UNHEALTHY, device=unhealthy.device
    )

    by_status = admin_browser.get(url(HEALTH, "changelist"), {"status__exact": "unhealthy"})
    by_site_any_date = admin_browser.get(
        url(HEALTH, "changelist"), {"site": unhealthy.device.site.pk, "window": "all"}
    )

    assert listed(by_status) == [unhealthy.pk]
    assert listed(by_site_any_date) == [unhealthy.pk, old_unhealthy.pk]


def test_an_unknown_window_reloads_the_list_with_an_error_flag(admin_browser):
    response = admin_browser.get(url(HEALTH, "changelist"), {"window": "forever"})

    assert response.status_code == 302
    assert "e=1" in response["Location"]


def test_a_site_member_sees_only_their_sites_health_checks_in_every_window(client):
    mine = checked_ago(datetime.timedelta(hours=1))
    mine_old = checked_ago(datetime.timedelta(days=5), device=mine.device)
    checked_ago(datetime.timedelta(hours=1))
    checked_ago(datetime.timedelta(days=5))
    user = UserFactory(is_staff=True)
    grant_perms(user, "monitoring_app.view_healthcheck")
    SiteMembershipFactory(user=user, site=mine.device.site, role=MembershipRole.MANAGER)
    client.force_login(user)

    assert listed(client.get(url(HEALTH, "changelist"))) == [mine.pk]
    assert listed(client.get(url(HEALTH, "changelist"), {"window": "all"})) == [mine.pk, mine_old.pk]


def test_the_default_window_plans_only_the_recent_days_partitions(admin_browser):
    today = timezone.now().astimezone(datetime.UTC).date()
    old_day = today - datetime.timedelta(days=5)
    partitions.history_partitions_create(partitions.HEALTH, days=[old_day])
    checked_ago(datetime.timedelta(days=5))

    default = admin_browser.get(url(HEALTH, "changelist")).context["cl"].queryset
    any_date = admin_browser.get(url(HEALTH, "changelist"), {"window": "all"}).context["cl"].queryset

    # What keeps the page's cost to the days it shows: days outside the window are not in
    # its plan at all, however many are kept.
    assert partitions.HEALTH.day_partition(old_day) not in default[:100].explain()
    assert partitions.HEALTH.day_partition(old_day) in any_date[:100].explain()


def test_the_health_list_is_read_without_jit_compilation(admin_browser):
    """At 50 million rows the first page's plan costs enough for PostgreSQL to JIT-compile
    it, seconds for a page read in a millisecond; the list's own statements run with JIT
    off (SET LOCAL: the request's transaction only)."""
    check = HealthCheckFactory()
    jit_during_list_reads = []

    def note_jit(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if f'FROM "{HEALTH}"' in sql:
            with context["connection"].cursor() as cursor:
                cursor.execute("SELECT current_setting('jit')")
                jit_during_list_reads.append(cursor.fetchone()[0])
        return result

    with connection.execute_wrapper(note_jit):
        response = admin_browser.get(url(HEALTH, "changelist"), {"window": "all"})

    assert listed(response) == [check.pk]
    assert jit_during_list_reads and set(jit_during_list_reads) == {"off"}


def test_a_filtered_health_list_counts_at_most_a_thousand_rows_exactly(admin_browser):
    device = DeviceFactory()
    HealthCheckFactory.create_batch(3, device=device, status=HealthStatus.UNHEALTHY)

    with CaptureQueriesContext(connection) as queries:
        response = admin_browser.get(url(HEALTH, "changelist"), {"status__exact": "unhealthy"})

    assert response.context["cl"].result_count == 3
    # The past hour's window first (too few rows in it), then the past day's (the list's own
    # window): each count bounded.
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]
    assert len(counts) == 2 and all("LIMIT 1001" in count for count in counts)


# --- Pages read from the newest window that holds them (NewestWindowPaginator) ----------------


PER_PAGE = 10


def history_rows(device, *, now, recent: int, day: int, older: int) -> None:
    """`recent` checks 1 to 56 minutes ago, `day` more 65 minutes to 23 hours ago, `older` 3
    to 40 days ago, evenly spread; every fifth shares its predecessor's time, so the id
    decides their order. Every seventh is unhealthy."""
    minutes = datetime.timedelta(minutes=1)
    rows = []
    for first, last, n in ((1 * minutes, 56 * minutes, recent), (65 * minutes, 23 * 60 * minutes, day)):
        rows += [first + (last - first) * (i - (i % 5 == 4)) / n for i in range(n)]
    first, last = datetime.timedelta(days=3), datetime.timedelta(days=40)
    rows += [first + (last - first) * (i - (i % 5 == 4)) / older for i in range(older)]
    history_bulk_create(
        HealthCheck(
            device=device,
            status=HealthStatus.UNHEALTHY if i % 7 == 0 else HealthStatus.HEALTHY,
            checked_at=now - ago,
        )
        for i, ago in enumerate(rows)
    )


@pytest.fixture
def two_stores_history(monkeypatch):
    """Two sites of two devices; 130 checks per site over 40 days (30 in the past hour). The
    list is scaled down tenfold so that this stays small: pages of 10, counted exactly up to
    100 (production: 100 and 1,000)."""
    from monitoring_app.admin import HealthCheckAdmin

    monkeypatch.setattr(HistoryCountPaginator, "count_at_most", 100)
    monkeypatch.setattr(HealthCheckAdmin, "list_per_page", PER_PAGE)
    now = timezone.now()
    sites = [SiteFactory(), SiteFactory()]
    for site in sites:
        for _ in range(2):
            history_rows(DeviceFactory(site=site), now=now, recent=15, day=40, older=10)
    manager = UserFactory(is_staff=True)
    grant_perms(manager, "monitoring_app.view_healthcheck")
    SiteMembershipFactory(user=manager, site=sites[0], role=MembershipRole.MANAGER)
    return sites, manager


def expected_page(queryset, page: int) -> list[int]:
    """The page as the list's previous paginator cut it from the whole ordered list."""
    return [check.pk for check in HistoryCountPaginator(queryset, PER_PAGE).page(page).object_list]


def page_statement(queries) -> str:
    pages = [
        q["sql"]
        for q in queries.captured_queries
        if "ORDER BY" in q["sql"] and f'FROM "{HEALTH}"' in q["sql"]
    ]
    assert len(pages) == 1, pages
    return pages[0]


@pytest.mark.parametrize(
    ("who", "params", "page", "narrowed"),
    [
        ("admin", {"window": "all"}, 1, True),  # the past hour holds it
        ("admin", {"window": "all"}, 9, True),  # the past day does
        ("admin", {"window": "all", "status__exact": "unhealthy"}, 2, True),
        ("admin", {"window": "7d"}, 4, True),
        ("manager", {"window": "all"}, 1, True),
        ("manager", {"window": "all"}, 4, True),
        ("manager", {"window": "all"}, 11, True),  # rows 101-110: all of the past day's
        ("manager", {}, 2, True),  # the default window (past day), the past hour's rows first
        ("manager", {"window": "all", "status__exact": "unhealthy"}, 2, False),  # 20, 18 in the past month
        ("admin", {"window": "all", "o": "1"}, 3, False),  # ordered by device: never narrowed
    ],
)
def test_every_page_is_the_same_rows_in_the_same_order_as_the_whole_lists_slice(
    client, admin_user, two_stores_history, who, params, page, narrowed
):
    sites, manager = two_stores_history
    client.force_login(admin_user if who == "admin" else manager)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url(HEALTH, "changelist"), {**params, "p": page})

    cl = response.context["cl"]
    assert cl.page_num == page
    whole = cl.queryset  # the list's own filtered, scoped, ordered queryset, unbounded
    assert len(listed(response)) > 0
    assert listed(response) == expected_page(whole, page)
    assert cl.result_count == HistoryCountPaginator(whole, PER_PAGE).count
    # Narrowed: the page's statement carries a lower bound of its own on the check time.
    bounds = page_statement(queries).count('"checked_at" >=')
    assert bounds == (params.get("window", "24h") != "all") + narrowed


def test_a_narrowed_page_leaves_the_older_days_partitions_out_of_its_plan(client, two_stores_history):
    sites, manager = two_stores_history
    today = timezone.now().astimezone(datetime.UTC).date()
    old_day = today - datetime.timedelta(days=20)
    partitions.history_partitions_create(partitions.HEALTH, days=[old_day])  # its rows move in
    client.force_login(manager)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url(HEALTH, "changelist"), {"window": "all"})

    assert len(listed(response)) == PER_PAGE
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + page_statement(queries))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert partitions.HEALTH.day_partition(today) in plan
    assert partitions.HEALTH.day_partition(old_day) not in plan


# --- Audit trail -----------------------------------------------------------------------------


def test_audit_changelist_shows_event_actor_and_site(admin_browser, admin_user):
    entry = AuditLogFactory(actor=admin_user, actor_ref=admin_user.username, description="Renamed the store")

    response = admin_browser.get(url(AUDIT, "changelist"))

    assert listed(response) == [entry.pk]
    assert admin_user.username in response.text
    assert entry.site_ref in response.text
    assert "Renamed the store" in response.text


def test_audit_changelist_links_the_csv_export_of_its_event_type(admin_browser):
    page = admin_browser.get(url(AUDIT, "changelist"))
    assert page.context["audit_export_url"] == reverse("auditlog-export")
    assert b">Export CSV</a>" in page.content

    filtered = admin_browser.get(url(AUDIT, "changelist"), {"event_type__exact": "job.created"})
    assert filtered.context["audit_export_url"] == reverse("auditlog-export") + "?event_type=job.created"


@pytest.mark.parametrize(("term", "found"), [("gateway", True), ("site-321", True), ("unrelated", False)])
def test_audit_search_matches_description_and_refs(admin_browser, term, found):
    entry = AuditLogFactory(site=SiteFactory(site_id="site-321"), description="Switched payment gateway")
    AuditLogFactory(description="Other change")

    assert listed(admin_browser.get(url(AUDIT, "changelist"), {"q": term})) == ([entry.pk] if found else [])


def test_audit_view_page_renders_before_and_after(admin_browser):
    entry = AuditLogFactory(old_values={"name": "Old Harbour"}, new_values={"name": "New Harbour"})

    response = admin_browser.get(url(AUDIT, "change", entry.pk))

    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert "Old Harbour" in response.text
    assert "New Harbour" in response.text
    assert entry.row_hash in response.text


def test_audit_rows_of_a_deleted_site_still_render(admin_browser):
    site = SiteFactory(site_id="site-gone")
    site_delete(actor=None, site=site)
    entry = AuditLog.objects.get(event_type=AuditEvent.SITE_DELETED)

    changelist = admin_browser.get(url(AUDIT, "changelist"))
    page = admin_browser.get(url(AUDIT, "change", entry.pk))

    assert "site-gone" in changelist.text
    assert page.status_code == 200
    assert "site-gone" in page.text


def test_audit_rows_cannot_be_added_changed_or_deleted(admin_browser):
    entry = AuditLogFactory(description="Original")

    assert admin_browser.get(url(AUDIT, "add")).status_code == 403
    assert admin_browser.post(url(AUDIT, "add"), {"description": "Forged"}).status_code == 403
    assert admin_browser.post(url(AUDIT, "change", entry.pk), {"description": "Forged"}).status_code == 403
    assert admin_browser.post(url(AUDIT, "delete", entry.pk), {"post": "yes"}).status_code == 403
    assert list(AuditLog.objects.values_list("description", flat=True)) == ["Original"]


def test_audit_changelist_offers_no_delete_action(admin_browser):
    AuditLogFactory()

    response = admin_browser.get(url(AUDIT, "changelist"))

    assert "delete_selected" not in response.text


def test_audit_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    assert_changelist_queries_do_not_grow(
        admin_browser,
        url(AUDIT, "changelist"),
        lambda n: AuditLogFactory.create_batch(n),
        django_assert_max_num_queries,
    )


def test_a_site_member_sees_only_their_sites_audit_rows(client):
    mine, theirs = AuditLogFactory(), AuditLogFactory()
    user = UserFactory(is_staff=True)
    grant_perms(user, "monitoring_app.view_auditlog")
    SiteMembershipFactory(user=user, site=mine.site, role=MembershipRole.MANAGER)
    client.force_login(user)

    assert listed(client.get(url(AUDIT, "changelist"))) == [mine.pk]
    assert client.get(url(AUDIT, "change", theirs.pk)).status_code == 302
    assert client.get(url(AUDIT, "add")).status_code == 403
