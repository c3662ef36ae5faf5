#!/usr/bin/env bash
# The whole test suite: builds the binaries the end-to-end tests run, then
# runs every test of the workspace. Needs only the Rust toolchain and
# python3 (for the user-program fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "scripts/test.sh: python3 is needed by the command-workload tests" >&2; exit 1; }
cargo build --workspace --locked
cargo test --workspace --locked "$@"
