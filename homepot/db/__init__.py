"""Database helpers shared by the apps."""

from collections.abc import Iterator

from django.db import transaction


def stream(queryset, *, chunk_size: int) -> Iterator:
    """The rows of `queryset`, read through a server-side cursor `chunk_size` at a time, so
    memory stays flat at any size. Inside one transaction: a cursor declared outside one is
    WITH HOLD and lives on the server connection that declared it, which behind PgBouncer in
    transaction mode is handed to another client as soon as the statement ends (the next
    FETCH would find no cursor). Changes nothing; the transaction is read-only work."""
    with transaction.atomic(using=queryset.db):
        yield from queryset.iterator(chunk_size=chunk_size)
