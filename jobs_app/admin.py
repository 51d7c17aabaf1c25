from django.contrib import admin, messages

from homepot.admin import (
    EstimatedCountPaginator,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    adopt_saved,
    model_field_values,
    object_link,
    run_service,
    status_badge,
)
from jobs_app.models import Job
from jobs_app.services import job_cancel, job_create, job_update


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
    # Progress is the orchestration's to record, never typed in by hand.
    readonly_fields = ("status", "started_at", "completed_at", "created_by", "created_at", "updated_at")
    actions = ("cancel_jobs",)
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
        if change:
            stored = Job.objects.select_related("site").get(pk=obj.pk)
            fields = model_field_values(form, obj, form.changed_data)
            saved = run_service(job_update, actor=request.user, job=stored, **fields)
        else:
            saved = run_service(job_create, actor=request.user, **model_field_values(form, obj))
        adopt_saved(obj, saved)

    def has_delete_permission(self, request, obj=None):
        return False  # jobs are history: cancel them instead

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        cancelled = 0
        for job in queryset.select_related("site"):
            try:
                run_service(job_cancel, actor=request.user, job=job)
                cancelled += 1
            except ServiceRefused as exc:
                self.message_user(request, f"{job} was not cancelled: {exc}", messages.ERROR)
        self.message_user(request, f"Cancelled {cancelled} job(s).", messages.SUCCESS)
