#!/usr/bin/env bash
# Benchmarks (not tests): ringmaster against its baselines, side by side in
# one run, printing ratios. Baselines need torch and numpy; they go into
# .bench/venv from PyPI unless BENCH_PYTHON names a Python that has them.
#   scripts/bench.sh            # everything
#   scripts/bench.sh --quick    # fewer repeats and sizes
#   scripts/bench.sh --no-baselines
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
py="${BENCH_PYTHON:-}"
if [ -z "$py" ] && [[ " $* " != *" --no-baselines "* ]]; then
    if [ ! -x .bench/venv/bin/python ] || ! .bench/venv/bin/python -c "import torch, numpy" 2>/dev/null; then
        echo "bench: installing torch, numpy, threadpoolctl into .bench/venv (PyPI)" >&2
        python3 -m venv .bench/venv
        .bench/venv/bin/pip install -q torch numpy threadpoolctl >&2
    fi
    py=.bench/venv/bin/python
fi
exec python3 scripts/bench/driver.py --baseline-python "${py:-none}" "$@"
