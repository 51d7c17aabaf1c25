import datetime

import factory

from sites_app.models import BlackoutPeriod, MaintenanceWindow, Site


class SiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Site
        django_get_or_create = ("site_id",)

    site_id = factory.Sequence(lambda n: f"site-{n + 100:03d}")
    name = factory.Sequence(lambda n: f"Store {n}")
    description = "Test store"
    location = factory.Faker("street_address")
    region = "North"
    timezone = "Europe/London"


class MaintenanceWindowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MaintenanceWindow

    site = factory.SubFactory(SiteFactory)
    weekday = 1
    starts = datetime.time(2, 0)
    ends = datetime.time(5, 0)


class BlackoutPeriodFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BlackoutPeriod

    site = factory.SubFactory(SiteFactory)
    starts_on = datetime.date(2026, 12, 24)
    ends_on = datetime.date(2026, 12, 26)
    reason = "Christmas"
