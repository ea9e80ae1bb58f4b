#!/usr/bin/env bash
# A single-node SLURM on this machine, for the cluster test (and for trying profiles/slurm by hand).
#   tests/cluster/slurm.sh up STATE_DIR     start munge, slurmctld and slurmd; wait for the node
#   tests/cluster/slurm.sh down STATE_DIR   stop them by their pid files
# Needs root and Debian's slurmctld slurmd slurm-client munge (.ci/run installs them). Clients
# find the cluster through SLURM_CONF=STATE_DIR/slurm.conf. Partitions `cpu` and `gpu` (both this
# node) match profiles/slurm.
set -euo pipefail
action="${1:?up or down}"
state="$(realpath -m "${2:?state directory}")"

MUNGE_PID=/run/munge/munged.pid  # munged runs as user munge: its pid file lives in its own dir

stop() {  # by pid file (slurmctld can leave a stale one behind), then wait for them to exit
    local pids=()
    for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid" "$MUNGE_PID"; do
        if [[ -f "$pidfile" ]]; then
            pid="$(cat "$pidfile")"
            kill "$pid" 2>/dev/null && pids+=("$pid")
            rm -f "$pidfile"
        fi
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    done
}

# Job steps (srun inside a job) read the default path, not $SLURM_CONF: link it there, never
# over a real cluster's file.
SYSTEM_CONF=/etc/slurm/slurm.conf

if [[ "$action" == down ]]; then
    stop
    [[ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" == "$state/slurm.conf" ]] && rm -f "$SYSTEM_CONF"
    exit 0
fi

for tool in slurmctld slurmd sinfo sbatch munged mungekey; do
    command -v "$tool" >/dev/null || { echo "SLURM test cluster: '$tool' is not installed" \
        "(apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done
[[ "$(id -u)" == 0 ]] || { echo "SLURM test cluster: must run as root" >&2; exit 1; }
stop
mkdir -p "$state/ctld" "$state/spool" /run/munge /etc/munge
chown munge:munge /run/munge /etc/munge
[[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
runuser -u munge -- munged --pid-file="$MUNGE_PID" --force

cpus="$(nproc)"
memory="$(( $(free -m | awk '/^Mem:/ {print $2}') - 2048 ))"
cat > "$state/slurm.conf" <<CONF
ClusterName=seqarena-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
if [[ -e "$SYSTEM_CONF" && ! -L "$SYSTEM_CONF" ]]; then
    echo "SLURM test cluster: $SYSTEM_CONF exists and is not ours; refusing to replace it" >&2
    exit 1
fi
mkdir -p "$(dirname "$SYSTEM_CONF")"
ln -sfn "$state/slurm.conf" "$SYSTEM_CONF"
export SLURM_CONF="$state/slurm.conf"
slurmctld
slurmd -N localhost
for _ in $(seq 60); do
    if [[ "$(sinfo -h -N -o %T 2>/dev/null | sort -u)" == idle ]]; then
        echo "SLURM test cluster up: $cpus CPUs, ${memory} MB, SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "SLURM test cluster: the node never became idle; logs in $state" >&2
tail -20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
