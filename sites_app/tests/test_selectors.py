"""site_for_reference's fast path (an admin naming a site by its business id) answers what
the scoped queryset answers, and leaves every other caller on that queryset."""

import pytest
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import SiteMembershipFactory, UserFactory
from sites_app.models import Site
from sites_app.selectors import site_for_reference
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def _orm(site_id: str) -> Site:
    return Site.objects.filter(site_id=site_id).first()


def test_an_admin_gets_the_orms_instance_by_business_id():
    admin = UserFactory(is_superuser=True)
    site = SiteFactory(site_id="store-0042", description="a café, ünïcode")
    found = site_for_reference(user=admin, reference="store-0042")
    expected = _orm("store-0042")
    assert type(found) is Site and found.pk == site.pk
    assert model_to_dict(found) == model_to_dict(expected)
    assert (found.created_at, found.updated_at) == (expected.created_at, expected.updated_at)
    assert found._state.adding is False and found._state.db == expected._state.db


def test_an_admin_is_answered_in_one_statement_and_unknown_sites_are_none():
    admin = UserFactory(is_superuser=True)
    SiteFactory(site_id="store-0001")
    with CaptureQueriesContext(connection) as queries:
        assert site_for_reference(user=admin, reference="store-0001") is not None
        assert site_for_reference(user=admin, reference="store-9999") is None
    assert len(queries) == 2
    assert all("LIMIT 1" in q["sql"] and "membership" not in q["sql"] for q in queries.captured_queries)


def test_a_scoped_user_still_finds_only_their_sites():
    mine, other = SiteFactory(site_id="store-mine"), SiteFactory(site_id="store-other")
    user = UserFactory()
    SiteMembershipFactory(user=user, site=mine)
    assert site_for_reference(user=user, reference="store-mine") == mine
    assert site_for_reference(user=user, reference="store-other") is None
    assert site_for_reference(user=None, reference=other.site_id) is None


def test_a_numeric_reference_still_takes_the_queryset_path():
    admin = UserFactory(is_superuser=True)
    site = SiteFactory(site_id="store-0007")
    assert site_for_reference(user=admin, reference=str(site.pk)) == site
    assert site_for_reference(user=admin, reference=site.pk) == site
