from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """For small lists (sites, users): numbered pages with a total count."""

    page_size_query_param = "page_size"
    max_page_size = 500


class CursorPagination(pagination.CursorPagination):
    """For fleet-sized lists: keyset pages that cost the same on page 1 and page 20,000.

    Ordering fields must be indexed and not null; the default is the primary key.
    """

    ordering = "id"
    page_size_query_param = "page_size"
    max_page_size = 500
