#!/usr/bin/env bash
# The demo: a local 3-instance Aurora-like cluster, writes and reads through AuroraPool, then a
# writer crash and when writes resumed on the new writer, with the default settings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --quiet --example demo --features testing
