#!/bin/sh
# Creates the database cluster on an empty data directory (superuser POSTGRES_USER with
# POSTGRES_PASSWORD, database POSTGRES_DB, then the scripts of /docker-entrypoint-initdb.d),
# and runs the server as the postgres user. A directory that already holds a cluster is
# started as it is: the variables matter only the first time.
set -eu

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups /bin/sh "$0" "$@"
fi

# Anything but the server itself (e.g. `psql`) runs as asked.
[ "${1:-}" = postgres ] || exec "$@"

init_cluster() {
    : "${POSTGRES_PASSWORD:?Set POSTGRES_PASSWORD: the superuser needs a password for TCP logins}"
    user="${POSTGRES_USER:-postgres}"
    database="${POSTGRES_DB:-$user}"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    # Other containers reach it over the compose network, with a password.
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

    # A private start (no TCP) for the database and the init scripts.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$database" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -U "$user" -d postgres -q \
            -c "CREATE DATABASE \"$database\" OWNER \"$user\""
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) psql -v ON_ERROR_STOP=1 -U "$user" -d "$database" -q -f "$script" ;;
            *.sh) sh "$script" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres-entrypoint: cluster created in $PGDATA (user $user, database $database)"
}

[ -s "$PGDATA/PG_VERSION" ] || init_cluster
exec "$@" -D "$PGDATA"
