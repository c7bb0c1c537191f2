#!/usr/bin/env bash
# Builds Citus from the vendored source tarball and installs it into one PostgreSQL major, once
# per machine: the build is cached under /var/cache/multitenancy (outside the checkout) and a
# stamp in the server's lib directory records which source is installed there. Citus has no
# package in the reachable registries; its source is not part of this repository.
#
#   scripts/citus.sh <pg_config>        (used by test.sh for the Citus tier; idempotent)
#
# The tarball is looked up in $MT_CITUS_TARBALL, then ../shared/vendor/ beside the checkout, then
# /work/shared/vendor/. Citus 15.0devel targets PostgreSQL 16-18.
set -euo pipefail
PG_CONFIG=${1:?usage: scripts/citus.sh <pg_config>}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MT_CITUS_CACHE:-/var/cache/multitenancy}
say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

tarball=${MT_CITUS_TARBALL:-}
if [ -z "$tarball" ]; then
    for candidate in "$ROOT"/../shared/vendor/citus-*.tar.gz /work/shared/vendor/citus-*.tar.gz; do
        [ -f "$candidate" ] && { tarball=$candidate; break; }
    done
fi
[ -n "$tarball" ] && [ -f "$tarball" ] || {
    echo "scripts/citus.sh: no Citus source tarball (set MT_CITUS_TARBALL or put citus-*.tar.gz in ../shared/vendor/)" >&2
    exit 1
}

source_id=$(basename "$tarball" .tar.gz)-$(sha256sum "$tarball" | cut -c1-12)
pg_version=$("$PG_CONFIG" --version | awk '{print $2}')
pkglibdir=$("$PG_CONFIG" --pkglibdir)
stamp="$pkglibdir/citus.multitenancy-stamp"
if [ -f "$pkglibdir/citus.so" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$source_id" ]; then
    exit 0
fi

deps=(libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev make gcc)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Citus build dependencies: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build="$CACHE/$source_id-pg$pg_version"
if [ ! -f "$build/.built" ]; then
    say "building Citus ($source_id) for PostgreSQL $pg_version (about 5 minutes, once per machine)"
    as_root rm -rf "$build"
    as_root mkdir -p "$build"
    as_root tar -xzf "$tarball" -C "$build" --strip-components=1
    (cd "$build" && as_root ./configure --quiet PG_CONFIG="$PG_CONFIG" >/dev/null &&
        as_root make -s -j"$(nproc)" >/dev/null 2>"$build/.build.log") || {
        echo "scripts/citus.sh: the Citus build failed; see $build/.build.log" >&2; exit 1; }
    as_root touch "$build/.built"
fi
say "installing Citus into PostgreSQL $pg_version"
(cd "$build" && as_root make -s install >/dev/null)
echo "$source_id" | as_root tee "$stamp" >/dev/null
