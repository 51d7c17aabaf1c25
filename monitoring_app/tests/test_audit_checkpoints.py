"""Signed checkpoints prove that nothing was cut from either end of the audit trail.

Tampering is done the way an intruder with a superuser's rights would: SQL with the
append-only triggers disabled.
"""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from devices_app.tests.factories import DeviceFactory
from monitoring_app.checkpoints import CHECKPOINT_FILE
from monitoring_app.models import AuditLog
from monitoring_app.services import audit_record
from monitoring_app.tasks import audit_checkpoint

pytestmark = pytest.mark.django_db


def _write_trail(n):
    device = DeviceFactory()
    for i in range(n):
        audit_record(event_type="device.updated", device=device, new_values={"step": i})
    return list(AuditLog.objects.order_by("id"))


def _as_intruder(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE monitoring_app_auditlog DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE monitoring_app_auditlog ENABLE TRIGGER USER")


def _checkpoint(tmp_path):
    call_command("audit_checkpoint", "--dir", str(tmp_path))
    return tmp_path / CHECKPOINT_FILE


def test_a_checkpoint_names_the_head_and_verify_audit_matches_it(tmp_path, capsys):
    rows = _write_trail(3)
    path = _checkpoint(tmp_path)
    line = json.loads(path.read_text())
    assert (line["row_id"], line["row_hash"], line["count"]) == (rows[-1].pk, rows[-1].row_hash, 3)
    _write_trail(2)  # newer rows are fine: the chain still runs through the checkpoint

    call_command("verify_audit", "--checkpoints", str(path))

    out = capsys.readouterr().out
    assert "Audit chain intact: 5 row(s) verified" in out
    assert "1 checkpoint(s) match" in out and "counted 3 row(s)" in out


def test_verify_audit_reports_rows_cut_from_the_newest_end(tmp_path, capsys):
    rows = _write_trail(5)
    path = _checkpoint(tmp_path)
    _as_intruder("DELETE FROM monitoring_app_auditlog WHERE id >= %s", [rows[3].pk])

    call_command("verify_audit")  # without checkpoints the shorter chain looks whole
    assert "intact: 3 row(s)" in capsys.readouterr().out
    with pytest.raises(CommandError, match=rf"broken at row {rows[4].pk}: .* rows were cut from the end"):
        call_command("verify_audit", "--checkpoints", str(path))


def test_verify_audit_reports_a_trail_emptied_with_the_triggers_off(tmp_path, capsys):
    rows = _write_trail(3)
    _checkpoint(tmp_path)
    _as_intruder("TRUNCATE monitoring_app_auditlog")

    call_command("verify_audit")
    assert "intact: 0 row(s)" in capsys.readouterr().out
    with pytest.raises(CommandError, match=rf"broken at row {rows[2].pk}: .*the trail holds 0 row\(s\)"):
        call_command("verify_audit", "--checkpoints", str(tmp_path))  # the directory works too


def test_verify_audit_reports_rows_cut_from_the_oldest_end():
    rows = _write_trail(4)
    _as_intruder("DELETE FROM monitoring_app_auditlog WHERE id <= %s", [rows[1].pk])
    # The first row left no longer links to the genesis hash.
    with pytest.raises(CommandError, match=rf"broken at row {rows[2].pk}: its link"):
        call_command("verify_audit")


def test_verify_audit_reports_a_chain_rebuilt_without_a_row(tmp_path):
    """An intruder who deletes a row and re-chains everything after it keeps the links
    valid; the checkpointed row then sits at another place in the chain."""
    rows = _write_trail(3)
    path = _checkpoint(tmp_path)
    _as_intruder("DELETE FROM monitoring_app_auditlog WHERE id = %s", [rows[0].pk])
    prev = "0" * 64
    for row in AuditLog.objects.order_by("id"):
        row.prev_hash = prev
        prev = row.compute_hash()
        _as_intruder(
            "UPDATE monitoring_app_auditlog SET prev_hash = %s, row_hash = %s WHERE id = %s",
            [row.prev_hash, prev, row.pk],
        )
    call_command("verify_audit")  # the chain alone is consistent again
    with pytest.raises(CommandError, match=rf"broken at row {rows[2].pk}: it differs from the checkpoint"):
        call_command("verify_audit", "--checkpoints", str(path))


def test_an_edited_checkpoint_fails_its_signature(tmp_path):
    _write_trail(2)
    path = _checkpoint(tmp_path)
    line = json.loads(path.read_text())
    line["count"] = 1
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(CommandError, match="line 1 fails its signature"):
        call_command("verify_audit", "--checkpoints", str(path))


def test_a_checkpoint_signed_with_another_key_is_refused(tmp_path, settings):
    _write_trail(1)
    settings.HOMEPOT_AUDIT_CHECKPOINT_KEY = "an intruder's own key"
    path = _checkpoint(tmp_path)
    settings.HOMEPOT_AUDIT_CHECKPOINT_KEY = ""
    with pytest.raises(CommandError, match="fails its signature"):
        call_command("verify_audit", "--checkpoints", str(path))


def test_a_missing_checkpoint_file_is_an_error(tmp_path):
    with pytest.raises(CommandError, match="Cannot read checkpoints"):
        call_command("verify_audit", "--checkpoints", str(tmp_path / "nope.jsonl"))


def test_audit_checkpoint_needs_a_location(settings):
    settings.HOMEPOT_AUDIT_CHECKPOINT_DIR = ""
    with pytest.raises(CommandError, match="HOMEPOT_AUDIT_CHECKPOINT_DIR"):
        call_command("audit_checkpoint")


def test_the_beat_task_appends_to_the_configured_directory(tmp_path, settings):
    settings.HOMEPOT_AUDIT_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    _write_trail(2)
    assert audit_checkpoint() == 2
    _write_trail(1)
    assert audit_checkpoint() == 3
    lines = (tmp_path / "checkpoints" / CHECKPOINT_FILE).read_text().splitlines()
    assert [json.loads(line)["count"] for line in lines] == [2, 3]
    call_command("verify_audit", "--checkpoints", settings.HOMEPOT_AUDIT_CHECKPOINT_DIR)
