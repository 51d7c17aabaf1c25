import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def test_site_id_is_unique_in_the_database():
    SiteFactory(site_id="site-123")
    from sites_app.models import Site

    with pytest.raises(IntegrityError):
        Site.objects.create(site_id="site-123", name="Duplicate")


def test_unknown_timezone_is_refused():
    site = SiteFactory.build(timezone="Mars/Olympus")
    with pytest.raises(ValidationError) as err:
        site.full_clean()
    assert "timezone" in err.value.message_dict


def test_device_count_annotation_counts_each_sites_devices():
    from devices_app.tests.factories import DeviceFactory
    from sites_app.models import Site

    busy, empty = SiteFactory(), SiteFactory()
    DeviceFactory.create_batch(3, site=busy)
    counts = dict(Site.objects.with_device_count().values_list("site_id", "device_count"))
    assert counts[busy.site_id] == 3
    assert counts[empty.site_id] == 0
