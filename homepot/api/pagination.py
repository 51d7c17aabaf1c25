from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import pagination
from rest_framework.exceptions import NotFound


class PageNumberPagination(pagination.PageNumberPagination):
    """For small lists (sites, users): numbered pages with a total count."""

    page_size_query_param = "page_size"
    max_page_size = 500


class CursorPagination(pagination.CursorPagination):
    """For fleet-sized lists: keyset pages that cost the same on page 1 and page 20,000.

    No COUNT(*) and no OFFSET: each page is `WHERE <order field> > <last value> ORDER BY
    <order field> LIMIT n`, served by an index. Ordering fields must therefore be indexed,
    unique and not null (a view's `ordering_fields` lists only such fields); the default
    is the primary key.
    """

    ordering = "id"
    page_size_query_param = "page_size"
    max_page_size = 500

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
