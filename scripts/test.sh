#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lints, tests and builds the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings
# `test = false` keeps the timed Global Database tests out of `--all-targets` (see below).
cargo clippy --all-features --test global_database -- -D warnings
# The core must build without the sqlx backend.
cargo clippy --no-default-features --features testing -- -D warnings
# The deadpool flavour alone, without sqlx, with its axum integration.
cargo clippy --no-default-features --features deadpool,axum,tls-rustls-aws-lc-rs -- -D warnings
# Both flavours with ring: no aws-lc anywhere in the graph.
cargo clippy --no-default-features --features sqlx,deadpool,tls-rustls-ring -- -D warnings
if cargo tree --no-default-features --features sqlx,deadpool,tls-rustls-ring -e normal -i aws-lc-rs >/dev/null 2>&1; then
    echo "aws-lc-rs is in the graph of the ring features" >&2
    exit 1
fi
# The minimum Rust version (Cargo.toml's `rust-version`, stated in the README) builds the
# library with every feature; its own target directory keeps the main build's cache.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
if [ -n "$msrv" ] && cargo +"$msrv" --version >/dev/null 2>&1; then
    cargo +"$msrv" check --lib --all-features --target-dir target/msrv
else
    echo "test.sh: no Rust ${msrv:-?} toolchain (rustup installs it: scripts/install-deps.sh rust); the minimum Rust version is NOT checked" >&2
fi
cargo test --all-features
# The Global Database tests assert #25's 0.5 s writer move for both flavours. They run in a
# test build of this package optimised as a release build would be: unoptimised, sqlx's
# SCRAM rounds (an async fn, compiled into the crate that polls it) take most of the
# client's CPU after a promotion, on a host whose two cores also run the four servers
# (Cargo.toml, BENCHMARKS.md).
cargo test --all-features --test global_database \
    --config 'profile.test.package.aurora-pool.opt-level=3' \
    --config 'profile.test.package.aurora-pool.debug-assertions=false'
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
