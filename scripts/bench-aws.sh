#!/usr/bin/env bash
# Provider aws against moto's EC2 emulator: `run` -> every node joined ->
# first step by phase, and a spot preemption's replacement beside the
# simulator's (docs/benchmarks.md). Needs target/moto-venv (scripts/test.sh
# makes it) and `cargo build`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench-aws.py "$@"
