"""scripts/init-postgresql.sh against a throwaway role and database (dropped afterwards)."""

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

SCRIPT = Path(settings.BASE_DIR) / "scripts" / "init-postgresql.sh"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

pytestmark = pytest.mark.skipif(shutil.which("psql") is None, reason="needs the psql client")


@pytest.fixture
def names():
    """Names no developer database uses, unique per run, removed whatever happens."""
    suffix = f"{os.getpid()}"
    names = {"db": f"homepot_initscript_{suffix}", "role": f"homepot_initscript_{suffix}_user"}
    yield names
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{names["db"]}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{names["role"]}"')


def run_script(names, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT="5432",
        PGUSER="postgres",
        HOMEPOT_DB_NAME=names["db"],
        HOMEPOT_DB_USER=names["role"],
        HOMEPOT_DB_PASSWORD="s3cret dev pass",  # a space: the URL must be quoted properly
    )
    return subprocess.run(  # noqa: S603 (our own script, fixed arguments)
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def counts(names):
    dsn = f"host=127.0.0.1 port=5432 user={names['role']} dbname={names['db']}"
    with psycopg.connect(dsn) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        row = conn.execute(
            "SELECT (SELECT count(*) FROM sites_app_site), (SELECT count(*) FROM devices_app_device), "
            "(SELECT count(*) FROM jobs_app_job), (SELECT count(*) FROM monitoring_app_healthcheck)"
        ).fetchone()
    return owner, row


def test_creates_role_database_schema_and_demo_and_is_safe_to_run_again(names):
    first = run_script(names)
    assert first.returncode == 0, first.stderr
    assert f"role {names['role']} created" in first.stdout
    assert f"database {names['db']} created" in first.stdout
    assert counts(names) == (names["role"], (14, 30, 13, 327))

    second = run_script(names)
    assert second.returncode == 0, second.stderr
    assert f"role {names['role']} exists" in second.stdout
    assert f"database {names['db']} exists" in second.stdout
    assert "demo data not loaded" in second.stdout
    assert counts(names) == (names["role"], (14, 30, 13, 327))


def test_reset_starts_over_with_the_demo_data(names):
    assert run_script(names, "--no-demo").returncode == 0
    with psycopg.connect(
        f"host=127.0.0.1 user={names['role']} dbname={names['db']}", autocommit=True
    ) as conn:
        conn.execute(
            "INSERT INTO sites_app_site (site_id, name, description, location, region, timezone, "
            "is_active, created_at, updated_at) "
            "VALUES ('local-1', 'Mine', '', '', '', 'UTC', true, now(), now())"
        )
    assert counts(names)[1][0] == 1

    reset = run_script(names, "--reset")
    assert reset.returncode == 0, reset.stderr
    assert f"database {names['db']} dropped (--reset)" in reset.stdout
    assert counts(names) == (names["role"], (14, 30, 13, 327))


def test_unknown_option_is_refused(names):
    result = run_script(names, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option --frobnicate" in result.stderr
