#!/usr/bin/env bash
# The launcher at scale (docs/benchmarks.md, "Scale"): a real leader and
# ringmaster-loadgen playing the other nodes over loopback, at 1k, 4k and
# 8k ranks by default (--ranks 1024,4096). Needs `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench/scale.py "$@"
