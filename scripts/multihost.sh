#!/usr/bin/env bash
# HOMEPOT on several hosts, with one application host killed mid-run (issue 13): network
# namespaces for a database host, N application hosts, a load balancer and a load host, all
# removed afterwards, also on Ctrl-C. Arguments go to bench/multihost.py (see --help there):
#
#   sudo ./scripts/multihost.sh                                   # 3 app hosts, 10,000 devices
#   sudo ./scripts/multihost.sh --devices 100000 --throughput 20 --json var/multihost.json
#
# Needs root, and installs pgbouncer and haproxy with apt-get when they are missing.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

case "${1:-}" in
-h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exec "$VENV_PY" bench/multihost.py --help
    ;;
esac

[ "$(id -u)" -eq 0 ] || die "Network namespaces need root: sudo $0 $*"
setup_venv
ensure_multihost_tools || die "The multi-host proof needs pgbouncer, haproxy, redis-server, mosquitto and ip."

# bench/multihost.py removes what it made when it ends or is interrupted; this trap catches
# what a harder stop (SIGKILL of the Python process) would leave: its namespaces and processes.
TAG="hpmh$(printf '%04x' "$((RANDOM % 65536))")"
cleanup() { "$VENV_PY" bench/multihost.py --cleanup --tag "$TAG" || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$VENV_PY" bench/multihost.py --tag "$TAG" "$@"
