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
# The GPU libraries as a PyTorch machine has them, from the pip wheels
# (NCCL ships only libnccl.so.2; CUDA 13's cuBLAS lives in nvidia/cu13/lib):
# installed like any Python package, and found by the launcher itself
# through Python's `nvidia` packages. No LD_LIBRARY_PATH is set here: the
# launcher gives the workers the one they need (tests/gpu_libs.rs checks a
# worker loads NCCL and cuBLAS under it, without a GPU).
gpu_libs=target/test-gpu-libs
if [ ! -e "$gpu_libs/nvidia/nccl/lib/libnccl.so.2" ] || [ ! -e "$gpu_libs/nvidia/cu13/lib/libcublas.so.13" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$gpu_libs" nvidia-nccl-cu13 nvidia-cublas >/dev/null
fi
export RINGMASTER_TEST_GPU_LIBS="$(pwd)/$gpu_libs"
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
# Python's safetensors, to check that it opens every checkpoint shard, and
# kubernetes-validate (the OpenAPI schemas of current Kubernetes releases),
# to check every manifest `submit --scheduler kubernetes` writes, offline.
py_dir=target/test-py
if [ ! -d "$py_dir/safetensors" ] || [ ! -d "$py_dir/kubernetes_validate" ]; then
    python3 -m pip install -q --disable-pip-version-check --target "$py_dir" safetensors numpy kubernetes-validate >/dev/null
fi
export RINGMASTER_TEST_PYTHONPATH="$(pwd)/$py_dir"
# moto's EC2 emulator (server mode) for tests/aws.rs, which start and stop
# their own servers; in a venv of its own (Flask, boto3 and their pins stay
# apart from the other test packages), kept under target/.
moto_venv=target/moto-venv
if ! "$moto_venv/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    rm -rf "$moto_venv"
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5,<6' >/dev/null
fi
export RINGMASTER_TEST_MOTO="$(pwd)/$moto_venv/bin/moto_server"
# ringmaster as Python users install it (tests/torch_ddp.rs): PyTorch (PyPI's
# default wheel, which runs on the CPU; about 2.8 GB to fetch, 5.4 GB
# installed, once: the venv is kept under target/) and the project's own
# wheel (pyproject.toml: maturin with bin bindings, the `ringmaster` and
# `ringmaster-worker` binaries plus the `ringmaster` package), built from
# this tree and installed afresh on every run.
venv=target/test-venv
if ! { "$venv/bin/python" -c 'import torch, numpy' && "$venv/bin/maturin" --version; } >/dev/null 2>&1; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check torch numpy 'maturin>=1.5,<2' >/dev/null
fi
rm -rf target/wheels
"$venv/bin/maturin" build --quiet --out target/wheels >/dev/null
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/ringmaster-*.whl >/dev/null
export RINGMASTER_TEST_VENV="$(pwd)/$venv"
# Prometheus (Debian's package) for tests/metrics.rs, which start and stop
# their own servers.
scripts/prometheus/install.sh
# Chromium (Debian's) for tests/report_html.rs, which open report.html headless.
scripts/browser/install.sh
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
count() { grep -E '^test result: ' "$log" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
echo
# Ignored tests need what this machine lacks (a GPU); they run with
# --include-ignored where it is there.
echo "tests: $(count passed) passed, $(count failed) failed, $(count ignored) ignored"
exit "$status"
