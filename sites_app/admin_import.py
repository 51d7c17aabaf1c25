"""The site list's "Import CSV" page (administrators): homepot.admin_csv_import around
sites_import."""

from homepot.admin_csv_import import CsvImportAdminMixin
from sites_app.imports import WRITABLE, sites_import


class SiteImportAdminMixin(CsvImportAdminMixin):
    csv_import_service = sites_import
    csv_import_columns = WRITABLE
    csv_import_id_label = "Site ID"
    csv_import_help = (
        "site_id and name are required; timezone is an IANA name (UTC when empty) and is_active "
        "true or false (true when empty). Rows whose site_id exists are updated, the others created."
    )

    def has_import_permission(self, request) -> bool:
        # The service's rule (sites_app.imports.sites_import): administrators only.
        return request.user.is_active and request.user.is_superuser
