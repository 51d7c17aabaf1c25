"""What the per-request hot paths (the heartbeat, the health report: 1,667 requests a second
each for 100,000 terminals) read of the database configuration, without Django's per-thread
connection lookup.

`connection.settings_dict` and `connection.vendor` go through the connection proxy and an
asgiref `Local` on every access: about 10 µs each on this machine, measured, and a report
made a dozen such reads (its Redis key names, the buffers' "enabled" checks). The dict read
here is the very one every connection of the alias holds (ConnectionHandler gives each
DatabaseWrapper `connections.settings[alias]`, and the test runner renames the database in
that dict in place), so the answers are the connection's own.
"""

import functools

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend


def database_name() -> str:
    """The default database's name, as `connection.settings_dict["NAME"]`."""
    return connections.settings[DEFAULT_DB_ALIAS]["NAME"]


def on_postgresql() -> bool:
    """Whether the default database is PostgreSQL, as `connection.vendor == "postgresql"`."""
    return _vendor(connections.settings[DEFAULT_DB_ALIAS]["ENGINE"]) == "postgresql"


@functools.lru_cache(maxsize=4)
def _vendor(engine: str) -> str:
    return load_backend(engine).DatabaseWrapper.vendor
