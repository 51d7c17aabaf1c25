"""`manage.py create_fleet`: a synthetic fleet, set-based, valid, audited once, all or nothing."""

import ipaddress
from collections import Counter
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices_app import bulk
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from devices_app.validators import normalize_mac
from monitoring_app.models import AuditLog, HealthCheck
from sites_app.models import Site

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["sql", "orm"])
def insert_path(request, monkeypatch):
    """Run each test through the PostgreSQL statement and through the bulk_create fallback
    that SQLite uses, so both produce the same valid fleet."""
    if request.param == "orm":
        monkeypatch.setattr(bulk, "_insert_batch_sql", bulk._insert_batch_orm)
    return request.param


def create_fleet(**options):
    out, err = StringIO(), StringIO()
    call_command("create_fleet", stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def snapshot():
    return (
        Site.objects.count(),
        Device.objects.count(),
        HealthCheck.objects.count(),
        AuditLog.objects.count(),
    )


def assert_valid_fleet(devices):
    # Stored form first: full_clean normalises the MAC in memory and would hide a bad one.
    macs = [d.mac_address for d in devices]
    assert all(mac == normalize_mac(mac) for mac in macs)
    assert len(set(macs)) == len(macs)
    for device in devices:
        device.full_clean()
    assert len({d.device_id for d in devices}) == len(devices)
    for device in devices:
        ipaddress.ip_address(device.ip_address)
        assert device.status in DeviceStatus.values and device.device_type in DeviceType.values
        assert isinstance(device.config, dict) and device.config
        assert (device.last_seen is None) == (device.status == DeviceStatus.UNKNOWN)


def test_creates_the_asked_fleet_with_valid_unique_data_and_one_audit_row(insert_path):
    out, err = create_fleet(sites=3, devices_per_site=4)

    sites = list(Site.objects.order_by("site_id"))
    assert [s.site_id for s in sites] == ["fleet-0001", "fleet-0002", "fleet-0003"]
    for site in sites:
        site.full_clean()
        devices = list(site.devices.order_by("device_id"))
        assert [d.name for d in devices] == [f"POS Terminal {n}" for n in range(1, 5)]
        assert [d.device_id for d in devices] == [f"{site.site_id}-pos-terminal-{n}" for n in range(1, 5)]
    devices = list(Device.objects.all())
    assert len(devices) == 12
    assert_valid_fleet(devices)

    audit = AuditLog.objects.get()
    assert audit.event_type == "devices.bulk_created"
    assert audit.actor is None
    assert audit.new_values["sites"] == 3 and audit.new_values["devices"] == 12
    assert "Created 3 sites, 12 devices" in out
    assert "12/12" in err  # the progress bar, on stderr
    call_command("verify_audit", stdout=StringIO())


def test_same_prefix_again_is_refused_and_changes_nothing(insert_path):
    create_fleet(sites=2, devices_per_site=3)
    before = snapshot()
    with pytest.raises(CommandError, match=r"prefix 'fleet-' already exist.*Choose another --site-prefix"):
        create_fleet(sites=2, devices_per_site=3)
    assert snapshot() == before


def test_types_and_numbering_per_block_of_ten_across_several_batches(insert_path):
    create_fleet(
        sites=4, devices_per_site=12, batch_size=24, health_checks_per_device=2, site_prefix="east", seed=7
    )
    devices = list(Device.objects.select_related("site"))
    assert len(devices) == 48
    assert_valid_fleet(devices)
    for site in Site.objects.all():
        names = sorted(site.devices.values_list("name", flat=True))
        # Positions 1-8 and 11-12 are POS terminals 1-10; 9 is a card reader, 10 a printer.
        assert names == sorted(
            [f"POS Terminal {n}" for n in range(1, 11)] + ["Card Reader 1", "Receipt Printer 1"]
        )
    assert Counter(d.device_type for d in devices) == {
        "pos_terminal": 40,
        "card_reader": 4,
        "receipt_printer": 4,
    }

    reported = [d for d in devices if d.last_seen is not None]
    checks = list(HealthCheck.objects.select_related("device"))
    assert len(checks) == 2 * len(reported)
    for check in checks:
        check.full_clean()
        assert check.checked_at <= check.device.last_seen
        assert 0 <= check.metrics["cpu_percent"] <= 100
    assert AuditLog.objects.get().new_values["health_checks"] == len(checks)


def test_fleets_never_reuse_a_mac_address(insert_path):
    DeviceFactory(mac_address="02:FE:00:00:00:05")  # someone's earlier synthetic device
    create_fleet(sites=2, devices_per_site=5, site_prefix="north")
    create_fleet(sites=2, devices_per_site=5, site_prefix="south")
    north = set(Device.objects.filter(device_id__startswith="north-").values_list("mac_address", flat=True))
    south = set(Device.objects.filter(device_id__startswith="south-").values_list("mac_address", flat=True))
    assert len(north) == len(south) == 10
    assert min(north) > "02:FE:00:00:00:05"
    assert min(south) > max(north)
    assert_valid_fleet(list(Device.objects.filter(site__site_id__regex=r"^(north|south)-")))


def test_query_count_does_not_grow_with_the_fleet(django_assert_max_num_queries):
    # Checks, lock, one statement per batch, the audit row, ANALYZE: never one per device.
    # The first fleet with health checks creates the history's days they fall in (a constant).
    create_fleet(sites=1, devices_per_site=1, health_checks_per_device=1, site_prefix="warm")
    with CaptureQueriesContext(connection) as small:
        create_fleet(
            sites=2, devices_per_site=5, batch_size=5, health_checks_per_device=1, site_prefix="small"
        )
    with django_assert_max_num_queries(len(small)):
        create_fleet(sites=2, devices_per_site=250, batch_size=250, health_checks_per_device=1)
    assert Device.objects.count() == 511
    assert len(small) <= 22  # 20, and the check that the history's days exist (2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sites": 0, "devices_per_site": 5}, "--sites must be a whole number of at least 1"),
        ({"sites": -3, "devices_per_site": 5}, "--sites must be"),
        ({"sites": 2, "devices_per_site": 0}, "--devices-per-site must be"),
        ({"sites": 2, "devices_per_site": -1}, "--devices-per-site must be"),
        ({"sites": 2, "devices_per_site": 2, "health_checks_per_device": -1}, "--health-checks-per-device"),
        ({"sites": 2, "devices_per_site": 2, "batch_size": 0}, "--batch-size must be"),
        ({"sites": 2, "devices_per_site": 2, "site_prefix": "bad prefix!"}, "not a valid id prefix"),
        ({"sites": 2, "devices_per_site": 2, "site_prefix": "fleet-"}, "must not end with"),
        ({"sites": 2, "devices_per_site": 2, "site_prefix": "x" * 50}, "too long"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(options, message):
    with pytest.raises(CommandError, match=message):
        create_fleet(**options)
    assert snapshot() == (0, 0, 0, 0)


def test_command_line_parsing_refuses_negative_numbers():
    with pytest.raises(CommandError, match="--sites must be"):
        call_command("create_fleet", "--sites", "-1", "--devices-per-site", "3", stdout=StringIO())


def test_a_new_fleet_is_searchable_with_planner_statistics_at_once():
    """The console's search reads the side table that triggers fill beside the devices: a
    load leaves it with statistics too (with none, PostgreSQL planned a search of a million
    devices as if the table were empty, and took seconds)."""
    create_fleet(sites=3, devices_per_site=20, site_prefix="stats")
    tables = {
        "devices_app_device",
        "devices_app_devicesearch",
        "devices_app_sitedevicecount",
        "devices_app_sitehealthcount",
    }
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT tablename FROM pg_stats WHERE tablename = ANY(%s)", [sorted(tables)])
        analysed = {row[0] for row in cursor.fetchall()}
    assert analysed == tables
