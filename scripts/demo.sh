#!/usr/bin/env bash
# The demo: a local 3-instance Aurora-like cluster, writes and reads through AuroraPool.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --quiet --example demo --features testing
