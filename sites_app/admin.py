from django.contrib import admin, messages
from django.db.models import Count
from django.utils.html import format_html

from devices_app.models import Device
from homepot.admin import (
    ScopedAdminMixin,
    admin_changelist_url,
    adopt_saved,
    model_field_values,
    run_service,
)
from jobs_app.admin_links import redirect_to_new_job
from jobs_app.models import Job
from monitoring_app.admin_timeline import site_timeline_html
from sites_app.models import Site
from sites_app.services import site_create, site_delete, site_update


@admin.register(Site)
class SiteAdmin(ScopedAdminMixin, admin.ModelAdmin):
    actions = ("create_job",)
    list_display = (
        "site_id",
        "name",
        "region",
        "location",
        "timezone",
        "is_active",
        "device_count_link",
        "updated_at",
    )
    list_display_links = ("site_id", "name")
    # Scoped automatically: Django builds these choices from get_queryset (the user's sites).
    list_filter = ("is_active", "region", "timezone")
    search_fields = ("site_id", "name", "location", "region")
    ordering = ("site_id",)
    list_select_related = ()  # no foreign keys; the device count is one annotated subquery
    readonly_fields = ("device_count_link", "jobs_link", "created_at", "updated_at", "timeline")
    fieldsets = (
        (None, {"fields": ("site_id", "name", "is_active")}),
        ("Location", {"fields": ("location", "region", "timezone")}),
        ("Notes", {"fields": ("description",)}),
        ("Fleet", {"fields": ("device_count_link", "jobs_link")}),
        ("Record", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
        ("Timeline", {"fields": ("timeline",)}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).with_device_count()

    @admin.display(description="devices", ordering="device_count")
    def device_count_link(self, site):
        if site is None or site.pk is None:
            return "—"
        url = admin_changelist_url(Device, site=site.pk)
        return format_html('<a href="{}">{}</a>', url, site.device_count)

    @admin.display(description="jobs")
    def jobs_link(self, site):
        if site is None or site.pk is None:
            return "—"
        return format_html('<a href="{}">Jobs of this site</a>', admin_changelist_url(Job, site=site.pk))

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
