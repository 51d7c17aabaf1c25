# shellcheck shell=bash
# Shared by scripts/run.sh, scripts/test.sh and .ci/run; source it, don't run it.
#
# After sourcing, the working directory is the project root and these are available:
#   setup_venv        create .venv if missing, install requirements.txt when it changed
#   ensure_postgres   make sure the PostgreSQL of $DATABASE_URL answers (start a local one)
#   ensure_redis      make sure the Redis of $REDIS_URL answers (start a local one)
#   ensure_chromium   make sure the browser tests have a Chromium (apt-get install it if missing)
#   ensure_promtool   make sure the rule tests have Prometheus' promtool (apt-get install prometheus)
#   ensure_multihost_tools  the multi-host test's servers (apt-get install pgbouncer, haproxy, ...)
#   manage ARGS...    python manage.py ARGS... inside the venv
#   django_run CODE   run Python code with Django set up
#   step / note / die messages in one recognisable style

HOMEPOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$HOMEPOT_ROOT" || exit 1

VENV_DIR="${VENV_DIR:-$HOMEPOT_ROOT/.venv}"
VENV_PY="$VENV_DIR/bin/python"
# The checksum of requirements.txt at the last successful install; a match skips pip.
REQUIREMENTS_STAMP="$VENV_DIR/.homepot-requirements.sha256"

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\nERROR: %s\n' "$*" >&2
    exit 1
}

manage() { "$VENV_PY" manage.py "$@"; }

# django_run CODE: run Python code with Django set up (quieter than `manage.py shell -c`).
django_run() {
    "$VENV_PY" -c 'import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "homepot.settings")
import django
django.setup()
exec(sys.argv[1])' "$1"
}

# --- Python and the virtualenv ------------------------------------------------------------

find_python() {
    # $PYTHON wins; otherwise the first python3 on PATH. Django 5.2 needs 3.10 or newer.
    local candidate="${PYTHON:-python3}"
    command -v "$candidate" >/dev/null 2>&1 || die "No '$candidate' on PATH. Install Python 3.11 (or set PYTHON=/path/to/python3)."
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$("$candidate" --version 2>&1) is too old; HOMEPOT needs Python 3.10 or newer (3.11 recommended)."
    printf '%s' "$candidate"
}

requirements_checksum() {
    "$1" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
        requirements.txt
}

setup_venv() {
    if ! "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
        local python
        python="$(find_python)"
        step "Creating the virtualenv in ${VENV_DIR#"$HOMEPOT_ROOT"/} ($("$python" --version 2>&1))"
        # --clear replaces a broken venv (for instance one copied from another machine).
        "$python" -m venv --clear "$VENV_DIR" || die "Could not create a virtualenv (on Debian/Ubuntu: apt install python3-venv)."
    fi
    local wanted
    wanted="$(requirements_checksum "$VENV_PY")"
    if [ -f "$REQUIREMENTS_STAMP" ] && [ "$(cat "$REQUIREMENTS_STAMP")" = "$wanted" ]; then
        return 0
    fi
    step "Installing requirements.txt into the virtualenv (first run takes a minute)"
    local log="$VENV_DIR/pip-install.log"
    if ! "$VENV_PY" -m pip install --disable-pip-version-check --no-input -r requirements.txt >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "pip could not install requirements.txt (full log: $log)."
    fi
    printf '%s\n' "$wanted" >"$REQUIREMENTS_STAMP"
}

# --- Services -----------------------------------------------------------------------------

# "host port" of a URL, with a default port; an empty host (a Unix socket) reads as localhost.
url_host_port() {
    "$VENV_PY" - "$1" "$2" <<'PY'
import sys
from urllib.parse import urlsplit

url, default_port = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
print(parts.hostname or "127.0.0.1", parts.port or default_port)
PY
}

is_local_host() {
    case "$1" in
    127.* | localhost | ::1 | "[::1]") return 0 ;;
    *) return 1 ;;
    esac
}

tcp_answers() {
    "$VENV_PY" - "$1" "$2" <<'PY'
import socket
import sys

try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

postgres_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 2
    else
        tcp_answers "$1" "$2"
    fi
}

redis_ready() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = "PONG" ]
    else
        tcp_answers "$1" "$2"
    fi
}

# wait_until SECONDS COMMAND...: retry COMMAND once a second until it succeeds.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

ensure_postgres() {
    local url="${DATABASE_URL:-${DATABASE__URL:-}}" host port
    case "$url" in
    postgres://* | postgresql://* | pgsql://* | postgres+* | postgresql+*) ;;
    *) return 0 ;; # SQLite needs no server
    esac
    read -r host port <<<"$(url_host_port "$url" 5432)"
    postgres_ready "$host" "$port" && return 0
    if is_local_host "$host" && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        # The newest installed major version (a directory per version).
        version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
        step "PostgreSQL is not answering on $host:$port; starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || note "pg_ctlcluster failed; waiting anyway"
    fi
    wait_until 30 postgres_ready "$host" "$port" ||
        die "PostgreSQL is not reachable at $host:$port. Start it, or point DATABASE_URL at one."
}

ensure_redis() {
    local url="${REDIS_URL:-redis://127.0.0.1:6379/0}" host port
    read -r host port <<<"$(url_host_port "$url" 6379)"
    redis_ready "$host" "$port" && return 0
    if is_local_host "$host" && command -v redis-server >/dev/null 2>&1; then
        step "Redis is not answering on $host:$port; starting it"
        local dir=/var/lib/redis logfile=/var/log/redis/ci.log
        [ -d "$dir" ] && [ -w "$dir" ] || dir="${TMPDIR:-/tmp}"
        [ -d "$(dirname "$logfile")" ] && [ -w "$(dirname "$logfile")" ] || logfile="$dir/homepot-redis.log"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no \
            --dir "$dir" --logfile "$logfile" || note "redis-server failed to start; waiting anyway"
    fi
    wait_until 15 redis_ready "$host" "$port" ||
        die "Redis is not reachable at $host:$port. Start it, or point REDIS_URL at one."
}

# --- The multi-host proof's servers ----------------------------------------------------------

# ensure_multihost_tools: the multi-host proof (bench/multihost.py, scripts/multihost.sh, and
# its short version homepot/tests/test_multihost.py) starts its own PostgreSQL, PgBouncer,
# Redis, Mosquitto and HAProxy inside network namespaces. As root with apt-get, installs the
# missing Debian packages; elsewhere says so and returns 0 (the test then skips: namespaces
# need root anyway).
ensure_multihost_tools() {
    local missing=() tool package
    for tool in pgbouncer:pgbouncer haproxy:haproxy redis-server:redis-server mosquitto:mosquitto ip:iproute2; do
        package="${tool#*:}"
        tool="${tool%%:*}"
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$package")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        note "The multi-host test needs ${missing[*]} (and root); it will be skipped."
        return 0
    fi
    step "Installing ${missing[*]} for the multi-host test (apt-get install)"
    local log="${TMPDIR:-/tmp}/homepot-apt-multihost.log"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$log" 2>&1 || {
            tail -n 20 "$log" >&2
            note "apt-get could not install ${missing[*]} (full log: $log); the multi-host test will fail."
            return 1
        }
    fi
}

# --- The browser tests' Chromium ----------------------------------------------------------

# ensure_chromium: the browser tests (homepot/tests/browser) drive the system's Chromium with
# Playwright (Playwright's own browser download is not used). Installs Debian's `chromium`
# with apt-get when $HOMEPOT_CHROMIUM (default /usr/bin/chromium) is missing. Returns non-zero,
# with a clear message, when it cannot: the caller goes on and those tests then fail (they do
# not skip), unless HOMEPOT_SKIP_BROWSER_TESTS=1 (a developer without apt; never under CI=true).
ensure_chromium() {
    local chromium="${HOMEPOT_CHROMIUM:-/usr/bin/chromium}"
    [ -x "$chromium" ] && return 0
    if [ "${HOMEPOT_SKIP_BROWSER_TESTS:-}" = "1" ] && [ "${CI:-}" != "true" ]; then
        note "No Chromium at $chromium; the browser tests will be skipped (HOMEPOT_SKIP_BROWSER_TESTS=1)."
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            printf '\nERROR: %s\n' "No Chromium at $chromium, and installing one needs root (apt-get install -y chromium)." \
                "Install it, set HOMEPOT_CHROMIUM to a Chromium/Chrome binary, or HOMEPOT_SKIP_BROWSER_TESTS=1." >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        printf '\nERROR: %s\n' "No Chromium at $chromium and no apt-get to install it with." \
            "Install Chromium, set HOMEPOT_CHROMIUM to a Chromium/Chrome binary, or HOMEPOT_SKIP_BROWSER_TESTS=1." >&2
        return 1
    fi
    step "Installing Chromium for the browser tests (apt-get install chromium)"
    local log="${TMPDIR:-/tmp}/homepot-apt-chromium.log"
    # The package lists may be missing or stale on a fresh machine: update once, then retry.
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium >"$log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || true
        if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q chromium >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            printf '\nERROR: %s\n' "apt-get could not install chromium (full log: $log); the browser tests will fail." >&2
            return 1
        fi
    fi
    [ -x "$chromium" ] || {
        printf '\nERROR: %s\n' "chromium is installed but $chromium is not there; set HOMEPOT_CHROMIUM." >&2
        return 1
    }
    note "$("$chromium" --version 2>/dev/null || echo chromium) installed"
}

# ensure_promtool: homepot/tests/test_prometheus_rules.py checks deploy/prometheus/rules.yml
# with Prometheus' own `promtool check rules` and runs its unit tests (`promtool test rules`).
# Installs Debian's `prometheus` package (which carries promtool; policy-rc.d or the absence
# of systemd keeps its server from starting in a container) when promtool is not on PATH.
# Returns non-zero with a clear message when it cannot: those tests then fail, they do not skip.
ensure_promtool() {
    command -v promtool >/dev/null 2>&1 && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            printf '\nERROR: %s\n' "No promtool on PATH, and installing it needs root (apt-get install -y prometheus)." >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        printf '\nERROR: %s\n' "No promtool on PATH and no apt-get to install it with; install Prometheus' promtool." >&2
        return 1
    fi
    step "Installing promtool for the Prometheus rule tests (apt-get install prometheus)"
    local log="${TMPDIR:-/tmp}/homepot-apt-prometheus.log"
    local install=(env DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus)
    if ! "${install[@]}" >"$log" 2>&1; then
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || true
        if ! "${install[@]}" >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            printf '\nERROR: %s\n' "apt-get could not install prometheus (full log: $log); the rule tests will fail." >&2
            return 1
        fi
    fi
    note "$(promtool --version 2>&1 | head -n 1) installed"
}
