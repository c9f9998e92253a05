#!/usr/bin/env bash
# Installs what the demo and the test suite need and the machine lacks:
# PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup, psql), and moto's
# server (`moto[server]`, for the Secrets Manager tests).
set -euo pipefail

have_postgres() {
    local dir
    if [ -n "${AURORA_POOL_PG_BINDIR:-}" ] && [ -x "$AURORA_POOL_PG_BINDIR/initdb" ]; then return 0; fi
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then return 0; fi
    fi
    for dir in /usr/lib/postgresql/*/bin; do
        if [ -x "$dir/initdb" ]; then return 0; fi
    done
    command -v initdb >/dev/null 2>&1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@";
    elif command -v sudo >/dev/null 2>&1; then sudo "$@";
    else echo "install-deps: need root (or sudo) to run: $*" >&2; exit 1; fi
}

if ! have_postgres; then
    echo "install-deps: PostgreSQL server binaries not found; installing the postgresql package" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    have_postgres || { echo "install-deps: postgresql installed but initdb still not found" >&2; exit 1; }
fi

have_moto() {
    python3 -c 'import moto.server, flask' >/dev/null 2>&1
}

pip_install() {
    local out
    if out=$(python3 -m pip install -q "$@" 2>&1); then return 0; fi
    # PEP 668: a distribution's Python refuses pip outside a virtualenv.
    if printf '%s' "$out" | grep -q externally-managed-environment; then
        python3 -m pip install -q --break-system-packages "$@"
    else
        printf '%s\n' "$out" >&2
        return 1
    fi
}

if ! have_moto; then
    echo "install-deps: moto's server not importable by python3; installing moto[server]" >&2
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-pip
    fi
    pip_install "moto[server]"
    have_moto || { echo "install-deps: moto[server] installed but python3 cannot import moto.server and flask" >&2; exit 1; }
fi
