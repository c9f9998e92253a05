#!/usr/bin/env bash
# The demo: a local 3-instance Aurora-like cluster, writes and reads through AuroraPool, then a
# writer crash and when writes resumed on the new writer, with the default settings.
set -euo pipefail
cd "$(dirname "$0")/.."
# Only the PostgreSQL server binaries: the demo needs nothing else (no Python, no moto).
scripts/install-deps.sh postgres
echo "demo: building the example (the first build compiles the dependencies: a few minutes)" >&2
cargo build --example demo --features testing
echo "demo: running" >&2
cargo run --quiet --example demo --features testing
