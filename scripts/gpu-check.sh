#!/usr/bin/env bash
# The GPU check, prepared for a session that is lent a GPU machine (CUDA,
# PyTorch and Python there; no Rust toolchain known). Build here first:
#   cargo build --release --locked
# then run this script there with target/release/ringmaster and
# target/release/ringmaster-worker carried. Writes every figure to
# $OUT/gpu-check.json (or ./gpu-check-out/) and prints a short table last.
# Bounded: about 5 minutes on one H100.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
if [ ! -x target/release/ringmaster ] || [ ! -x target/release/ringmaster-worker ]; then
    if command -v cargo >/dev/null; then
        cargo build --release --locked || exit 1
    else
        echo "gpu-check: target/release/ringmaster{,-worker} missing and no cargo here; build them and carry them" >&2
        exit 1
    fi
fi
py="${PYTHON:-python3}"
exec timeout 480 "$py" scripts/gpu/check.py --out "$out" "$@"
