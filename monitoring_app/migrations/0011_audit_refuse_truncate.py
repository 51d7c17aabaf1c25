"""The audit trail refuses TRUNCATE too (the row trigger of 0002 does not fire on it, so a
TRUNCATE emptied the table and `verify_audit` then reported "intact: 0 rows").

A BEFORE TRUNCATE statement trigger, PostgreSQL only. Like the row trigger, it stops the
application's role and mistakes, not a superuser who disables triggers: signed checkpoints
(`manage.py audit_checkpoint`, `verify_audit --checkpoints`) catch that.
"""

from django.db import migrations

# "%%" because the schema editor passes the text through the driver's placeholder parser.
REFUSE_TRUNCATE_SQL = """
CREATE OR REPLACE FUNCTION homepot_audit_refuse_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'monitoring_app_auditlog is append-only: %% refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS monitoring_auditlog_refuse_truncate ON monitoring_app_auditlog;
CREATE TRIGGER monitoring_auditlog_refuse_truncate
    BEFORE TRUNCATE ON monitoring_app_auditlog
    FOR EACH STATEMENT EXECUTE FUNCTION homepot_audit_refuse_truncate();
"""

DROP_REFUSE_TRUNCATE_SQL = """
DROP TRIGGER IF EXISTS monitoring_auditlog_refuse_truncate ON monitoring_app_auditlog;
DROP FUNCTION IF EXISTS homepot_audit_refuse_truncate();
"""


def install_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REFUSE_TRUNCATE_SQL)


def remove_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_REFUSE_TRUNCATE_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring_app", "0010_device_error_alerts"),
    ]

    operations = [
        migrations.RunPython(install_trigger, remove_trigger),
    ]
