"""Reads whose SQL never changes, compiled by the ORM once per process instead of per request.

The fleet pages of an admin of the whole chain run the same handful of statements on every
view, with the same parameters (no user in them: the scoping rule says "every site"). Django
builds each statement again per request (aggregates with nine sums and filtered counts, the
down-site rule), which cost the dashboard several milliseconds of CPU for under one
millisecond of PostgreSQL. `fetch_prebuilt` asks the ORM for the statement the first time
(captured before it reaches the database), keeps it, and from then on only executes it.

Only for statements whose text and parameters are fully determined by the key the caller
gives (constants, settings named in the key): never for anything scoped to a user.
"""

import contextlib
import functools

from django.db import connections


class _Captured(Exception):
    """Stops the captured statement before it reaches the database."""


def capture_sql(call, *, using: str = "default") -> tuple[str, tuple]:
    """The first statement `call()` would execute, and its parameters, without running it."""
    captured = {}

    def wrapper(execute, sql, params, many, context):
        captured["sql"], captured["params"] = sql, tuple(params or ())
        raise _Captured

    connection = connections[using]
    # The statement never runs: keep it out of the logged queries (a test's query count).
    logged, connection.force_debug_cursor = connection.force_debug_cursor, False
    try:
        with connection.execute_wrapper(wrapper), contextlib.suppress(_Captured):
            call()
    finally:
        connection.force_debug_cursor = logged
    if "sql" not in captured:
        raise ValueError("the call executed no statement")
    return captured["sql"], captured["params"]


@functools.lru_cache(maxsize=64)
def _statement(key: tuple, using: str) -> tuple[str, tuple]:
    return capture_sql(_BUILDERS[key[0]](*key[1:]), using=using)


_BUILDERS: dict = {}


def prebuilt(name: str):
    """Registers `builder(*args) -> call` under `name`: the call is what runs the ORM read
    once to capture its statement (fetch_prebuilt's key is (name, *args))."""

    def register(builder):
        _BUILDERS[name] = builder
        return builder

    return register


def fetch_prebuilt(name: str, *args, using: str = "default") -> list[dict]:
    """The rows of the statement registered as `name` for `args` (compiled on first use in
    this process), as dicts keyed by the statement's column names, as `.values()` gives."""
    sql, params = _statement((name, *args), using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
