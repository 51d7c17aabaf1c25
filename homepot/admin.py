"""The HOMEPOT operator console: Django's admin, branded and grouped for store operations.

The pieces every app's admin shares live here, so each rule is written once:

- `ServiceAdminMixin`: writes go through services, and their refusals become messages on
  the same page instead of errors (`run_service`, `ServiceRefused`).
- `ScopedAdminMixin`: lists, forms and object permissions follow the one scoping rule
  (`for_user`).
- `ScopedAutocompleteJsonView`: autocomplete offers only what the user may change.
- `SiteListFilter`: a sidebar filter over the user's sites, bounded in size.
- `EstimatedCountPaginator`: the admin never counts a huge unfiltered table exactly.
- `ReadOnlyAdminMixin` (history) and `SuperuserOnlyAdminMixin` (people and credentials).
"""

import datetime
import functools
import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import quote
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import connections, router, transaction
from django.db.models import Field, Model, QuerySet
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, get_resolver, get_script_prefix, get_urlconf, path, reverse
from django.utils import timezone
from django.utils.functional import Promise, cached_property
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from accounts.scoping import ScopedQuerySet
from homepot.errors import ServiceError

# The order a store manager thinks in; anything else follows alphabetically.
APP_ORDER = ["sites_app", "devices_app", "jobs_app", "monitoring_app", "accounts"]


class ScopedAutocompleteJsonView(AutocompleteJsonView):
    """Autocomplete answers fill the choices of forms, and forms write: so on top of the
    target admin's view scope (its get_queryset) they offer only rows the user may change."""

    def process_request(self, request):
        term, model_admin, source_field, to_field_name = super().process_request(request)
        # Django accepts any relation name, reverse ones too, and then fails on those with
        # a 500; only a model's own relation fields are form fields that autocomplete.
        if not isinstance(source_field, Field):
            raise PermissionDenied
        return term, model_admin, source_field, to_field_name

    def get_queryset(self):
        queryset = super().get_queryset()
        if isinstance(queryset, ScopedQuerySet):
            queryset = queryset.for_user(self.request.user, "change")
        return queryset


class HomepotAdminSite(admin.AdminSite):
    site_header = "HOMEPOT operator console"
    site_title = "HOMEPOT"
    index_title = "Your fleet at a glance"
    # Django's "View site" link would open the console again, and "site" means a store here:
    # the header links to the API docs instead (base_site.html).
    site_url = None
    # How often the landing page's numbers refresh themselves (seconds): a store manager
    # leaves it open; 30 s keeps it current at one small request per open tab.
    glance_refresh_seconds = 30

    @property
    def login_form(self):
        # The login page goes through the same limits and audit as the API login (one rule
        # for every door). Imported late: this module is loaded before the apps' models.
        from accounts.forms import GuardedAdminLoginForm

        return GuardedAdminLoginForm

    def has_permission(self, request):
        # Who may use the console is one rule (accounts.selectors.may_use_console): staff,
        # admins, and anyone holding a role on a site, so a site manager gets in with their
        # membership alone and is out again once the last one is revoked.
        from accounts.selectors import may_use_console

        return may_use_console(request.user)

    def get_app_list(self, request, app_label=None):
        # The landing page asks twice (its list, and the sidebar through each_context): the
        # permissions and URLs of every model are looked up once per request.
        if app_label is None and hasattr(request, "_homepot_app_list"):
            return request._homepot_app_list
        app_list = super().get_app_list(request, app_label)
        rank = {label: i for i, label in enumerate(APP_ORDER)}
        app_list = sorted(app_list, key=lambda app: (rank.get(app["app_label"], len(rank)), app["name"]))
        if app_label is None:
            request._homepot_app_list = app_list
        return app_list

    def autocomplete_view(self, request):
        return ScopedAutocompleteJsonView.as_view(admin_site=self)(request)

    # --- The landing page: the fleet at a glance -------------------------------------------

    def get_urls(self):
        glance = self.admin_view(self.glance_view)
        return [path("glance/", glance, name="fleet_glance"), *super().get_urls()]

    def index(self, request, extra_context=None):
        """The console's home: the fleet at a glance (the user's sites only) above the list
        of pages; the glance refreshes itself from `glance/` without a reload."""
        context = {**self.glance_context(request), **(extra_context or {})}
        return super().index(request, context)

    def glance_view(self, request):
        """The landing page's numbers alone (an HTML fragment), for its refresh: the same
        template and selectors as the page, so a refresh can never show other numbers."""
        # admin_view makes it never_cache: a refresh always asks the database.
        return TemplateResponse(request, "admin/homepot/fleet_glance.html", self.glance_context(request))

    def glance_context(self, request) -> dict:
        """Counts by connectivity and health, the sites in trouble, open alerts and jobs in
        progress over the user's sites (the one scoping rule), from the selectors the fleet
        dashboard uses: a constant number of queries whatever the fleet's size. Users who may
        not view sites get no glance."""
        from jobs_app.choices import JOB_ACTIVE_STATUSES
        from monitoring_app.selectors import (
            fleet_summary,
            jobs_in_progress,
            jobs_in_progress_count,
            open_alerts,
        )

        user = request.user
        if not user.has_perm("sites_app.view_site"):
            return {"glance": None}
        return {
            "glance": {
                "summary": fleet_summary(user=user),
                "alerts": open_alerts(user=user, limit=GLANCE_ROWS),
                "jobs": jobs_in_progress(user=user, limit=GLANCE_ROWS),
                "jobs_total": jobs_in_progress_count(user=user),
                "jobs_active": ",".join(JOB_ACTIVE_STATUSES),
                "as_of": timezone.now(),
                "refresh_seconds": self.glance_refresh_seconds,
            }
        }


# Rows of each list on the landing page; the linked lists hold the rest.
GLANCE_ROWS = 5


# --- Display helpers ---------------------------------------------------------------------

# One tone per status value, shared by every status badge of the console (devices, sites,
# jobs, deliveries, health checks, alerts, notifications, tokens), so a colour means the same
# thing on every page: green = fine, amber = needs a look, red = broken, blue = under way,
# grey = not in play. Values not listed are shown neutral (grey).
BADGE_TONES = {
    # fine
    "online": "ok",
    "healthy": "ok",
    "completed": "ok",
    "active": "ok",
    "resolved": "ok",
    # needs a look
    "maintenance": "warn",
    "degraded": "warn",
    "retrying": "warn",
    "paused": "warn",
    "warning": "warn",
    "open": "warn",
    # broken
    "error": "bad",
    "unhealthy": "bad",
    "failed": "bad",
    "timed_out": "bad",
    "critical": "bad",
    "down": "bad",
    "revoked": "bad",
    # under way
    "acknowledged": "info",
    "queued": "info",
    "scheduled": "info",
    "pending": "info",
    "sending": "info",
    "sent": "info",
    # not in play
    "offline": "muted",
    "expired": "muted",
    "cancelled": "muted",
    "skipped": "muted",
    "unknown": "muted",
}


def status_badge(value, label=None):
    """A coloured pill for a status, severity or delivery state: `status_badge(obj.status,
    obj.get_status_display())` in Python, `{% status_badge obj.status obj.get_status_display %}`
    in templates (`{% load homepot %}`). The label stays in the text, so colour is never the
    only signal; without one, the value is written out ("timed_out" → "Timed out")."""
    value = getattr(value, "value", value)  # a TextChoices member counts as its value
    if label is None:
        label = str(value).replace("_", " ").capitalize()
    if isinstance(label, Promise):
        label = str(label)  # the active language's text, which then keys the cache
    if type(value) not in (str, int) or type(label) not in (str, SafeString):
        return _badge(value, label)
    # A console page draws a few kinds of badge hundreds of times (every row of a list).
    return _cached_badge(value, label, isinstance(label, SafeString))


def _badge(value, label):
    tone = BADGE_TONES.get(value, "muted")
    return format_html('<span class="hp-badge hp-badge--{}">{}</span>', tone, label)


@functools.lru_cache(maxsize=1024)
def _cached_badge(value, label, label_is_safe: bool):
    # label_is_safe keys the cache apart: a safe "<b>" and a plain "<b>" are equal strings
    # but are written differently.
    return _badge(value, label)


def format_percent(value, *, digits: int = 0) -> str:
    """A share for people: "83 %", "<1 %" for a small non-zero share, "—" for none known."""
    if value is None:
        return "—"
    if 0 < value < 1 and digits == 0:
        return "<1 %"
    return f"{value:.{digits}f} %"


def format_rate(per_second) -> str:
    """A rate for people: "1.4 per second" (one decimal below ten, whole numbers above),
    "30 per minute" or "3 per hour" below one a second, so a slow rate never reads as 0;
    "—" when there is none."""
    if not per_second:
        return "—"
    for unit, factor in (("second", 1), ("minute", 60), ("hour", 3600)):
        amount = per_second * factor
        if amount >= 1 or unit == "hour":
            text = f"{round(amount):,}" if amount >= 10 else f"{amount:.1f}".removesuffix(".0")
            return f"{text} per {unit}"
    return "—"  # pragma: no cover (the loop always returns)


def count_of(number: int, singular: str, plural: str | None = None) -> str:
    """ "1 device", "3 devices", "1,000 devices" (never "1 devices")."""
    word = singular if number == 1 else (plural or f"{singular}s")
    return f"{number:,} {word}"


# Stands for the primary key in a change page's URL reversed once (admin_change_url): no
# admin URL contains it, and URL quoting leaves it as it is.
_PK_SLOT = "hp-pk-slot"


@functools.lru_cache(maxsize=256)
def _change_url_pattern(resolver, script_prefix: str, viewname: str, current_app: str | None) -> str | None:
    """The change page's URL with `_PK_SLOT` for the key. Keyed on the URL resolver in use
    (a new one after the URLconf changes) and the script prefix, which reverse() reads too."""
    try:
        return reverse(viewname, args=[_PK_SLOT], current_app=current_app)
    except NoReverseMatch:
        return None


def reverse_change_url(viewname: str, pk, current_app: str | None = None) -> str | None:
    """reverse(viewname, args=[pk]) for an integer key without reversing per row: a list
    of 50 rows links each row two or three times, and reverse() was a tenth of the device
    list's CPU. Other keys are reversed as usual."""
    if type(pk) is not int:
        try:
            return reverse(viewname, args=[pk], current_app=current_app)
        except NoReverseMatch:
            return None
    resolver = get_resolver(get_urlconf())
    pattern = _change_url_pattern(resolver, get_script_prefix(), viewname, current_app)
    return None if pattern is None else pattern.replace(_PK_SLOT, str(pk))


def admin_change_url(model: type[Model], pk) -> str | None:
    opts = model._meta
    return reverse_change_url(f"admin:{opts.app_label}_{opts.model_name}_change", pk)


def admin_changelist_url(model: type[Model], **params) -> str:
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def object_link(obj: Model | None, text=None):
    """A link to `obj`'s change page, or its text when it has none; "—" for no object."""
    if obj is None:
        return "—"
    text = str(obj) if text is None else text
    url = admin_change_url(type(obj), obj.pk)
    return format_html('<a href="{}">{}</a>', url, text) if url else text


def ref_link(model: type[Model], pk, text: str):
    """A link by id to a row that may be gone (audit references): the page says so if it is."""
    if pk is None:
        return text or "—"
    url = admin_change_url(model, pk)
    return format_html('<a href="{}">{}</a>', url, text or f"#{pk}") if url else text


def pretty_json(value):
    if value in (None, {}, []):
        return "—"
    return format_html('<pre class="hp-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True))


# --- Counting big tables -------------------------------------------------------------------


class EstimatedCountPaginator(Paginator):
    """Never counts more than `count_at_most` rows on PostgreSQL.

    An unfiltered table above `estimate_above` rows takes its size from the planner's
    statistics (pg_class.reltuples) instead of a full scan. A filtered or searched list is
    counted exactly up to `count_at_most` rows (`SELECT count(*) FROM (... LIMIT n + 1)`:
    the cost of the count is bounded by n, not by the fleet); beyond that, the number shown
    is the planner's estimate of the filtered rows (EXPLAIN), never less than n + 1.

    An estimate may leave the last page short or empty; nobody pages to the end of a
    million devices, they filter or search further.
    """

    estimate_above = 100_000
    count_at_most = 10_000
    # Set (by the changelist) when the first page is the one to show: the list is then read
    # from that page up to one row past it, and counted only when the page is full. A search
    # that finds a page or less (a device ID) runs once instead of twice: its count was a
    # second, equal read (at 1,000,000 devices 18 ms of SQL each, docs/performance.md).
    count_from_first_page = False
    first_page_rows: list | None = None  # the first page's rows, once read for the count

    @cached_property
    def count(self):
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or connections[queryset.db].vendor != "postgresql":
            return super().count
        if not queryset.query.where:
            estimate = self._estimated_table_size()
            if estimate is not None and estimate >= self.estimate_above:
                return estimate
        if self.count_from_first_page:
            head = list(queryset[: self.per_page + 1])
            self.first_page_rows = head[: self.per_page]
            if len(head) <= self.per_page:
                return len(head)
        bounded = queryset.order_by()[: self.count_at_most + 1].count()
        if bounded <= self.count_at_most:
            return bounded
        return max(bounded, self._planner_estimate(queryset))

    def page(self, number):
        """Django's Paginator.page; the first page from the rows the count read, if it did
        (the same sliced queryset, holding them)."""
        number = self.validate_number(number)
        if number == 1 and self.first_page_rows is not None:
            return self._get_page(
                evaluated(self.object_list[: self.per_page], self.first_page_rows), number, self
            )
        return super().page(number)

    def _planner_estimate(self, queryset) -> int:
        plan = json.loads(queryset.order_by().explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])

    def _estimated_table_size(self) -> int | None:
        """The planner's row count of the table; of a partitioned table (the health history),
        the sum of its partitions', since autovacuum never ANALYZEs a partitioned parent and
        its own stays -1, which would send every page of the list to the bounded count."""
        queryset = self.object_list
        connection = connections[queryset.db]
        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT CASE WHEN c.relkind = 'p' THEN (
                              SELECT coalesce(sum(greatest(p.reltuples, 0)), 0) FROM pg_inherits i
                              JOIN pg_class p ON p.oid = i.inhrelid WHERE i.inhparent = c.oid)
                          ELSE c.reltuples END::bigint
                   FROM pg_class c WHERE c.oid = %s::regclass""",
                [queryset.model._meta.db_table],
            )
            row = cursor.fetchone()
        return row[0] if row else None


def evaluated(queryset: QuerySet, rows: list) -> QuerySet:
    """`queryset` holding `rows` as its result, as if it had just read them (its
    prefetches done with them): for rows already read by an equal queryset."""
    queryset._result_cache, queryset._prefetch_done = rows, True
    return queryset


class HistoryCountPaginator(EstimatedCountPaginator):
    """For a history list: the exact count stops at 1,000 rows, then the planner's estimate.

    A filtered window of the health history (unhealthy checks of the past day) is counted
    from rows scattered over the day's heap, a page read per row: 10,000 of them took
    0.4-0.9 s at 10 million rows a day (11,000 buffers read), 1,000 take a tenth of that, and
    the pages beyond the tenth are numbered from the estimate either way."""

    count_at_most = 1_000


class NewestWindowPaginator(HistoryCountPaginator):
    """For a history partitioned by day and listed newest first: each page and the count are
    read from the most recent window (past hour, day, week, month) that holds enough rows,
    so that PostgreSQL prunes the older days instead of opening every day kept.

    Without a bound on the time column, "newest first" over day partitions with a DEFAULT
    partition is a Merge Append of every day's index, and a filtered list (a store manager's
    site, a status) reads its rows from every day before it can sort: its cost grows with the
    days retained (docs/performance.md, issue 11, reads). A lower bound is pruned at plan time.

    Exact, not an approximation: when the list is ordered by `-time_field` first, every row
    inside a window sorts before every row outside it, so if the window holds the first
    `top` rows of the page they are the list's first `top` rows. Which window holds enough
    is counted (`SELECT count(*) FROM (... LIMIT n)`, the narrowest window first, each count
    bounded), and rows arriving meanwhile only land inside the window. A list ordered
    otherwise (a column header clicked), or one with too few recent rows, is read as before.

    `spans`: the windows tried, narrowest first; the admin drops those not narrower than the
    window its list filter already applies (`spans_within`).
    """

    time_field = "checked_at"
    spans = (
        datetime.timedelta(hours=1),
        datetime.timedelta(days=1),
        datetime.timedelta(days=7),
        datetime.timedelta(days=30),
    )

    def __init__(self, *args, spans=None, **kwargs):
        super().__init__(*args, **kwargs)
        if spans is not None:
            self.spans = tuple(spans)
        self._now = timezone.now()
        self._counted: dict = {}  # span -> (limit counted up to, rows found)

    @classmethod
    def spans_within(cls, window: datetime.timedelta | None) -> tuple:
        """The spans narrower than a window the list is already limited to (None: none)."""
        return tuple(span for span in cls.spans if window is None or span < window)

    def _newest_first(self) -> bool:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or connections[queryset.db].vendor != "postgresql":
            return False
        order = queryset.query.order_by
        return bool(order) and order[0] == f"-{self.time_field}"

    def _since(self, span):
        return self.object_list.filter(**{f"{self.time_field}__gte": self._now - span})

    def _rows_in(self, span, needed: int) -> int:
        """The rows of the window `span`, counted up to at least `needed` (bounded)."""
        limit, found = self._counted.get(span, (0, 0))
        if found >= needed or (limit and found < limit):  # enough, or counted exactly
            return found
        limit = max(needed, self.count_at_most + 1)
        found = self._since(span).order_by()[:limit].count()
        self._counted[span] = (limit, found)
        return found

    def window_for(self, needed: int):
        """The narrowest span whose window holds at least `needed` rows, or None."""
        if not self._newest_first():
            return None
        for span in self.spans:
            if self._rows_in(span, needed) >= needed:
                return span
        return None

    @cached_property
    def count(self):
        queryset = self.object_list
        # A window holding more than count_at_most rows: the whole list holds more too, so
        # the count is what the bounded count would have said (the estimate beyond it).
        filtered = self._newest_first() and queryset.query.where
        if filtered and self.window_for(self.count_at_most + 1) is not None:
            return max(self.count_at_most + 1, self._planner_estimate(queryset))
        return super().count

    def page(self, number):
        """Django's Paginator.page, with the rows read from the narrowest window holding
        them all."""
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        span = self.window_for(top) if top > 0 else None
        rows = self.object_list if span is None else self._since(span)
        return self._get_page(rows[bottom:top], number, self)


# --- Scoped list filter ----------------------------------------------------------------------


class SiteListFilter(admin.SimpleListFilter):
    """Filter by site, offering only the sites the user may view.

    Django's own related-field filter would list every site of the chain to everyone (and
    `RelatedOnlyFieldListFilter` runs a DISTINCT over the whole device table), so this one
    reads the user's sites from the sites table, one bounded query. A chain with more than
    `max_choices` sites in scope sees the first ones plus the current choice; search (site ID
    is a search field) and the links from a site's page reach every other. The parameter
    `?site=<pk>` is what those links use, so it always filters, even when not listed.
    """

    title = "site"
    parameter_name = "site"
    site_path = "site"  # the path from the listed model to its site
    max_choices = 100

    def lookups(self, request, model_admin):
        from sites_app.models import Site

        sites = Site.objects.for_user(request.user).order_by("site_id").only("pk", "site_id", "name")
        choices = [(str(site.pk), str(site)) for site in sites[: self.max_choices]]
        selected = self.value()
        if selected and selected not in {pk for pk, _ in choices}:
            current = Site.objects.for_user(request.user).filter(pk=self._selected_pk()).first()
            if current is not None:
                choices.append((str(current.pk), str(current)))
        return choices

    def has_output(self):
        # Always active, so `?site=` filters even when the site is not among the choices.
        return True

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(**{f"{self.site_path}__pk": self._selected_pk()})

    def _selected_pk(self) -> int:
        try:
            return int(self.value())
        except (TypeError, ValueError):
            # The admin answers a bad filter value by reloading the list with ?e=1.
            raise IncorrectLookupParameters(f"Unknown site {self.value()!r}") from None


class DeviceSiteListFilter(SiteListFilter):
    site_path = "device__site"


class HistoryChangelistMixin:
    """The changelist of a history partitioned by day, planned without JIT compilation.

    Over several full days the planner's cost of the list's first page (a merge of each
    day's index, then an incremental sort for the tie-breaking id) crosses PostgreSQL's
    `jit_above_cost` and `jit_optimize_above_cost`, so every request compiled the plan with
    LLVM first: 1.9-3.4 s of JIT for a page that executes in about 1 ms at 50 million rows
    (docs/performance.md). `SET LOCAL` keeps the setting to this transaction, which is all a
    pooler in transaction mode allows; the page is rendered inside it because its rows are
    read while the template renders.
    """

    def changelist_view(self, request, extra_context=None):
        using = router.db_for_read(self.model)
        with transaction.atomic(using=using):
            if connections[using].vendor == "postgresql":
                with connections[using].cursor() as cursor:
                    cursor.execute("SET LOCAL jit = off")
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render") and not response.is_rendered:
                response.render()
            return response


class RecentWindowListFilter(admin.SimpleListFilter):
    """A time window over a history partitioned by day, the recent one by default.

    A list of a history newest first, with no window, plans and probes every day's partition
    kept (and counts across them): its cost grows with the days retained. With a window, the
    planner prunes to the one or two days it covers, whatever the retention. "Any date" is an
    explicit choice, never the silent default, and says what it costs by being slower.
    """

    title = "checked at"
    parameter_name = "window"
    field = "checked_at"
    default = "24h"
    windows = {
        "1h": ("Past hour", datetime.timedelta(hours=1)),
        "24h": ("Past 24 hours", datetime.timedelta(hours=24)),
        "7d": ("Past 7 days", datetime.timedelta(days=7)),
        "30d": ("Past 30 days", datetime.timedelta(days=30)),
        "all": ("Any date", None),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.windows.items()]

    @classmethod
    def span_in(cls, request) -> datetime.timedelta | None:
        """The span the list is limited to by this filter in `request` (None: any date, or a
        value the filter refuses with ?e=1 before any row is read)."""
        key = request.GET.get(cls.parameter_name) or cls.default
        return cls.windows.get(key, (None, None))[1]

    def value(self):
        return super().value() or self.default

    def queryset(self, request, queryset):
        try:
            _, span = self.windows[self.value()]
        except KeyError:
            raise IncorrectLookupParameters(f"Unknown window {self.value()!r}") from None
        if span is None:
            return queryset
        return queryset.filter(**{f"{self.field}__gte": timezone.now() - span})

    def choices(self, changelist):
        # No "All" entry: leaving the parameter out means the default window, not all.
        for key, label in self.lookup_choices:
            yield {
                "selected": self.value() == key,
                "query_string": changelist.get_query_string({self.parameter_name: key}),
                "display": label,
            }


# --- Errors from services ----------------------------------------------------------------------


class ServiceRefused(Exception):
    """A service said no; the admin shows the reason and leaves the data as it was."""


def refusal_message(exc: Exception) -> str:
    if isinstance(exc, ServiceError):
        return exc.message
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            return "; ".join(
                f"{field}: {' '.join(errors)}" if field != "__all__" else " ".join(errors)
                for field, errors in exc.message_dict.items()
            )
        return " ".join(exc.messages)
    return str(exc) or "You may not do this."


def run_service(service, /, **kwargs):
    """Call a service; its refusals (domain errors, validation, scope) become ServiceRefused."""
    try:
        return service(**kwargs)
    except (ServiceError, ValidationError, PermissionDenied) as exc:
        raise ServiceRefused(refusal_message(exc)) from exc


def model_field_values(form, obj: Model, names=None) -> dict:
    """The values the form put on `obj` for its model fields (all, or only `names`)."""
    concrete = {field.name for field in obj._meta.concrete_fields}
    names = form.cleaned_data if names is None else names
    return {name: getattr(obj, name) for name in names if name in concrete}


def adopt_saved(target: Model, saved: Model) -> None:
    """Copy what a service stored onto the instance the admin keeps using (for its log
    entry, message and redirect)."""
    for field in saved._meta.concrete_fields:
        setattr(target, field.attname, getattr(saved, field.attname))
    target._state.adding = False
    target._state.db = saved._state.db


# --- Admin mixins ------------------------------------------------------------------------------


class ConsoleChangeList(ChangeList):
    """Django's ChangeList with each row's link built from one reversed URL (reverse_change_url),
    and its rows from a plan of its columns made once (homepot.admin_rows.ConsoleRows,
    through `{% console_result_list %}` in admin/change_list.html)."""

    def get_results(self, request):
        super().get_results(request)
        rows = getattr(self.paginator, "first_page_rows", None)
        if rows is not None and not self.multi_page and not self.list_editable:
            # The whole list is the rows its count read (EstimatedCountPaginator's
            # count_from_first_page): the list's queryset, as Django's would be, holding
            # those rows, so they are not read a second time.
            self.result_list = evaluated(self.queryset._clone(), rows)

    def url_for_result(self, result):
        return self.url_for_slot(quote(getattr(result, self.pk_attname)))

    def url_for_slot(self, pk) -> str:
        """The change page's URL for the (quoted) key `pk`."""
        viewname = f"admin:{self.opts.app_label}_{self.opts.model_name}_change"
        url = reverse_change_url(viewname, pk, current_app=self.model_admin.admin_site.name)
        if url is None:
            raise NoReverseMatch(viewname)
        return url


class ConsoleListMixin:
    """The per-row work of a big changelist, done without a template per cell: links from
    one reversed URL (ConsoleChangeList), and the actions' checkbox written directly
    instead of rendering Django's CheckboxInput through the form templates for every row
    (a fifth of the device list's CPU). The HTML is the same as Django's."""

    def get_changelist(self, request, **kwargs):
        return ConsoleChangeList

    def action_checkbox(self, obj):
        label = format_html(_("Select this object for an action - {}"), str(obj))
        return format_html(
            '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
            helpers.ACTION_CHECKBOX_NAME,
            str(obj.pk),
            label,
        )


class ServiceAdminMixin:
    """For admins whose writes go through services: a `ServiceRefused` raised while saving
    or deleting rolls the request back and comes back to the operator as an error message
    on the same page, never as a 500."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ServiceRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_queryset(self, request, queryset):
        """Bulk delete through `delete_model` (the service), one audited transaction per
        row; rows a service refuses stay and are reported one by one."""
        for obj in queryset:
            try:
                self.delete_model(request, obj)
            except ServiceRefused as exc:
                self.message_user(request, f"{obj} was not deleted: {exc}", messages.ERROR)


class ScopedAdminMixin(ServiceAdminMixin):
    """Applies the one scoping rule to a ModelAdmin of a site-scoped model.

    - lists, change pages and autocomplete see `Model.objects.for_user(user)` (view);
    - foreign-key and many-to-many choices of forms are what the user may change
      (`for_user(user, "change")`);
    - changing or deleting a row needs change rights on its site, on top of Django's
      model permission, so a viewer's change page renders read-only.
    """

    def get_queryset(self, request):
        return super().get_queryset(request).for_user(request.user, "view")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        related = db_field.related_model._default_manager.all()
        if "queryset" not in kwargs and isinstance(related, ScopedQuerySet):
            kwargs["queryset"] = related.for_user(request.user, "change")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        related = db_field.related_model._default_manager.all()
        if "queryset" not in kwargs and isinstance(related, ScopedQuerySet):
            kwargs["queryset"] = related.for_user(request.user, "change")
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def may_change_object(self, request, obj) -> bool:
        if obj is None or request.user.is_superuser:
            return True
        return self.model._default_manager.for_user(request.user, "change").filter(pk=obj.pk).exists()

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self.may_change_object(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self.may_change_object(request, obj)

    def unchangeable_names(self, request, objs) -> set[str]:
        """The verbose name of the model if any of `objs` is outside the user's change scope
        (what Django's delete confirmation calls "permissions needed")."""
        if request.user.is_superuser:
            return set()
        pks = {obj.pk for obj in objs}
        allowed = self.model._default_manager.for_user(request.user, "change").filter(pk__in=pks)
        if allowed.count() != len(pks):
            return {self.model._meta.verbose_name}
        return set()


class ReadOnlyAdminMixin:
    """History (health checks, audit logs) is never added, edited or deleted through the
    product; users with view permission see it, and its change page renders as a view."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class SuperuserOnlyAdminMixin:
    """People and their site roles are administered by superusers only.

    To everyone else their rows do not exist: Django's history page looks a row up before
    it checks permissions, so an unscoped queryset would answer 403 for an existing user and
    "doesn't exist" for a missing one, telling a store manager which accounts exist.
    """

    def _is_superuser(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if self._is_superuser(request) else queryset.none()

    def has_module_permission(self, request):
        return self._is_superuser(request)

    def has_view_permission(self, request, obj=None):
        return self._is_superuser(request)

    def has_add_permission(self, request, *args):
        return self._is_superuser(request)

    def has_change_permission(self, request, obj=None):
        return self._is_superuser(request)

    def has_delete_permission(self, request, obj=None):
        return self._is_superuser(request)


def verbose_link(obj: Model):
    """`Device: <link>`, the way Django's delete confirmation lists objects."""
    return format_html("{}: {}", capfirst(obj._meta.verbose_name), object_link(obj))


class CsvExportAdminMixin:
    """An "Export CSV" page beside the changelist (`<changelist>/export/`) that streams the
    rows the changelist shows, with its filters, search and scope (the same ChangeList
    builds the queryset), and every page of them. The changelist template links to it with
    its current query string.

    Subclasses set `csv_filename` and implement `csv_export(queryset) -> (header, rows)`.
    """

    csv_filename = "export.csv"

    def csv_export(self, queryset):
        raise NotImplementedError

    def get_urls(self):
        opts = self.model._meta
        export = self.admin_site.admin_view(self.export_csv_view)
        export_xlsx = self.admin_site.admin_view(self.export_xlsx_view)
        return [
            path("export/", export, name=f"{opts.app_label}_{opts.model_name}_export"),
            path("export/xlsx/", export_xlsx, name=f"{opts.app_label}_{opts.model_name}_export_xlsx"),
            *super().get_urls(),
        ]

    def export_xlsx_view(self, request):
        """The same rows as an Excel workbook (homepot.csv_export.xlsx_response)."""
        return self.export_csv_view(request, as_xlsx=True)

    def export_csv_view(self, request, as_xlsx: bool = False):
        from django.http import HttpResponseBadRequest

        from homepot.csv_export import csv_response, xlsx_response

        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("The list's filters are not valid; export from the list again.")
        header, rows = self.csv_export(changelist.queryset)
        if as_xlsx:
            return xlsx_response(header, rows, self.csv_filename.removesuffix(".csv") + ".xlsx")
        return csv_response(header, rows, self.csv_filename)
