"""What must hold for HOMEPOT to run behind PgBouncer in transaction mode, where each
transaction may run on a different server connection (docs/operations.md, "Several hosts"):
no state may outlive a transaction on the server. This reads the application code (not the
tests, benches or migrations, which talk to PostgreSQL directly) and names any offender.

The whole application is also run through PgBouncer in transaction mode by the multi-host
proof (homepot/tests/test_multihost.py, scripts/multihost.sh).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
APPS = ("accounts", "devices_app", "homepot", "jobs_app", "legacy_app", "monitoring_app", "sites_app")

# A server-side cursor outside a transaction is WITH HOLD: it stays on one server connection
# while the pooler hands that connection to others.
ITERATOR = r"\.iterator\("
# Session-level advisory locks stay with the server connection, not with the client.
SESSION_LOCK = r"pg_(try_)?advisory_lock(_shared)?\("
# A session SET would leak to whichever client gets the server connection next. (The legacy
# importer's two SETs are on its own connection to the older database.)
SESSION_SET = r"""["']SET (?!LOCAL|TIME ZONE 'UTC'|default_transaction_read_only)"""
LISTEN = r"\bLISTEN\b"
# A prepared statement stays with the server connection; homepot.db.prepared's (the one
# place) is turned off behind a transaction pooler by HOMEPOT_DB_PREPARED_STATEMENTS.
PREPARE = r"""["']PREPARE\b"""
# What would keep server state past the transaction, and what to use instead.
FORBIDDEN = {
    ITERATOR: "homepot.db.stream (the cursor inside one transaction)",
    SESSION_LOCK: "pg_advisory_xact_lock / pg_try_advisory_xact_lock",
    SESSION_SET: "SET LOCAL inside the transaction",
    LISTEN: "a Redis channel or a table polled by the worker",
    PREPARE: "homepot.db.prepared (HOMEPOT_DB_PREPARED_STATEMENTS)",
}


def _application_files():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            parts = set(path.relative_to(ROOT).parts)
            if parts & {"tests", "migrations"} or path.name == "__init__.py" and app == "homepot":
                continue
            yield path


def test_no_application_code_keeps_state_on_the_server_past_a_transaction():
    offenders = []
    for path in _application_files():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern, instead in FORBIDDEN.items():
                if re.search(pattern, line) and "# pooler-safe:" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: use {instead}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_guard_sees_the_patterns_it_forbids():
    # The patterns above must match what they are meant to catch (a guard that matches
    # nothing passes for ever).
    samples = {
        ITERATOR: "Device.objects.all().iterator(chunk_size=10)",
        SESSION_LOCK: 'cursor.execute("SELECT pg_advisory_lock(1)")',
        SESSION_SET: 'execute("SET statement_timeout = 5")',
        LISTEN: 'cursor.execute("LISTEN jobs")',
        PREPARE: 'cursor.execute("PREPARE page AS SELECT 1")',
    }
    for pattern, sample in samples.items():
        assert re.search(pattern, sample), pattern
    assert not re.search(SESSION_LOCK, "pg_try_advisory_xact_lock(1)")
    assert not re.search(SESSION_SET, '"SET LOCAL x = 1"')
