"""Statements planned once per database connection: server-side prepared statements.

PostgreSQL plans every statement it is sent (Django sends each as plain text). For the
hottest reads, whose text never changes (the device list's first page, the API token's
lookup), planning was two fifths to four fifths of the backend's CPU per execution
(docs/performance.md, "issue 11, list4"). `execute(cursor, sql, params)` runs such a
statement as `EXECUTE` of a statement prepared on that connection the first time (the
`PREPARE` and the first `EXECUTE` travel in one query): PostgreSQL keeps the plan (a
generic one after five executions when it is no worse) for the connection's life.

It goes through Django's cursor like any statement (logged, counted, execute wrappers,
errors wrapped), with the same rows and types as the plain statement.

Why SQL-level PREPARE and these names:
- The statement's name is a hash of its text, so a statement of that name means that text,
  whoever prepared it; nothing can execute another statement under a stale name.
- This keeps state on the server past a transaction. Behind a pooler in transaction mode
  (PgBouncer's `pool_mode = transaction`, as deploy/pgbouncer has it; PgBouncer 1.21+'s
  `max_prepared_statements` tracks only protocol-level statements, not these) a connection
  may reach another server connection on each statement: set
  HOMEPOT_DB_PREPARED_STATEMENTS=false there (docker-compose.yml does). If it is left on,
  a statement missing on the server fails and, outside a transaction, the plain statement
  runs instead (correct, one round trip more); inside a transaction that error ends it.
- A connection's prepared names are remembered per driver connection (a new connection
  starts with none); PREPARE outlives a rollback in PostgreSQL, so a rollback changes nothing.
"""

import contextlib
import hashlib
import re

from django.conf import settings
from django.db import DatabaseError

# SQLSTATEs meaning the server's prepared statements are not what this process remembers:
# invalid_sql_statement_name (no such statement), duplicate_prepared_statement, and
# feature_not_supported (a cached plan whose result type changed with the schema).
_ALREADY_PREPARED = "42P05"
_PLAN_CHANGED = "0A000"
_OUT_OF_STEP = frozenset({"26000", _ALREADY_PREPARED, _PLAN_CHANGED})
_PLACEHOLDER = re.compile(r"%[%s]")
_STATEMENTS: dict[str, "_Statement"] = {}  # sql -> its PREPARE and EXECUTE texts
_MAX_STATEMENTS = 256


class _Statement:
    __slots__ = ("execute_sql", "name", "prepare_then_execute_sql")

    def __init__(self, sql: str):
        self.name = "homepot_" + hashlib.blake2b(sql.encode(), digest_size=10).hexdigest()
        count = 0

        def numbered(match):
            nonlocal count
            if match.group() == "%%":
                return "%%"  # still a literal % once the EXECUTE's parameters are merged in
            count += 1
            return f"${count}"

        prepared_text = _PLACEHOLDER.sub(numbered, sql)
        arguments = f"({', '.join(['%s'] * count)})" if count else ""
        self.execute_sql = f"EXECUTE {self.name}{arguments}"
        prepare = f"PREPARE {self.name} AS {prepared_text}"  # pooler-safe: HOMEPOT_DB_PREPARED_STATEMENTS
        self.prepare_then_execute_sql = f"{prepare}; {self.execute_sql}"


def enabled(connection) -> bool:
    """Whether statements on `connection` (a Django connection) may be prepared."""
    return connection.vendor == "postgresql" and settings.HOMEPOT_DB_PREPARED_STATEMENTS


def execute(cursor, sql: str, params) -> None:
    """Execute `sql` (Django's placeholders, `params` a list) on the Django `cursor` as a
    statement prepared on its connection; its rows are then read from `cursor` as usual.
    For statements whose text is fixed (a few per process): each text is prepared once per
    connection and kept there. Changes nothing else; safe to repeat."""
    connection = cursor.db
    if not enabled(connection):
        cursor.execute(sql, params)
        return
    statement = _STATEMENTS.get(sql)
    if statement is None:
        if len(_STATEMENTS) >= _MAX_STATEMENTS:
            _STATEMENTS.clear()
        statement = _STATEMENTS[sql] = _Statement(sql)
    names = _prepared_names(connection)
    try:
        if statement.name in names:
            cursor.execute(statement.execute_sql, params)
        else:
            cursor.execute(statement.prepare_then_execute_sql, params)
            cursor.nextset()  # the EXECUTE's rows, after the PREPARE's empty result
            names.add(statement.name)
    except DatabaseError as error:
        state = getattr(error.__cause__, "sqlstate", None)
        if state not in _OUT_OF_STEP or not connection.get_autocommit():
            raise
        # The server's statements are not what this process remembers (a pooler between
        # them, a DISCARD ALL, a schema change under a kept plan): bring the record in line
        # and run the plain statement this once.
        names.discard(statement.name)
        if state == _ALREADY_PREPARED:
            names.add(statement.name)  # by its name, the same text
        elif state == _PLAN_CHANGED:
            with contextlib.suppress(DatabaseError):
                cursor.execute(f"DEALLOCATE {statement.name}")
        cursor.execute(sql, params)


def _prepared_names(connection) -> set:
    """The names prepared on `connection`'s current driver connection."""
    state = getattr(connection, "_homepot_prepared", None)
    if state is None or state[0] is not connection.connection:
        state = connection._homepot_prepared = (connection.connection, set())
    return state[1]
