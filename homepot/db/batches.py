"""Deleting many rows without holding one long transaction."""

from django.db import connection, transaction


def delete_in_batches(statement: str, params: list, batch_size: int) -> int:
    """Run `statement` (a DELETE whose last placeholder is the batch's LIMIT) again and again,
    each time in its own short transaction, until a batch deletes fewer than `batch_size`
    rows, so no lock is held for long and writers go on meanwhile. Returns how many rows were
    deleted."""
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [*params, batch_size])
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total
