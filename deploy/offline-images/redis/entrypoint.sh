#!/bin/sh
# Runs redis-server as the redis user. Without a configuration file Redis starts in protected
# mode and refuses every client that is not on loopback; inside a container network the other
# services are its clients, so protected mode is switched off unless a file is given.
set -eu
case "${1:-}" in
    -*) set -- redis-server "$@" ;;
esac
if [ "${1:-}" = redis-server ]; then
    case "${2:-}" in
        ""|-*) shift; set -- redis-server --protected-mode no "$@" ;;
    esac
    if [ "$(id -u)" = 0 ]; then
        chown -R redis:redis /data
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"
