import zoneinfo

from django.contrib import admin, messages
from django.contrib.admin import ChoicesFieldListFilter, DateFieldListFilter
from django.contrib.admin.views.main import ALL_VAR, PAGE_VAR, SEARCH_VAR
from django.db.models import Count
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from devices_app.admin_import import DeviceImportAdminMixin
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.selectors import DEVICE_EXPORT_COLUMNS, device_export_rows, device_search
from devices_app.services import (
    device_create,
    device_credential_issue,
    device_credential_revoke,
    device_delete,
    device_update,
)
from homepot.admin import (
    ConsoleListMixin,
    CsvExportAdminMixin,
    EstimatedCountPaginator,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    admin_change_url,
    admin_changelist_url,
    adopt_saved,
    model_field_values,
    object_link,
    run_service,
    status_badge,
    verbose_link,
)
from homepot.admin_object_actions import ObjectAction, ObjectActionsMixin
from jobs_app.admin_links import MAX_PICKED, deferral_text, redirect_to_new_job
from jobs_app.choices import JobAction
from jobs_app.models import Delivery
from jobs_app.services import job_create
from monitoring_app.admin_timeline import device_timeline_html
from monitoring_app.choices import HealthStatus
from monitoring_app.models import HealthCheck

# Each rotated secret is shown once in a message; more than this is not something to copy.
ROTATE_AT_ONCE = 50
# The device page's bounded lists: one indexed query each, whatever the device's history.
SPARKLINE_CHECKS = 30
RECENT_DELIVERIES = 30

# Sparkline dot colours per health status (the badge palette's darker tones).
_SPARK_COLOURS = {
    HealthStatus.HEALTHY: "#15803d",
    HealthStatus.DEGRADED: "#b45309",
    HealthStatus.UNHEALTHY: "#b91c1c",
}


def _ago(moment) -> str:
    """ "3 minutes ago": what a store manager asks of "last seen" (the exact time is on the
    device page and in the cell's tooltip)."""
    return f"{timesince(moment, depth=1)} ago"


def _last_seen_in_store_time(device) -> str:
    """The last report in the store's own time zone, named, plus how long ago: a manager
    on the phone with the store compares it with the clock on the wall."""
    if device.last_seen is None:
        return "Never reported"
    try:
        zone = zoneinfo.ZoneInfo(device.site.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = zoneinfo.ZoneInfo("UTC")
    local = timezone.localtime(device.last_seen, zone)
    return format_html(
        "{} ({}, store time) · {} · {} UTC",
        f"{local:%Y-%m-%d %H:%M:%S %Z}",
        zone.key,
        _ago(device.last_seen),
        f"{device.last_seen.astimezone(zoneinfo.ZoneInfo('UTC')):%H:%M:%S}",
    )


def _health_sparkline(device, limit: int = SPARKLINE_CHECKS):
    """The device's last `limit` health reports as an inline SVG (server-rendered, no
    script): the line is the response time, each dot the reported health. One query."""
    checks = list(
        HealthCheck.objects.filter(device=device)
        .order_by("-checked_at", "-id")
        .values_list("status", "response_time_ms", "checked_at")[:limit]
    )[::-1]
    if not checks:
        return "No health report yet."
    width, height, pad = 240, 36, 4
    slowest = max((ms for _, ms, _ in checks if ms is not None), default=0) or 1
    step = (width - 2 * pad) / max(len(checks) - 1, 1)

    def y(ms):
        # No measured time (the device could not answer) sits on the bottom line.
        return height - pad if ms is None else height - pad - (height - 2 * pad) * ms / slowest

    points = [(pad + i * step, y(ms)) for i, (_, ms, _) in enumerate(checks)]
    line = " ".join(f"{x:.1f},{py:.1f}" for x, py in points)
    dots = format_html_join(
        "",
        '<circle cx="{}" cy="{}" r="2.5" fill="{}"><title>{} {}{}</title></circle>',
        (
            (
                f"{x:.1f}",
                f"{py:.1f}",
                _SPARK_COLOURS.get(status, "#6b7280"),
                f"{at:%Y-%m-%d %H:%M} UTC",
                status,
                "" if ms is None else f", {ms} ms",
            )
            for (x, py), (status, ms, at) in zip(points, checks, strict=True)
        ),
    )
    bad = sum(1 for status, _, _ in checks if status != HealthStatus.HEALTHY)
    summary = f"last {len(checks)} reports: {len(checks) - bad} healthy, {bad} not; slowest {slowest} ms"
    return format_html(
        '<svg class="hp-spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{s}">'
        '<polyline points="{line}" fill="none" stroke="#2a6f86" stroke-width="1.5"/>{dots}</svg> '
        "<small>{s}</small>",
        w=width,
        h=height,
        line=line,
        dots=dots,
        s=summary,
    )


def _recent_deliveries(device, limit: int = RECENT_DELIVERIES):
    """The device's last `limit` job deliveries, linked to their jobs: one query (the
    (device, status) index, jobs joined)."""
    deliveries = list(Delivery.objects.filter(device=device).select_related("job").order_by("-id")[:limit])
    if not deliveries:
        return "No job has reached this device yet."
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                format_html('<a href="{}">{}</a>', admin_change_url(type(d.job), d.job_id), f"#{d.job_id}"),
                d.job.get_action_display(),
                status_badge(d.status, d.get_status_display()),
                deferral_text(d),
                f"{d.created_at:%Y-%m-%d %H:%M} UTC",
            )
            for d in deliveries
        ),
    )
    return format_html(
        '<table class="hp-mini"><thead><tr><th>job</th><th>action</th><th>delivery</th><th>deferred</th>'
        "<th>created</th></tr></thead><tbody>{}</tbody></table>",
        rows,
    )


# --- The device page's buttons (each behind a confirmation page, each through a service) ---


def _may_change(model_admin, request, device) -> bool:
    return model_admin.has_change_permission(request, device)


def _may_create_job(model_admin, request, device) -> bool:
    return request.user.has_perm("jobs_app.add_job") and _may_change(model_admin, request, device)


def _job_for_device(action: str):
    def run(model_admin, request, device):
        job = run_service(
            job_create, actor=request.user, site=device.site, action=action, target_devices=[device]
        )
        return f"Job #{job.pk} ({job.get_action_display()}) created for {device.device_id}."

    return run


def _rotate(model_admin, request, device):
    _, secret = run_service(device_credential_issue, actor=request.user, device=device)
    model_admin._show_secret(request, device, secret)
    return f"New credential issued to {device.device_id}; the previous one no longer works."


def _revoke(model_admin, request, device):
    revoked = run_service(device_credential_revoke, actor=request.user, device=device)
    if not revoked:
        return f"{device.device_id} had no usable credential; nothing changed."
    return f"Credential of {device.device_id} revoked: it is locked out until a new one is issued."


def _set_status(status: str):
    def run(model_admin, request, device):
        saved = run_service(device_update, actor=request.user, device=device, status=status)
        return f"{saved.device_id} is now {saved.get_status_display().lower()}."

    return run


DEVICE_ACTIONS = (
    ObjectAction(
        name="restart-pos-app",
        label="Restart POS app",
        explanation="A “Restart POS application” job is created for this device only. The till is "
        "unavailable for about a minute while the application restarts; do it outside a rush.",
        run=_job_for_device(JobAction.RESTART_POS_APP),
        allowed=_may_create_job,
        confirm="Restart the POS app",
    ),
    ObjectAction(
        name="health-check",
        label="Run health check",
        explanation="A “Health check” job is created for this device only; its report appears in "
        "the health history and the timeline when the device answers.",
        run=_job_for_device(JobAction.HEALTH_CHECK),
        allowed=_may_create_job,
        confirm="Run a health check",
    ),
    ObjectAction(
        name="maintenance-on",
        label="Start maintenance",
        explanation="The device is marked “in maintenance”: it is left out of the site's online "
        "and offline counts and raises no alerts, and its reports do not change its status, until "
        "maintenance is ended here.",
        run=_set_status(DeviceStatus.MAINTENANCE),
        allowed=lambda ma, request, device: (
            device.status != DeviceStatus.MAINTENANCE and _may_change(ma, request, device)
        ),
        confirm="Start maintenance",
    ),
    ObjectAction(
        name="maintenance-off",
        label="End maintenance",
        explanation="Maintenance ends: the device counts as offline until its next report, which "
        "brings it back online (a terminal that is up reports within a minute).",
        run=_set_status(DeviceStatus.OFFLINE),
        allowed=lambda ma, request, device: (
            device.status == DeviceStatus.MAINTENANCE and _may_change(ma, request, device)
        ),
        confirm="End maintenance",
    ),
    ObjectAction(
        name="rotate-credential",
        label="New credential",
        explanation="A new credential is issued and shown to you once; the current one stops "
        "working at once, so the device is locked out until it is configured with the new one.",
        run=_rotate,
        allowed=_may_change,
        confirm="Issue a new credential",
        danger=True,
    ),
    ObjectAction(
        name="revoke-credential",
        label="Revoke credential",
        explanation="The device's credential is revoked: it can no longer report or fetch jobs "
        "until a new credential is issued. Use this for a stolen or retired terminal.",
        run=_revoke,
        allowed=_may_change,
        confirm="Revoke the credential",
        danger=True,
    ),
)


class DeviceStatusListFilter(ChoicesFieldListFilter):
    """The status filter (same parameter, `status__exact`, and choices as Django's), read as
    DeviceQuerySet.with_status reads it: no index has the status (a common one is checked on
    the rows in list order, a rare one on the rows of the sites the per-site rollup names)."""

    def queryset(self, request, queryset):
        queryset = super().queryset(request, queryset)
        value = self.used_parameters.get(self.lookup_kwarg)
        if isinstance(value, list):
            value = value[-1] if value else None
        return queryset.with_status(value) if value else queryset


@admin.register(Device)
class DeviceAdmin(
    DeviceImportAdminMixin,
    CsvExportAdminMixin,
    ObjectActionsMixin,
    ConsoleListMixin,
    ScopedAdminMixin,
    admin.ModelAdmin,
):
    actions = ("push_configuration", "rotate_credentials", "revoke_credentials")
    object_actions = DEVICE_ACTIONS
    # Readable at 1,400 px with both sidebars open: the type is a filter (and usually in the
    # name), the IP address is searchable and on the device page, the site shows its short
    # id, and "last seen" is "3 minutes ago" rather than a full timestamp.
    list_display = (
        "device_id",
        "name",
        "status_badge",
        "health_badge",
        "site_link",
        "firmware",
        "last_seen_ago",
    )
    list_display_links = ("device_id", "name")
    # The site filter is SiteListFilter: the user's own sites, read from the sites table and
    # bounded in size, never a DISTINCT over a million devices (see homepot.admin).
    list_filter = (
        ("status", DeviceStatusListFilter),
        "device_type",
        SiteListFilter,
        ("last_seen", DateFieldListFilter),
    )
    # What the search box matches is devices_app.selectors.device_search (get_search_results):
    # device ID and name (substring), MAC, IP or octet prefix, exact site ID, each served by
    # an index. These names only turn the box on and label it.
    search_fields = ("device_id", "name", "ip_address", "mac_address", "=site__site_id")
    search_help_text = (
        "Device ID or name (any part; 1–2 characters: the start), MAC address, IP address or its "
        "first octets (10.2.0), or a site's exact ID."
    )
    ordering = ("device_id",)
    list_select_related = ("site",)
    list_per_page = 50
    autocomplete_fields = ("site",)
    # The fleet table is big: no second, unfiltered count, and no exact count of all of it.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    paginator = EstimatedCountPaginator
    # A searched list is counted exactly up to this many devices, then estimated. A word
    # matching a tenth of the fleet ("Printer") is counted from rows that each pass the
    # search's LIKEs: 10,001 of them cost 60-200 ms of SQL at 1,000,000 devices, more than
    # the rest of the page (docs/performance.md, soak3); 1,001 cost a tenth of that.
    search_count_at_most = 1_000
    # The status is derived from the device's reports (and the offline sweep), so it is not
    # a form field: an operator's only say is maintenance, by the buttons "Start / End
    # maintenance" (DEVICE_ACTIONS), which go through device_update and are audited.
    readonly_fields = (
        "status_badge",
        "health_badge",
        "last_seen_display",
        "health_sparkline",
        "health_history_link",
        "recent_deliveries",
        "created_at",
        "updated_at",
        "timeline",
    )
    fieldsets = (
        ("Now", {"fields": ("status_badge", "health_badge", "last_seen_display", "health_sparkline")}),
        ("Timeline", {"fields": ("timeline",), "classes": ("hp-timeline-box",)}),
        ("Device", {"fields": ("device_id", "name", "device_type", "site")}),
        ("Recent jobs", {"fields": ("recent_deliveries",)}),
        ("Network", {"fields": ("ip_address", "mac_address")}),
        ("Software", {"fields": ("firmware_version", "config")}),
        ("Health", {"fields": ("health_history_link",)}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    csv_filename = "homepot-devices.csv"

    def get_search_results(self, request, queryset, search_term):
        # Each word's arms are indexed (see device_search): a one-to-one join, no duplicates.
        return device_search(queryset, search_term), False

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        paginator = super().get_paginator(request, queryset, per_page, orphans, allow_empty_first_page)
        if request.GET.get(SEARCH_VAR, "").strip():
            paginator.count_at_most = self.search_count_at_most
        # The first page shown (no page number past it, no "show all"): read with the count.
        paginator.count_from_first_page = request.GET.get(PAGE_VAR, "1") == "1" and ALL_VAR not in request.GET
        return paginator

    def csv_export(self, queryset):
        return list(DEVICE_EXPORT_COLUMNS), device_export_rows(queryset)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            # A device being registered has no state or history yet.
            return (
                (None, {"fields": ("device_id", "name", "device_type", "site")}),
                ("Network", {"fields": ("ip_address", "mac_address")}),
                ("Software", {"fields": ("firmware_version", "config")}),
            )
        return super().get_fieldsets(request, obj)

    @admin.display(description="firmware", ordering="firmware_version")
    def firmware(self, device):
        return device.firmware_version or "—"

    @admin.display(description="status", ordering="status")
    def status_badge(self, device):
        return status_badge(device.status, device.get_status_display())

    @admin.display(description="health", ordering="health_status")
    def health_badge(self, device):
        if not device.health_status:
            return "—"
        return status_badge(device.health_status, device.get_health_status_display())

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, device):
        return object_link(device.site, device.site.site_id)

    @admin.display(description="last seen", ordering="last_seen")
    def last_seen_ago(self, device):
        if device.last_seen is None:
            return "never"
        return format_html(
            '<span title="{}">{}</span>', f"{device.last_seen:%Y-%m-%d %H:%M:%S} UTC", _ago(device.last_seen)
        )

    @admin.display(description="last seen")
    def last_seen_display(self, device):
        return _last_seen_in_store_time(device)

    @admin.display(description="health, last reports")
    def health_sparkline(self, device):
        return _health_sparkline(device)

    @admin.display(description="deliveries, newest first")
    def recent_deliveries(self, device):
        return _recent_deliveries(device)

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
