from django.contrib import admin

from homepot.admin import (
    EstimatedCountPaginator,
    ScopedAdminMixin,
    SiteListFilter,
    object_link,
    status_badge,
)
from jobs_app.models import Job


@admin.register(Job)
class JobAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "site_link", "status_badge", "priority", "created_by", "created_at")
    list_filter = ("status", "action", "priority", SiteListFilter)
    search_fields = ("description", "site__site_id", "site__name", "created_by__username")
    ordering = ("-created_at", "-id")
    list_select_related = ("site", "created_by")
    autocomplete_fields = ("site",)
    date_hierarchy = "created_at"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    paginator = EstimatedCountPaginator
    readonly_fields = ("created_by", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("site", "action", "priority", "description", "payload")}),
        ("Progress", {"fields": ("status", "started_at", "completed_at")}),
        ("Record", {"fields": ("created_by", "created_at", "updated_at")}),
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, job):
        return status_badge(job.status, job.get_status_display())

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, job):
        return object_link(job.site)

    def save_model(self, request, obj, form, change):
        # Job services (validation, audit, dispatch) arrive with the orchestration issue;
        # until then the admin saves directly and records who asked for the job.
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
