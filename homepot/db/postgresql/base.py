"""PostgreSQL (psycopg 3) as Django ships it, with a cheaper connection health check.

Django's health check (CONN_HEALTH_CHECKS) sends `SELECT 1` before the first query of every
request on a persistent connection: a full round trip, which on the heartbeat path (a
lookup and nothing else) was over a quarter of a worker's time. A connection the server has
closed (a restart, an idle timeout, `pg_terminate_backend`) announces it on its socket: the
server sends its termination message and closes, so the socket turns readable. A socket
with nothing to read, on a connection idle outside a transaction, is taken as usable
without the round trip; anything else gets Django's full check, which closes a dead
connection so the request opens a fresh one. The one case this misses and `SELECT 1` would
catch is a server that closed the connection in the very moment before the request: that
request fails (answered 503, see homepot/outage.py) and the broken connection is dropped at
its end.
"""

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


def _socket_is_quiet(connection) -> bool:
    """Nothing waiting to be read on an idle connection: no termination notice, no EOF."""
    try:
        if connection.closed or connection.info.transaction_status != TransactionStatus.IDLE:
            return False
        poller = select.poll()  # not select(): file descriptors can exceed 1,024
        poller.register(connection.pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except Exception:  # noqa: BLE001 - any doubt: let Django run its full check
        return False


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self):
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and _socket_is_quiet(self.connection)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    # --- A transaction's BEGIN sent with its first statement ------------------------------
    #
    # psycopg, outside autocommit, sends BEGIN as a round trip of its own before a
    # transaction's first statement. Here the driver stays in autocommit and the first
    # statement of a transaction Django opened goes out as "BEGIN; <statement>" in one
    # simple-protocol query (the client-side-binding cursor already sends every statement
    # so); the cursor then stands on that statement's result, as if it had been sent alone.
    # COMMIT and ROLLBACK are psycopg's, which send them whenever the server is in a
    # transaction. A transaction whose first use is something else (executemany's pipeline,
    # COPY, a server-side cursor) hands BEGIN back to psycopg for its duration. Connections
    # with an isolation level, read-only or deferrable option, or server-side binding keep
    # psycopg's own BEGIN throughout.

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        connection._homepot_begin_pending = False
        connection._homepot_begin_with_first = (
            connection.cursor_factory is PiggybackCursor
            and connection.isolation_level is None
            and connection.read_only is None
            and connection.deferrable is None
        )
        return connection

    def get_connection_params(self):
        params = super().get_connection_params()
        if params.get("cursor_factory") is base.Cursor:
            params["cursor_factory"] = PiggybackCursor
        return params

    def _set_autocommit(self, autocommit):
        connection = self.connection
        if not getattr(connection, "_homepot_begin_with_first", False):
            return super()._set_autocommit(autocommit)
        with self.wrap_database_errors:
            connection.autocommit = True
            connection._homepot_begin_pending = not autocommit

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._begin_with_next_statement()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._begin_with_next_statement()

    def _begin_with_next_statement(self):
        """After COMMIT or ROLLBACK: the driver back in autocommit (if a transaction handed
        BEGIN to psycopg) and, while Django is outside autocommit, the next statement
        starts the next transaction."""
        connection = self.connection
        if (
            connection is None
            or connection.closed
            or not getattr(connection, "_homepot_begin_with_first", False)
        ):
            return
        if connection.info.transaction_status != TransactionStatus.IDLE:
            return
        if not connection.autocommit:
            connection.autocommit = True
        connection._homepot_begin_pending = not self.autocommit

    def create_cursor(self, name=None):
        connection = self.connection
        if not name or not getattr(connection, "_homepot_begin_with_first", False) or self.autocommit:
            return super().create_cursor(name)
        # A server-side cursor inside a transaction: DECLARE must run in it (so BEGIN goes
        # first if it has not), and without WITH HOLD, which Django chooses from the
        # driver's autocommit.
        if hand_begin_to_psycopg(connection):
            return super().create_cursor(name)
        connection._autocommit = False  # read by psycopg's `autocommit` property only
        try:
            return super().create_cursor(name)
        finally:
            connection._autocommit = True


def hand_begin_to_psycopg(connection) -> bool:
    """A transaction whose BEGIN is still to be sent leaves it to psycopg (driver out of
    autocommit until its COMMIT or ROLLBACK). True when that was the case."""
    if not getattr(connection, "_homepot_begin_pending", False):
        return False
    connection._homepot_begin_pending = False
    connection.autocommit = False
    return True


class PiggybackCursor(base.Cursor):
    """Django's client-side-binding cursor, sending a pending BEGIN with its statement."""

    def execute(self, query, params=None, **kwargs):
        connection = self.connection
        if not getattr(connection, "_homepot_begin_pending", False):
            return super().execute(query, params, **kwargs)
        if (
            not isinstance(query, str)
            or kwargs
            or connection.info.transaction_status != TransactionStatus.IDLE
        ):
            hand_begin_to_psycopg(connection)
            return super().execute(query, params, **kwargs)
        connection._homepot_begin_pending = False
        try:
            super().execute("BEGIN; " + query, params)
        except BaseException:
            # A statement PostgreSQL could not parse runs nothing, BEGIN included: the next
            # statement must still open the transaction, not run in autocommit.
            if not connection.closed and connection.info.transaction_status == TransactionStatus.IDLE:
                connection._homepot_begin_pending = True
            raise
        self.nextset()  # onto the statement's own result: rows, rowcount, description
        return self

    def executemany(self, *args, **kwargs):
        hand_begin_to_psycopg(self.connection)
        return super().executemany(*args, **kwargs)

    def copy(self, *args, **kwargs):
        hand_begin_to_psycopg(self.connection)
        return super().copy(*args, **kwargs)

    def stream(self, *args, **kwargs):
        hand_begin_to_psycopg(self.connection)
        return super().stream(*args, **kwargs)
