import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AppendOnlyError, AuditLog
from monitoring_app.services import audit_record, audited_atomic

pytestmark = pytest.mark.django_db


def _write_trail(n=5, actor=None):
    device = DeviceFactory()
    for i in range(n):
        audit_record(event_type="device.updated", actor=actor, device=device, new_values={"step": i})
    return list(AuditLog.objects.order_by("id"))


def _bypass_trigger(sql, params):
    """What an intruder with database access could do: change rows behind the app's back."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET LOCAL session_replication_role = origin")


def test_every_row_links_to_the_one_before(admin_user):
    rows = _write_trail(actor=admin_user)
    assert rows[0].prev_hash == "0" * 64
    assert all(later.prev_hash == earlier.row_hash for earlier, later in zip(rows, rows[1:], strict=False))


def test_verify_audit_reports_an_intact_chain(capsys):
    _write_trail()
    call_command("verify_audit")
    assert "Audit chain intact: 5 row(s) verified" in capsys.readouterr().out


def test_verify_audit_names_a_row_altered_directly_in_the_database():
    rows = _write_trail()
    _bypass_trigger(
        "UPDATE monitoring_app_auditlog SET description = %s WHERE id = %s", ["nothing to see", rows[2].pk]
    )
    with pytest.raises(CommandError, match=f"broken at row {rows[2].pk}: its content"):
        call_command("verify_audit")


def test_verify_audit_notices_a_removed_row():
    rows = _write_trail()
    _bypass_trigger("DELETE FROM monitoring_app_auditlog WHERE id = %s", [rows[1].pk])
    with pytest.raises(CommandError, match=f"broken at row {rows[2].pk}: its link"):
        call_command("verify_audit")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE monitoring_app_auditlog SET description = 'edited' WHERE id = %s",
        "DELETE FROM monitoring_app_auditlog WHERE id = %s",
    ],
)
def test_the_database_refuses_update_and_delete(sql):
    row = _write_trail(1)[0]
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [row.pk])
    assert AuditLog.objects.get(pk=row.pk).description == row.description


def test_the_application_refuses_to_change_or_delete_audit_rows():
    row = _write_trail(1)[0]
    row.description = "edited"
    with pytest.raises(AppendOnlyError):
        row.save()
    with pytest.raises(AppendOnlyError):
        row.delete()
    with pytest.raises(AppendOnlyError):
        AuditLog.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditLog.objects.update(description="edited")


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_keep_one_unbroken_chain():
    device = DeviceFactory()
    errors = []

    def write(worker):
        try:
            for i in range(10):
                audit_record(
                    event_type="device.updated", device=device, new_values={"worker": worker, "i": i}
                )
        except Exception as exc:  # surfaced below; a thread's exception would be lost otherwise
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert AuditLog.objects.count() == 40
    call_command("verify_audit")


def test_an_audited_block_writes_its_rows_when_it_ends_after_its_own_writes():
    device = DeviceFactory()
    with audited_atomic():
        audit_record(event_type="device.updated", device=device, new_values={"step": 1})
        with audited_atomic():
            audit_record(event_type="device.updated", device=device, new_values={"step": 2})
        # Not yet in the chain: the chain lock comes after every row lock of the block.
        assert not AuditLog.objects.exists()
        device.delete()  # a write after the audit call, as device_delete does
    rows = list(AuditLog.objects.order_by("id"))
    assert [r.new_values["step"] for r in rows] == [1, 2]
    assert rows[0].device_ref == device.device_id and rows[1].prev_hash == rows[0].row_hash


def test_a_failed_nested_block_drops_its_audit_rows_with_its_savepoint():
    device = DeviceFactory()
    with audited_atomic():
        audit_record(event_type="device.updated", device=device, new_values={"kept": True})
        with pytest.raises(ValueError), audited_atomic():
            audit_record(event_type="device.updated", device=device, new_values={"kept": False})
            raise ValueError("refused")
    assert [r.new_values for r in AuditLog.objects.all()] == [{"kept": True}]
    call_command("verify_audit")


def test_audit_record_outside_an_audited_block_writes_at_once():
    entry = audit_record(event_type="device.updated", device=DeviceFactory())
    assert entry.pk is not None and AuditLog.objects.get().row_hash == entry.row_hash


def test_the_database_refuses_truncate():
    _write_trail(2)
    with (
        pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("TRUNCATE monitoring_app_auditlog")
    assert AuditLog.objects.count() == 2
