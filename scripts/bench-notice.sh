#!/usr/bin/env bash
# Notice -> every rank out with its checkpoint, for a PyTorch DDP script:
# ringmaster (package and signal mode) against torchrun, in one run; and
# resume -> first step (docs/benchmarks.md). Needs target/test-venv with
# torch and the ringmaster wheel (scripts/test.sh makes it) or --venv DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench-notice.py "$@"
