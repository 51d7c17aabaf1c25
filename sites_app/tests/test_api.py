"""The sites API: the guide's examples, CRUD through the services, filters, scoping, errors."""

import pytest
from django.contrib.auth.models import Permission

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import GUIDE_SITE, assert_error, token_client
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def site_audit_rows():
    return AuditLog.objects.filter(event_type__startswith="site.")


def grant_model_perms(user, *codenames):
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


# --- The guide's examples ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_guide_add_a_new_site(admin_api, prefix):
    response = admin_api.post(f"{prefix}/sites", GUIDE_SITE, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    site = Site.objects.get(site_id="site-003")
    assert body["id"] == site.pk  # the internal id the guide's next step needs
    assert {k: body[k] for k in GUIDE_SITE} == GUIDE_SITE
    assert body["device_count"] == 0
    assert body["is_active"] is True and body["timezone"] == "UTC"


def test_guide_list_sites_shows_each_site_with_its_device_count(admin_api):
    busy = SiteFactory(site_id="site-123")
    SiteFactory(site_id="site-456")
    DeviceFactory.create_batch(3, site=busy)

    response = admin_api.get("/sites")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    counts = {row["site_id"]: row["device_count"] for row in body["results"]}
    assert counts == {"site-123": 3, "site-456": 0}


@pytest.mark.parametrize("path", ["/sites/", "/api/v1/sites/"])
def test_trailing_slash_post_is_not_redirected(admin_api, path):
    response = admin_api.post(path, GUIDE_SITE, format="json")
    assert response.status_code == 201
    assert Site.objects.filter(site_id="site-003").exists()


# --- CRUD and the audit trail ---------------------------------------------------------------


def test_create_writes_exactly_one_audit_row(admin_api):
    before = AuditLog.objects.count()
    admin_api.post("/sites", {**GUIDE_SITE, "region": "North", "timezone": "Europe/London"}, format="json")

    assert AuditLog.objects.count() == before + 1
    row = site_audit_rows().get()
    assert row.event_type == AuditEvent.SITE_CREATED
    assert row.actor == admin_api.user
    assert row.site_ref == "site-003"
    assert row.new_values["name"] == "North Branch"
    assert row.new_values["timezone"] == "Europe/London"
    assert row.old_values is None


@pytest.mark.parametrize("path", ["/sites/site-123", "/sites/site-123/", "/api/v1/sites/site-123"])
def test_retrieve_by_business_id(admin_api, path):
    site = SiteFactory(site_id="site-123", name="Harbour Road")
    DeviceFactory(site=site)

    response = admin_api.get(path)

    assert response.status_code == 200
    assert response.json()["name"] == "Harbour Road"
    assert response.json()["id"] == site.pk
    assert response.json()["device_count"] == 1


def test_retrieve_accepts_business_ids_with_dots(admin_api):
    SiteFactory(site_id="store.north-1")
    assert admin_api.get("/sites/store.north-1").status_code == 200


def test_retrieve_unknown_site_is_a_json_404(admin_api):
    assert_error(admin_api.get("/sites/site-999"), 404, code="not_found")


def test_put_replaces_fields_and_audits_old_and_new_values(admin_api):
    SiteFactory(site_id="site-123", name="Old Name", region="North", timezone="Europe/London")
    before = AuditLog.objects.count()

    response = admin_api.put(
        "/sites/site-123",
        {"site_id": "site-123", "name": "New Name", "region": "South", "timezone": "Europe/London"},
        format="json",
    )

    assert response.status_code == 200, response.content
    assert response.json()["name"] == "New Name"
    site = Site.objects.get(site_id="site-123")
    assert (site.name, site.region) == ("New Name", "South")
    assert AuditLog.objects.count() == before + 1
    row = site_audit_rows().get()
    assert row.event_type == AuditEvent.SITE_UPDATED
    assert row.old_values == {"name": "Old Name", "region": "North"}
    assert row.new_values == {"name": "New Name", "region": "South"}


def test_put_requires_the_required_fields(admin_api):
    SiteFactory(site_id="site-123")
    assert_error(admin_api.put("/sites/site-123", {"name": "x"}, format="json"), 400, field="site_id")


def test_patch_changes_only_the_given_fields(admin_api):
    SiteFactory(site_id="site-123", name="Harbour Road", is_active=True)

    response = admin_api.patch("/sites/site-123", {"is_active": False}, format="json")

    assert response.status_code == 200
    assert response.json()["is_active"] is False
    assert response.json()["name"] == "Harbour Road"
    row = site_audit_rows().get()
    assert (row.old_values, row.new_values) == ({"is_active": True}, {"is_active": False})


def test_patch_with_unchanged_values_records_nothing(admin_api):
    SiteFactory(site_id="site-123", name="Harbour Road")
    response = admin_api.patch("/sites/site-123", {"name": "Harbour Road"}, format="json")
    assert response.status_code == 200
    assert not site_audit_rows().exists()


def test_patch_can_rename_the_business_id(admin_api):
    SiteFactory(site_id="site-123")
    response = admin_api.patch("/sites/site-123", {"site_id": "site-321"}, format="json")
    assert response.status_code == 200
    assert admin_api.get("/sites/site-321").status_code == 200
    assert admin_api.get("/sites/site-123").status_code == 404


def test_unknown_fields_are_ignored(admin_api):
    response = admin_api.post("/sites", {**GUIDE_SITE, "colour": "green", "id": 999999}, format="json")
    assert response.status_code == 201
    assert response.json()["id"] != 999999


def test_delete_an_empty_site(admin_api):
    site = SiteFactory(site_id="site-123")

    response = admin_api.delete("/sites/site-123")

    assert response.status_code == 204
    assert not Site.objects.filter(pk=site.pk).exists()
    row = site_audit_rows().get()
    assert row.event_type == AuditEvent.SITE_DELETED
    assert row.site_ref == "site-123"
    assert row.old_values["site_id"] == "site-123"


def test_delete_a_site_with_devices_is_a_conflict_and_changes_nothing(admin_api):
    site = SiteFactory(site_id="site-123")
    DeviceFactory(site=site)

    response = admin_api.delete("/sites/site-123")

    assert_error(response, 409, field="site_id", code="site_has_devices")
    assert "device" in response.json()["error"]["message"]
    assert Site.objects.filter(pk=site.pk).exists()
    assert not site_audit_rows().exists()


# --- Bad input: the error shape, the field, and nothing stored -------------------------------


def test_duplicate_site_id_is_a_409_naming_site_id(admin_api):
    SiteFactory(site_id="site-003")
    before = AuditLog.objects.count()

    error = assert_error(admin_api.post("/sites", GUIDE_SITE, format="json"), 409, field="site_id")

    assert error["code"] == "duplicate"
    assert Site.objects.filter(site_id="site-003").count() == 1
    assert AuditLog.objects.count() == before


def test_renaming_onto_an_existing_site_id_is_a_409(admin_api):
    SiteFactory(site_id="site-123")
    SiteFactory(site_id="site-456")
    assert_error(admin_api.patch("/sites/site-456", {"site_id": "site-123"}, format="json"), 409, "site_id")
    assert Site.objects.filter(site_id="site-456").exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": 123}, "name"),
        ({"name": ["North", "Branch"]}, "name"),
        ({"name": {"text": "North"}}, "name"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"site_id": 3}, "site_id"),
        ({"site_id": "site 003"}, "site_id"),
        ({"site_id": ""}, "site_id"),
        ({"description": 42}, "description"),
        ({"location": True}, "location"),
        ({"is_active": "yes"}, "is_active"),
        ({"is_active": 1}, "is_active"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "North\x00Branch"}, "name"),
    ],
)
def test_bad_values_are_a_400_naming_the_field_and_store_nothing(admin_api, changes, field):
    before = AuditLog.objects.count()

    assert_error(admin_api.post("/sites", {**GUIDE_SITE, **changes}, format="json"), 400, field=field)

    assert not Site.objects.exists()
    assert AuditLog.objects.count() == before


def test_missing_required_fields_are_each_named(admin_api):
    error = assert_error(admin_api.post("/sites", {"description": "no ids"}, format="json"), 400)
    assert set(error["fields"]) == {"site_id", "name"}


def test_bad_patch_changes_nothing(admin_api):
    SiteFactory(site_id="site-123", name="Harbour Road")
    assert_error(admin_api.patch("/sites/site-123", {"name": 5}, format="json"), 400, field="name")
    assert Site.objects.get(site_id="site-123").name == "Harbour Road"
    assert not site_audit_rows().exists()


@pytest.mark.parametrize("body", ["[]", '"site-003"', "null", "42"])
def test_a_body_that_is_not_an_object_is_a_400(admin_api, body):
    assert_error(admin_api.post("/sites", body, content_type="application/json"), 400)
    assert not Site.objects.exists()


# --- Filters, search, ordering, pagination ------------------------------------------------------


@pytest.fixture
def chain(db):
    return {
        "north": SiteFactory(site_id="site-101", name="Harbour Road", location="1 Quay St", region="North"),
        "south": SiteFactory(site_id="site-102", name="Market Square", location="9 High St", region="South"),
        "closed": SiteFactory(
            site_id="site-103", name="Old Mill", location="3 Mill Lane", region="North", is_active=False
        ),
    }


def site_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["site_id"] for row in response.json()["results"]]


def test_filter_by_region(admin_api, chain):
    assert site_ids(admin_api.get("/sites?region=North")) == ["site-101", "site-103"]


@pytest.mark.parametrize(("value", "expected"), [("true", ["site-101", "site-102"]), ("false", ["site-103"])])
def test_filter_by_is_active(admin_api, chain, value, expected):
    assert site_ids(admin_api.get(f"/sites?is_active={value}")) == expected


def test_an_invalid_filter_value_is_a_400_naming_the_parameter(admin_api, chain):
    assert_error(admin_api.get("/sites?is_active=maybe"), 400, field="is_active")


@pytest.mark.parametrize(
    ("term", "expected"),
    [("harbour", ["site-101"]), ("HIGH ST", ["site-102"]), ("site-103", ["site-103"]), ("nowhere", [])],
)
def test_search_site_id_name_and_location(admin_api, chain, term, expected):
    assert site_ids(admin_api.get("/sites", {"search": term})) == expected


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("name", ["site-101", "site-102", "site-103"]),
        ("-name", ["site-103", "site-102", "site-101"]),
        ("-site_id", ["site-103", "site-102", "site-101"]),
        ("created_at", ["site-101", "site-102", "site-103"]),
    ],
)
def test_ordering(admin_api, chain, ordering, expected):
    assert site_ids(admin_api.get(f"/sites?ordering={ordering}")) == expected


@pytest.mark.parametrize("ordering", ["bogus", "device_count", "description", "--name"])
def test_ordering_by_an_unknown_field_is_a_400(admin_api, chain, ordering):
    assert_error(admin_api.get(f"/sites?ordering={ordering}"), 400, field="ordering")


def test_page_number_pagination_counts_and_walks_all_pages(admin_api):
    SiteFactory.create_batch(7)
    seen = []
    url = "/sites?page_size=3"
    while url:
        body = admin_api.get(url).json()
        assert body["count"] == 7
        seen += [row["site_id"] for row in body["results"]]
        url = body["next"]
    assert len(seen) == len(set(seen)) == 7


def test_list_query_count_does_not_grow_with_sites(admin_api, django_assert_max_num_queries):
    for site in SiteFactory.create_batch(30):
        DeviceFactory(site=site)
    # token lookup, count, page, then one GROUP BY for the health of the page's sites
    with django_assert_max_num_queries(5):
        response = admin_api.get("/sites?page_size=30")
    assert len(response.json()["results"]) == 30
    assert {site["device_count"] for site in response.json()["results"]} == {1}


def test_health_is_counted_for_the_page_not_for_every_site(admin_api):
    sites = SiteFactory.create_batch(3)
    DeviceFactory.create_batch(2, site=sites[0], status="online")
    DeviceFactory(site=sites[1], status="offline")

    page = admin_api.get("/sites?page_size=2&ordering=site_id").json()["results"]
    one = admin_api.get(f"/sites/{sites[0].site_id}").json()

    by_id = {site["site_id"]: site for site in page}
    first = sorted(s.site_id for s in sites)[:2]
    assert sorted(by_id) == first
    for site in sites:
        if site.site_id in by_id:
            expected = {sites[0].pk: 2, sites[1].pk: 1}.get(site.pk, 0)
            assert by_id[site.site_id]["device_count"] == expected
            assert by_id[site.site_id]["health"]["total"] == expected
    assert one["device_count"] == 2 and one["health"]["online"] == 2


# --- Authentication and scoping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/sites"),
        ("post", "/sites"),
        ("get", "/sites/site-123"),
        ("put", "/sites/site-123"),
        ("patch", "/sites/site-123"),
        ("delete", "/sites/site-123"),
        ("get", "/api/v1/sites"),
        ("post", "/api/v1/sites/"),
        ("delete", "/api/v1/sites/site-123"),
    ],
)
def test_anonymous_requests_get_401(api_client, method, path):
    SiteFactory(site_id="site-123")
    response = getattr(api_client, method)(path, GUIDE_SITE, format="json")
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert Site.objects.count() == 1


@pytest.fixture
def manager(db):
    """A non-admin with model permissions, manager of site A, viewer of site C, nothing on B."""
    user = grant_model_perms(UserFactory(), "view_site", "add_site", "change_site", "delete_site")
    sites = {
        "a": SiteFactory(site_id="site-a", name="Alpha"),
        "b": SiteFactory(site_id="site-b", name="Bravo"),
        "c": SiteFactory(site_id="site-c", name="Charlie"),
    }
    SiteMembershipFactory(user=user, site=sites["a"], role=MembershipRole.MANAGER)
    SiteMembershipFactory(user=user, site=sites["c"], role=MembershipRole.VIEWER)
    client = token_client(user)
    client.sites = sites
    return client


def test_a_member_lists_only_their_sites(manager):
    assert site_ids(manager.get("/sites")) == ["site-a", "site-c"]
    assert site_ids(manager.get("/sites?search=Bravo")) == []


def test_another_operators_site_is_a_404_for_every_verb(manager):
    for method in ("get", "put", "patch", "delete"):
        response = getattr(manager, method)("/sites/site-b", {"name": "Mine now"}, format="json")
        assert_error(response, 404)
    assert Site.objects.get(site_id="site-b").name == "Bravo"


def test_a_manager_may_not_change_the_site_record(manager):
    assert_error(manager.patch("/sites/site-a", {"name": "Alpha Prime"}, format="json"), 403)
    assert Site.objects.get(site_id="site-a").name != "Alpha Prime"
    assert not site_audit_rows().exists()


def test_a_viewer_may_see_but_not_change_a_site(manager):
    assert manager.get("/sites/site-c").status_code == 200
    assert_error(manager.patch("/sites/site-c", {"name": "Mine"}, format="json"), 403)
    assert Site.objects.get(site_id="site-c").name == "Charlie"


def test_only_admins_create_and_delete_sites(manager):
    assert_error(manager.post("/sites", GUIDE_SITE, format="json"), 403)
    assert_error(manager.delete("/sites/site-a"), 403)
    assert not Site.objects.filter(site_id="site-003").exists()
    assert Site.objects.filter(site_id="site-a").exists()
    assert not site_audit_rows().exists()


def test_a_user_without_any_site_gets_403(db):
    SiteFactory(site_id="site-a")
    assert_error(token_client(UserFactory()).get("/sites"), 403)


def test_a_member_without_the_change_permission_cannot_patch(db):
    user = grant_model_perms(UserFactory(), "view_site")
    SiteMembershipFactory(user=user, site=SiteFactory(site_id="site-a"), role=MembershipRole.MANAGER)
    assert_error(token_client(user).patch("/sites/site-a", {"name": "x"}, format="json"), 403)
