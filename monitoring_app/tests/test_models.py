import datetime
import re

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.services import audit_record
from monitoring_app.tests.factories import HealthCheckFactory

pytestmark = pytest.mark.django_db


def test_latest_checks_of_a_device_use_the_device_index():
    device = DeviceFactory()
    now = timezone.now()
    for minutes in (30, 10, 20):
        HealthCheckFactory(device=device, checked_at=now - datetime.timedelta(minutes=minutes))
    # The rest of a (small) fleet reporting in the same hour, and statistics that say so: the
    # planner's choice between the device index and the time index is made on them.
    for other in DeviceFactory.create_batch(19):
        for minutes in (5, 15, 25, 35, 45):
            HealthCheckFactory(device=other, checked_at=now - datetime.timedelta(minutes=minutes))
    latest = HealthCheck.objects.filter(device=device).order_by("-checked_at")
    assert [c.checked_at for c in latest] == sorted((c.checked_at for c in latest), reverse=True)

    # The read as the device pages make it (selectors.newest_first): a window back from the
    # device's last report, here closed at now so that only the days holding rows are planned.
    # An empty day's partition is no evidence either way: with no rows to count, both indexes
    # cost the same and the planner's pick between them is arbitrary (it once took the time
    # index on an empty day autovacuum had analysed, and this test failed for it).
    window = latest.filter(checked_at__gte=now - datetime.timedelta(hours=1), checked_at__lte=now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE monitoring_app_healthcheck")
        cursor.execute("SET enable_seqscan = off")
        sql, params = window[:5].query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        # On the partitioned table each day's partition has its own copy of the index.
        cursor.execute(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'monitoring_health_dev_latest'::regclass"""
        )
        device_index = {"monitoring_health_dev_latest", *(row[0] for row in cursor.fetchall())}
    # With statistics the planner may read the few rows through a bitmap of the same index.
    used = set(re.findall(r"(?:Index (?:Only )?Scan(?: Backward)? using|Bitmap Index Scan on) (\S+)", plan))
    assert used and used <= device_index, plan


def test_health_status_is_constrained_in_the_database():
    with pytest.raises(IntegrityError):
        HealthCheckFactory(status="on-fire")


def test_audit_row_survives_deletion_of_its_device_and_site(admin_user):
    device = DeviceFactory(device_id="pos-terminal-7")
    site = device.site
    audit_record(event_type="device.updated", actor=admin_user, device=device, new_values={"name": "x"})

    device.delete()
    site.delete()

    log = AuditLog.objects.select_related("site", "device").get()
    assert (log.device_ref, log.site_ref) == ("pos-terminal-7", site.site_id)
    assert log.device is None and log.site is None  # the link is gone, the record is not


def test_audit_record_costs_the_same_few_queries_however_long_the_trail(admin_user):
    device = DeviceFactory()
    counts = []
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            audit_record(event_type="device.updated", actor=admin_user, device=device)
        counts.append(len(queries))
    # savepoint, chain lock + previous hash + insert (one round trip), release
    assert counts == [3, 3, 3]
    lock_and_insert = queries.captured_queries[1]["sql"]
    assert lock_and_insert.startswith("SELECT pg_advisory_xact_lock(")
    assert "INSERT INTO" in lock_and_insert and "ORDER BY" in lock_and_insert
