#!/usr/bin/env bash
# Installs what the demo and the test suite need and the machine lacks, saying what and why:
#   postgres  PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup, psql): the
#             local clusters of the demo and the tests run them. apt's `postgresql` package is
#             installed without the cluster it would otherwise create and start on port 5432.
#   moto      moto's server (`moto[server]`, with pip, in a virtualenv at $AURORA_POOL_MOTO_VENV,
#             by default ~/.cache/aurora-pool/moto-venv): the Secrets Manager tests talk to it.
#   rust      rustfmt and clippy (with rustup): the test suite runs both; and the toolchain of
#             Cargo.toml's rust-version (the minimum Rust version), which it builds the library with.
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

# moto goes into a virtualenv of its own, never into the system's Python (PEP 668); the
# tests find it there (src/testing/moto.rs reads the same variable and default).
moto_venv="${AURORA_POOL_MOTO_VENV:-${HOME:-/tmp}/.cache/aurora-pool/moto-venv}"

have_moto() {
    local python
    for python in "$moto_venv/bin/python3" python3; do
        "$python" -c 'import moto.server, flask' >/dev/null 2>&1 && return 0
    done
    return 1
}

if wants moto && ! have_moto; then
    echo "install-deps: moto's server not found (the Secrets Manager tests run it); installing moto[server] with pip into the virtualenv $moto_venv" >&2
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "install-deps: python3 or its venv module missing; installing python3 and python3-venv with apt-get" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
    fi
    python3 -m venv "$moto_venv"
    # A virtualenv without moto would be taken for one with it: none is left behind.
    "$moto_venv/bin/python3" -m pip install -q "moto[server]" || { rm -rf "$moto_venv"; exit 1; }
    have_moto || { echo "install-deps: moto[server] installed in $moto_venv but it cannot import moto.server and flask" >&2; exit 1; }
fi

if wants rust; then
    # The minimum Rust version the README states: the test suite builds the library with it.
    msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
    if [ -n "$msrv" ] && command -v rustup >/dev/null 2>&1 && ! cargo +"$msrv" --version >/dev/null 2>&1; then
        echo "install-deps: Rust $msrv (Cargo.toml's rust-version) missing; the test suite checks that the library builds with it: rustup toolchain install $msrv --profile minimal" >&2
        rustup toolchain install "$msrv" --profile minimal
    fi
    # Without rustup the test suite skips that check and says so.
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
