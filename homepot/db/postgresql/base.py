"""PostgreSQL (psycopg 3) as Django ships it, with a cheaper connection health check, and
commits whose WAL flush waits outside the locks they held ("The WAL flush of a commit,
outside the locks it held", below).

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
from django.db.backends.utils import debug_transaction
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


# --- The WAL flush of a commit, outside the locks it held ------------------------------------
#
# A transaction that takes a lock every writer of its kind queues on (the audit chain's, see
# monitoring_app/services.py) holds it until its COMMIT returns, and a synchronous COMMIT
# returns after its WAL flush (an fsync): the writers were serial through one flush each.
# Such a transaction asks for an asynchronous COMMIT instead (set_config below, local to the
# transaction), so PostgreSQL releases its locks as soon as the commit record is in the WAL
# buffers; and its commit() does not return before the WAL is flushed past that record. The
# statement sent after the COMMIT, in the same round trip, is a transaction of its own under
# the session's synchronous_commit: it writes one WAL record (a logical message, which any
# wal_level accepts and nothing consumes) and so flushes, on commit, the WAL up to its own
# commit record, which comes after ours (WAL is one sequence). A transaction that writes no
# WAL record would not flush (PostgreSQL makes a commit without one asynchronous), hence the
# message. Concurrent flushes share one fsync (group commit), outside every lock; with a
# synchronous standby the statement waits for it as any commit of the session would.
#
# So commit() still returns only once the transaction is durable, and Django runs the
# on_commit hooks (Celery enqueues, MQTT publishes) only after commit() has returned: nothing
# leaves for a worker or a device before the rows it names are on disk. If the flush fails
# (the connection is lost, the server shuts down), commit() raises: the request is answered
# 503 (homepot/outage.py) and the hooks are dropped with the transaction's state, as when a
# synchronous COMMIT's connection is lost (whether the transaction committed is then unknown,
# in both cases).
#
# A writer whose locked statement is the last of its transaction (the audit chain's append at
# the end of an outermost atomic block) goes one step further: it sends COMMIT_THEN_FLUSH in
# the same query as that statement (commit_with_last_statement), so PostgreSQL takes the
# lock, writes, commits and releases the lock without waiting for the client at all; the
# lock's hold no longer includes a round trip to a Python process that the machine may not
# schedule at once. commit() then has nothing left to send.
ASYNC_COMMIT_EXPRESSION = "set_config('synchronous_commit', 'off', true)"
COMMIT_THEN_FLUSH = "COMMIT; SELECT pg_logical_emit_message(true, 'homepot.flush', '')"


class _FlushAfterCommit:
    """Mixed into the DatabaseWrapper below (kept apart so the health check reads alone)."""

    _flush_owed_by = None  # the driver connection whose open transaction owes a flush
    _committed_by_statement = None  # the driver connection whose transaction a statement ended

    def commit_flush_outside_locks(self) -> str | None:
        """For a writer about to take a lock every writer of its kind queues on: an
        expression for that statement's select list which makes this transaction's COMMIT
        release its locks before the WAL flush; commit() then waits for the flush after it.
        None in autocommit, where no later commit() could wait: the statement's own commit
        stays synchronous. Repeat calls in one transaction are harmless."""
        if self.get_autocommit():
            return None
        self.ensure_connection()
        self._flush_owed_by = self.connection
        return ASYNC_COMMIT_EXPRESSION

    def commit_with_last_statement(self) -> str | None:
        """For the last statement of the outermost atomic block, sent when nothing else will
        run in the transaction before the block ends: COMMIT_THEN_FLUSH, to append to that
        statement's query (after a `;`), or None when the block's end will not commit (a
        nested block, a transaction opened by hand, a rollback pending). Once the query has
        succeeded, call statement_committed(); if it fails, the block rolls back as usual
        (the transaction is gone whichever statement failed)."""
        if (
            len(self.atomic_blocks) != 1
            or self.savepoint_ids
            or not self.commit_on_exit
            or self.needs_rollback
            or self.closed_in_transaction
        ):
            return None
        return COMMIT_THEN_FLUSH

    def statement_committed(self) -> None:
        """The query of commit_with_last_statement() has committed the transaction and
        waited for its flush: commit() sends nothing more."""
        self._flush_owed_by = None
        self._committed_by_statement = self.connection

    def _commit(self):
        if self.connection is not None and self._committed_by_statement is self.connection:
            self._committed_by_statement = None
            return None
        if self.connection is not None and self._flush_owed_by is self.connection:
            self._flush_owed_by = None
            with (
                debug_transaction(self, COMMIT_THEN_FLUSH),
                self.wrap_database_errors,
                self.connection.cursor() as cursor,
            ):
                cursor.execute(COMMIT_THEN_FLUSH)
            # The driver sees the connection idle after it: nothing is left to commit.
            return None
        return super()._commit()

    def _rollback(self):
        self._flush_owed_by = self._committed_by_statement = None
        return super()._rollback()


class DatabaseWrapper(_FlushAfterCommit, base.DatabaseWrapper):
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
