#!/usr/bin/env bash
# Installs what the demo and the test suite need and the machine lacks, saying what and why:
#   postgres  PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup, psql): the
#             local clusters of the demo and the tests run them. apt's `postgresql` package is
#             installed without the cluster it would otherwise create and start on port 5432.
#   moto      moto's server (`moto[server]`, with pip): the Secrets Manager tests talk to it.
#   rust      rustfmt and clippy (with rustup): the test suite runs both.
# With no argument: all three (the test suite). The demo asks for `postgres` only.
set -euo pipefail

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(postgres moto rust)
wants() {
    local w
    for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
    return 1
}

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

if wants postgres && ! have_postgres; then
    echo "install-deps: PostgreSQL server binaries not found (the local clusters run them); installing the postgresql package with apt-get, without starting a server" >&2
    # postgresql-common would create and start a cluster on port 5432: not wanted here.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        as_root mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi
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

if wants moto && ! have_moto; then
    echo "install-deps: moto's server not importable by python3 (the Secrets Manager tests run it); installing moto[server] with pip" >&2
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-pip
    fi
    pip_install "moto[server]"
    have_moto || { echo "install-deps: moto[server] installed but python3 cannot import moto.server and flask" >&2; exit 1; }
fi

if wants rust; then
    for component in rustfmt clippy; do
        tool=$([ "$component" = rustfmt ] && echo "cargo fmt" || echo "cargo clippy")
        if ! $tool --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then
                echo "install-deps: \`$tool\` missing (the test suite runs it); rustup component add $component" >&2
                rustup component add "$component"
            else
                echo "install-deps: \`$tool\` missing and no rustup to add it: install $component" >&2
                exit 1
            fi
        fi
    done
fi
