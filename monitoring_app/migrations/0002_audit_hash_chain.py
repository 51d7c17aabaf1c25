"""Tamper evidence for the audit trail: a hash chain, and a PostgreSQL trigger that refuses
UPDATE and DELETE on the audit table. Existing rows are chained in id order."""

import django.utils.timezone
from django.db import migrations, models

from monitoring_app.models import audit_row_hash

GENESIS_HASH = "0" * 64

# "%%" because the schema editor passes the text through the driver's placeholder parser.
APPEND_ONLY_SQL = """
CREATE OR REPLACE FUNCTION homepot_audit_append_only() RETURNS trigger AS $$
BEGIN
    -- Rewriting a row with identical values (loaddata of the demo twice) changes nothing.
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'monitoring_app_auditlog is append-only: %% refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS monitoring_auditlog_append_only ON monitoring_app_auditlog;
CREATE TRIGGER monitoring_auditlog_append_only
    BEFORE UPDATE OR DELETE ON monitoring_app_auditlog
    FOR EACH ROW EXECUTE FUNCTION homepot_audit_append_only();
"""

DROP_APPEND_ONLY_SQL = """
DROP TRIGGER IF EXISTS monitoring_auditlog_append_only ON monitoring_app_auditlog;
DROP FUNCTION IF EXISTS homepot_audit_append_only();
"""


def chain_existing_rows(apps, schema_editor):
    AuditLog = apps.get_model("monitoring_app", "AuditLog")
    prev = GENESIS_HASH
    for row in AuditLog.objects.order_by("id").iterator(chunk_size=2000):
        row.prev_hash = prev
        row.row_hash = prev = audit_row_hash(row)
        row.save(update_fields=["prev_hash", "row_hash"])


def install_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY_SQL)


def remove_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_APPEND_ONLY_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring_app", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditlog",
            name="prev_hash",
            field=models.CharField(default="", editable=False, max_length=64),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="auditlog",
            name="row_hash",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.AlterField(
            model_name="auditlog",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now, editable=False),
        ),
        migrations.RunPython(chain_existing_rows, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditlog",
            name="row_hash",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
        migrations.RunPython(install_trigger, remove_trigger),
    ]
