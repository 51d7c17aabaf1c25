"""CPU of the three parts of a steady heartbeat that talk to something else, each done the way
the heartbeat does it and the ways it could: the Redis HSET, the request signals (sent, or
their receivers called directly), and the credential lookup in PostgreSQL. Load-independent
enough to compare the variants with each other when they alternate in the same process
(rounds), not to state absolute figures.

    DATABASE_URL=postgres://.../scratch SECRET_KEY=x HOMEPOT_ENV_FILE= \\
        REDIS_URL=redis://127.0.0.1:6379/10 python bench/bench_heartbeat_parts.py [--rounds 3]

Needs a migrated SCRATCH database with a fleet and credentials (bench_heartbeat_wsgi.py
makes them); writes one Redis hash of its own (deleted after). Prints, per variant and round,
this process's CPU per call and, for the lookup, the PostgreSQL backend's CPU per call
(/proc/<pid>/stat, 10 ms ticks: about +-2 % at the default count).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.cache import close_caches  # noqa: E402
from django.core.handlers.base import reset_urlconf  # noqa: E402
from django.db import (  # noqa: E402
    close_old_connections,
    connection,  # noqa: E402
    reset_queries,
)

from devices_app.models import DeviceCredential  # noqa: E402
from devices_app.services import _IDENTIFY_SQL  # noqa: E402
from homepot.redis_clients import pack, redis_client, send_one  # noqa: E402
from homepot.wsgi import application  # noqa: E402,F401 (the fast path's module, loaded as served)

HASH_KEY = "homepot:bench:heartbeat-parts"
VALUE = "1733360000.123456|"


def hset_client(i: int) -> None:
    redis_client(settings.REDIS_URL, 0.3).hset(HASH_KEY, str(i), VALUE)


def hset_kept_connection(i: int) -> None:
    send_one(settings.REDIS_URL, 0.3, pack("HSET", HASH_KEY, str(i), VALUE))


def signals_sent(_i: int) -> None:
    signals.request_started.send(sender=None, environ={})
    signals.request_finished.send(sender=None)


def signals_receivers_called(_i: int) -> None:
    # Django's own receivers of the two signals, called without Signal.send's dispatch.
    reset_queries()
    close_old_connections()
    close_old_connections()
    close_caches()
    reset_urlconf(None)


def lookup_django_cursor(key_hash: str):
    with connection.cursor() as cursor:
        cursor.execute(_IDENTIFY_SQL, [key_hash])
        return cursor.fetchone()


def lookup_server_binding(key_hash: str):
    # The extended protocol, unnamed statement: parsed and planned every time.
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_IDENTIFY_SQL, [key_hash], prepare=False)
        return cursor.fetchone()


def lookup_prepared(key_hash: str):
    # A named prepared statement on this connection (not usable behind PgBouncer < 1.21 in
    # transaction mode: the next transaction may run on another server connection).
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(_IDENTIFY_SQL, [key_hash], prepare=True)
        return cursor.fetchone()


def backend_cpu_seconds() -> float:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(function, arguments) -> tuple[float, float]:
    """(this process's CPU, the backend's CPU) per call, in ms."""
    backend, cpu = backend_cpu_seconds(), time.process_time()
    for argument in arguments:
        function(argument)
    cpu, backend = time.process_time() - cpu, backend_cpu_seconds() - backend
    return cpu * 1000 / len(arguments), backend * 1000 / len(arguments)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    hashes = list(DeviceCredential.objects.values_list("key_hash", flat=True)[: args.calls])
    if not hashes:
        raise SystemExit("No credentials: run bench/bench_heartbeat_wsgi.py on this database first.")
    lookups = (hashes * (args.calls // len(hashes) + 1))[: args.calls]
    numbers = list(range(args.calls))
    variants = [
        (hset_client, numbers),
        (hset_kept_connection, numbers),
        (signals_sent, numbers),
        (signals_receivers_called, numbers),
        (lookup_django_cursor, lookups),
        (lookup_server_binding, lookups),
        (lookup_prepared, lookups),
    ]
    for function, arguments in variants:  # warm-up: connections, prepared statements
        for argument in arguments[:100]:
            function(argument)
    try:
        for round_number in range(1, args.rounds + 1):
            for function, arguments in variants:
                cpu, backend = measure(function, arguments)
                extra = f"  postgres {backend:.4f} ms" if function.__name__.startswith("lookup") else ""
                print(f"round {round_number}  {function.__name__:26} python {cpu:.4f} ms{extra}", flush=True)
    finally:
        redis_client(settings.REDIS_URL, 0.3).delete(HASH_KEY)


if __name__ == "__main__":
    main()
