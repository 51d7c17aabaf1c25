from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Case, Count, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.scoping import scoped_site_ids
from homepot.admin import (
    EstimatedCountPaginator,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    adopt_saved,
    model_field_values,
    object_link,
    refusal_message,
    run_service,
    status_badge,
)
from jobs_app import services
from jobs_app.choices import DELIVERY_FINISHED, DELIVERY_NOT_TAKEN, DeliveryStatus
from jobs_app.models import DEFAULT_BATCH_SIZE, Delivery, Job, SavedSegment
from jobs_app.selectors import job_deliveries, visible_site_ids
from jobs_app.services import job_cancel, job_create, job_update

# What the change page lists of a job's deliveries: the newest problems first, bounded.
DELIVERY_SAMPLE = 20
# Targets and rollout policy are fixed once the job exists (clone it to change them).
_FIXED_AFTER_CREATE = (
    "site",
    "extra_sites_shown",
    "saved_segment",
    "segment",
    "target_devices_shown",
    "scheduled_at",
    "ttl",
    "batch_size",
    "max_in_flight_per_site",
    "failure_threshold_percent",
)


def _delivery_count(**filters):
    counted = (
        Delivery.objects.filter(job=OuterRef("pk"), **filters)
        .order_by()
        .values("job")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def preflight_text(numbers: dict) -> str:
    return (
        f"{numbers['matching']} devices match ({numbers['online']} online now, "
        f"{numbers['with_unfinished_work']} with unfinished work) at {numbers['sites']} site(s); "
        f"{numbers['batches']} batch(es), about {numbers['expected_duration_seconds']} s expected."
    )


def _preview_form(form_class, user):
    """The add form, for the "Preview targets" button: once the fields are valid it reports
    the pre-flight numbers of the chosen targets as the form's message and stays invalid,
    so the admin re-renders it with everything entered and saves nothing."""

    class PreviewForm(form_class):
        def clean(self):
            data = super().clean()
            if self.errors or not data.get("site"):
                return data
            try:
                numbers = services.job_preview(
                    actor=user,
                    site=data["site"],
                    extra_sites=data.get("extra_sites") or (),
                    segment=data.get("segment"),
                    saved_segment=data.get("saved_segment"),
                    target_devices=data.get("target_devices") or (),
                    batch_size=data.get("batch_size"),
                    max_in_flight_per_site=data.get("max_in_flight_per_site"),
                )
            except (ValidationError, PermissionDenied) as exc:
                raise ValidationError(f"Preview: {refusal_message(exc)}") from exc
            raise ValidationError(
                f"Preview only, nothing saved yet: {preflight_text(numbers)}", code="preview"
            )

    if "batch_size" in PreviewForm.base_fields:
        PreviewForm.base_fields["batch_size"].required = False  # rebuilt for the subclass
    return PreviewForm


@admin.register(Job)
class JobAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = (
        "__str__",
        "site_link",
        "status_badge",
        "progress_bar",
        "priority",
        "created_by",
        "created_at",
    )
    list_filter = ("status", "action", "priority", SiteListFilter)
    search_fields = ("description", "site__site_id", "site__name", "created_by__username")
    ordering = ("-created_at", "-id")
    list_select_related = ("site", "created_by")
    autocomplete_fields = ("site", "extra_sites", "target_devices")
    date_hierarchy = "created_at"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    paginator = EstimatedCountPaginator
    # Progress is the orchestration's to record, never typed in by hand.
    readonly_fields = (
        "status",
        "status_reason",
        "preflight",
        "progress_summary",
        "deliveries_sample",
        "started_at",
        "completed_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    actions = ("cancel_jobs", "pause_jobs", "resume_jobs", "retry_jobs", "clone_jobs")
    fieldsets = (
        (None, {"fields": ("site", "action", "priority", "description", "payload")}),
        (
            "Targets",
            {
                "fields": ("extra_sites", "saved_segment", "segment", "target_devices"),
                "description": "The devices of the site and any extra sites, narrowed by the segment "
                "(or a saved segment, whose filter is copied onto the job) and, when any are picked, "
                "to the picked devices.",
            },
        ),
        (
            "Rollout",
            {
                "fields": (
                    "scheduled_at",
                    "ttl",
                    "batch_size",
                    "max_in_flight_per_site",
                    "failure_threshold_percent",
                )
            },
        ),
        (
            "Progress",
            {"fields": ("status", "status_reason", "preflight", "progress_summary", "deliveries_sample")},
        ),
        ("Record", {"fields": ("started_at", "completed_at", "created_by", "created_at", "updated_at")}),
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                delivery_total=_delivery_count(),
                delivery_finished=_delivery_count(status__in=DELIVERY_FINISHED),
            )
        )

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return (*fields, *_FIXED_AFTER_CREATE) if obj is not None else fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        # A stored job shows its targets read-only, and only the sites the viewer may see.
        shown = {"extra_sites": "extra_sites_shown", "target_devices": "target_devices_shown"}
        return [
            (name, {**options, "fields": tuple(shown.get(f, f) for f in options["fields"])})
            for name, options in fieldsets
        ]

    def get_object(self, request, object_id, from_field=None):
        job = super().get_object(request, object_id, from_field)
        if job is not None:
            job._visible_sites = visible_site_ids(request.user)  # for the read-only displays
        return job

    @staticmethod
    def _sees(job, site_id) -> bool:
        visible = getattr(job, "_visible_sites", set())
        return visible is None or site_id in visible

    @admin.display(description="extra sites")
    def extra_sites_shown(self, job):
        return ", ".join(str(s) for s in job.extra_sites.all() if self._sees(job, s.pk)) or "–"

    @admin.display(description="target devices")
    def target_devices_shown(self, job):
        return ", ".join(d.device_id for d in job.target_devices.all() if self._sees(job, d.site_id)) or "–"

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "saved_segment":
            # The segments this operator may use (their sites' and the site-less ones).
            kwargs["queryset"] = SavedSegment.objects.for_user(request.user).order_by("name", "id")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if "batch_size" in form.base_fields:
            form.base_fields["batch_size"].required = False  # empty: the default
        if obj is None and request.method == "POST" and "_preview" in request.POST:
            return _preview_form(form, request.user)
        return form

    @admin.display(description="status", ordering="status")
    def status_badge(self, job):
        return status_badge(job.status, job.get_status_display())

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, job):
        return object_link(job.site)

    @admin.display(description="progress")
    def progress_bar(self, job):
        total = getattr(job, "delivery_total", 0)
        if not total:
            return "–"
        done = job.delivery_finished
        return format_html(
            '<progress value="{}" max="{}" title="{} of {} finished"></progress> {}%',
            done,
            total,
            done,
            total,
            round(100 * done / total),
        )

    @admin.display(description="pre-flight")
    def preflight(self, job):
        """Before launch: what the targets match now, under the rollout policy."""
        if job.pk is None or job.materialised_at is not None:
            return "–"
        numbers = services.job_preview(
            actor=None,
            site=job.site,
            extra_sites=job.extra_sites.all(),
            segment=job.segment,
            target_devices=job.target_devices.all(),
            batch_size=job.batch_size,
            max_in_flight_per_site=job.max_in_flight_per_site,
        )
        return preflight_text(numbers)

    @admin.display(description="progress")
    def progress_summary(self, job):
        if job.pk is None:
            return "–"
        progress = services.job_progress(job)
        if not progress["total"]:
            return "No deliveries yet (they are created when the job starts)."
        counts = format_html_join(", ", "{}: {}", ((s, n) for s, n in progress["counts"].items() if n))
        rate = f", {progress['rate_per_second']}/s" if progress["rate_per_second"] else ""
        eta = f", about {progress['eta_seconds']} s to go" if progress["eta_seconds"] else ""
        return format_html(
            '<progress value="{}" max="100"></progress> {}% of {} devices ({}){}{}',
            progress["percent"],
            progress["percent"],
            progress["total"],
            counts,
            rate,
            eta,
        )

    @admin.display(description=f"deliveries (first {DELIVERY_SAMPLE} problems, then the rest)")
    def deliveries_sample(self, job):
        if job.pk is None:
            return "–"
        problems_first = Case(
            When(status__in=(DeliveryStatus.FAILED, DeliveryStatus.TIMED_OUT), then=Value(0)),
            default=Value(1),
        )
        visible = getattr(job, "_visible_sites", set())
        deliveries = Delivery.objects.filter(job=job)
        if visible is not None:
            deliveries = deliveries.filter(site__in=visible)
        sample = list(
            deliveries.select_related("device")
            .order_by(problems_first, "id")
            .only("id", "status", "last_error", "attempts", "device__device_id")[:DELIVERY_SAMPLE]
        )
        if not sample:
            return "–"
        may_cancel = getattr(job, "_may_cancel_deliveries", False)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            (
                (
                    d.device.device_id,
                    d.get_status_display(),
                    d.attempts,
                    d.last_error,
                    self._cancel_cell(job, d) if may_cancel else "",
                )
                for d in sample
            ),
        )
        return format_html(
            "<table><tr><th>device</th><th>status</th><th>attempts</th><th>last error</th>{}</tr>{}</table>"
            "<p>All of them, filterable by status: <code>GET /jobs/{}/deliveries?status=failed</code></p>",
            format_html("<th>{}</th>", "cancel") if may_cancel else "",
            rows,
            job.pk,
        )

    @staticmethod
    def _cancel_cell(job, delivery):
        """A button for a delivery the device has not taken yet. It belongs to the
        `delivery-cancel-form` after the job form (change_form.html): forms cannot nest,
        and a button of its own form is never the job form's default (Enter) button."""
        if delivery.status not in DELIVERY_NOT_TAKEN:
            return mark_safe("<td></td>")  # noqa: S308 - a constant
        url = reverse("admin:jobs_app_job_cancel_delivery", args=[job.pk, delivery.pk])
        return format_html(
            '<td><button type="submit" form="delivery-cancel-form" formaction="{}" class="button" '
            'title="Cancel delivery #{} to {}">Cancel</button></td>',
            url,
            delivery.pk,
            delivery.device.device_id,
        )

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        response = super().render_change_form(request, context, add, change, form_url, obj)
        if obj is not None:
            # Read by deliveries_sample when the page renders: rows get a cancel button only
            # for those who may change this job (the change_job permission and its site).
            obj._may_cancel_deliveries = bool(response.context_data.get("has_change_permission"))
        return response

    # --- Cancelling one delivery: POST .../job/<id>/deliveries/<delivery_id>/cancel/ -------------

    def get_urls(self):
        cancel = self.admin_site.admin_view(self.cancel_delivery_view)
        return [
            path(
                "<path:object_id>/deliveries/<int:delivery_id>/cancel/",
                cancel,
                name="jobs_app_job_cancel_delivery",
            ),
            *super().get_urls(),
        ]

    def cancel_delivery_view(self, request, object_id, delivery_id):
        """Cancel one delivery through `delivery_cancel`, then back to the job's page with
        the outcome. Answers like the change page: 403 without the right to change the job,
        "doesn't exist" for a job out of reach; a delivery not of this job (or at a site
        the user may not see) is reported on the job's page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        if job is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        back = HttpResponseRedirect(reverse("admin:jobs_app_job_change", args=[job.pk]))
        delivery = job_deliveries(job=job, user=request.user).filter(pk=delivery_id).first()
        if delivery is None:
            self.message_user(request, f"Job #{job.pk} has no delivery #{delivery_id}.", messages.ERROR)
            return back
        was = delivery.status
        try:
            run_service(services.delivery_cancel, actor=request.user, delivery=delivery)
        except ServiceRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return back
        device_id = delivery.device.device_id
        if was == DeliveryStatus.CANCELLED:
            self.message_user(request, f"Delivery #{delivery.pk} to {device_id} was already cancelled.")
        else:
            self.message_user(request, f"Cancelled delivery #{delivery.pk} to {device_id}.", messages.SUCCESS)
        return back

    def save_model(self, request, obj, form, change):
        if change:
            stored = Job.objects.select_related("site").get(pk=obj.pk)
            fields = model_field_values(form, obj, form.changed_data)
            saved = run_service(job_update, actor=request.user, job=stored, **fields)
        else:
            values = model_field_values(form, obj)
            if values.get("batch_size") is None:
                values["batch_size"] = DEFAULT_BATCH_SIZE
            values["extra_sites"] = form.cleaned_data.get("extra_sites") or ()
            values["target_devices"] = form.cleaned_data.get("target_devices") or ()
            saved = run_service(job_create, actor=request.user, **values)
        adopt_saved(obj, saved)

    def save_related(self, request, form, formsets, change):
        # The service already stored the targets (and they never change afterwards).
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)

    def has_delete_permission(self, request, obj=None):
        return False  # jobs are history: cancel them instead

    def _each(self, request, queryset, service, verb: str, **kwargs):
        done = 0
        for job in queryset.select_related("site"):
            try:
                run_service(service, actor=request.user, job=job, **kwargs)
                done += 1
            except ServiceRefused as exc:
                self.message_user(request, f"{job} was not {verb}: {exc}", messages.ERROR)
        self.message_user(request, f"{verb.capitalize()} {done} job(s).", messages.SUCCESS)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        self._each(request, queryset, job_cancel, "cancelled")

    @admin.action(description="Pause selected jobs", permissions=["change"])
    def pause_jobs(self, request, queryset):
        self._each(request, queryset, services.job_pause, "paused")

    @admin.action(description="Resume selected jobs", permissions=["change"])
    def resume_jobs(self, request, queryset):
        self._each(request, queryset, services.job_resume, "resumed")

    @admin.action(
        description="Retry failed and timed-out deliveries of selected jobs", permissions=["change"]
    )
    def retry_jobs(self, request, queryset):
        self._each(request, queryset, services.job_retry, "retried")

    @admin.action(description="Clone selected jobs (queued now)", permissions=["add"])
    def clone_jobs(self, request, queryset):
        self._each(request, queryset, services.job_clone, "cloned")


@admin.register(SavedSegment)
class SavedSegmentAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Saved filters to target jobs with. Whoever may create jobs may keep them; a segment
    of a site is its managers', a site-less one everyone's who runs a site (its owner edits
    it)."""

    list_display = ("name", "site", "segment", "owner", "updated_at")
    search_fields = ("name",)
    list_select_related = ("site", "owner")
    autocomplete_fields = ("site",)
    fields = ("name", "site", "segment", "owner", "created_at", "updated_at")
    readonly_fields = ("owner", "created_at", "updated_at")

    def _runs_jobs(self, request) -> bool:
        return request.user.is_active and request.user.has_perm("jobs_app.add_job")

    def get_queryset(self, request):
        if self._runs_jobs(request):
            return super().get_queryset(request)
        # Someone who may not use segments is refused every page (403); their own sites'
        # rows stay findable so the answer is the same refusal as on any other store
        # model, while another store's rows are still "doesn't exist".
        return SavedSegment.objects.filter(site__in=scoped_site_ids(request.user, "view"))

    def has_module_permission(self, request):
        return self._runs_jobs(request)

    def has_view_permission(self, request, obj=None):
        return self._runs_jobs(request)

    def has_add_permission(self, request):
        return self._runs_jobs(request)

    def has_change_permission(self, request, obj=None):
        return self._runs_jobs(request) and self.may_change_object(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._runs_jobs(request) and self.may_change_object(request, obj)

    def save_model(self, request, obj, form, change):
        values = model_field_values(form, obj, ("name", "site", "segment"))
        if change:
            stored = SavedSegment.objects.get(pk=obj.pk)
            saved = run_service(services.segment_update, actor=request.user, saved=stored, **values)
        else:
            saved = run_service(services.segment_create, actor=request.user, **values)
        adopt_saved(obj, saved)

    def delete_model(self, request, obj):
        run_service(services.segment_delete, actor=request.user, saved=obj)
