import factory

from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device, DeviceCredential


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    device_id = factory.Sequence(lambda n: f"pos-terminal-{n:05d}")
    name = factory.Sequence(lambda n: f"POS Terminal {n}")
    device_type = DeviceType.POS_TERMINAL
    site = factory.SubFactory("sites_app.tests.factories.SiteFactory")
    status = DeviceStatus.ONLINE
    ip_address = factory.Sequence(lambda n: f"10.{(n // 250) % 250}.{n % 250}.10")
    # 02: a locally administered prefix, so test MACs never collide with real vendors.
    mac_address = factory.Sequence(lambda n: "02:00:" + ":".join(f"{b:02X}" for b in n.to_bytes(4, "big")))
    firmware_version = "4.2.1"
    config = factory.LazyFunction(lambda: {"gateway_url": "https://payments.example.com"})


class DeviceCredentialFactory(factory.django.DjangoModelFactory):
    """A usable credential; its raw key is `hpd_test-<n>` (not kept on the instance)."""

    class Meta:
        model = DeviceCredential

    device = factory.SubFactory(DeviceFactory)
    key_prefix = factory.Sequence(lambda n: f"hpd_test-{n}"[:12])
    key_hash = factory.Sequence(lambda n: DeviceCredential.hash_key(f"hpd_test-{n}"))
