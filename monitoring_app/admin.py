import functools

from django.contrib import admin, messages
from django.contrib.admin import DateFieldListFilter
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import urlencode

from devices_app.models import Device
from homepot.admin import (
    ConsoleListMixin,
    DeviceSiteListFilter,
    EstimatedCountPaginator,
    HistoryChangelistMixin,
    NewestWindowPaginator,
    ReadOnlyAdminMixin,
    RecentWindowListFilter,
    ScopedAdminMixin,
    ServiceRefused,
    SiteListFilter,
    count_of,
    object_link,
    pretty_json,
    ref_link,
    run_service,
    status_badge,
)
from jobs_app.models import Job
from monitoring_app.admin_dashboard import alert_rows, chart_figure, job_rows
from monitoring_app.alerts import alert_acknowledge, alert_resolve
from monitoring_app.models import Alert, AlertNote, AuditLog, HealthCheck, Notification
from monitoring_app.notifications import notification_retry
from monitoring_app.rollup import HEALTH_SERIES, ONLINE_SERIES, chart, fleet_history
from monitoring_app.selectors import fleet_summary, jobs_in_progress, jobs_in_progress_count, open_alerts
from sites_app.models import Site

# Both tables grow without end, so neither has a date hierarchy (its year/month/day choices
# are a DISTINCT over the whole table); the date filters below cost nothing to render, and
# the health history's list shows a recent window unless another is chosen.


@admin.register(HealthCheck)
class HealthCheckAdmin(
    HistoryChangelistMixin, ReadOnlyAdminMixin, ConsoleListMixin, ScopedAdminMixin, admin.ModelAdmin
):
    list_display = ("checked_at", "device_link", "site_link", "status_badge", "response_time_ms", "error")
    # The window keeps the list's cost to the days it shows, not the days kept (docs/performance.md).
    list_filter = ("status", DeviceSiteListFilter, RecentWindowListFilter)
    search_fields = ("device__device_id", "device__name", "device__site__site_id")
    ordering = ("-checked_at", "-id")
    list_select_related = ("device__site",)
    autocomplete_fields = ("device",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    # Each page from the newest window that holds it: the cost of "any date" (and of a store
    # manager's few devices) stays that of the recent days, not of the days kept.
    paginator = NewestWindowPaginator
    fields = (
        "device_link",
        "site_link",
        "status_badge",
        "checked_at",
        "response_time_ms",
        "error_message",
        "metrics_pretty",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        # The view page shows the device and its site too: one query, not three.
        return super().get_queryset(request).select_related("device__site")

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        # Only windows narrower than the one the list filter already applies can prune more.
        spans = self.paginator.spans_within(RecentWindowListFilter.span_in(request))
        return self.paginator(queryset, per_page, orphans, allow_empty_first_page, spans=spans)

    @admin.display(description="device", ordering="device__device_id")
    def device_link(self, check):
        return object_link(check.device)

    @admin.display(description="site")
    def site_link(self, check):
        return object_link(check.device.site)

    @admin.display(description="status", ordering="status")
    def status_badge(self, check):
        return status_badge(check.status, check.get_status_display())

    @admin.display(description="error")
    def error(self, check):
        text = check.error_message
        return text if len(text) <= 80 else f"{text[:79]}…"

    @admin.display(description="metrics")
    def metrics_pretty(self, check):
        return pretty_json(check.metrics)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdminMixin, ConsoleListMixin, ScopedAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "event_type", "actor_link", "site_link", "device_link", "description")
    list_filter = ("event_type", SiteListFilter, ("created_at", DateFieldListFilter))
    search_fields = ("description", "actor_ref", "site_ref", "device_ref", "=request_id")
    ordering = ("-id",)  # the chain's order; every filter above has an index ending in id
    # No joins: the *_ref columns keep each target's name, also after it is deleted, and
    # the links go by id (the target's page says so if it is gone).
    list_select_related = ()
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan the table
    paginator = EstimatedCountPaginator
    fieldsets = (
        (None, {"fields": ("created_at", "event_type", "actor_link", "description")}),
        ("Subject", {"fields": ("site_link", "device_link", "job_link")}),
        ("Change", {"fields": ("old_values_pretty", "new_values_pretty")}),
        ("Request", {"fields": ("source_ip", "user_agent", "request_id")}),
        # Tamper evidence: each row's hash covers its content and the previous row's hash.
        ("Integrity", {"fields": ("prev_hash", "row_hash"), "classes": ("collapse",)}),
    )
    readonly_fields = tuple(name for _, options in fieldsets for name in options["fields"])

    def changelist_view(self, request, extra_context=None):
        """The list, with an "Export CSV" link to the API's export of the trail this user may
        see (session-authenticated, scoped the same way), of the event type filtered here."""
        query = {}
        if event_type := request.GET.get("event_type__exact"):
            query["event_type"] = event_type
        export_url = reverse("auditlog-export") + (f"?{urlencode(query)}" if query else "")
        return super().changelist_view(request, {**(extra_context or {}), "audit_export_url": export_url})

    @admin.display(description="actor", ordering="actor_ref")
    def actor_link(self, entry):
        if entry.actor_id is None:
            return entry.actor_ref or "system"
        return ref_link(get_user_model(), entry.actor_id, entry.actor_ref)

    @admin.display(description="site", ordering="site_ref")
    def site_link(self, entry):
        return ref_link(Site, entry.site_id, entry.site_ref)

    @admin.display(description="device", ordering="device_ref")
    def device_link(self, entry):
        return ref_link(Device, entry.device_id, entry.device_ref)

    @admin.display(description="job")
    def job_link(self, entry):
        return ref_link(Job, entry.job_id, f"Job #{entry.job_id}" if entry.job_id else "")

    @admin.display(description="old values")
    def old_values_pretty(self, entry):
        return pretty_json(entry.old_values)

    @admin.display(description="new values")
    def new_values_pretty(self, entry):
        return pretty_json(entry.new_values)


class AlertSiteListFilter(SiteListFilter):
    """The site filter for rows that reach their site through an alert."""

    site_path = "alert__site"


class AlertNoteInline(admin.TabularInline):
    model = AlertNote
    fields = ("created_at", "author", "text")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0  # notes are added through the audited service (API), never edited here

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("author")


class NotificationInline(admin.TabularInline):
    """How the alert was told, channel by channel (read-only; "retry now" is on the
    notifications list)."""

    model = Notification
    fields = ("channel", "status_badge", "attempts", "next_attempt_at", "sent_at", "last_error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    max_num = 0
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="status")
    def status_badge(self, notification):
        return status_badge(notification.status, notification.get_status_display())


class AlertStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (("open", "Open"), ("unacknowledged", "Open, not acknowledged"), ("resolved", "Resolved"))

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "unacknowledged":
            return queryset.filter(resolved_at__isnull=True, acknowledged_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdminMixin, ConsoleListMixin, ScopedAdminMixin, admin.ModelAdmin):
    """Alerts are opened and closed by monitoring; operators acknowledge and resolve them
    here (actions call the audited services; each alert's outcome is reported)."""

    list_display = ("opened_at", "severity_badge", "kind", "site_link", "device_link", "message", "state")
    list_filter = (AlertStateFilter, "severity", "kind", SiteListFilter, ("opened_at", DateFieldListFilter))
    search_fields = ("message", "site__site_id", "device__device_id")
    ordering = ("-opened_at", "-id")
    list_select_related = ("site", "device")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("acknowledge_alerts", "resolve_alerts")
    inlines = (NotificationInline, AlertNoteInline)
    fields = (
        "kind",
        "severity",
        "message",
        "site_link",
        "device_link",
        "opened_at",
        "last_seen_at",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
        "resolved_by",
        "notified_at",
    )
    readonly_fields = fields

    @admin.display(description="site", ordering="site__site_id")
    def site_link(self, alert):
        return object_link(alert.site)

    @admin.display(description="device", ordering="device__device_id")
    def device_link(self, alert):
        return object_link(alert.device) if alert.device_id else "—"

    @admin.display(description="severity", ordering="severity")
    def severity_badge(self, alert):
        return status_badge(alert.severity, alert.get_severity_display())

    @admin.display(description="state")
    def state(self, alert):
        return status_badge(alert.state, alert.state.capitalize())

    def _run(self, request, queryset, service, verb):
        done = 0
        for alert in queryset.select_related("site", "device"):
            try:
                run_service(service, actor=request.user, alert=alert)
                done += 1
            except ServiceRefused as exc:
                self.message_user(request, f"{alert}: {exc}", messages.ERROR)
        self.message_user(request, f"{verb} {count_of(done, 'alert')}.", messages.SUCCESS)

    def has_handle_permission(self, request):
        # Handling an alert is a store manager's job: the same right as changing devices.
        return request.user.has_perm("devices_app.change_device")

    @admin.action(description="Acknowledge selected alerts", permissions=["handle"])
    def acknowledge_alerts(self, request, queryset):
        self._run(request, queryset, alert_acknowledge, "Acknowledged")

    @admin.action(description="Resolve selected alerts", permissions=["handle"])
    def resolve_alerts(self, request, queryset):
        self._run(request, queryset, alert_resolve, "Resolved")

    # --- The fleet dashboard: /admin/monitoring_app/alert/fleet/ ----------------------------

    DASHBOARD_ALERTS = 20
    DASHBOARD_JOBS = 20

    def get_urls(self):
        dashboard = self.admin_site.admin_view(self.fleet_dashboard)
        return [path("fleet/", dashboard, name="monitoring_fleet_dashboard"), *super().get_urls()]

    def fleet_dashboard(self, request):
        """Counts by connectivity and health, the sites most in trouble, open alerts, jobs in
        progress, and charts of the last 24 hours and 7 days (from the FleetSnapshot rollup,
        drawn as inline SVG): the caller's sites only, a constant number of queries."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        summary = fleet_summary(user=request.user)
        alerts = open_alerts(user=request.user, limit=self.DASHBOARD_ALERTS)
        jobs = jobs_in_progress(user=request.user, limit=self.DASHBOARD_JOBS)
        context = {
            **self.admin_site.each_context(request),
            "title": "Fleet health",
            "summary": summary,
            "alerts": alerts,
            "alert_rows": alert_rows(alerts),
            "jobs": jobs,
            "job_rows": job_rows(jobs),
            "jobs_total": jobs_in_progress_count(user=request.user),
            "charts": self._charts(request.user, summary),
        }
        return TemplateResponse(request, "admin/monitoring_app/fleet_dashboard.html", context)

    @staticmethod
    def _charts(user, summary: dict) -> list[dict]:
        """Two windows (every 15-minute snapshot of the last day; the hourly ones of the last
        week), one query each, drawn as two charts each: connectivity and health. Each ends
        with the live counts of `summary` (the table above the charts), so the charts and the
        table agree, and a fleet with no snapshot yet still draws its current point."""
        now = timezone.now()
        windows = (
            ("24h", "last 24 hours", fleet_history(user=user, hours=24, now=now)),
            ("7d", "last 7 days", fleet_history(user=user, hours=24 * 7, hourly=True, now=now)),
        )
        charts = []
        for key, window, history in windows:
            online = chart(history, ONLINE_SERIES, current=summary, now=now)
            health = chart(history, HEALTH_SERIES, current=summary, now=now)
            figure = functools.partial(chart_figure, key=key, window=window)
            charts.append(
                {
                    "key": key,
                    "window": window,
                    "online": online,
                    "health": health,
                    "online_figure": figure(online, caption="Devices online", kind="online"),
                    "health_figure": figure(health, caption="Health of online devices", kind="health"),
                }
            )
        return charts


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, ConsoleListMixin, ScopedAdminMixin, admin.ModelAdmin):
    """Every alert notification and how its delivery went: sent, retrying (when next), failed
    (with the last error), skipped (why). Read-only; "retry now" calls the audited service."""

    list_display = (
        "created_at",
        "alert_link",
        "site_link",
        "channel",
        "status_badge",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "error",
    )
    list_filter = ("status", "channel", AlertSiteListFilter, ("created_at", DateFieldListFilter))
    search_fields = ("alert__message", "alert__site__site_id", "alert__device__device_id", "last_error")
    ordering = ("-created_at", "-id")
    list_select_related = ("alert__site",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    actions = ("retry_now",)
    fields = (
        "alert_link",
        "site_link",
        "channel",
        "status_badge",
        "attempts",
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "sent_at",
        "last_error",
    )
    readonly_fields = fields

    @admin.display(description="alert", ordering="alert__opened_at")
    def alert_link(self, notification):
        return object_link(notification.alert)

    @admin.display(description="site", ordering="alert__site__site_id")
    def site_link(self, notification):
        return object_link(notification.alert.site)

    @admin.display(description="status", ordering="status")
    def status_badge(self, notification):
        return status_badge(notification.status, notification.get_status_display())

    @admin.display(description="last error")
    def error(self, notification):
        text = notification.last_error
        return text if len(text) <= 80 else f"{text[:79]}…"

    def has_handle_permission(self, request):
        # The same right as handling the alert itself (a store manager's).
        return request.user.has_perm("devices_app.change_device")

    @admin.action(description="Retry now", permissions=["handle"])
    def retry_now(self, request, queryset):
        done = 0
        for notification in queryset.select_related("alert__site", "alert__device"):
            try:
                run_service(notification_retry, actor=request.user, notification=notification)
                done += 1
            except ServiceRefused as exc:
                self.message_user(request, f"{notification}: {exc}", messages.ERROR)
        if done:
            self.message_user(
                request, f"{count_of(done, 'notification')} will be sent again now.", messages.SUCCESS
            )
