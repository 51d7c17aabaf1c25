#!/bin/sh
# The one login PgBouncer passes on to PostgreSQL (SCRAM, PostgreSQL 16's default), written
# from the environment at start: the password is never in the image.
set -eu
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}"
umask 077
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" >/tmp/userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
