#!/usr/bin/env bash
# Builds local stand-ins for the base images docker-compose.yml needs, from Debian packages,
# on a machine that reaches a Debian mirror but not Docker Hub (docs/operations.md, "Without
# Docker Hub"):
#
#   sudo ./scripts/offline_images.sh            # then: docker compose up -d --build
#
# debian:bookworm-slim  a minimal bookworm made with debootstrap and `docker import`ed
# python:3.11-slim      bookworm's python3 (3.11) in a virtual environment on PATH
# postgres:16           bookworm's PostgreSQL (15), same POSTGRES_* contract
# redis:7               bookworm's redis-server (7.0)
# eclipse-mosquitto:2   bookworm's mosquitto (2.0) with its dynamic security plugin
# haproxy:2.8           bookworm's haproxy (2.6)
# Each is tagged with the name the compose file uses, so nothing there changes; the
# Dockerfiles are in deploy/offline-images/. Images that already exist are kept unless
# --rebuild is given. Prometheus and Grafana (the optional observability profile) are not
# covered: Debian has no Grafana.
#
# The Docker daemon and compose v2 come from scripts/docker_setup.sh (run first: it keeps a
# daemon that answers, else starts HOMEPOT's own, and installs the compose plugin if missing).
#
# Environment: DOCKER_HOST (which daemon), OFFLINE_IMAGES_MIRROR (default
# http://deb.debian.org/debian), OFFLINE_IMAGES_SECURITY_MIRROR (default
# http://deb.debian.org/debian-security), OFFLINE_IMAGES_CA_DIR (default
# /usr/local/share/ca-certificates: the host's own added CAs, e.g. a TLS-intercepting proxy's,
# are trusted inside the images too, so `pip install` in the build works where the host's does).
# Needs root (debootstrap) and debootstrap installed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
IMAGES="$ROOT/deploy/offline-images"
CACHE="$ROOT/var/offline-images"
SUITE=bookworm
MIRROR="${OFFLINE_IMAGES_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${OFFLINE_IMAGES_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CA_DIR="${OFFLINE_IMAGES_CA_DIR:-/usr/local/share/ca-certificates}"
REBUILD=false

die() { printf 'offline_images: %s\n' "$*" >&2; exit 1; }
say() { printf 'offline_images: %s\n' "$*"; }

for arg in "$@"; do
    case "$arg" in
    --rebuild) REBUILD=true ;;
    -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $arg (try --help)" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: sudo $0 $*"
command -v debootstrap >/dev/null || die "install debootstrap first (apt-get install debootstrap)"
# A daemon (started if none answers) and compose v2 for what comes after.
setup="$("$ROOT/scripts/docker_setup.sh")" || die "scripts/docker_setup.sh failed"
export "$setup"
say "using $setup"

have_image() { [ "$REBUILD" = false ] && docker image inspect "$1" >/dev/null 2>&1; }

# The rootfs tarball is cached in var/: debootstrap is the slow step (minutes).
make_rootfs_tar() {
    local tar="$CACHE/$SUITE-minbase.tar" dir
    if [ -s "$tar" ] && [ "$REBUILD" = false ]; then
        echo "$tar"
        return
    fi
    mkdir -p "$CACHE"
    dir="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    say "debootstrap $SUITE from $MIRROR (a few minutes)" >&2
    debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed, see $CACHE/debootstrap.log"
    configure_rootfs "$dir"
    tar --numeric-owner -C "$dir" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$dir"
    echo "$tar"
}

# What a container base needs that debootstrap does not give: the same mirror for apt inside
# builds, the host's extra CAs, no host identity, no package caches.
configure_rootfs() {
    local dir="$1" crt
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    if compgen -G "$CA_DIR/*.crt" >/dev/null; then
        DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y --no-install-recommends \
            ca-certificates >>"$CACHE/debootstrap.log" 2>&1
        for crt in "$CA_DIR"/*.crt; do
            say "trusting $crt inside the images" >&2
            cp "$crt" "$dir/usr/local/share/ca-certificates/"
        done
        chroot "$dir" update-ca-certificates >>"$CACHE/debootstrap.log" 2>&1
    fi
    # Services must not start inside a build (a package's postinst would try).
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    : >"$dir/etc/hostname"
    rm -f "$dir/etc/resolv.conf"
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
}

import_base() {
    local tar
    if have_image debian:bookworm-slim; then
        say "debian:bookworm-slim already there"
        return
    fi
    tar="$(make_rootfs_tar)"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "$tar" debian:bookworm-slim >/dev/null
    docker tag debian:bookworm-slim debian:bookworm
    say "debian:bookworm-slim imported from $tar"
}

build_standin() {
    local tag="$1" dir="$2"
    if have_image "$tag"; then
        say "$tag already there"
        return
    fi
    say "building $tag from deploy/offline-images/$dir"
    mkdir -p "$CACHE"
    docker build -t "$tag" "$IMAGES/$dir" >"$CACHE/build-$dir.log" 2>&1 ||
        die "building $tag failed, see $CACHE/build-$dir.log"
}

import_base
build_standin python:3.11-slim python
build_standin postgres:16 postgres
build_standin redis:7 redis
build_standin eclipse-mosquitto:2 mosquitto
build_standin haproxy:2.8 haproxy
say "done: docker compose up -d --build (docs/operations.md, \"Docker compose\")"
