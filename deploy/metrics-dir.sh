#!/bin/sh
# Starts a HOMEPOT process with an empty metrics directory of its own: one per container under
# its kind's (PROMETHEUS_MULTIPROC_DIR, e.g. /app/var/metrics/web/<hostname>). Files are named
# by pid and replicas of one kind (--scale web=3) have the same pids, so they cannot share a
# directory; and files left by a previous run would be added to this run's counts forever.
# Directories of containers that are gone are removed here too: on a compose network Docker's
# DNS answers a running container's host name (its short id), so a name that no longer
# resolves is a container that no longer runs. docs/operations.md, "Metrics".
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    kind_dir="$PROMETHEUS_MULTIPROC_DIR"
    me="$(hostname)"
    mkdir -p "$kind_dir"
    # Files straight in the kind's directory: the earlier layout (one directory per kind).
    rm -f "$kind_dir"/*.db
    for dir in "$kind_dir"/*/; do
        [ -d "$dir" ] || continue
        name="$(basename "$dir")"
        if [ "$name" = "$me" ] || ! getent hosts "$name" >/dev/null; then
            rm -rf "$dir"
        fi
    done
    export PROMETHEUS_MULTIPROC_DIR="$kind_dir/$me"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec "$@"
