#!/usr/bin/env bash
# The per-step cost of the `ringmaster` package's report(), against an
# empty call measured in the same run (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench-report.py
