#!/usr/bin/env bash
# The metrics endpoint's cost: step rate and launcher CPU with it on vs off,
# scrape latency and size, at 16 local ranks (docs/benchmarks.md).
# Build first: cargo build --release --locked.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench-metrics.py "$@"
