#!/bin/sh
# Starts a HOMEPOT process with an empty metrics directory of its own kind
# (PROMETHEUS_MULTIPROC_DIR, e.g. /app/var/metrics/web): files left by the previous run's
# processes would otherwise be added to this run's counts forever. docs/operations.md, "Metrics".
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec "$@"
