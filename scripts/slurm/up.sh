#!/usr/bin/env bash
# A Slurm cluster on this machine for the Slurm tests: munge, slurmctld and
# SLURM_NODES slurmd daemons (n1..nN, all on 127.0.0.1; Debian's Slurm is
# built with multiple-slurmd support). Debian packages, root, no systemd.
# Safe to run again: installs what is missing, rewrites the configuration
# and restarts the daemons only when it changed or one is not running.
#   SLURM_NODES=2                 how many nodes (default 2)
#   SLURM_STATE=/tmp/ringmaster-slurm   pid files and logs
#   SLURM_FAKE_GPUS=2             GPUs per node declared as GRES (gpu:fake:N,
#                                 /dev/null look-alikes), so GPU batch
#                                 scripts pass `sbatch --test-only` (default 2)
# scripts/slurm/down.sh stops it.
set -euo pipefail
nodes=${SLURM_NODES:-2}
gpus=${SLURM_FAKE_GPUS:-2}
state=${SLURM_STATE:-/tmp/ringmaster-slurm}
conf=/etc/slurm/slurm.conf
say() { echo "[slurm-up] $*" >&2; }
running() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
halt() {
    running "$1" || return 0
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

need=()
for pkg in munge slurm-client slurmctld slurmd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
    say "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# munge: a key, its directories, the daemon.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! running /run/munge/munged.pid; then
    say "starting munged"
    rm -f /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null

# The configuration: every node is this machine, on its own slurmd port.
install -d -o slurm -g slurm -m 0755 "$state" /var/lib/slurm/slurmctld
install -d /etc/slurm /var/lib/slurm/slurmd
host=$(hostname -s)
hw=$(slurmd -C | head -n 1 | cut -d' ' -f2-)   # CPUs=.. ... RealMemory=..
# Fake GPUs: Slurm wants each gres File= to be a character device; these
# are /dev/null look-alikes (char 1:3). Nothing opens them.
gres_types="" node_gres="" gres_conf=""
if ((gpus > 0)); then
    mkdir -p "$state/fakegpu"
    for ((g = 0; g < gpus; g++)); do
        [[ -c $state/fakegpu/nvidia$g ]] || { rm -f "$state/fakegpu/nvidia$g"; mknod -m 666 "$state/fakegpu/nvidia$g" c 1 3; }
    done
    gres_types="GresTypes=gpu"
    node_gres="Gres=gpu:fake:$gpus"
    for ((i = 1; i <= nodes; i++)); do
        gres_conf+="NodeName=n$i Name=gpu Type=fake File=$state/fakegpu/nvidia[0-$((gpus - 1))]"$'\n'
    done
fi
want=$(mktemp)
cat >"$want" <<EOF
# Written by ringmaster's scripts/slurm/up.sh.
ClusterName=ringmaster-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# also how long a requeued job waits before it may start again
AuthInfo=cred_expire=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=${state}/slurmctld.pid
SlurmdPidFile=${state}/slurmd-%n.pid
SlurmctldLogFile=${state}/slurmctld.log
SlurmdLogFile=${state}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
# Slurm's default: a real program (a PyTorch script saving its checkpoint
# and tearing gloo down) needs seconds between the SIGTERM and its exit.
KillWait=30
MinJobAge=600
SlurmdTimeout=30
SlurmctldTimeout=30
${gres_types}
InactiveLimit=0
Waittime=0
EOF
for ((i = 1; i <= nodes; i++)); do
    echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) $hw $node_gres State=UNKNOWN" >>"$want"
done
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1" >>"$want"
echo "PartitionName=high Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10" >>"$want"
want_gres=$(mktemp)
printf '%s' "$gres_conf" >"$want_gres"
if ! cmp -s "$want" "$conf" || ! cmp -s "$want_gres" /etc/slurm/gres.conf; then
    say "configuration changed: restarting the daemons"
    for f in "$state"/slurmd-*.pid; do [[ -e $f ]] && halt "$f"; done
    halt "$state/slurmctld.pid"
    install -m 0644 "$want" "$conf"
    install -m 0644 "$want_gres" /etc/slurm/gres.conf
fi
rm -f "$want" "$want_gres"

if ! running "$state/slurmctld.pid"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld -i
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
for ((i = 1; i <= nodes; i++)); do
    install -d "/var/lib/slurm/slurmd/n$i"
    if ! running "$state/slurmd-n$i.pid"; then
        say "starting slurmd n$i"
        /usr/sbin/slurmd -N "n$i"
    fi
done

# Every node schedulable (a node left down by an earlier run is resumed).
usable='^(idle|mixed|allocated|completing)'
for _ in $(seq 300); do
    [[ -z $(sinfo -h -N -o '%T' 2>/dev/null | grep -Ev "$usable") ]] && break
    sleep 0.1
done
for n in $(sinfo -h -N -o '%N %T' | awk '$2 ~ /^(down|drain)/ {print $1}'); do
    scontrol update NodeName="$n" State=RESUME || true
done
if [[ -n $(sinfo -h -N -o '%T' | grep -Ev "$usable") ]]; then
    say "nodes not ready:"; sinfo -N >&2; tail -n 20 "$state"/*.log >&2; exit 1
fi
say "ready: $(sinfo -h -o '%P %D %T %N' | tr '\n' ' ')"
