import pytest
from django.contrib.auth.models import AnonymousUser

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.tests.factories import AuditLogFactory, HealthCheckFactory
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_stores():
    a, b = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    for site in (a, b):
        device = DeviceFactory(site=site)
        HealthCheckFactory(device=device)
        JobFactory(site=site)
        AuditLogFactory(site=site)
    return a, b


MODELS = [Site, Device, Job, HealthCheck, AuditLog]


def _site_ids(model, user, action="view"):
    path = {Site: "site_id", HealthCheck: "device__site__site_id"}.get(model, "site__site_id")
    if model is AuditLog:
        path = "site_ref"
    return set(model.objects.for_user(user, action).values_list(path, flat=True))


@pytest.mark.parametrize("model", MODELS)
def test_admin_sees_every_site(two_stores, admin_user, model):
    assert _site_ids(model, admin_user) == {"site-a", "site-b"}


@pytest.mark.parametrize("model", MODELS)
def test_member_sees_only_their_sites(two_stores, model):
    manager = SiteMembershipFactory(site=two_stores[0], role=MembershipRole.MANAGER).user
    assert _site_ids(model, manager) == {"site-a"}


@pytest.mark.parametrize("model", MODELS)
def test_viewer_may_view_but_not_change(two_stores, model):
    viewer = SiteMembershipFactory(site=two_stores[1], role=MembershipRole.VIEWER).user
    assert _site_ids(model, viewer, "view") == {"site-b"}
    assert _site_ids(model, viewer, "change") == set()


@pytest.mark.parametrize("model", MODELS)
def test_anonymous_inactive_and_unassigned_users_see_nothing(two_stores, model):
    inactive = SiteMembershipFactory(site=two_stores[0], user=UserFactory(is_active=False)).user
    for user in (AnonymousUser(), inactive, UserFactory(), None):
        assert _site_ids(model, user) == set()


def test_unknown_action_is_a_programming_error(user):
    with pytest.raises(ValueError):
        Site.objects.for_user(user, "destroy")


def test_a_site_deleted_by_a_concurrent_request_is_not_found_not_forbidden():
    # A request that read a job or device before another request deleted its site is told
    # the object is gone (the concurrency test met this as a 403 on a job cancel).
    from django.core.exceptions import PermissionDenied

    from accounts.scoping import require_site_access
    from accounts.tests.factories import AdminUserFactory
    from homepot.errors import NotFound

    site, stranger_site = SiteFactory(), SiteFactory()
    manager = SiteMembershipFactory(site=stranger_site, role=MembershipRole.MANAGER).user
    Site.objects.filter(pk=site.pk).delete()

    with pytest.raises(NotFound):
        require_site_access(AdminUserFactory(), site, "change")
    with pytest.raises(NotFound):
        require_site_access(manager, site, "change")
    with pytest.raises(PermissionDenied):  # a site that exists but is not theirs stays 403
        require_site_access(manager, SiteFactory(), "change")
