import factory

from jobs_app.choices import DeliveryStatus, JobAction, JobPriority, JobStatus
from jobs_app.models import Delivery, Job


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    site = factory.SubFactory("sites_app.tests.factories.SiteFactory")
    action = JobAction.UPDATE_POS_PAYMENT_CONFIG
    description = "Switch payment gateway"
    payload = factory.LazyFunction(lambda: {"gateway_url": "https://payments-v2.example.com"})
    priority = JobPriority.NORMAL
    status = JobStatus.QUEUED
    created_by = factory.SubFactory("accounts.tests.factories.AdminUserFactory")


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    job = factory.SubFactory(JobFactory)
    device = factory.SubFactory(
        "devices_app.tests.factories.DeviceFactory", site=factory.SelfAttribute("..job.site")
    )
    site = factory.SelfAttribute("device.site")
    status = DeliveryStatus.PENDING
