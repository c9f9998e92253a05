#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lints, tests and builds the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings
# The core must build without the sqlx backend.
cargo clippy --no-default-features --features testing -- -D warnings
# The deadpool flavour alone, without sqlx.
cargo clippy --no-default-features --features deadpool -- -D warnings
cargo test --all-features
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
