"""A changelist's "Import CSV" page (devices, sites): upload, preview table, confirm (then all
or nothing), around the app's import service (`<app>.imports`), which holds every rule.

The uploaded file waits between the preview and the confirmation in Redis (compressed, bound
to the user, gone after 30 minutes or once applied), so every web process can apply it and
the confirm request carries only a token, not the file. The apply previews the file again
inside its transaction: if the data changed meanwhile, the new errors are shown instead, and
a row another writer took between that check and the write (a device ID or MAC address
registered at the same moment) is named as a conflict, not a server error.
"""

import secrets
import zlib

import redis
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from homepot.csv_import import ImportRefused
from homepot.redis_clients import redis_client

PENDING_SECONDS = 30 * 60
TEMPLATE = "admin/homepot/csv_import.html"


def _redis():
    return redis_client(settings.REDIS_URL, 2.0)


def _for_display(preview) -> dict:
    """The preview's answer, each error and outcome also under "ident" (the template cannot
    look up the app's own id column by name)."""
    shown = preview.as_dict()
    for row in (*shown["errors"], *shown["outcomes"]):
        row["ident"] = row.get(preview.id_key, "")
    return shown


class CsvImportAdminMixin:
    """Set `csv_import_service` (the app's `<things>_import(actor=, data=, dry_run=)`),
    `csv_import_columns` (the columns it writes) and `csv_import_help` (what the upload form
    says about them); `has_import_permission` decides who sees the page and its link."""

    csv_import_service = None
    csv_import_columns: tuple[str, ...] = ()
    csv_import_help = ""
    csv_import_id_label = "ID"

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        page = self.admin_site.admin_view(self.import_csv_view)
        return [path("import/", page, name="{}_{}_import".format(*info)), *super().get_urls()]

    def has_import_permission(self, request) -> bool:
        return self.has_add_permission(request) and self.has_change_permission(request)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "may_import": self.has_import_permission(request)}
        return super().changelist_view(request, extra_context)

    def _import(self, request, data: bytes, *, dry_run: bool):
        # The service is a plain function kept on the class: not a method of the admin.
        return type(self).csv_import_service(actor=request.user, data=data, dry_run=dry_run)

    def _pending_key(self, request, token: str) -> str:
        return f"homepot:csv-import:{self.model._meta.model_name}:{request.user.pk}:{token}"

    def import_csv_view(self, request):
        if not self.has_import_permission(request):
            raise PermissionDenied
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "title": f"Import {opts.verbose_name_plural} from CSV",
            "columns": self.csv_import_columns,
            "help": self.csv_import_help,
            "id_label": self.csv_import_id_label,
            "max_mb": settings.HOMEPOT_IMPORT_MAX_BYTES // (1024 * 1024),
        }
        if request.method == "POST" and request.POST.get("token"):
            return self._apply(request, context, request.POST["token"])
        if request.method == "POST":
            return self._preview(request, context)
        return self._render(request, context)

    def _render(self, request, context):
        return TemplateResponse(request, TEMPLATE, context)

    def _preview(self, request, context):
        upload = request.FILES.get("file")
        if upload is None:
            context["problem"] = "Choose a CSV file to import."
            return self._render(request, context)
        if upload.size > settings.HOMEPOT_IMPORT_MAX_BYTES:
            context["problem"] = f"The file is larger than {context['max_mb']} MB."
            return self._render(request, context)
        data = upload.read()
        try:
            preview = self._import(request, data, dry_run=True)
        except ImportRefused as exc:
            context["preview"] = _for_display(exc.preview)
            return self._render(request, context)
        except ValidationError as exc:
            context["problem"] = " ".join(exc.messages)
            return self._render(request, context)
        context["preview"] = _for_display(preview)
        if preview.create or preview.update:
            token = secrets.token_urlsafe(16)
            try:
                _redis().set(self._pending_key(request, token), zlib.compress(data), ex=PENDING_SECONDS)
            except redis.RedisError:
                context["problem"] = "The file cannot be kept for the confirmation right now; try again."
                return self._render(request, context)
            context["token"] = token
        return self._render(request, context)

    def _apply(self, request, context, token: str):
        key = self._pending_key(request, token)
        try:
            stored = _redis().get(key)
        except redis.RedisError:
            stored = None
        if stored is None:
            context["problem"] = "This preview has expired; upload the file again."
            return self._render(request, context)
        noun = self.model._meta.verbose_name_plural
        try:
            result = self._import(request, zlib.decompress(stored), dry_run=False)
        except ImportRefused as exc:
            context["preview"] = _for_display(exc.preview)
            context["problem"] = f"The {noun} changed since the preview; nothing was imported."
            return self._render(request, context)
        except IntegrityError:
            # Another writer registered one of the file's IDs or MAC addresses between the
            # check and the write (the API answers 409 here). Nothing was written.
            context["problem"] = (
                f"Some of these {noun} were registered by someone else while the import ran (the "
                "same ID or MAC address); nothing was imported. Upload the file again to see which."
            )
            return self._render(request, context)
        _redis().delete(key)
        self.message_user(request, self.csv_import_done_message(result), messages.SUCCESS)
        opts = self.model._meta
        return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))

    def csv_import_done_message(self, result) -> str:
        noun = self.model._meta.verbose_name_plural
        return f"Imported: {result.create} {noun} created, {result.update} updated, {result.skip} unchanged."
