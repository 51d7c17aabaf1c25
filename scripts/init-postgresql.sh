#!/usr/bin/env bash
# Set up the HOMEPOT PostgreSQL database, as the database guide describes:
#   role homepot_user (password homepot_dev_password), database homepot_db owned by it,
#   the schema (manage.py migrate) and the demo chain (manage.py loaddata demo).
#
# Safe to run again: the role and the database are created only when missing, migrations
# apply only what is new, and the demo data is loaded only into an empty database (a
# database already in use is left as it is). --reset drops the database first and starts
# over with the demo data ("Reset to Demo Data").
#
# Usage: scripts/init-postgresql.sh [--reset] [--no-demo]
#
# Connects as a PostgreSQL superuser through the usual libpq variables:
#   PGHOST (default 127.0.0.1), PGPORT (5432), PGUSER (postgres), PGPASSWORD (if needed).
# What it creates can be renamed (the tests use throwaway names):
#   HOMEPOT_DB_NAME (homepot_db), HOMEPOT_DB_USER (homepot_user),
#   HOMEPOT_DB_PASSWORD (homepot_dev_password), HOMEPOT_PYTHON (.venv/bin/python, else python3).
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

reset=0
demo=1
for arg in "$@"; do
    case "$arg" in
        --reset) reset=1 ;;
        --no-demo) demo=0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "init-postgresql: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
DB_NAME="${HOMEPOT_DB_NAME:-homepot_db}"
DB_USER="${HOMEPOT_DB_USER:-homepot_user}"
DB_PASSWORD="${HOMEPOT_DB_PASSWORD:-homepot_dev_password}"

if [[ -n "${HOMEPOT_PYTHON:-}" ]]; then
    PYTHON="$HOMEPOT_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    PYTHON="$ROOT/.venv/bin/python"
else
    PYTHON="python3"
fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'init-postgresql: %s\n' "$*" >&2; exit 1; }

command -v psql >/dev/null || die "psql not found; install the PostgreSQL client (apt install postgresql-client)."
"$PYTHON" -c 'import django' 2>/dev/null \
    || die "$PYTHON cannot import Django; create the virtualenv first (python3 -m venv .venv && .venv/bin/pip install -r requirements.txt)."

# psql as the superuser, on the maintenance database; stop at the first error.
admin_psql() { psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 --dbname postgres "$@"; }

admin_psql --tuples-only --command 'SELECT 1' >/dev/null \
    || die "cannot connect to PostgreSQL at $PGHOST:$PGPORT as $PGUSER (set PGHOST/PGPORT/PGUSER/PGPASSWORD)."

say "PostgreSQL at $PGHOST:$PGPORT, acting as $PGUSER"

# --- role ------------------------------------------------------------------------------------
# The names travel as psql variables into session settings, so quoting is PostgreSQL's job.
# (psql expands :'var' only in what it reads, not in --command, hence the here-strings.)
role_existed=$(admin_psql --tuples-only --no-align --set role="$DB_USER" \
    <<<"SELECT count(*) FROM pg_roles WHERE rolname = :'role'")
admin_psql --set role="$DB_USER" --set password="$DB_PASSWORD" <<'SQL'
SELECT set_config('homepot.role', :'role', false), set_config('homepot.password', :'password', false) \g /dev/null
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = current_setting('homepot.role')) THEN
        EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L',
                       current_setting('homepot.role'), current_setting('homepot.password'));
    ELSE
        -- Keep an existing role usable with the documented password.
        EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L',
                       current_setting('homepot.role'), current_setting('homepot.password'));
    END IF;
END
$$;
SQL
if [[ "$role_existed" == "1" ]]; then
    say "role $DB_USER exists (login and password checked)"
else
    say "role $DB_USER created"
fi

# --- database --------------------------------------------------------------------------------
if [[ $reset == 1 ]]; then
    # WITH (FORCE) ends other sessions on it (a running dev server), as a reset should.
    admin_psql --set db="$DB_NAME" <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SQL
    say "database $DB_NAME dropped (--reset)"
fi
db_existed=$(admin_psql --tuples-only --no-align --set db="$DB_NAME" \
    <<<"SELECT count(*) FROM pg_database WHERE datname = :'db'")
if [[ "$db_existed" == "1" ]]; then
    say "database $DB_NAME exists"
else
    # CREATE DATABASE cannot run inside DO (a transaction); \gexec runs it only if missing.
    admin_psql --set db="$DB_NAME" --set role="$DB_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8''', :'db', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
    say "database $DB_NAME created, owned by $DB_USER"
fi

# --- schema and demo data, as the application's own user --------------------------------------
urlquote() { "$PYTHON" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }
DATABASE_URL="postgres://$(urlquote "$DB_USER"):$(urlquote "$DB_PASSWORD")@$(urlquote "$PGHOST"):$PGPORT/$(urlquote "$DB_NAME")"
export DATABASE_URL
# migrate and loaddata sign nothing; a throwaway key satisfies settings when none is set.
export SECRET_KEY="${SECRET_KEY:-$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(50))')}"

cd "$ROOT"
say "migrating $DB_NAME"
"$PYTHON" manage.py migrate --no-input --verbosity 1 | sed 's/^/    /'

app_psql() {
    PGUSER="$DB_USER" PGPASSWORD="$DB_PASSWORD" psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 \
        --dbname "$DB_NAME" --tuples-only --no-align "$@"
}
read -r sites audit_rows < <(app_psql --field-separator ' ' \
    --command "SELECT (SELECT count(*) FROM sites_app_site), (SELECT count(*) FROM monitoring_app_auditlog)")

if [[ $demo == 0 ]]; then
    say "demo data not loaded (--no-demo)"
elif [[ "$sites" == 0 && "$audit_rows" == 0 ]]; then
    say "loading the demo chain (fixtures/demo.json)"
    "$PYTHON" manage.py loaddata demo | sed 's/^/    /'
elif [[ "$sites" != 0 ]]; then
    say "demo data not loaded: $DB_NAME already has $sites site(s); left as it is (--reset starts over)"
else
    # The demo's audit rows have fixed ids and must start the audit chain.
    say "demo data not loaded: $DB_NAME already has an audit trail; --reset starts over with the demo"
fi

read -r sites devices jobs checks audit_rows < <(app_psql --field-separator ' ' --command "
    SELECT (SELECT count(*) FROM sites_app_site), (SELECT count(*) FROM devices_app_device),
           (SELECT count(*) FROM jobs_app_job), (SELECT count(*) FROM monitoring_app_healthcheck),
           (SELECT count(*) FROM monitoring_app_auditlog)")

cat <<EOF
==> done: $DB_NAME has $sites sites, $devices devices, $jobs jobs, $checks health checks, $audit_rows audit rows.

    Point HOMEPOT at it (or put the line in .env):
      export DATABASE_URL=$DATABASE_URL
    Look inside:
      PGPASSWORD=$(printf %q "$DB_PASSWORD") psql -h $PGHOST -p $PGPORT -U $DB_USER -d $DB_NAME -c 'SELECT count(*) FROM sites_app_site;'
    Start over with the demo data:
      scripts/init-postgresql.sh --reset
EOF
