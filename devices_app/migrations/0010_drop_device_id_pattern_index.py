"""Drop the device ID's `varchar_pattern_ops` index (PostgreSQL only; 94 MB at 1,000,000
devices): Django makes it for every unique CharField so that `LIKE 'x%'` can use an index
under a non-C collation, and the only such read here is create_fleet's check that a prefix
is unused (devices_app.bulk.check_prefix_unused), a scan that stops at the first hit. Every
status change of a device (the sweep's 51,000 at once) wrote an entry into it.

Django's state still holds `unique=True` (the unique index and its validation stay). A later
AlterField of device_id on PostgreSQL may create the index again; drop it again then.
Not atomic: dropped and (backwards) built CONCURRENTLY while devices keep reporting.
"""

from django.db import migrations

INDEX = "devices_app_device_device_id_2a345c0d_like"


def drop_pattern_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


def create_pattern_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON devices_app_device (device_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("devices_app", "0009_device_index_diet")]

    operations = [migrations.RunPython(drop_pattern_index, create_pattern_index)]
