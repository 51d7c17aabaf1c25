"""The device list's "Import CSV" page: upload, preview table, confirm (then all or nothing).

The uploaded file waits between the preview and the confirmation in Redis (compressed, bound
to the user, gone after 30 minutes or once applied), so every web process can apply it and
the confirm request carries only a token, not the file. The apply previews the file again
inside its transaction: if the fleet changed meanwhile, the new errors are shown instead.
"""

import secrets
import zlib

import redis
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from devices_app.imports import WRITABLE, ImportRefused, devices_import
from homepot.redis_clients import redis_client

PENDING_SECONDS = 30 * 60


def _key(request, token: str) -> str:
    return f"homepot:csv-import:devices:{request.user.pk}:{token}"


def _redis():
    return redis_client(settings.REDIS_URL, 2.0)


class DeviceImportAdminMixin:
    def get_urls(self):
        page = self.admin_site.admin_view(self.import_csv_view)
        return [path("import/", page, name="devices_app_device_import"), *super().get_urls()]

    def has_import_permission(self, request) -> bool:
        return self.has_add_permission(request) and self.has_change_permission(request)

    def import_csv_view(self, request):
        if not self.has_import_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import devices from CSV",
            "columns": WRITABLE,
            "max_mb": settings.HOMEPOT_IMPORT_MAX_BYTES // (1024 * 1024),
        }
        if request.method == "POST" and request.POST.get("token"):
            return self._apply(request, context, request.POST["token"])
        if request.method == "POST":
            return self._preview(request, context)
        return TemplateResponse(request, "admin/devices_app/device/import.html", context)

    def _render(self, request, context):
        return TemplateResponse(request, "admin/devices_app/device/import.html", context)

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
            preview = devices_import(actor=request.user, data=data, dry_run=True)
        except ImportRefused as exc:
            context["preview"] = exc.preview.as_dict()
            return self._render(request, context)
        except ValidationError as exc:
            context["problem"] = " ".join(exc.messages)
            return self._render(request, context)
        context["preview"] = preview.as_dict()
        if preview.create or preview.update:
            token = secrets.token_urlsafe(16)
            try:
                _redis().set(_key(request, token), zlib.compress(data), ex=PENDING_SECONDS)
            except redis.RedisError:
                context["problem"] = "The file cannot be kept for the confirmation right now; try again."
                return self._render(request, context)
            context["token"] = token
        return self._render(request, context)

    def _apply(self, request, context, token: str):
        key = _key(request, token)
        try:
            stored = _redis().get(key)
        except redis.RedisError:
            stored = None
        if stored is None:
            context["problem"] = "This preview has expired; upload the file again."
            return self._render(request, context)
        try:
            result = devices_import(actor=request.user, data=zlib.decompress(stored), dry_run=False)
        except ImportRefused as exc:
            context["preview"] = exc.preview.as_dict()
            context["problem"] = "The devices changed since the preview; nothing was imported."
            return self._render(request, context)
        _redis().delete(key)
        self.message_user(
            request,
            f"Imported: {result.create} devices created, {result.update} updated, {result.skip} unchanged. "
            "New devices have no credential yet: rotate their credentials to issue one.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:devices_app_device_changelist"))
