import factory

from sites_app.models import Site


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
