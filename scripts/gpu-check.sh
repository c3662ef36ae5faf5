#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a GPU machine (CUDA,
# PyTorch and Python there; no Rust toolchain known). Build here first:
#   cargo build --release --locked
# then run this script there with target/release/ringmaster and
# target/release/ringmaster-worker carried. It runs `doctor` first and stops
# with its verdicts when GPU jobs cannot run; then each step within its
# share of a 300 s budget (scripts/gpu/check.py, SHARES), rewriting
# $OUT/gpu-check.json (or ./gpu-check-out/) after every step and keeping
# each run's logs under $OUT/runs/; a short table is printed last.
#
#   scripts/gpu-check.sh --dry-run   # the same flow without a GPU (CI runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
bin="${RINGMASTER_BIN_DIR:-target/release}"
if [ "$dry" = 1 ] && [ ! -x "$bin/ringmaster" ] && [ -x target/debug/ringmaster ]; then
    bin=target/debug
fi
if [ ! -x "$bin/ringmaster" ] || [ ! -x "$bin/ringmaster-worker" ]; then
    if command -v cargo >/dev/null; then
        cargo build --release --locked || exit 1
        bin=target/release
    else
        echo "gpu-check: $bin/ringmaster{,-worker} missing and no cargo here; build them and carry them" >&2
        exit 1
    fi
fi
py="${PYTHON:-python3}"
# The budget (300 s) plus a margin to write the results.
RINGMASTER_BIN_DIR="$(cd "$bin" && pwd)" exec timeout 330 "$py" scripts/gpu/check.py --out "$out" "$@"
