from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError

# More digits than any page or page size could use (and fewer than int() refuses to read).
_MAX_DIGITS = 9


def _whole_number(raw: str, param: str) -> int:
    """`raw` as a number of 1 or more, or a 400 naming `param`: DRF reads a malformed
    page size as "the default", which hides the client's bug."""
    digits = raw.lstrip("0")
    if not (raw.isascii() and raw.isdigit()) or not digits:
        raise ValidationError({param: ["Must be a whole number, 1 or more."]})
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


class StrictPageSizeMixin:
    """`page_size` from 1 up; above `max_page_size` it is capped (as DRF does), but 0, -1 or
    `abc` answer 400 naming `page_size`. Empty means "not given"."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param, "")
        if raw == "":
            return self.page_size
        return min(_whole_number(raw, self.page_size_query_param), self.max_page_size)

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_size_query_param:
                param["schema"] = {"type": "integer", "minimum": 1}
                param["description"] = (
                    f"Rows per page: {self.page_size} if not given; more than {self.max_page_size} "
                    f"gives {self.max_page_size}."
                )
        return params


class PageNumberPagination(StrictPageSizeMixin, pagination.PageNumberPagination):
    """For small lists (sites, users): numbered pages with a total count.

    A malformed `page` (0, -1, `abc`) answers 400 naming it; a page past the end, 404.
    """

    def get_page_number(self, request, paginator):
        raw = request.query_params.get(self.page_query_param, "")
        if raw == "":
            return 1
        if raw in self.last_page_strings:
            return paginator.num_pages
        return _whole_number(raw, self.page_query_param)

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_query_param:
                param["schema"] = {"type": "integer", "minimum": 1}
        return params


class CursorPagination(StrictPageSizeMixin, pagination.CursorPagination):
    """For fleet-sized lists: keyset pages that cost the same on page 1 and page 20,000.

    No COUNT(*) and no OFFSET: each page is `WHERE <order field> > <last value> ORDER BY
    <order field> LIMIT n`, served by an index. Ordering fields must therefore be indexed,
    unique and not null (a view's `ordering_fields` lists only such fields); the default
    is the primary key.
    """

    ordering = "id"

    def paginate_queryset(self, queryset, request, view=None):
        self._model = queryset.model
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request):
        """DRF trusts the position inside a cursor; a hand-edited one (`p=abc` for an integer
        ordering) would reach the database and fail there. Check it against the field."""
        cursor = super().decode_cursor(request)
        if cursor is None or cursor.position is None:
            return cursor
        name = self.ordering[0].lstrip("-")
        try:
            field = self._model._meta.pk if name == "pk" else self._model._meta.get_field(name)
            field.to_python(cursor.position)
        except (FieldDoesNotExist, DjangoValidationError):
            raise NotFound(self.invalid_cursor_message) from None
        if "\x00" in cursor.position:
            raise NotFound(self.invalid_cursor_message)
        return cursor
