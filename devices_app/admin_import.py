"""The device list's "Import CSV" page: homepot.admin_csv_import around devices_import."""

from devices_app.imports import WRITABLE, devices_import
from homepot.admin_csv_import import CsvImportAdminMixin


class DeviceImportAdminMixin(CsvImportAdminMixin):
    csv_import_service = devices_import
    csv_import_columns = WRITABLE
    csv_import_id_label = "Device ID"
    csv_import_help = (
        "device_id, name and site_id are required. Rows whose device_id exists are updated, the "
        "others created."
    )

    def csv_import_done_message(self, result) -> str:
        return (
            f"Imported: {result.create} devices created, {result.update} updated, {result.skip} unchanged. "
            "New devices have no credential yet: rotate their credentials to issue one."
        )
