"""The Jobs pages of the operator console: a guided form to create a job (the action's
settings as fields, targets as pickers, a review step with the numbers), and a job page that
is read-only once the job runs, with live progress and controls behind confirmation pages.
Every write goes through jobs_app.services (scoped and audited there)."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Case, Count, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.scoping import scoped_site_ids
from devices_app.models import Device
from homepot.admin import (
    ConsoleListMixin,
    EstimatedCountPaginator,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    adopt_saved,
    format_rate,
    model_field_values,
    object_link,
    ref_link,
    refusal_message,
    run_service,
    status_badge,
)
from jobs_app import services
from jobs_app.admin_forms import POLICY_FIELDS, SETTINGS_FIELD, JobAddForm, payload_field_name
from jobs_app.admin_links import deferral_text
from jobs_app.choices import (
    DELIVERY_FAILED,
    DELIVERY_FINISHED,
    DELIVERY_NOT_TAKEN,
    JOB_ACTIVE_STATUSES,
    JOB_RUNNING_STATUSES,
    DeliveryStatus,
    JobAction,
    JobStatus,
)
from jobs_app.models import DEFAULT_BATCH_SIZE, Delivery, Job, SavedSegment
from jobs_app.payloads import SCHEMAS
from jobs_app.selectors import job_deliveries, job_site_breakdown, visible_site_ids
from jobs_app.services import job_cancel, job_create, job_update, rollout
from jobs_app.services.rollback import ROLLBACK_FROM, rollback_offered
from sites_app.models import Site
from sites_app.windows import opening_text

# What the change page lists of a job's deliveries: the newest problems first, bounded.
DELIVERY_SAMPLE = 20
# Seconds between refreshes of a running job's progress block (change_form.html).
PROGRESS_REFRESH_SECONDS = 3
# Pre-filled on a new job's form (under "Advanced"): pause the rollout when more than this
# share of the answers are failures, so a bad setting stops at the first stores.
DEFAULT_FAILURE_THRESHOLD_PERCENT = 20
# How many sites waiting for their maintenance window the job page lists.
WAITING_SITES_LIMIT = 20
# Targets and rollout policy are fixed once the job exists (clone it to change them).
_FIXED_AFTER_CREATE = (
    "site",
    "extra_sites_shown",
    "saved_segment",
    "segment_shown",
    "target_devices_shown",
    *POLICY_FIELDS,
)
# The job page's controls: verb → (service, button label, needed permission, statuses offered in).
CONTROLS = {
    "pause": (services.job_pause, "Pause", "change", (*JOB_RUNNING_STATUSES, JobStatus.SCHEDULED)),
    "resume": (services.job_resume, "Resume", "change", (JobStatus.PAUSED,)),
    "cancel": (job_cancel, "Cancel job", "change", JOB_ACTIVE_STATUSES),
    "retry": (services.job_retry, "Retry failed devices", "change", None),
    "clone": (services.job_clone, "Clone", "add", None),
    "approve_wave": (services.job_wave_approve, "Approve the next wave", "change", None),
    "rollback": (services.job_rollback, "Roll back", "change", ROLLBACK_FROM),
}
_CONTROL_DONE = {
    "pause": "paused",
    "resume": "resumed",
    "cancel": "cancelled",
    "retry": "retried",
    "clone": "cloned",
    "approve_wave": "opened the next wave of",
    "rollback": "rolled back",
}
_CONTROL_EXPLAINED = {
    "pause": "No more devices will be sent the work; devices that already have it carry on.",
    "resume": "The rollout carries on where it stopped.",
    "cancel": "Devices that have not started the work will not get it. Devices already working "
    "on it finish. This cannot be undone (clone the job to send it again).",
    "retry": "Every device that failed or timed out is sent the work again.",
    "clone": "A new job with the same work, targets and rollout is created and starts now.",
    "approve_wave": "The next wave of devices is sent the work. If the last wave finished below "
    "its success gate (the job was paused for it), this overrides the gate and the job runs again.",
    "rollback": "A rollback job is created and starts now: every device that took this change is "
    "sent what it had before (its own previous settings), rolled out like this job (same per-site "
    "limit, batch size and deadline). Devices that failed or never got the change are left alone. "
    "A job is rolled back once.",
}


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(round(seconds), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f}".removesuffix(".0") + " h"


def preflight_text(numbers: dict) -> str:
    return (
        f"{numbers['matching']} devices match ({numbers['online']} online now, "
        f"{numbers['with_unfinished_work']} with unfinished work) at {numbers['sites']} site(s); "
        f"about {human_duration(numbers['expected_duration_seconds'])} expected: "
        f"{numbers['expected_duration_basis']}."
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


def _digits(values) -> list[str]:
    """Ids from a query string (`?site=3`, `?extra_sites=4,5`), dropping anything else: a
    typed-in `?site=abc` opens an empty form instead of failing."""
    return [v for v in ",".join(values).split(",") if v.strip().isdigit()]


def _editable(job: Job | None) -> bool:
    return job is None or (job.status in (JobStatus.QUEUED, JobStatus.SCHEDULED) and not job.materialised_at)


@admin.register(Job)
class JobAdmin(ConsoleListMixin, ScopedAdminMixin, admin.ModelAdmin):
    form = JobAddForm
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
        "status_shown",
        "preflight",
        "progress_summary",
        "deliveries_sample",
        "rollback_links",
        "started_at",
        "completed_at",
        "created_by",
        "created_at",
        "updated_at",
    )
    actions = ("cancel_jobs", "pause_jobs", "resume_jobs", "retry_jobs", "clone_jobs")

    class Media:
        css = {"all": ("jobs_app/jobs.css",)}
        js = ("jobs_app/job_form.js",)

    # --- Fieldsets: a guided form for a new job, a read-only page once it runs ------------------

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self._add_fieldsets(request)
        shown = {
            "extra_sites": "extra_sites_shown",
            "target_devices": "target_devices_shown",
            "segment": "segment_shown",
        }
        if not _editable(obj):
            shown["payload"] = "payload_shown"
        progress = ("status_shown", "progress_summary", "deliveries_sample")
        if _editable(obj):  # not started: what it would reach now
            progress = ("status_shown", "preflight", "progress_summary")
        return [
            ("Progress", {"fields": progress}),
            (
                "Work",
                {"fields": tuple(shown.get(f, f) for f in ("action", "payload", "priority", "description"))},
            ),
            (
                "Targets",
                {
                    "fields": (
                        "site",
                        "extra_sites_shown",
                        "saved_segment",
                        "segment_shown",
                        "target_devices_shown",
                    )
                },
            ),
            (
                "Rollout",
                {
                    "fields": (*POLICY_FIELDS, "rollback_links"),
                    "classes": ("collapse",),
                },
            ),
            (
                "Record",
                {"fields": ("started_at", "completed_at", "created_by", "created_at", "updated_at")},
            ),
        ]

    def _chosen_action(self, request) -> str | None:
        action = request.POST.get("action") if request.method == "POST" else request.GET.get("action")
        return action if action in JobAction.values else None

    def _add_fieldsets(self, request):
        chosen = self._chosen_action(request)
        fieldsets = [
            (None, {"fields": ("site", "action", "priority", "description")}),
        ]
        # Without JavaScript the form is two steps: once the action is known (picked and
        # "Review" pressed, or ?action=), only its settings are shown; before, all of them,
        # each under its action's name (the script hides all but the chosen one).
        for action, schema in SCHEMAS.items():
            if chosen and action != chosen:
                continue
            names = (
                [payload_field_name(action, SETTINGS_FIELD)]
                if schema.free_settings
                else [payload_field_name(action, spec.name) for spec in schema.fields]
            )
            fieldsets.append(
                (
                    f"Settings: {JobAction(action).label}",
                    {
                        "fields": names,
                        "classes": ("hp-payload", f"hp-payload--{action}"),
                        "description": schema.summary,
                    },
                )
            )
        fieldsets.append(
            (
                "Which devices",
                {
                    "fields": (
                        "extra_sites",
                        "device_types",
                        "device_statuses",
                        "firmware_versions",
                        "saved_segment",
                        "target_devices",
                    ),
                    "description": "Every device of the site (and of any more sites), narrowed by the "
                    "ticked types and statuses, the firmware versions or a saved segment, and, when any "
                    "are picked, to those devices.",
                },
            )
        )
        advanced = list(POLICY_FIELDS)
        if request.user.is_superuser:
            advanced += ["payload", "segment"]
        fieldsets.append(
            (
                "Advanced",
                {
                    "fields": advanced,
                    "classes": ("collapse",),
                    "description": "When and how fast. The defaults suit most jobs. Waves and gate: "
                    "send to a canary (a few devices at different stores) first, then growing waves; "
                    "each next wave starts only when the last one's success rate reaches the gate."
                    + (
                        " Raw JSON (admins): a payload or segment given here replaces the fields above."
                        if request.user.is_superuser
                        else ""
                    ),
                },
            )
        )
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if obj is None:
            return fields
        fixed = (*fields, *_FIXED_AFTER_CREATE, "payload_shown")
        if not _editable(obj):
            # Once the job has left queued/scheduled nothing about it is edited: the page is
            # the record of what was sent (clone it to send something else).
            return (*fixed, "action", "priority", "description")
        return fixed

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if "batch_size" in form.base_fields:
            form.base_fields["batch_size"].required = False  # empty: the default
        return form

    def get_changeform_initial_data(self, request):
        """Pre-fill from the query string: `?site=<pk>` (the site page's "push a
        configuration"), `?extra_sites=<pk,pk>`, `?device=<pk>` / `?target_devices=<pk,pk>`,
        `?action=<code>`. Only ids the user may change are kept."""
        get = request.GET
        initial = {
            "batch_size": DEFAULT_BATCH_SIZE,
            "failure_threshold_percent": DEFAULT_FAILURE_THRESHOLD_PERCENT,
        }
        sites = Site.objects.for_user(request.user, "change")
        devices = Device.objects.for_user(request.user, "change")
        site_pk = _digits(get.getlist("site"))[:1]
        if site_pk and sites.filter(pk=site_pk[0]).exists():
            initial["site"] = site_pk[0]
        extra = _digits(get.getlist("extra_sites"))
        if extra:
            initial["extra_sites"] = [
                str(pk) for pk in sites.filter(pk__in=extra).values_list("pk", flat=True)
            ]
        picked = _digits(get.getlist("target_devices") + get.getlist("device"))
        if picked:
            found = list(devices.filter(pk__in=picked).values_list("pk", "site_id"))
            if found:
                initial["target_devices"] = [str(pk) for pk, _ in found]
                initial.setdefault("site", str(found[0][1]))
        action = self._chosen_action(request)
        if action:
            initial["action"] = action
        return initial

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "saved_segment":
            # The segments this operator may use (their sites' and the site-less ones).
            kwargs["queryset"] = SavedSegment.objects.for_user(request.user).order_by("name", "id")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # --- The review step: the new job's numbers, shown as information, saving nothing ------------

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if object_id is None and request.method == "POST" and "_preview" in request.POST:
            return self._review_view(request, form_url)
        if object_id is not None:
            extra_context = {**(extra_context or {}), **self._job_page_context(request, object_id)}
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _review_view(self, request, form_url):
        """The form as entered, with what the job would do: matching devices, per site,
        the estimate and its basis, and the button that creates it. Invalid input shows
        its errors; valid input shows no error at all (the numbers are not a mistake)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        fieldsets = self.get_fieldsets(request, None)
        form_class = self.get_form(request, None, change=False, fields=flatten_fieldsets(fieldsets))
        form = form_class(request.POST, request.FILES, instance=Job())
        numbers = None
        if form.is_valid():
            data = form.cleaned_data
            try:
                numbers = services.job_preview(
                    actor=request.user,
                    site=data["site"],
                    extra_sites=data.get("extra_sites") or (),
                    segment=data.get("segment"),
                    saved_segment=data.get("saved_segment"),
                    target_devices=data.get("target_devices") or (),
                    batch_size=data.get("batch_size"),
                    max_in_flight_per_site=data.get("max_in_flight_per_site"),
                    per_site=True,
                    action=data.get("action"),
                    within_maintenance_windows=data.get("within_maintenance_windows"),
                )
            except (ValidationError, PermissionDenied) as exc:
                form.add_error(None, refusal_message(exc))
        admin_form = helpers.AdminForm(
            form, list(fieldsets), {}, self.get_readonly_fields(request, None), model_admin=self
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Review the new job" if numbers else f"Add {self.opts.verbose_name}",
            "subtitle": None,
            "adminform": admin_form,
            "object_id": None,
            "original": None,
            "is_popup": False,
            "to_field": None,
            "media": self.media + admin_form.media,
            "inline_admin_formsets": [],
            "errors": helpers.AdminErrorList(form, []),
            "preserved_filters": self.get_preserved_filters(request),
            "review": numbers,
            "review_action": JobAction(form.cleaned_data["action"]).label if numbers else "",
            "review_estimate": human_duration(numbers["expected_duration_seconds"]) if numbers else "",
        }
        return self.render_change_form(request, context, add=True, obj=None, form_url=form_url)

    def response_add(self, request, obj, post_url_continue=None):
        """A new job opens on its own page (its progress), not on the list."""
        if IS_POPUP_VAR in request.POST or "_addanother" in request.POST:
            return super().response_add(request, obj, post_url_continue)
        self.message_user(
            request,
            f"Job #{obj.pk} ({obj.get_action_display()}) created: {obj.get_status_display().lower()}.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:jobs_app_job_change", args=[obj.pk]))

    # --- The job page ----------------------------------------------------------------------

    def _job_page_context(self, request, object_id) -> dict:
        job = self.get_object(request, unquote(object_id))
        if job is None:
            return {}
        context = {"controls": self._controls(request, job)}
        if not _editable(job):
            context.update(
                title="Job",  # not "Change job": nothing on it is edited any more
                show_save=False,
                show_save_and_continue=False,
                show_save_and_add_another=False,
            )
        return context

    def _controls(self, request, job) -> list[dict]:
        offered = []
        may_change = self.has_change_permission(request, job)
        for verb, (_, label, permission, statuses) in CONTROLS.items():
            if permission == "change" and not may_change:
                continue
            if permission == "add" and not self.has_add_permission(request):
                continue
            if statuses is not None and job.status not in statuses:
                continue
            if verb == "approve_wave" and not rollout.awaits_approval(job):
                continue
            if verb == "retry" and (
                job.status == JobStatus.CANCELLED
                or not Delivery.objects.filter(job=job, status__in=DELIVERY_FAILED).exists()
            ):
                continue
            if verb == "rollback" and not rollback_offered(job):
                continue
            url = reverse("admin:jobs_app_job_control", args=[job.pk, verb])
            offered.append({"verb": verb, "label": label, "url": url})
        return offered

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                delivery_total=_delivery_count(),
                delivery_finished=_delivery_count(status__in=DELIVERY_FINISHED),
            )
        )

    def get_object(self, request, object_id, from_field=None):
        job = super().get_object(request, object_id, from_field)
        if job is not None:
            job._visible_sites = visible_site_ids(request.user)  # for the read-only displays
            job._user = request.user
        return job

    @staticmethod
    def _sees(job, site_id) -> bool:
        visible = getattr(job, "_visible_sites", set())
        return visible is None or site_id in visible

    @admin.display(description="extra sites")
    def extra_sites_shown(self, job):
        sites = [s for s in job.extra_sites.all() if self._sees(job, s.pk)]
        return format_html_join(", ", "{}", ((object_link(s),) for s in sites)) or "none"

    @admin.display(description="picked devices")
    def target_devices_shown(self, job):
        devices = [d for d in job.target_devices.all() if self._sees(job, d.site_id)]
        return format_html_join(", ", "{}", ((object_link(d, d.device_id),) for d in devices)) or (
            "none picked: every device matching the filter"
        )

    @admin.display(description="device filter")
    def segment_shown(self, job):
        if not job.segment:
            return "every device of the sites"
        labels = {"device_type": "type", "status": "status", "firmware_version": "firmware"}
        return format_html_join(
            "; ", "{}: {}", ((labels.get(k, k), ", ".join(v)) for k, v in job.segment.items())
        )

    @admin.display(description="settings")
    def payload_shown(self, job):
        """The payload under the labels of its action's schema (links for URLs)."""
        if not job.payload:
            return "none"
        schema = SCHEMAS.get(job.action)
        rows = []
        for key, value in job.payload.items():
            spec = schema.field(key) if schema else None
            label = spec.label if spec else key
            if spec and spec.kind == "url" and isinstance(value, str):
                shown = format_html('<a href="{}" rel="noreferrer">{}</a>', value, value)
            elif isinstance(value, bool):
                shown = "yes" if value else "no"
            elif isinstance(value, list):
                shown = ", ".join(map(str, value))
            else:
                shown = str(value)
            rows.append((label, shown))
        return format_html(
            "<dl class='hp-payload-shown'>{}</dl>", format_html_join("", "<dt>{}</dt><dd>{}</dd>", rows)
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, job):
        return status_badge(job.status, job.get_status_display())

    @admin.display(description="status")
    def status_shown(self, job):
        if job.status_reason:
            return format_html("{} {}", status_badge(job.status, job.get_status_display()), job.status_reason)
        return status_badge(job.status, job.get_status_display())

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, job):
        return object_link(job.site)

    @admin.display(description="progress")
    def progress_bar(self, job):
        total = getattr(job, "delivery_total", 0)
        if not total:
            return "not started" if job.status in (JobStatus.QUEUED, JobStatus.SCHEDULED) else "no devices"
        done = job.delivery_finished
        return format_html(
            '<progress value="{}" max="{}" title="{} of {} finished"></progress> {} %',
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
            return ""
        numbers = services.job_preview(
            actor=None,
            site=job.site,
            extra_sites=job.extra_sites.all(),
            segment=job.segment,
            target_devices=job.target_devices.all(),
            batch_size=job.batch_size,
            max_in_flight_per_site=job.max_in_flight_per_site,
            within_maintenance_windows=job.within_maintenance_windows,
        )
        return preflight_text(numbers)

    @admin.display(description="progress")
    def progress_summary(self, job):
        if job.pk is None:
            return ""
        return format_html(
            '<div id="hp-job-progress" data-url="{}" data-refresh="{}" data-running="{}">{}</div>',
            reverse("admin:jobs_app_job_progress", args=[job.pk]),
            PROGRESS_REFRESH_SECONDS,
            "1" if self._running(job) else "",
            self._progress_html(job, getattr(job, "_user", None)),
        )

    @staticmethod
    def _running(job) -> bool:
        # Paused jobs too: devices already sent the work keep reporting.
        return job.status in (*JOB_RUNNING_STATUSES, JobStatus.PAUSED)

    def _progress_html(self, job, user) -> str:
        progress = services.job_progress(job)
        total = progress["total"]
        counts = progress["counts"]
        context = {"job": job, "total": total, "waves": services.job_waves(job)}
        if total:
            completed = counts[DeliveryStatus.COMPLETED]
            context.update(
                completed=completed,
                percent=round(100 * completed / total),
                finished_percent=progress["percent"],
                statuses=[
                    (status_badge(status, DeliveryStatus(status).label), n)
                    for status, n in counts.items()
                    if n
                ],
                deferred=progress["deferred"],
                next_offer_at=progress["next_offer_at"],
                rate=format_rate(progress["rate_per_second"]) if progress["rate_per_second"] else "",
                eta=human_duration(progress["eta_seconds"]) if progress["eta_seconds"] else "",
                sites=[
                    {**row, "link": ref_link(Site, row["pk"], f"{row['site_id']} {row['name']}")}
                    for row in job_site_breakdown(job=job, user=user)
                ],
                waiting=self._waiting_for_windows(job, user, counts),
            )
        return render_to_string("admin/jobs_app/job/progress.html", context)

    def _waiting_for_windows(self, job, user, counts) -> list[dict]:
        """The job's sites (those `user` may see) outside their maintenance window with work
        pending, the soonest to open first, each with "opens 02:00 Europe/London, in 3 h"."""
        if not (job.within_maintenance_windows and self._running(job) and counts[DeliveryStatus.PENDING]):
            return []
        visible = visible_site_ids(user)
        return [
            {
                **row,
                "link": ref_link(Site, row["site_id"], f"{row['site__site_id']} {row['site__name']}"),
                "opening": opening_text(row["opens_at"], row["site__timezone"]),
            }
            for row in services.sites_waiting(job, limit=WAITING_SITES_LIMIT)
            if visible is None or row["site_id"] in visible
        ]

    @admin.display(description="Rollback")
    def rollback_links(self, job):
        """Links both ways: the job this one undoes, and the job that undid this one."""
        if job.pk is None:
            return ""
        parts = []
        if job.rollback_of_id:
            parts.append(
                format_html("Rolls back {}.", ref_link(Job, job.rollback_of_id, f"job #{job.rollback_of_id}"))
            )
        undone = Job.objects.filter(rollback_of=job.pk).values_list("pk", flat=True).first()
        if undone:
            parts.append(format_html("Rolled back by {}.", ref_link(Job, undone, f"job #{undone}")))
        return format_html_join(" ", "{}", ((p,) for p in parts)) if parts else "—"

    @admin.display(description=f"deliveries (first {DELIVERY_SAMPLE}: problems first)")
    def deliveries_sample(self, job):
        if job.pk is None:
            return ""
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
            .only(
                "id",
                "status",
                "last_error",
                "attempts",
                "defer_count",
                "defer_reason",
                "forced",
                "next_attempt_at",
                "device__device_id",
            )[:DELIVERY_SAMPLE]
        )
        if not sample:
            return "none yet"
        may_cancel = getattr(job, "_may_cancel_deliveries", False)
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            (
                (
                    ref_link(Device, d.device_id, d.device.device_id),
                    status_badge(d.status, d.get_status_display()),
                    d.attempts,
                    deferral_text(d),
                    d.last_error,
                    self._cancel_cell(job, d) if may_cancel else "",
                )
                for d in sample
            ),
        )
        # The API answers a logged-in admin session too, so this opens in the browser.
        api = f"/api/v1/jobs/{job.pk}/deliveries"
        more = format_html(
            '<p>Every delivery, in the API (JSON, cursor pages): <a href="{}?status=failed">failed ones</a>, '
            '<a href="{}">all</a>.</p>',
            api,
            api,
        )
        return format_html(
            "<table><tr><th>device</th><th>status</th><th>attempts</th><th>deferred</th>"
            "<th>last error</th>{}</tr>{}</table>{}",
            format_html("<th>{}</th>", "cancel") if may_cancel else "",
            rows,
            more,
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
        if obj is not None:
            # Read by deliveries_sample when the page renders: rows get a cancel button only
            # for those who may change this job (the change_job permission and its site).
            obj._may_cancel_deliveries = bool(context.get("has_change_permission", True)) and (
                self.has_change_permission(request, obj)
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- Own pages: progress fragment, controls, cancelling one delivery ------------------------

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/deliveries/<int:delivery_id>/cancel/",
                wrap(self.cancel_delivery_view),
                name="jobs_app_job_cancel_delivery",
            ),
            path("<path:object_id>/progress/", wrap(self.progress_view), name="jobs_app_job_progress"),
            path(
                "<path:object_id>/control/<str:verb>/", wrap(self.control_view), name="jobs_app_job_control"
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request, object_id):
        """The progress block as JSON ({"html", "running", "status"}), fetched every few
        seconds by the job page while the job runs. Scoped like the page: another store's
        job is a 404."""
        job = self.get_object(request, unquote(object_id))
        if job is None or not self.has_view_or_change_permission(request, job):
            raise Http404
        return JsonResponse(
            {
                "html": self._progress_html(job, request.user),
                "running": self._running(job),
                "status": job.status,
            }
        )

    def control_view(self, request, object_id, verb):
        """GET: a confirmation page saying what the control does; POST: the service call
        (audited there), then the job's page (the new job's, for a clone) with the outcome."""
        if verb not in CONTROLS:
            raise Http404
        service, label, permission, _ = CONTROLS[verb]
        job = self.get_object(request, unquote(object_id))
        # Like Django's own pages: the permission first (model-wide when the row is out of
        # reach), then "doesn't exist" for a job that is missing or another store's.
        may = self.has_change_permission if permission == "change" else self._may_clone
        if not may(request, job):
            raise PermissionDenied
        if job is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        page = reverse("admin:jobs_app_job_change", args=[job.pk])
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "title": f"{label}: job #{job.pk}?",
                "subtitle": None,
                "opts": self.opts,
                "job": job,
                "verb": verb,
                "label": label,
                "explained": _CONTROL_EXPLAINED[verb],
                "status": status_badge(job.status, job.get_status_display()),
                "back": page,
            }
            return TemplateResponse(request, "admin/jobs_app/job/control_confirm.html", context)
        kwargs = {"reason": request.POST.get("reason", "").strip()[:2000]} if verb == "pause" else {}
        name = f"job #{job.pk} ({job.get_action_display()})"
        try:
            result = run_service(service, actor=request.user, job=job, **kwargs)
        except ServiceRefused as exc:
            self.message_user(
                request, f"{name.capitalize()} was not {_CONTROL_DONE[verb]}: {exc}", messages.ERROR
            )
            return HttpResponseRedirect(page)
        if verb == "clone":
            self.message_user(request, f"Cloned {name} as job #{result.pk}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:jobs_app_job_change", args=[result.pk]))
        if verb == "rollback":
            self.message_user(
                request,
                f"Rolling back {name}: job #{result.pk} restores the previous settings.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:jobs_app_job_change", args=[result.pk]))
        if verb == "retry":
            self.message_user(request, f"Retried {result} device(s) of {name}.", messages.SUCCESS)
        else:
            self.message_user(request, f"{_CONTROL_DONE[verb].capitalize()} {name}.", messages.SUCCESS)
        return HttpResponseRedirect(page)

    def _may_clone(self, request, job) -> bool:
        return self.has_add_permission(request) and self.has_view_or_change_permission(request, job)

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

    # --- Saving through the services ----------------------------------------------------------

    def save_model(self, request, obj, form, change):
        if change:
            stored = Job.objects.select_related("site").get(pk=obj.pk)
            fields = model_field_values(form, obj, form.changed_data)
            saved = run_service(job_update, actor=request.user, job=stored, **fields)
        else:
            data = form.cleaned_data
            values = model_field_values(form, obj)
            values.update(payload=data.get("payload") or {}, segment=data.get("segment") or {})
            if values.get("batch_size") is None:
                values["batch_size"] = DEFAULT_BATCH_SIZE
            values["extra_sites"] = data.get("extra_sites") or ()
            values["target_devices"] = data.get("target_devices") or ()
            # None: the action's default (job_create decides).
            values["within_maintenance_windows"] = data.get("within_maintenance_windows")
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
