"""The rows of a console changelist, built from a per-request plan of its columns.

Django's `items_for_result` works out, for every cell of every row, what the column is (a
model field, a ModelAdmin method, a model attribute), whether it links to the row's page,
its CSS class, and the link with the list's preserved filters (parsing and resolving the
URL again per row). For the device list's 50 rows × 8 columns that was almost half of the
request's CPU. `ConsoleRows` decides those once per column and writes each cell with the
same HTML Django writes (a test compares the two on every console list). Lists with
editable columns (a formset) keep Django's own rows.
"""

import datetime
import html
from dataclasses import dataclass
from typing import Any

from django.contrib.admin.templatetags import admin_list
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import (
    FieldIsAForeignKeyColumnName,
    _get_non_gfk_field,
    display_for_field,
    display_for_value,
    lookup_field,
)
from django.core.exceptions import FieldDoesNotExist, ObjectDoesNotExist
from django.db import models
from django.urls import NoReverseMatch
from django.utils.safestring import SafeString

# Stands for the row's key in a link built once per list (no admin URL contains it).
_PK_SLOT = "hp-row-pk-slot"


@dataclass(frozen=True)
class Column:
    """What items_for_result would find out about one column, found out once."""

    name: Any  # the list_display entry (a name or a callable)
    css: str  # ' class="field-…"' (or "action-checkbox")
    error_css: str  # the class when the row's value is gone (ObjectDoesNotExist)
    links: bool  # the cell links to the row's page
    tag: str  # "th" for the first linking column, else "td"
    field: models.Field | None  # a model field, read with getattr as lookup_field does
    method: Any  # a callable taking the row (a callable entry or a ModelAdmin method)
    empty: str  # what an empty value shows
    boolean: bool


def _column(model_admin, opts, index: int, name, links: bool, tag: str, empty: str) -> Column:
    """The column as lookup_field resolves it: a model field (not a generic or reverse
    relation, not a `<fk>_id` name), else a callable entry, else a ModelAdmin method;
    anything else (a model attribute or property) is looked up per row by lookup_field."""
    css = f"field-{admin_list._coerce_field_name(name, index)}"
    field = method = None
    try:
        field = _get_non_gfk_field(opts, name)
    except (FieldDoesNotExist, FieldIsAForeignKeyColumnName):
        if callable(name):
            method = name
        elif hasattr(model_admin, name) and name != "__str__":
            method = getattr(model_admin, name)
    plain = f' class="{css}"'
    if field is None and method is None:
        return Column(name, plain, plain, links, tag, None, None, empty, False)
    if method is not None and name == "action_checkbox":
        css = "action-checkbox"
    return Column(
        name,
        f' class="{css}"',
        plain,
        links,
        tag,
        field,
        method,
        getattr(method, "empty_value_display", empty),
        getattr(method, "boolean", False),
    )


class ConsoleRows:
    """The rows of one changelist page as Django's `results(cl)` yields them (lists of
    safe cell strings), for a changelist without editable columns."""

    def __init__(self, cl):
        self.cl = cl
        self.columns = self._plan(cl)
        self._filters = _preserved(cl)
        self._url_pattern = self._row_url_pattern(cl)

    @staticmethod
    def _plan(cl) -> list[Column]:
        model_admin, opts = cl.model_admin, cl.lookup_opts
        empty = model_admin.get_empty_value_display()
        columns, first = [], True
        for index, name in enumerate(cl.list_display):
            if cl.list_display_links is None:
                links = False
            elif first and not cl.list_display_links:
                links = True
            else:
                links = name in cl.list_display_links
            tag = "th" if links and first else "td"
            if links:
                first = False
            columns.append(_column(model_admin, opts, index, name, links, tag, empty))
        return columns

    @staticmethod
    def _row_url_pattern(cl) -> str | None:
        """The row link with the list's preserved filters, built once with a slot for the
        key: add_preserved_filters parses and resolves the URL, the same for every row."""
        if cl.is_popup or cl.to_field:
            return None
        try:
            url = cl.url_for_slot(_PK_SLOT)
        except (AttributeError, NoReverseMatch):
            return None
        return add_preserved_filters(_preserved(cl), url)

    def _row_url(self, result) -> str | None:
        pk = getattr(result, self.cl.pk_attname)
        if self._url_pattern is not None and type(pk) is int:
            return self._url_pattern.replace(_PK_SLOT, str(pk))
        try:
            url = self.cl.url_for_result(result)
        except NoReverseMatch:
            return None
        return add_preserved_filters(self._filters, url)

    def __iter__(self):
        for result in self.cl.result_list:
            yield admin_list.ResultList(None, self.cells(result))

    def cells(self, result) -> list[SafeString]:
        out = []
        for column in self.columns:
            try:
                text, css = self._display(column, result)
            except ObjectDoesNotExist:
                text, css = self.cl.model_admin.get_empty_value_display(), column.error_css
            if column.links:
                text = self._link(result, text)
            out.append(SafeString(f"<{column.tag}{css}>{_escape(text)}</{column.tag}>"))
        return out

    def _link(self, result, text):
        url = self._row_url(result)
        if url is None:
            return text
        popup = ""
        if self.cl.is_popup:
            name = str(self.cl.to_field) if self.cl.to_field else self.cl.pk_attname
            value = result.serializable_value(name)
            popup = f' data-popup-opener="{_escape(value)}"'
        return SafeString(f'<a href="{html.escape(url)}"{popup}>{_escape(text)}</a>')

    def _display(self, column: Column, result) -> tuple[Any, str]:
        """The cell's content and its class attribute, as items_for_result decides them
        (raises ObjectDoesNotExist as lookup_field does)."""
        field, empty, boolean = column.field, column.empty, column.boolean
        if field is not None:
            value = getattr(result, column.name)
        elif column.method is not None:
            value = column.method(result)
        else:
            field, attr, value = lookup_field(column.name, result, self.cl.model_admin)
            empty = getattr(attr, "empty_value_display", empty)
            boolean = getattr(attr, "boolean", False)
            if isinstance(attr, property) and hasattr(attr, "fget"):
                boolean = getattr(attr.fget, "boolean", False)
        if isinstance(value, str) and value.strip() == "":
            value = ""
        if field is None or field.auto_created:
            text = display_for_value(value, empty, boolean)
            dated = isinstance(value, (datetime.date, datetime.time))
            return text, _nowrap(column.css) if dated else column.css
        if isinstance(field.remote_field, models.ManyToOneRel):
            related = getattr(result, field.name)
            text = empty if related is None else related
        else:
            text = display_for_field(value, field, empty, avoid_link=column.links)
        if isinstance(field, (models.DateField, models.TimeField, models.ForeignKey)):
            return text, _nowrap(column.css)
        return text, column.css


def _preserved(cl) -> dict:
    return {"preserved_filters": cl.preserved_filters, "opts": cl.opts}


def _escape(value) -> str:
    """django.utils.html.conditional_escape without its lazy-string wrapper (called for
    every cell): safe strings as they are, anything else HTML-escaped. Same output."""
    if hasattr(value, "__html__"):
        return value.__html__()
    return html.escape(str(value))


def _nowrap(css: str) -> str:
    return f'{css[:-1]} nowrap"'
