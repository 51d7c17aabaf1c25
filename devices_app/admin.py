from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.db.models import Count
from django.utils.html import format_html

from devices_app.models import Device
from devices_app.services import (
    device_create,
    device_credential_issue,
    device_credential_revoke,
    device_delete,
    device_update,
)
from homepot.admin import (
    EstimatedCountPaginator,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    admin_changelist_url,
    adopt_saved,
    model_field_values,
    object_link,
    run_service,
    status_badge,
    verbose_link,
)
from jobs_app.admin_links import MAX_PICKED, redirect_to_new_job
from monitoring_app.admin_timeline import device_timeline_html
from monitoring_app.models import HealthCheck

# Each rotated secret is shown once in a message; more than this is not something to copy.
ROTATE_AT_ONCE = 50


@admin.register(Device)
class DeviceAdmin(ScopedAdminMixin, admin.ModelAdmin):
    actions = ("push_configuration", "rotate_credentials", "revoke_credentials")
    list_display = (
        "device_id",
        "name",
        "device_type",
        "status_badge",
        "site_link",
        "ip_address",
        "firmware_version",
        "last_seen",
    )
    list_display_links = ("device_id", "name")
    # The site filter is SiteListFilter: the user's own sites, read from the sites table and
    # bounded in size, never a DISTINCT over a million devices (see homepot.admin).
    list_filter = ("status", "device_type", SiteListFilter, ("last_seen", DateFieldListFilter))
    search_fields = ("device_id", "name", "ip_address", "mac_address", "site__site_id", "site__name")
    ordering = ("device_id",)
    list_select_related = ("site",)
    autocomplete_fields = ("site",)
    # The fleet table is big: no second, unfiltered count, and no exact count of all of it.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    paginator = EstimatedCountPaginator
    readonly_fields = ("health_history_link", "last_seen", "created_at", "updated_at", "timeline")
    fieldsets = (
        (None, {"fields": ("device_id", "name", "device_type", "site", "status")}),
        ("Network", {"fields": ("ip_address", "mac_address")}),
        ("Software", {"fields": ("firmware_version", "config")}),
        ("Health", {"fields": ("last_seen", "health_history_link")}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ("Timeline", {"fields": ("timeline",)}),
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, device):
        return status_badge(device.status, device.get_status_display())

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, device):
        return object_link(device.site)

    @admin.display(description="health history")
    def health_history_link(self, device):
        if device is None or device.pk is None:
            return "—"
        url = admin_changelist_url(HealthCheck, device__id__exact=device.pk)
        return format_html('<a href="{}">Health checks of this device</a>', url)

    @admin.display(description="newest first")
    def timeline(self, device):
        # The same selector as GET /api/v1/fleet/devices/{device_id}/timeline.
        return device_timeline_html(device)

    # --- Writes go through the services (validated, scoped, audited) ---------------------

    def save_model(self, request, obj, form, change):
        if change:
            # The stored row, not the form-edited one: the service checks the rights on the
            # site the device is at now, and separately on the site it moves to.
            stored = Device.objects.select_related("site").get(pk=obj.pk)
            fields = model_field_values(form, obj, form.changed_data)
            saved = run_service(device_update, actor=request.user, device=stored, **fields)
        else:
            saved = run_service(device_create, actor=request.user, **model_field_values(form, obj))
            self._show_secret(request, saved, saved.issued_secret)
        adopt_saved(obj, saved)

    def _show_secret(self, request, device, secret):
        self.message_user(
            request,
            f"Credential of {device.device_id}: {secret} — configure the device with it now: "
            "it is stored only as a hash and will not be shown again.",
            messages.WARNING,
        )

    @admin.action(description="Push configuration to selected devices", permissions=["add_job"])
    def push_configuration(self, request, queryset):
        # Only devices the user may change end up as targets; the job form shows the rest.
        picked = queryset.for_user(request.user, "change").order_by("site_id", "id")
        rows = list(picked.values_list("pk", "site_id")[: MAX_PICKED + 1])
        if not rows:
            self.message_user(request, "None of the selected devices is yours to change.", messages.ERROR)
            return None
        sites = list(dict.fromkeys(site for _, site in rows))
        return redirect_to_new_job(self, request, site_pks=sites, device_pks=[pk for pk, _ in rows])

    def has_add_job_permission(self, request):
        return request.user.has_perm("jobs_app.add_job")

    @admin.action(description="Issue new credentials (the old ones stop working)", permissions=["change"])
    def rotate_credentials(self, request, queryset):
        if queryset.count() > ROTATE_AT_ONCE:
            self.message_user(
                request,
                f"Select at most {ROTATE_AT_ONCE} devices: each new secret is shown once and must be copied.",
                messages.ERROR,
            )
            return
        for device in queryset.select_related("site"):
            try:
                _, secret = run_service(device_credential_issue, actor=request.user, device=device)
                self._show_secret(request, device, secret)
            except ServiceRefused as exc:
                self.message_user(request, f"{device}: {exc}", messages.ERROR)

    @admin.action(description="Revoke credentials (the devices are locked out)", permissions=["change"])
    def revoke_credentials(self, request, queryset):
        revoked = 0
        for device in queryset.select_related("site"):
            try:
                revoked += run_service(device_credential_revoke, actor=request.user, device=device)
            except ServiceRefused as exc:
                self.message_user(request, f"{device}: {exc}", messages.ERROR)
        self.message_user(request, f"Revoked {revoked} credential(s).", messages.SUCCESS)

    def delete_model(self, request, obj):
        run_service(device_delete, actor=request.user, device=obj)

    def get_deleted_objects(self, objs, request):
        """A device's health history goes with it (the audit log keeps the deletion).

        Health checks are read-only history, so they need no delete permission of their
        own, and they are summed up per device instead of listed: a busy terminal has
        tens of thousands of them.
        """
        devices = list(objs)
        history = dict(
            HealthCheck.objects.filter(device__in=devices)
            .order_by()
            .values("device")
            .annotate(n=Count("pk"))
            .values_list("device", "n")
        )
        to_delete = []
        for device in devices:
            to_delete.append(verbose_link(device))
            if history.get(device.pk):
                to_delete.append([f"{history[device.pk]} health check(s) of its history"])
        model_count = {Device._meta.verbose_name_plural: len(devices)}
        if history:
            model_count[HealthCheck._meta.verbose_name_plural] = sum(history.values())
        return to_delete, model_count, self.unchangeable_names(request, devices), []
