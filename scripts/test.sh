#!/usr/bin/env bash
# The whole test suite: builds the binaries the end-to-end tests run, then
# runs every test of the workspace, and closes with one total line.
# Needs the Rust toolchain, python3 (for the user-program fixtures) and,
# for the Slurm and ssh tests, root and Debian's packages (scripts/slurm,
# scripts/ssh).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "scripts/test.sh: python3 is needed by the command-workload tests" >&2; exit 1; }
cargo build --workspace --locked
# NCCL without a GPU: ncclGetUniqueId works with just the library, so the
# tests can hand a real id through the rendezvous. The wheel ships only
# libnccl.so.2; link it as libnccl.so, the name cudarc loads. Optional: if
# PyPI cannot be reached the tests use fixed bytes and say so.
nccl_dir=target/test-nccl
if [ ! -e "$nccl_dir/lib/libnccl.so" ]; then
    if python3 -m pip install -q --disable-pip-version-check --target "$nccl_dir/py" nvidia-nccl-cu13 >/dev/null 2>&1; then
        lib=$(find "$nccl_dir/py" -name 'libnccl.so.2' | head -n 1)
        if [ -n "$lib" ]; then
            mkdir -p "$nccl_dir/lib"
            ln -sf "$(cd "$(dirname "$lib")" && pwd)/libnccl.so.2" "$nccl_dir/lib/libnccl.so"
        fi
    else
        echo "scripts/test.sh: nvidia-nccl-cu13 not installable; NCCL id tests use fixed bytes" >&2
    fi
fi
if [ -e "$nccl_dir/lib/libnccl.so" ]; then
    export LD_LIBRARY_PATH="$(pwd)/$nccl_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# ptxas from the CUDA compiler wheel (runs without a GPU), to check that the
# hand-written PTX kernels assemble for the GPUs we target (tests/ptx.rs).
# Optional: without it that test says it skipped.
cuda_dir=target/test-cuda
if [ ! -x "$cuda_dir/nvidia/cu13/bin/ptxas" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$cuda_dir" nvidia-cuda-nvcc >/dev/null 2>&1 \
        || echo "scripts/test.sh: nvidia-cuda-nvcc not installable; the PTX check will skip" >&2
fi
if [ -x "$cuda_dir/nvidia/cu13/bin/ptxas" ]; then
    export RINGMASTER_PTXAS="$(pwd)/$cuda_dir/nvidia/cu13/bin/ptxas"
fi
# Python's safetensors, to check that it opens every checkpoint shard.
py_dir=target/test-py
if [ ! -d "$py_dir/safetensors" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$py_dir" safetensors numpy >/dev/null
fi
export RINGMASTER_TEST_PYTHONPATH="$(pwd)/$py_dir"
# A two-node Slurm cluster on this machine for tests/slurm.rs (Debian
# packages, root); stopped at the end if this script started it.
slurm_state=/tmp/ringmaster-slurm
slurm_was_up=0
[ -s "$slurm_state/slurmctld.pid" ] && kill -0 "$(cat "$slurm_state/slurmctld.pid")" 2>/dev/null && slurm_was_up=1
SLURM_NODES=2 SLURM_STATE=$slurm_state scripts/slurm/up.sh
# A private sshd on 127.0.0.1:2222 for tests/ssh.rs (its own keys and
# ssh_config under /tmp/ringmaster-ssh); stopped at the end likewise.
ssh_was_up=0
[ -s /tmp/ringmaster-ssh/sshd.pid ] && kill -0 "$(cat /tmp/ringmaster-ssh/sshd.pid)" 2>/dev/null && ssh_was_up=1
scripts/ssh/up.sh
log=$(mktemp)
cleanup() {
    rm -f "$log"
    [ "$slurm_was_up" = 1 ] || SLURM_STATE=$slurm_state scripts/slurm/down.sh
    [ "$ssh_was_up" = 1 ] || scripts/ssh/down.sh
}
trap cleanup EXIT
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
