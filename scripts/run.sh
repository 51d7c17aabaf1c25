#!/usr/bin/env bash
# HOMEPOT in one command: virtualenv, requirements, migrations, demo data, admin account,
# then the web server on http://127.0.0.1:${PORT:-8000}/. Safe to run again.
#
#   ./scripts/run.sh              set up (only what is missing) and serve
#   ./scripts/run.sh --no-server  set up only (tests, CI, a cron job)
#   ./scripts/run.sh --reset      empty the database and start over from the demo data
#   ./scripts/run.sh --sqlite     use the embedded SQLite file even when PostgreSQL answers
#
# The database: DATABASE_URL (or DATABASE__URL) when set; else a local PostgreSQL at
# 127.0.0.1:5432 when one lets us in (database homepot_demo, created if missing); else the
# embedded SQLite file var/homepot.sqlite3, so a fresh machine needs nothing but Python 3.11.
# On SQLite the admin and the API work, but job dispatch and fleet monitoring (PostgreSQL
# features) are not started. Environment: PORT, DATABASE_URL, HOMEPOT_ADMIN_PASSWORD, DEBUG.
# The database chosen and DEBUG are written into .env, so every `python manage.py ...` you
# type afterwards reaches the same database; a DATABASE_URL already in .env is used next time.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

SERVE=true
RESET=false
FORCE_SQLITE=false
for arg in "$@"; do
    case "$arg" in
    --no-server) SERVE=false ;;
    --reset) RESET=true ;;
    --sqlite) FORCE_SQLITE=true ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "Unknown option: $arg"
        ;;
    esac
done

PORT="${PORT:-8000}"
BASE_URL="http://127.0.0.1:$PORT"
# The demo is a development server: DEBUG on, so no SECRET_KEY is needed.
export DEBUG="${DEBUG:-true}"
# Where settings read their env file (homepot/settings.py): empty means none, as in CI.
ENV_FILE="${HOMEPOT_ENV_FILE-$HOMEPOT_ROOT/.env}"

# The processes `serve` starts, each a function proc_<name> below; choose_processes adds
# the jobs' worker, beat and a simulated fleet (or the in-process fallback without Redis).
PROCESSES=(web)

# --- Set-up steps (each safe to repeat) ------------------------------------------------------

DEMO_PG_URL="postgres://postgres@127.0.0.1:5432/homepot_demo"

# Prints "ok" when the local PostgreSQL lets us in and homepot_demo exists (created if missing).
local_postgres_demo_db() {
    "$VENV_PY" - <<'PY' 2>/dev/null || true
import psycopg

try:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = 'homepot_demo'").fetchone():
            c.execute("CREATE DATABASE homepot_demo")
    print("ok")
except Exception:
    pass
PY
}

# env_file_value NAME: NAME's value in the env file, parsed as the settings parse it ("" if
# the file or the line is missing).
env_file_value() {
    [ -n "$ENV_FILE" ] && [ -f "$ENV_FILE" ] || return 0
    env -u "$1" "$VENV_PY" - "$ENV_FILE" "$1" <<'PY'
import os
import sys

import environ

environ.Env.read_env(sys.argv[1], overwrite=False)
print(os.environ.get(sys.argv[2], ""))
PY
}

# remember_setting NAME VALUE: make the env file say NAME=VALUE (created, mode 600, if
# missing; other lines kept), and say so when it changes anything.
remember_setting() {
    [ -n "$ENV_FILE" ] || return 0
    local was
    was="$(env_file_value "$1")"
    [ "$was" = "$2" ] && return 0
    "$VENV_PY" - "$ENV_FILE" "$1" "$2" <<'PY'
import os
import re
import sys

path, name, value = sys.argv[1:]
try:
    lines = open(path, encoding="utf-8").read().splitlines()
except FileNotFoundError:
    lines = ["# Written by scripts/run.sh: the settings it chose, so manage.py commands you type agree."]
pattern = re.compile(rf"^\s*(export\s+)?{re.escape(name)}\s*=")
kept = [line for line in lines if not pattern.match(line)]
kept.append(f"{name}={value}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w", encoding="utf-8") as handle:
    handle.write("\n".join(kept) + "\n")
PY
    if [ -n "$was" ]; then
        note "Changed $1 in ${ENV_FILE#"$HOMEPOT_ROOT"/} (it was $was)."
    else
        note "Wrote $1=$2 into ${ENV_FILE#"$HOMEPOT_ROOT"/}."
    fi
}

choose_database() {
    local from_file
    from_file="$(env_file_value DATABASE_URL)"
    [ -n "$from_file" ] || from_file="$(env_file_value DATABASE__URL)"
    if [ -n "${DATABASE_URL:-}${DATABASE__URL:-}" ]; then
        export DATABASE_URL="${DATABASE_URL:-$DATABASE__URL}"
        step "Database: from DATABASE_URL"
    elif ! $FORCE_SQLITE && [ -n "$from_file" ]; then
        # What an earlier run (or you) chose: the same database every time.
        export DATABASE_URL="$from_file"
        step "Database: from ${ENV_FILE#"$HOMEPOT_ROOT"/} (DATABASE_URL=$from_file)"
    elif ! $FORCE_SQLITE && postgres_ready 127.0.0.1 5432 && [ "$(local_postgres_demo_db)" = "ok" ]; then
        export DATABASE_URL="$DEMO_PG_URL"
        step "Database: the local PostgreSQL, database homepot_demo (--sqlite uses the embedded file)"
    else
        # Named explicitly (not left to the settings' default), so a DATABASE_URL an earlier
        # run wrote into .env cannot send later manage.py commands elsewhere.
        export DATABASE_URL="sqlite:///$HOMEPOT_ROOT/var/homepot.sqlite3"
        mkdir -p "$HOMEPOT_ROOT/var"
        step "Database: embedded SQLite (var/homepot.sqlite3)"
    fi
    case "$DATABASE_URL" in
    sqlite*)
        note "The admin and the API work. Job dispatch and fleet monitoring use PostgreSQL"
        note "features, so the worker, beat and simulated fleet are not started on SQLite: set"
        note "DATABASE_URL or start PostgreSQL on 127.0.0.1:5432 to see jobs delivered."
        ON_SQLITE=true
        ;;
    esac
}
ON_SQLITE=false

# The database and DEBUG this run uses, written into .env: `python manage.py ...` typed after
# run.sh then reaches the same database with the same settings.
remember_settings() {
    if [ -z "$ENV_FILE" ]; then
        step "Settings: HOMEPOT_ENV_FILE is empty, so nothing is written into an env file"
        note "manage.py commands need DATABASE_URL=$DATABASE_URL DEBUG=$DEBUG in their environment."
        return 0
    fi
    step "Settings for manage.py: ${ENV_FILE#"$HOMEPOT_ROOT"/}"
    remember_setting DATABASE_URL "$DATABASE_URL"
    remember_setting DEBUG "$DEBUG"
    note "Commands you type read it: . .venv/bin/activate && python manage.py ensure_admin --with-token"
}

# The port must be free before anything claims the server is ready.
check_port_free() {
    "$VENV_PY" - "$PORT" <<'PY' || die "Port $PORT is already in use (another HOMEPOT or another program is listening there). Stop it, or choose another port: PORT=$((PORT + 1)) ./scripts/run.sh"
import socket
import sys

with socket.socket() as sock:
    # As runserver binds: 0.0.0.0 with SO_REUSEADDR (a closed connection's TIME_WAIT is no owner).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}

# Whether the web server answers its liveness probe.
web_answers() {
    "$VENV_PY" - "$BASE_URL/healthz" <<'PY'
import sys
import urllib.error
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1], timeout=2).close()  # noqa: S310 (our own URL)
except urllib.error.HTTPError:
    pass  # it answered (a 503 names the database; the server itself is up)
except OSError:
    sys.exit(1)
PY
}

migrate() {
    step "Applying database migrations"
    manage migrate --no-input -v 0
}

reset_database() {
    step "Emptying the database (--reset)"
    # The audit trail refuses TRUNCATE (docs/audit-events.md); a reset empties it on purpose,
    # as the table's owner, with that trigger off for this one transaction.
    django_run '
from django.core.management import call_command
from django.db import connection, transaction
trigger = "ALTER TABLE monitoring_app_auditlog {} TRIGGER monitoring_auditlog_refuse_truncate"
with transaction.atomic():
    if connection.vendor == "postgresql":
        connection.cursor().execute(trigger.format("DISABLE"))
    call_command("flush", interactive=False, verbosity=0)
    if connection.vendor == "postgresql":
        connection.cursor().execute(trigger.format("ENABLE"))
'
}

database_is_empty() {
    # No sites and no audit rows: the demo's audit rows start the hash chain at id 1.
    [ "$(django_run 'from sites_app.models import Site; from monitoring_app.models import AuditLog; print(Site.objects.exists() or AuditLog.objects.exists())')" = "False" ]
}

load_demo_data() {
    # Only into an empty database: a re-run must not undo what people changed in the demo.
    if database_is_empty; then
        step "Loading the demo chain (fixtures/demo.json)"
        manage loaddata demo || die "Could not load the demo data (fixtures/demo.json)."
    else
        step "Demo data already loaded (./scripts/run.sh --reset starts over)"
    fi
}

ensure_admin() {
    step "Admin account"
    manage ensure_admin --with-token --base-url "$BASE_URL"
}

print_set_up_done() {
    step "Set-up done (--no-server): nothing is serving"
    note "Database         : $(django_run 'from django.db import connection as c; print(c.vendor, c.settings_dict["NAME"])')"
    note "Start the server : ./scripts/run.sh   (PORT=8001 ./scripts/run.sh for another port)"
}

print_where_to_go() {
    step "HOMEPOT is ready"
    note "Operator console : $BASE_URL/admin/   (username and password above)"
    note "API docs         : $BASE_URL/docs     (ReDoc: $BASE_URL/redoc)"
    note "API              : $BASE_URL/sites and $BASE_URL/devices with the token above"
    note "Database         : $(django_run 'from django.db import connection as c; print(c.vendor, c.settings_dict["NAME"])')"
}

# --- Processes ----------------------------------------------------------------------------------

proc_web() {
    # runserver serves static files itself with DEBUG on; no collectstatic needed.
    manage runserver "0.0.0.0:$PORT"
}

# --- Jobs: a Celery worker and beat when Redis answers, else tasks in-process ---------------

proc_worker() { "$VENV_DIR/bin/celery" -A homepot worker --loglevel INFO --concurrency 2; }
proc_beat() { "$VENV_DIR/bin/celery" -A homepot beat --loglevel INFO --schedule "${TMPDIR:-/tmp}/homepot-celerybeat"; }
# Without a broker, `jobs_tick --loop` does beat's periodic work (and dispatches) in-process.
proc_ticker() { manage jobs_tick --loop "${HOMEPOT_JOBS_TICK_SECONDS:-5}"; }
proc_fleet() {
    # The demo chain's living terminals: heartbeats, health reports and their jobs, with the
    # demo's staged story (docs/operations.md, "The demo"). Credentials kept in var/simulator/.
    sleep 5 # let the web server come up
    manage simulate_fleet --demo --base-url "$BASE_URL" --failure-rate 0
}

# With an MQTT broker: the bridge turning device events into delivery updates, and a few
# demo terminals switched to the MQTT channel, so both channels are seen completing jobs.
proc_bridge() { manage mqtt_bridge; }
proc_fleet_mqtt() {
    manage simulate_fleet --channel mqtt --adopt --devices "${HOMEPOT_SIMULATED_MQTT_DEVICES:-3}" --failure-rate 0
}

choose_mqtt_processes() {
    # Where homepot/settings.py looks for the broker.
    local host="${HOMEPOT_JOBS_MQTT_HOST:-127.0.0.1}" port="${HOMEPOT_JOBS_MQTT_PORT:-1883}"
    if tcp_answers "$host" "$port"; then
        step "MQTT broker answers at $host:$port: starting manage.py mqtt_bridge"
        note "${HOMEPOT_SIMULATED_MQTT_DEVICES:-3} demo terminals use the MQTT channel (the rest poll over HTTP)."
        PROCESSES+=(bridge fleet_mqtt)
    else
        step "No MQTT broker at $host:$port: every simulated terminal polls over HTTP"
        note "Devices set to the mqtt channel get no work until a broker answers: their pushes"
        note "retry with backoff and then fail with the error (nothing is dropped silently)."
        note "Start Mosquitto on $host:$port to see the MQTT channel too."
    fi
}

choose_processes() {
    if $ON_SQLITE; then
        return # see choose_database: the web server alone
    fi
    local url="${CELERY_BROKER_URL:-${REDIS_URL:-redis://127.0.0.1:6379/0}}" host port
    read -r host port <<<"$(url_host_port "$url" 6379)"
    if redis_ready "$host" "$port"; then
        step "Redis answers at $host:$port: starting a Celery worker and beat for the jobs"
        PROCESSES+=(worker beat fleet)
    else
        step "No Redis at $host:$port: jobs run IN-PROCESS (CELERY_TASK_ALWAYS_EAGER=true)"
        note "Dispatch happens inside the web request, periodic work in 'manage.py jobs_tick --loop'."
        note "Start Redis (or set REDIS_URL) for a real worker; no job is dropped either way."
        export CELERY_TASK_ALWAYS_EAGER=true
        PROCESSES+=(ticker fleet)
    fi
    choose_mqtt_processes
}

PIDS=()
NAMES=()

stop_processes() {
    trap - EXIT INT TERM
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        # Each process leads its own group (set -m), so this also stops runserver's reloader child.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

serve() {
    step "Starting ${PROCESSES[*]} (Ctrl-C stops everything)"
    set -m # job control: every process gets its own process group
    trap stop_processes EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local name
    for name in "${PROCESSES[@]}"; do
        "proc_$name" &
        PIDS+=("$!")
        NAMES+=("$name")
    done
    set +m
    wait_for_web
    print_where_to_go
    # Run until any process ends (then stop the others) or we are interrupted.
    while true; do
        local i
        for i in "${!PIDS[@]}"; do
            if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
                wait "${PIDS[$i]}" && rc=0 || rc=$?
                printf '\n%s exited (status %s); stopping the others.\n' "${NAMES[$i]}" "$rc" >&2
                exit "$rc"
            fi
        done
        sleep 1
    done
}

# "Ready" only once the web server answers; if it stops first, say so instead.
wait_for_web() {
    local deadline=$((SECONDS + ${HOMEPOT_WEB_START_SECONDS:-60}))
    until web_answers; do
        if ! kill -0 "${PIDS[0]}" 2>/dev/null; then
            die "The web server stopped before it answered on $BASE_URL (its output is above)."
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "The web server did not answer on $BASE_URL/healthz within ${HOMEPOT_WEB_START_SECONDS:-60} s."
        sleep 1
    done
}

# --- Main ---------------------------------------------------------------------------------------

setup_venv
if "$SERVE"; then
    check_port_free # before the set-up, so a taken port fails in a second, not after it
fi
choose_database
remember_settings
migrate
if "$RESET"; then
    reset_database
fi
load_demo_data
ensure_admin
if "$SERVE"; then
    choose_processes
    check_port_free # again: something may have taken it during the set-up
    serve
else
    print_set_up_done
fi
