#!/usr/bin/env bash
# Stops what scripts/slurm/up.sh started (by pid file), after cancelling
# the jobs still there. --purge also removes job state, logs and the
# configuration.
set -uo pipefail
state=${SLURM_STATE:-/tmp/ringmaster-slurm}
halt() {
    [[ -s $1 ]] || return 0
    local pid; pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$1"
}
if [[ -s $state/slurmctld.pid ]] && kill -0 "$(cat "$state/slurmctld.pid")" 2>/dev/null; then
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 100); do [[ -z $(squeue -h -t R,CG 2>/dev/null) ]] && break; sleep 0.1; done
fi
for f in "$state"/slurmd-*.pid; do [[ -e $f ]] && halt "$f"; done
halt "$state/slurmctld.pid"
halt /run/munge/munged.pid
if [[ ${1:-} == --purge ]]; then
    rm -rf "$state" /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/* /etc/slurm/slurm.conf /etc/slurm/gres.conf
fi
echo "[slurm-down] stopped" >&2
