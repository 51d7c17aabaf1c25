"""Filter backends and filters shared by the API's lists.

A list answers a malformed query parameter with 400 naming the parameter, never with an
empty page (which reads as "no such rows") and never with a silently ignored parameter.
"""

import datetime

import django_filters
from django import forms
from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import filters
from rest_framework.exceptions import ValidationError

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class StrictBooleanFormField(forms.Field):
    """`true`/`false` (also 1/0, yes/no); anything else is an error, not "no filter"."""

    def to_python(self, value):
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise DjangoValidationError("Use true or false.", code="invalid")


@extend_schema_field(OpenApiTypes.BOOL)
class StrictBooleanFilter(django_filters.Filter):
    """django-filter's BooleanFilter reads an unknown value as "no filter"; this one refuses it."""

    field_class = StrictBooleanFormField


class StrictIsoDateTimeFormField(django_filters.fields.IsoDateTimeField):
    """An ISO 8601 date-time, answered as the UTC instant it names.

    Any offset Python holds (up to ±23:59) is accepted, but PostgreSQL refuses a timestamptz
    literal beyond ±15:59, so the instant goes to the database in UTC. Values Python cannot
    hold (`+24:00`, month 13) or whose instant falls outside years 1-9999 in UTC
    (`0001-01-01T00:00:00+01:00`) are refused with the parameter's name, not a 500.
    """

    default_error_messages = {
        "invalid": "Enter an ISO 8601 date-time, e.g. 2026-12-29T02:19:54Z or 2026-12-29T02:19:54+01:00.",
        "overflow": "The time is outside the years 1 to 9999 in UTC.",
    }

    def to_python(self, value):
        try:
            parsed = super().to_python(value)
        except OverflowError:  # a naive value made aware in a zone past year 9999
            raise DjangoValidationError(self.error_messages["overflow"], code="overflow") from None
        if parsed is None:
            return None
        try:
            return parsed.astimezone(datetime.UTC)
        except OverflowError:
            raise DjangoValidationError(self.error_messages["overflow"], code="overflow") from None


@extend_schema_field(OpenApiTypes.DATETIME)
class StrictIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """The one date-time filter of every list (see StrictIsoDateTimeFormField)."""

    field_class = StrictIsoDateTimeFormField


class StrictSearchFilter(filters.SearchFilter):
    """DRF's search, with a bad term (e.g. a NUL character) reported against `search`."""

    def get_search_terms(self, request):
        try:
            return super().get_search_terms(request)
        except ValidationError as exc:
            raise ValidationError({self.search_param: exc.detail}) from None

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        fields = [name.lstrip("^=@$") for name in getattr(view, "search_fields", None) or []]
        for param in params:
            param["description"] = (
                f"Words to look for (case-insensitive, all must match) in: {', '.join(fields)}."
            )
        return params


class StrictOrderingFilter(filters.OrderingFilter):
    """DRF's ordering, with unknown fields refused (400 on `ordering`) instead of ignored.

    A view may set `ordering_tiebreaker` (e.g. "pk") so pages of a non-unique ordering
    (site names) stay stable; cursor-paginated views order by unique fields and need none.
    """

    def remove_invalid_fields(self, queryset, fields, view, request):
        valid = {name for name, _label in self.get_valid_fields(queryset, view, {"request": request})}
        terms = [term for term in fields if term]
        invalid = [term for term in terms if term.removeprefix("-") not in valid]
        if invalid:
            raise ValidationError(
                {
                    self.ordering_param: [
                        f"Cannot order by {', '.join(invalid)}; choose from {', '.join(sorted(valid))} "
                        "(prefix '-' for descending)."
                    ]
                }
            )
        return terms

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        fields = getattr(view, "ordering_fields", None) or []
        choices = [term for name in fields for term in (name, f"-{name}")]
        default = ", ".join(getattr(view, "ordering", None) or [])
        for param in params:
            param["schema"] = {"type": "string", "enum": choices}
            param["description"] = f"Sort by this field ('-' for descending); default {default}."
        return params

    def filter_queryset(self, request, queryset, view):
        ordering = self.get_ordering(request, queryset, view)
        if not ordering:
            return queryset
        tiebreaker = getattr(view, "ordering_tiebreaker", None)
        if tiebreaker and tiebreaker not in {term.lstrip("-") for term in ordering}:
            ordering = [*ordering, tiebreaker]
        return queryset.order_by(*ordering)


class FilterSetBackend(DjangoFilterBackend):
    """django-filter's backend, not run when the request names none of the filter set's
    parameters: each filter lets every row through when its value is absent, so the answer
    is the same, and building the filter set and its form (a deep copy of every filter and
    form field) was a tenth of the CPU of a device list's first page."""

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None and not _names_a_filter(request.query_params, filterset_class):
            return queryset
        return super().filter_queryset(request, queryset, view)


def _names_a_filter(params, filterset_class) -> bool:
    # By prefix: a filter whose widget reads several parameters names them `<filter>_<part>`.
    names = tuple(filterset_class.base_filters)
    return any(param.startswith(names) for param in params)


# The backends every HOMEPOT list uses (filter set, search, ordering, in that order).
API_FILTER_BACKENDS = [FilterSetBackend, StrictSearchFilter, StrictOrderingFilter]
