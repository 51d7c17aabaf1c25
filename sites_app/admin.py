from django.contrib import admin, messages
from django.db.models import Count
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from devices_app.models import Device
from homepot.admin import (
    ConsoleChangeList,
    ConsoleListMixin,
    CsvExportAdminMixin,
    ScopedAdminMixin,
    admin_change_url,
    admin_changelist_url,
    adopt_saved,
    model_field_values,
    run_service,
    status_badge,
)
from homepot.admin_object_actions import ObjectAction, ObjectActionsMixin
from jobs_app.admin_links import new_job_url, redirect_to_new_job
from jobs_app.choices import JobAction
from jobs_app.models import Job
from jobs_app.services import job_create
from monitoring_app.admin_timeline import site_timeline_html
from monitoring_app.choices import AlertSeverity, SiteHealthStatus
from monitoring_app.models import Alert
from sites_app.admin_import import SiteImportAdminMixin
from sites_app.models import BlackoutPeriod, MaintenanceWindow, Site
from sites_app.selectors import (
    SITE_EXPORT_COLUMNS,
    attach_health,
    site_export_rows,
    site_health,
    site_health_devices,
    site_maintenance,
)
from sites_app.services import site_create, site_delete, site_maintenance_set, site_update
from sites_app.windows import opening_text

# The site page's lists are bounded (one indexed query each); each links to its full list.
SITE_PAGE_DEVICES = 30
SITE_PAGE_ALERTS = 10
SITE_PAGE_JOBS = 10

_HEALTH_TONES = {
    SiteHealthStatus.HEALTHY: "ok",
    SiteHealthStatus.DEGRADED: "warn",
    SiteHealthStatus.DOWN: "bad",
}


def _health_badge(summary: dict):
    """ "12/14 online", green when every monitored device is online and healthy, amber when
    something is offline or unwell, red when the site is down (sites_app.selectors
    health_summary decides). Maintenance and never-seen devices are not monitored."""
    monitored = summary["online"] + summary["offline"]
    if not monitored:
        return format_html('<span class="hp-badge hp-badge--muted">{}</span>', "no device reporting")
    detail = (
        f"{summary['online']} online, {summary['offline']} offline, {summary['maintenance']} in maintenance; "
        f"{summary['healthy']} healthy, {summary['degraded']} degraded, {summary['unhealthy']} unhealthy"
    )
    return format_html(
        '<span class="hp-badge hp-badge--{}" title="{}">{}/{} online</span>',
        _HEALTH_TONES.get(summary["status"], "muted"),
        detail,
        summary["online"],
        monitored,
    )


def _severity_badge(alert):
    # Critical reads as red, a warning as amber (the shared palette has no "severity" tones).
    tone = "failed" if alert.severity == AlertSeverity.CRITICAL else "degraded"
    return status_badge(tone, alert.get_severity_display())


class SiteChangeList(ConsoleChangeList):
    """Counts the health of the sites on the page only (one GROUP BY over their devices),
    never of every site the user has."""

    def get_results(self, request):
        super().get_results(request)
        self.result_list = attach_health(list(self.result_list))


def _may_create_job(model_admin, request, site) -> bool:
    # Jobs need change rights on the site (a manager's role), not the sites model's change
    # permission (only administrators edit sites); job_create checks the same again.
    return request.user.has_perm("jobs_app.add_job") and model_admin.may_change_object(request, site)


def _health_check_all(model_admin, request, site):
    job = run_service(job_create, actor=request.user, site=site, action=JobAction.HEALTH_CHECK)
    return f"Job #{job.pk} (health check) created for every device of {site.site_id}."


SITE_ACTIONS = (
    ObjectAction(
        name="health-check",
        label="Run health check on all devices",
        explanation="A “Health check” job is created for every device of this site. Each device "
        "reports its health when it picks the job up; the results appear in the site's health "
        "counts and on each device's page. Nothing on the tills is interrupted.",
        run=_health_check_all,
        allowed=_may_create_job,
        confirm="Run a health check on all devices",
    ),
)


class MaintenanceWindowInline(admin.TabularInline):
    """The site's weekly maintenance windows, in its own time zone. Saved as one schedule
    through sites_app.services.site_maintenance_set (SiteAdmin.save_related)."""

    model = MaintenanceWindow
    fields = ("weekday", "starts", "ends")
    extra = 0
    verbose_name = "maintenance window"
    verbose_name_plural = "maintenance windows (local time; an end at or before the start: the next day)"


class BlackoutPeriodInline(admin.TabularInline):
    """Dates on which none of the site's windows opens (holidays, peak trading)."""

    model = BlackoutPeriod
    fields = ("starts_on", "ends_on", "reason")
    extra = 0
    verbose_name = "blackout"
    verbose_name_plural = "blackout dates (local dates, both included: no window opens on them)"


# The inlines' columns, as site_maintenance_set takes them.
_SCHEDULE_FORMSETS = {
    MaintenanceWindow: ("maintenance_windows", ("weekday", "starts", "ends")),
    BlackoutPeriod: ("blackouts", ("starts_on", "ends_on", "reason")),
}


def _kept_rows(formset, columns) -> list[dict]:
    """The rows an inline formset leaves: its existing and new forms, without those marked
    for deletion and the blank extra ones."""
    rows = []
    for form in formset.forms:
        data = getattr(form, "cleaned_data", None) or {}
        if not data or data.get("DELETE") or (form.instance.pk is None and not form.has_changed()):
            continue
        rows.append({column: data[column] for column in columns})
    return rows


@admin.register(Site)
class SiteAdmin(
    SiteImportAdminMixin,
    CsvExportAdminMixin,
    ObjectActionsMixin,
    ConsoleListMixin,
    ScopedAdminMixin,
    admin.ModelAdmin,
):
    actions = ("create_job",)
    object_actions = SITE_ACTIONS
    inlines = (MaintenanceWindowInline, BlackoutPeriodInline)
    # Fits 1,400 px with both sidebars: the address and time zone are on the site page (and
    # searchable / a filter); the health badge is what a manager scans the list for.
    list_display = (
        "site_id",
        "name",
        "health",
        "region",
        "is_active",
        "device_count_link",
    )
    list_display_links = ("site_id", "name")
    # Scoped automatically: Django builds these choices from get_queryset (the user's sites).
    list_filter = ("is_active", "region", "timezone")
    search_fields = ("site_id", "name", "location", "region")
    ordering = ("site_id",)
    list_select_related = ()  # no foreign keys; the device count is one annotated subquery
    readonly_fields = (
        "health_panel",
        "devices_panel",
        "open_alerts",
        "recent_jobs",
        "device_count_link",
        "created_at",
        "updated_at",
        "timeline",
        "maintenance_now",
    )
    fieldsets = (
        ("Health", {"fields": ("health_panel",)}),
        ("Devices", {"fields": ("devices_panel",)}),
        ("Open alerts", {"fields": ("open_alerts",)}),
        ("Recent jobs", {"fields": ("recent_jobs",)}),
        ("Timeline", {"fields": ("timeline",), "classes": ("hp-timeline-box",)}),
        ("Site", {"fields": ("site_id", "name", "is_active")}),
        ("Location", {"fields": ("location", "region", "timezone", "maintenance_now")}),
        ("Notes", {"fields": ("description",)}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    csv_filename = "homepot-sites.csv"

    def csv_export(self, queryset):
        return SITE_EXPORT_COLUMNS, site_export_rows(queryset)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            # A new site has no devices, alerts, jobs or history yet.
            return (
                (None, {"fields": ("site_id", "name", "is_active")}),
                ("Location", {"fields": ("location", "region", "timezone")}),
                ("Notes", {"fields": ("description",)}),
            )
        return super().get_fieldsets(request, obj)

    def get_queryset(self, request):
        return super().get_queryset(request).with_device_count()

    def get_changelist(self, request, **kwargs):
        return SiteChangeList

    def allowed_object_actions(self, request, obj) -> list[dict]:
        actions = super().allowed_object_actions(request, obj)
        if _may_create_job(self, request, obj):
            # The job form (jobs_app) pre-filled with this site: the operator picks the
            # configuration and sees the pre-flight numbers before anything is sent.
            actions.insert(0, {"label": "Push a configuration", "url": new_job_url(site_pks=[obj.pk])})
        return actions

    # --- What the list and the page show ---------------------------------------------------

    @admin.display(description="health")
    def health(self, site):
        # The counts come from SiteChangeList (the page's sites, one query).
        if not hasattr(site, "health_total"):
            attach_health([site])
        return _health_badge(site_health(site))

    @admin.display(description="now")
    def health_panel(self, site):
        attach_health([site])
        summary = site_health(site)
        counts = [
            (status_badge("online", f"{summary['online']} online")),
            (status_badge("offline", f"{summary['offline']} offline")),
            (status_badge("maintenance", f"{summary['maintenance']} in maintenance")),
            (status_badge("healthy", f"{summary['healthy']} healthy")),
            (status_badge("degraded", f"{summary['degraded']} degraded")),
            (status_badge("unhealthy", f"{summary['unhealthy']} unhealthy")),
        ]
        return format_html(
            '{} of {} devices · <span class="hp-counts">{}</span>',
            _health_badge(summary),
            summary["total"],
            format_html_join("", "{}", ((badge,) for badge in counts)),
        )

    @admin.display(description="worst first")
    def devices_panel(self, site):
        rows, more = site_health_devices(site, limit=SITE_PAGE_DEVICES)
        if not rows:
            return "No device at this site yet."
        # The selector gives business ids; one more bounded query finds their pages.
        pks = dict(
            Device.objects.filter(site=site, device_id__in=[row["device_id"] for row in rows]).values_list(
                "device_id", "pk"
            )
        )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    format_html(
                        '<a href="{}">{}</a>',
                        admin_change_url(Device, pks.get(row["device_id"])),
                        row["device_id"],
                    ),
                    row["name"],
                    status_badge(row["status"], row["status"].capitalize()),
                    status_badge(row["health_status"], row["health_status"].capitalize())
                    if row["health_status"]
                    else "—",
                    f"{timesince(row['last_seen'], depth=1)} ago" if row["last_seen"] else "never",
                )
                for row in rows
            ),
        )
        all_url = admin_changelist_url(Device, site=site.pk)
        footer = (
            f"The {SITE_PAGE_DEVICES} most in need of attention are shown; all {site.device_count} devices"
            if more
            else f"All {len(rows)} device(s)"
        )
        return format_html(
            '<table class="hp-mini"><thead><tr><th>device</th><th>name</th><th>status</th><th>health</th>'
            "<th>last seen</th></tr></thead><tbody>{}</tbody></table>"
            '<p><a href="{}">{} in the device list</a></p>',
            body,
            all_url,
            footer,
        )

    @admin.display(description="newest first")
    def open_alerts(self, site):
        alerts = list(
            Alert.objects.filter(site=site, resolved_at__isnull=True)
            .select_related("device")
            .order_by("-opened_at", "-id")[:SITE_PAGE_ALERTS]
        )
        all_url = admin_changelist_url(Alert, site=site.pk, state="open")
        if not alerts:
            return "No open alert."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    f"{alert.opened_at:%Y-%m-%d %H:%M} UTC",
                    _severity_badge(alert),
                    alert.device.device_id if alert.device else "site",
                    format_html('<a href="{}">{}</a>', admin_change_url(Alert, alert.pk), alert.message),
                )
                for alert in alerts
            ),
        )
        return format_html(
            '<table class="hp-mini"><tbody>{}</tbody></table>'
            '<p><a href="{}">All open alerts of this site</a></p>',
            body,
            all_url,
        )

    @admin.display(description="newest first")
    def recent_jobs(self, site):
        jobs = list(Job.objects.filter(site=site).order_by("-created_at", "-id")[:SITE_PAGE_JOBS])
        if not jobs:
            return format_html(
                'No job yet. <a href="{}">Jobs of this site</a>', admin_changelist_url(Job, site=site.pk)
            )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    format_html(
                        '<a href="{}">#{} {}</a>',
                        admin_change_url(Job, job.pk),
                        job.pk,
                        job.get_action_display(),
                    ),
                    status_badge(job.status, job.get_status_display()),
                    f"{job.created_at:%Y-%m-%d %H:%M} UTC",
                )
                for job in jobs
            ),
        )
        return format_html(
            '<table class="hp-mini"><tbody>{}</tbody></table><p><a href="{}">All jobs of this site</a></p>',
            body,
            admin_changelist_url(Job, site=site.pk),
        )

    @admin.display(description="devices", ordering="device_count")
    def device_count_link(self, site):
        if site is None or site.pk is None:
            return "—"
        url = admin_changelist_url(Device, site=site.pk)
        return format_html('<a href="{}">{}</a>', url, site.device_count)

    @admin.display(description="maintenance window")
    def maintenance_now(self, site):
        # Whether jobs that keep to windows reach this store now (the windows are below).
        schedule = site_maintenance(site)
        if schedule["next_opening"] is None and schedule["open_now"] is None:
            return "—"
        text = opening_text(schedule["next_opening"], site.timezone)
        tone = "ok" if schedule["open_now"] else "muted"
        return format_html('<span class="hp-badge hp-badge--{}">{}</span>', tone, text)

    @admin.display(description="newest first")
    def timeline(self, site):
        # The same selector as GET /api/v1/fleet/sites/{site_id}/timeline.
        return site_timeline_html(site)

    # Sites are created and deleted by administrators only (the rule lives in
    # sites_app.services); hiding the buttons spares others a refusal.
    def has_add_permission(self, request):
        return super().has_add_permission(request) and request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and request.user.is_superuser

    # --- Writes go through the services (validated, scoped, audited) ---------------------

    def save_model(self, request, obj, form, change):
        if change:
            fields = model_field_values(form, obj, form.changed_data)
            saved = run_service(site_update, actor=request.user, site=obj, **fields)
        else:
            saved = run_service(site_create, actor=request.user, **model_field_values(form, obj))
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        run_service(site_delete, actor=request.user, site=obj)

    def save_related(self, request, form, formsets, change):
        """The windows and blackouts are one schedule, replaced and audited as one by
        site_maintenance_set, never row by row."""
        form.save_m2m()
        schedule, changed = {}, False
        for formset in formsets:
            if formset.model not in _SCHEDULE_FORMSETS:
                self.save_formset(request, form, formset, change=change)
                continue
            name, columns = _SCHEDULE_FORMSETS[formset.model]
            schedule[name] = _kept_rows(formset, columns)
            # Nothing saved row by row: the admin's change message has no rows to name.
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
            changed = changed or formset.has_changed()
        if changed:
            run_service(
                site_maintenance_set,
                actor=request.user,
                site=form.instance,
                maintenance_windows=schedule.get("maintenance_windows", []),
                blackouts=schedule.get("blackouts", []),
            )

    def get_deleted_objects(self, objs, request):
        """A site that still has devices cannot go (devices are PROTECTed): say so in one
        line per site instead of letting Django list every terminal of the store."""
        sites = list(objs)
        counts = dict(
            Device.objects.filter(site__in=sites)
            .order_by()
            .values("site")
            .annotate(n=Count("pk"))
            .values_list("site", "n")
        )
        blocked = [
            f"Site {site.site_id} still has {counts[site.pk]} device(s); move or delete them first, "
            "or mark the site inactive."
            for site in sites
            if counts.get(site.pk)
        ]
        if blocked:
            return [], {}, set(), blocked
        return super().get_deleted_objects(sites, request)

    @admin.action(description="Create job for selected sites", permissions=["add_job"])
    def create_job(self, request, queryset):
        sites = list(
            queryset.for_user(request.user, "change").order_by("site_id").values_list("pk", flat=True)
        )
        if not sites:
            self.message_user(request, "None of the selected sites is yours to run jobs on.", messages.ERROR)
            return None
        return redirect_to_new_job(self, request, site_pks=sites)

    def has_add_job_permission(self, request):
        return request.user.has_perm("jobs_app.add_job")
