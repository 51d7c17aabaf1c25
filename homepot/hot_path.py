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

from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.dispatch import receiver


def database_name() -> str:
    """The default database's name, as `connection.settings_dict["NAME"]`."""
    return connections.settings[DEFAULT_DB_ALIAS]["NAME"]


def on_postgresql() -> bool:
    """Whether the default database is PostgreSQL, as `connection.vendor == "postgresql"`."""
    return _vendor(connections.settings[DEFAULT_DB_ALIAS]["ENGINE"]) == "postgresql"


@functools.lru_cache(maxsize=4)
def _vendor(engine: str) -> str:
    return load_backend(engine).DatabaseWrapper.vendor


_derived = []  # caches of setting_derived, emptied when a setting changes


def setting_derived(function):
    """`function` (no arguments, a value computed from settings alone) computed once and kept
    until a setting changes: `override_settings` (and pytest-django's `settings` fixture, which
    uses it) sends `setting_changed`, which empties every such cache. On the heartbeat's path
    settings were read about twenty times a request through Django's LazySettings proxy, each
    read about 0.3-1 µs (measured), for values that never change in a running process."""
    cached = functools.cache(function)
    _derived.append(cached)
    return cached


@receiver(setting_changed)
def _settings_changed(**kwargs) -> None:
    for cached in _derived:
        cached.cache_clear()
