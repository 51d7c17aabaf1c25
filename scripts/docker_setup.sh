#!/usr/bin/env bash
# Makes a machine ready for the compose stack (docs/operations.md, "Docker on a machine of
# its own"): a Docker daemon that answers, and Compose v2 as the docker CLI plugin, so that
# `docker compose version` works. Safe to run again: what is already there is kept.
#
#   sudo ./scripts/docker_setup.sh           # prints DOCKER_HOST=... (export it)
#   sudo ./scripts/docker_setup.sh --stop    # stop the daemon this script started
#
# The daemon: the one DOCKER_HOST (or Docker's default socket) names, if it answers. Else
# HOMEPOT's own dockerd is started (Debian's docker.io must be installed) with its own data
# root, socket and address ranges, away from a system Docker and from scripts/multihost.sh's
# 10.208.0.0/12: /var/lib/docker-hp, unix:///var/run/docker-hp.sock, --bip 172.29.0.1/24,
# address pool 172.29.16.0/20, log in /var/log/docker-hp.log. dockerd sets the FORWARD
# chain's policy to DROP: the policy from before its first start is kept in
# /var/lib/docker-hp.forward-policy and --stop puts it back (only the policy: on a shared host
# others may have added rules since, which a whole-table restore would wipe).
#
# Compose v2: when the CLI has no `compose` command, Debian trixie's docker-compose 2.26.1 (a
# static Go binary) is fetched from the Debian mirror, checked against the SHA256 that
# trixie's signed Packages index gives, unpacked with dpkg-deb and installed as
# /usr/local/lib/docker/cli-plugins/docker-compose. Debian's docker-compose 1.29 (v1) may stay
# installed beside it. Only amd64 is pinned.
#
# Environment: DOCKER_HOST, OFFLINE_IMAGES_MIRROR (default http://deb.debian.org/debian).
# Needs root for whatever it has to install or start; prints DOCKER_HOST=<url> on stdout
# (messages go to stderr), so scripts can `export "$(scripts/docker_setup.sh)"`.
set -euo pipefail

MIRROR="${OFFLINE_IMAGES_MIRROR:-http://deb.debian.org/debian}"
DATA_ROOT=/var/lib/docker-hp
OWN_SOCKET=/var/run/docker-hp.sock
PIDFILE=/var/run/docker-hp.pid
LOG=/var/log/docker-hp.log
SAVED_POLICY=/var/lib/docker-hp.forward-policy
COMPOSE_VERSION=2.26.1-4
# From trixie's main/binary-amd64/Packages (InRelease checked by apt with Debian's keyring).
COMPOSE_SHA256=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

die() { printf 'docker_setup: %s\n' "$*" >&2; exit 1; }
say() { printf 'docker_setup: %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" -eq 0 ] || die "$1 needs root: sudo $0"; }

answers() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The daemon to use, as a DOCKER_HOST url: the one already named, the default, or ours.
find_daemon() {
    local url
    for url in ${DOCKER_HOST:-} unix:///var/run/docker.sock "unix://$OWN_SOCKET"; do
        if answers "$url"; then
            echo "$url"
            return 0
        fi
    done
    return 1
}

start_own_daemon() {
    need_root "starting dockerd"
    command -v dockerd >/dev/null || die "no dockerd: apt-get install docker.io"
    if [ ! -e "$SAVED_POLICY" ] && command -v iptables >/dev/null; then
        iptables -S FORWARD | awk '$1 == "-P" {print $3}' >"$SAVED_POLICY"
    fi
    say "starting dockerd (data $DATA_ROOT, socket $OWN_SOCKET, log $LOG)"
    setsid nohup dockerd --data-root "$DATA_ROOT" --exec-root /var/run/docker-hp \
        --host "unix://$OWN_SOCKET" --pidfile "$PIDFILE" \
        --bip 172.29.0.1/24 --default-address-pool base=172.29.16.0/20,size=24 \
        >>"$LOG" 2>&1 </dev/null &
    local deadline=$(($(date +%s) + 60))
    until answers "unix://$OWN_SOCKET"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "dockerd did not answer within 60 s, see $LOG"
        sleep 1
    done
}

stop_own_daemon() {
    need_root "stopping dockerd"
    [ -s "$PIDFILE" ] || die "no $PIDFILE: this script's dockerd is not running"
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    if [ -s "$SAVED_POLICY" ]; then
        iptables -P FORWARD "$(cat "$SAVED_POLICY")"
        say "dockerd $pid stopped; FORWARD policy $(cat "$SAVED_POLICY") again ($SAVED_POLICY)"
    else
        say "dockerd $pid stopped"
    fi
}

has_compose_v2() { docker compose version >/dev/null 2>&1; }

install_compose_v2() {
    local tmp deb
    need_root "installing $PLUGIN"
    [ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64's docker-compose is pinned"
    tmp="$(mktemp -d)"
    deb="$tmp/docker-compose.deb"
    say "fetching docker-compose $COMPOSE_VERSION from $MIRROR"
    curl -fsSL --retry 3 -o "$deb" \
        "$MIRROR/pool/main/d/docker-compose/docker-compose_${COMPOSE_VERSION}_amd64.deb"
    echo "$COMPOSE_SHA256  $deb" | sha256sum --check --quiet - >&2 ||
        die "docker-compose_${COMPOSE_VERSION}_amd64.deb does not have the pinned SHA256"
    dpkg-deb -x "$deb" "$tmp/root"
    install -D -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$PLUGIN"
    rm -rf "$tmp"
    has_compose_v2 || die "installed $PLUGIN, but 'docker compose version' still fails"
    say "installed $PLUGIN: $(docker compose version --short)"
}

main() {
    case "${1:-}" in
    --stop) stop_own_daemon; return ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; return ;;
    "") ;;
    *) die "unknown option $1 (try --help)" ;;
    esac
    command -v docker >/dev/null || die "no docker CLI: apt-get install docker.io"
    local url
    if ! url="$(find_daemon)"; then
        start_own_daemon
        url="unix://$OWN_SOCKET"
    fi
    has_compose_v2 || install_compose_v2
    echo "DOCKER_HOST=$url"
}

main "$@"
