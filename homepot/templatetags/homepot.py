"""Template helpers of the operator console: `{% load homepot %}`.

- `{% change_url "admin:app_model_change" pk %}`: `{% url %}` for a row's page, reversed once.
- `{% status_badge value label %}`: the coloured pill of homepot.admin.status_badge (label
  optional), so a template colours a status exactly as a changelist column does.
- `{{ number|percent }}`, `{{ per_second|rate }}`: shares and rates written for people.
- `{{ moment|zoned }}` / `{{ moment|zoned:site.timezone }}`: a time with its zone named.
- `{% console_result_list cl %}`: Django's `{% result_list cl %}` (same template and headers)
  with a console list's rows written by homepot.admin_rows.ConsoleRows.
"""

import contextlib
import zoneinfo

from django import template
from django.contrib.admin.templatetags import admin_list
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.urls import NoReverseMatch
from django.utils import timezone

from homepot.admin import format_percent, format_rate, reverse_change_url
from homepot.admin import status_badge as badge
from homepot.admin_rows import ConsoleRows

register = template.Library()


@register.simple_tag(name="status_badge")
def status_badge_tag(value, label=None):
    return badge(value, label)


@register.simple_tag(name="change_url")
def change_url_tag(viewname, pk):
    """`{% url viewname pk %}` for the rows of a list (a change page by its key), without
    reversing the URL once per row (homepot.admin.reverse_change_url)."""
    url = reverse_change_url(viewname, pk)
    if url is None:
        raise NoReverseMatch(viewname)
    return url


@register.filter
def percent(value, digits=0):
    return format_percent(value, digits=int(digits))


@register.filter
def rate(value):
    return format_rate(value)


def zoned_time(moment, zone_name: str | None = None, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """`moment` in `zone_name` (a site's zone), or the console's zone (TIME_ZONE), with the
    zone's abbreviation, so nobody has to guess whose clock a time is on."""
    if not hasattr(moment, "astimezone"):
        return "—"
    zone = timezone.get_current_timezone()
    if zone_name:
        # An unknown zone name falls back to the console's zone, still labelled.
        with contextlib.suppress(zoneinfo.ZoneInfoNotFoundError, ValueError):
            zone = zoneinfo.ZoneInfo(str(zone_name))
    return moment.astimezone(zone).strftime(fmt)


@register.filter
def zoned(moment, zone_name=None):
    return zoned_time(moment, zone_name)


@register.filter
def app_crumb(opts) -> bool:
    """Whether breadcrumbs should name the model's app: not when the app is named like the
    model's list (the Sites app holds only Sites), which read "Home › Sites › Sites"."""
    return str(opts.app_config.verbose_name).lower() != str(opts.verbose_name_plural).lower()


def console_result_list(cl) -> dict:
    """admin_list.result_list's context; a ConsoleChangeList without editable columns gets
    its rows from ConsoleRows (a formset's cells are form fields: Django's own rows)."""
    if not hasattr(cl, "url_for_slot") or cl.formset:
        return admin_list.result_list(cl)
    headers = list(admin_list.result_headers(cl))
    return {
        "cl": cl,
        "result_hidden_fields": [],
        "result_headers": headers,
        "num_sorted_fields": sum(1 for h in headers if h["sortable"] and h["sorted"]),
        "results": list(ConsoleRows(cl)),
    }


@register.tag(name="console_result_list")
def console_result_list_tag(parser, token):
    return InclusionAdminNode(
        parser, token, func=console_result_list, template_name="change_list_results.html", takes_context=False
    )
