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
