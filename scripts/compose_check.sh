#!/usr/bin/env bash
# Brings the compose stack up scaled (3 web, 3 workers, 2 beats) and checks it the way a user
# would, then prints a report (docs/operations.md, "Checking a compose deployment"):
#
#   ./scripts/compose_check.sh            # up, check, down -v
#   ./scripts/compose_check.sh --keep     # leave the stack running afterwards
#   ./scripts/compose_check.sh --no-build # use the images as they are (a stack already up)
#
# Checks: the API answers through HAProxy and the requests spread over every web replica; a
# login gives a token that works on every replica, and the admin login works; PostgreSQL's
# connections all come from PgBouncer; one beat holds the RedBeat lock; a job created
# through the API completes on terminals played by `manage.py simulate_fleet`; a web replica
# killed with `docker kill` is routed around; the beat leader killed, another beat takes over.
#
# Run as root, it first runs scripts/docker_setup.sh (a Docker daemon, compose v2 installed
# if missing). Uses `docker compose` (v2) when present, else `docker-compose` (v1);
# COMPOSE_CLI=docker-compose (or "docker compose") chooses. Its own project name
# (COMPOSE_PROJECT_NAME, default homepotcheck) and a free host port (PORT) unless set; the
# secrets compose needs are generated unless set (keep them set to check a stack already up:
# any change to the environment makes compose recreate every application container). Exit
# status: the number of failed checks.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
KEEP=false
BUILD=--build
for arg in "$@"; do
    case "$arg" in
    --keep) KEEP=true ;;
    --no-build) BUILD=--no-build ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compose_check: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

# As root, scripts/docker_setup.sh first: a daemon (started if none answers) and compose v2.
if [ "$(id -u)" -eq 0 ]; then
    if setup="$("$ROOT/scripts/docker_setup.sh")"; then
        export "$setup"
    else
        echo "compose_check: scripts/docker_setup.sh failed; going on with what is installed" >&2
    fi
fi
if [ -n "${COMPOSE_CLI:-}" ]; then
    read -r -a COMPOSE <<<"$COMPOSE_CLI"
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    echo "compose_check: neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 2
fi
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
    echo "compose_check: no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-default})" >&2
    exit 2
}

secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-homepotcheck}"
export SECRET_KEY="${SECRET_KEY:-$(secret)}"
export MQTT_ADMIN_PASSWORD="${MQTT_ADMIN_PASSWORD:-$(secret)}"
export MQTT_BRIDGE_PASSWORD="${MQTT_BRIDGE_PASSWORD:-$(secret)}"
export PORT="${PORT:-$(free_port)}"
BASE="http://127.0.0.1:$PORT"
UP_LOG="$(mktemp -t compose_check_up.XXXXXX)"
ADMIN_PASSWORD="$(secret)"  # may start with "-": pass it as --password=...
WEB_REPLICAS=3
WORKER_REPLICAS=3
BEAT_REPLICAS=2

REPORT=()
FAILED=0
pass() { REPORT+=("PASS  $1: $2"); echo "compose_check: PASS $1: $2"; }
fail() { REPORT+=("FAIL  $1: $2"); echo "compose_check: FAIL $1: $2"; FAILED=$((FAILED + 1)); }
note() { REPORT+=("      $1: $2"); echo "compose_check: $1: $2"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
compose() { "${COMPOSE[@]}" "$@"; }
# A manage.py command inside a running web container (exec: no new container, no entrypoint).
manage() { compose exec -T web python manage.py "$@"; }
# A setup command (idempotent) run up to 3 times: on a host loaded far past its cores a
# transaction can stall longer than PgBouncer's idle_transaction_timeout (15 s), which ends it.
setup() {
    local try
    for try in 1 2 3; do
        if manage "$@" >"$UP_LOG.setup" 2>&1; then
            if [ "$try" -gt 1 ]; then note "setup" "manage.py $1 passed at try $try"; fi
            return 0
        fi
        note "setup" "manage.py $1 failed (try $try): $(tail -1 "$UP_LOG.setup")"
    done
    return 1
}
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" || true; }
ids_of() { compose ps -q "$1"; }
running_ids_of() {
    local id
    for id in $(ids_of "$1"); do
        if [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ]; then echo "$id"; fi
    done
}

finish() {
    local line
    echo
    echo "== compose check report (${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'), project $COMPOSE_PROJECT_NAME, port $PORT) =="
    for line in "${REPORT[@]}"; do echo "$line"; done
    echo "== $FAILED check(s) failed =="
    if [ "$KEEP" = false ]; then
        compose down -v --remove-orphans >/dev/null 2>&1 || true
    fi
}
trap finish EXIT

wait_for() { # seconds, then a command (run again each second) that succeeds when ready
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 1
    done
}

# --- up ----------------------------------------------------------------------------------
start="$(now)"
if compose up -d $BUILD --scale web=$WEB_REPLICAS --scale worker=$WORKER_REPLICAS \
    --scale beat=$BEAT_REPLICAS >"$UP_LOG" 2>&1; then
    note "up" "$(since "$start") s for up -d $BUILD (log: $UP_LOG)"
else
    fail "up" "compose up failed after $(since "$start") s, see $UP_LOG"
    exit "$FAILED"
fi
start="$(now)"
lb_answers() { [ "$(status_of "$BASE/healthz")" = 200 ]; }
if wait_for 300 lb_answers; then
    pass "lb" "GET /healthz through HAProxy answers 200, $(since "$start") s after up returned"
else
    fail "lb" "GET $BASE/healthz did not answer 200 within 300 s"
    exit "$FAILED"
fi

for service in web worker beat; do
    want=$(eval echo "\$$(echo "$service" | tr a-z A-Z)_REPLICAS")
    got=$(running_ids_of "$service" | wc -l)
    if [ "$got" -eq "$want" ]; then pass "replicas" "$got $service running"; else fail "replicas" "$got of $want $service running"; fi
done

# --- the load balancer spreads requests over every replica ---------------------------------
# In rounds: /healthz through HAProxy answers as soon as one replica is in, and on a loaded
# host the last replica's gunicorn workers may boot minutes after the first's.
spread=()
rounds=0
spread_round() {
    local probe="spread-$RANDOM" id
    rounds=$((rounds + 1))
    for _ in $(seq 1 30); do status_of "$BASE/healthz?probe=$probe" >/dev/null; done
    spread=()
    for id in $(running_ids_of web); do
        spread+=("$(docker logs "$id" 2>&1 | grep -c "probe=$probe" || true)")
    done
    [ "${#spread[@]}" -eq "$WEB_REPLICAS" ] && ! printf '%s\n' "${spread[@]}" | grep -qx 0
}
start="$(now)"
if wait_for 240 spread_round; then
    pass "spread" "30 requests through HAProxy served by the replicas as ${spread[*]} (round $rounds, $(since "$start") s)"
else
    fail "spread" "30 requests through HAProxy served by the replicas as ${spread[*]} after $rounds rounds"
fi

# --- login ---------------------------------------------------------------------------------
setup ensure_admin "--password=$ADMIN_PASSWORD" || fail "setup" "manage.py ensure_admin failed 3 times"
# 60 s, not 10: the login checks a bcrypt hash (cost 12), which at load average 79 on 2 cores
# took longer than 10 s.
token="$(curl -s --max-time 60 -H 'Content-Type: application/json' \
    -d "{\"username\": \"admin\", \"password\": \"$ADMIN_PASSWORD\"}" "$BASE/api/v1/auth/login" |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("token", ""))' || true)"
codes=""
for _ in $(seq 1 6); do codes+="$(status_of -H "Authorization: Bearer $token" "$BASE/sites") "; done
if [ -n "$token" ] && [ "$(echo "$codes" | tr ' ' '\n' | grep -c 200)" -eq 6 ]; then
    pass "api-login" "POST /api/v1/auth/login gives a token; GET /sites with it x6 (every replica): $codes"
else
    fail "api-login" "token '${token:0:6}...', GET /sites answered: $codes"
fi
jar="$(mktemp)"
curl -s -c "$jar" -b "$jar" -o /dev/null "$BASE/admin/login/"
csrf="$(awk '$6 == "csrftoken" {print $7}' "$jar")"
login_code="$(status_of -c "$jar" -b "$jar" -H "Referer: $BASE/admin/login/" \
    --data-urlencode "csrfmiddlewaretoken=$csrf" --data-urlencode "username=admin" \
    --data-urlencode "password=$ADMIN_PASSWORD" --data-urlencode "next=/admin/" "$BASE/admin/login/")"
admin_codes=""
for _ in $(seq 1 6); do admin_codes+="$(status_of -b "$jar" "$BASE/admin/") "; done
rm -f "$jar"
if [ "$login_code" = 302 ] && [ "$(echo "$admin_codes" | tr ' ' '\n' | grep -c 200)" -eq 6 ]; then
    pass "admin-login" "admin login form answers 302; GET /admin/ with the session x6: $admin_codes"
else
    fail "admin-login" "login form answered $login_code; GET /admin/ answered: $admin_codes"
fi

# --- PgBouncer in front of PostgreSQL ---------------------------------------------------------
bouncer_ips="$(for id in $(ids_of pgbouncer); do docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id"; done)"
clients="$(compose exec -T db psql -U homepot_user -d homepot_db -Atc \
    "SELECT address || ' ' || count(*) FROM (SELECT coalesce(host(client_addr), 'local') AS address
     FROM pg_stat_activity WHERE datname = 'homepot_db' AND pid <> pg_backend_pid()) AS c
     GROUP BY address" | tr '\n' ';')"
others="$(echo "$clients" | tr ';' '\n' | awk 'NF' | grep -v -w -F "$(echo $bouncer_ips | tr ' ' '\n')" || true)"
if [ -n "$clients" ] && [ -z "$others" ]; then
    pass "pgbouncer" "PostgreSQL's homepot_db connections (address count): $clients all from pgbouncer ($bouncer_ips)"
else
    fail "pgbouncer" "connections $clients; not from pgbouncer ($bouncer_ips): $others"
fi

# --- one beat leader -----------------------------------------------------------------------
# The lock's value is redis-py's token, uuid1().hex: its last 12 digits are the MAC address of
# the container that took it, and Docker gives each container its own. (Beat's log does not
# say: HOMEPOT quiets celery.beat's INFO lines, homepot/celery.py.)
lock_holder() {
    local token id mac
    token="$(compose exec -T redis redis-cli get homepot:beat::lock | tr -d '\r')"
    [ -n "$token" ] || return 0
    for id in $(running_ids_of beat); do
        mac="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}' "$id" | tr -d :)"
        if [ "${token: -12}" = "$mac" ]; then echo "$id"; fi
    done
    return 0
}
lock_held() { [ -n "$(lock_holder)" ]; }
wait_for 90 lock_held || true
leader="$(lock_holder)"
if [ "$(echo "$leader" | awk 'NF' | wc -l)" -eq 1 ]; then
    pass "beat" "the RedBeat lock is held by beat ${leader:0:12}, one of $(running_ids_of beat | wc -l) running beats"
else
    fail "beat" "the RedBeat lock is held by '$leader' (want exactly one running beat)"
fi

# --- a job through the API, completed by simulated terminals -----------------------------
prefix="cc$RANDOM"
site="$prefix-0001"
setup create_fleet --sites 1 --devices-per-site 5 --site-prefix "$prefix" || fail "setup" "manage.py create_fleet failed 3 times"
sim="$(compose run -d --no-deps web python manage.py simulate_fleet --site "$site" --devices 5 \
    --base-url http://lb:8000 --poll-interval 1 --work-seconds 1 2>/dev/null | tail -1)"
start="$(now)"
job="$(curl -s --max-time 10 -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d "{\"site_id\": \"$site\", \"action\": \"restart_pos_app\", \"payload\": {}}" "$BASE/jobs")"
job_id="$(echo "$job" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("id", ""))' 2>/dev/null || true)"
job_status() {
    curl -s --max-time 10 -H "Authorization: Bearer $token" "$BASE/jobs/$job_id" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["status"], d.get("progress", ""))'
}
if [ -n "$job_id" ] && wait_for 180 sh -c "curl -s --max-time 10 -H 'Authorization: Bearer $token' $BASE/jobs/$job_id | grep -q '\"status\": *\"completed\"'"; then
    pass "job" "job $job_id on $site completed $(since "$start") s after POST /jobs: $(job_status)"
else
    fail "job" "job '$job_id' ($(echo "$job" | head -c 300)) status: $( [ -n "$job_id" ] && job_status)"
fi
if [ -n "$sim" ]; then docker rm -f "$sim" >/dev/null 2>&1 || true; fi

# --- a web replica killed -----------------------------------------------------------------
victim="$(running_ids_of web | awk 'NR == 1')"  # not head: with pipefail its early exit fails the line
docker kill "$victim" >/dev/null
start="$(now)"
codes=""
for _ in $(seq 1 30); do codes+="$(status_of "$BASE/healthz") "; done
bad="$(echo "$codes" | tr ' ' '\n' | awk 'NF' | grep -vc 200 || true)"
if [ "$bad" -eq 0 ]; then
    pass "web-killed" "web ${victim:0:12} killed; the next 30 requests through HAProxy: all 200 ($(since "$start") s)"
else
    fail "web-killed" "web ${victim:0:12} killed; $bad of the next 30 requests failed: $codes"
fi
back="$(docker inspect -f '{{.State.Running}} restarts={{.RestartCount}}' "$victim")"
note "web-killed" "the killed replica afterwards: running=$back (restart: unless-stopped)"

# --- the beat leader killed ---------------------------------------------------------------
taken_over() {
    local holder
    holder="$(lock_holder)"
    [ -n "$holder" ] && [ "$holder" != "$leader" ]
}
if [ -n "$leader" ]; then
    docker kill "$leader" >/dev/null
    start="$(now)"
    if wait_for 120 taken_over; then
        pass "beat-failover" "leader ${leader:0:12} killed; beat $(lock_holder | cut -c1-12) holds the lock $(since "$start") s later (bound: HOMEPOT_BEAT_LOCK_SECONDS 25 + a tick)"
    else
        fail "beat-failover" "leader ${leader:0:12} killed; no other beat took the lock within 120 s"
    fi
else
    fail "beat-failover" "no beat leader to kill"
fi
exit "$FAILED"
