#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, to try `hydra/launcher=slurm` and to test it (tests/integration).
#
#   scripts/slurm_local.sh start    # install slurm-wlm + munge if missing (apt, as root), write the config, start
#                                   # munged, slurmctld, slurmd; wait until `sinfo` shows the node idle
#   scripts/slurm_local.sh status   # what runs, and sinfo
#   scripts/slurm_local.sh stop     # stop only what `start` started; remove the config it wrote
#
# No systemd, no cgroups: processes are tracked with proctrack/linuxproc, no task plugin, no accounting (so `sacct`
# fails: node-run says once what that means). One node, named after this machine, with the CPUs and memory that
# `slurmd -C` finds; one partition `local`. Jobs run as the submitting user; run it as root (the daemons need it).
# Everything it writes lives under $STATE (default /var/tmp/node-run-slurm) except the config, which SLURM's tools
# read from its default place, /etc/slurm/slurm.conf (an existing config that this script did not write is never
# touched: then it refuses). `start` on a cluster that already answers does nothing.
set -euo pipefail
STATE=${NODE_RUN_SLURM_STATE:-/var/tmp/node-run-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by node-run scripts/slurm_local.sh"
WAIT_S=${NODE_RUN_SLURM_WAIT_S:-90}

say() { echo "slurm_local: $*"; }
fail() { echo "slurm_local: cannot start SLURM: $*" >&2; exit 1; }
answers() { timeout 10 sinfo -h -o %t >/dev/null 2>&1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sinfo >/dev/null && return 0
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and this is not root (apt-get needs root)"
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get here"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >"$STATE/apt.log" 2>&1 || fail "apt-get update failed (see $STATE/apt.log)"
    apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$STATE/apt.log" 2>&1 \
        || fail "apt-get install slurm-wlm munge failed (see $STATE/apt.log)"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munged already runs: using it"
        return 0
    fi
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
                                     chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || fail "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$STATE/munged.pid"
}

write_config() {
    local node host
    node=$(slurmd -C | head -1)                    # NodeName=HOST CPUs=N ... RealMemory=MB, as slurmd sees them
    host=$(echo "$node" | sed -n 's/^NodeName=\([^ ]*\).*/\1/p')
    [ -n "$host" ] || fail "slurmd -C printed no NodeName"
    if [ -e "$CONF" ] && ! head -1 "$CONF" | grep -qF "$MARK"; then
        fail "$CONF exists and was not written by this script: start that cluster, or move the file away"
    fi
    mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
    cat >"$CONF" <<EOF
$MARK ($(date -Is)); removed by: scripts/slurm_local.sh stop
ClusterName=noderun
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no systemd, no cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# a requeued job waits cred_expire seconds (default 120) before it may start again, and pending jobs are looked at
# every sched_interval/bf_interval seconds (default 60/30): shorter here, so a requeue takes seconds, not minutes
AuthInfo=cred_expire=20
SchedulerParameters=sched_interval=5,bf_interval=5
ReturnToService=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if [ -f "$CONF" ] && answers; then
        say "a SLURM cluster already answers (sinfo): nothing started"
        sinfo
        return 0
    fi
    mkdir -p "$STATE"
    install_packages
    [ "$(id -u)" = 0 ] || fail "the daemons need root; run: sudo $0 start"
    write_config
    trap 'stop >&2' EXIT   # a start that fails stops what it started
    start_munge
    alive "$STATE/slurmctld.pid" || slurmctld || fail "slurmctld did not start (see $STATE/slurmctld.log)"
    alive "$STATE/slurmd.pid" || slurmd || fail "slurmd did not start (see $STATE/slurmd.log)"
    local node state
    node=$(slurmd -C | sed -n 's/^NodeName=\([^ ]*\).*/\1/p')
    for _ in $(seq "$WAIT_S"); do
        state=$(timeout 10 sinfo -h -n "$node" -o %t 2>/dev/null || true)
        case "$state" in idle|mix|alloc) break ;; esac   # mix/alloc: jobs of an earlier start still run
        sleep 1
    done
    case "$state" in idle|mix|alloc) ;; *) fail "node $node is '${state:-not answering}' after ${WAIT_S} s (see $STATE/*.log)" ;; esac
    trap - EXIT
    say "cluster up: node $node $state ($(sinfo -h -o '%c CPUs, %m MB' -n "$node")); stop it with: $0 stop"
}

stop() {
    local name jobs
    if alive "$STATE/slurmctld.pid"; then      # our cluster: end its jobs first (their processes belong to slurmd)
        jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs: $(echo $jobs)"
            scancel $jobs || true
            for _ in $(seq 40); do [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && break; sleep 1; done
        fi
    fi
    for name in slurmd slurmctld munged; do       # only what start started (its pid files under $STATE)
        if alive "$STATE/$name.pid"; then
            kill "$(cat "$STATE/$name.pid")"
            for _ in $(seq 50); do alive "$STATE/$name.pid" || break; sleep 0.1; done
            say "stopped $name"
        fi
        rm -f "$STATE/$name.pid"
    done
    if [ -f "$CONF" ] && head -1 "$CONF" | grep -qF "$MARK"; then
        rm -f "$CONF"
    fi
}

status() {
    local name
    for name in munged slurmctld slurmd; do
        if alive "$STATE/$name.pid"; then say "$name runs (pid $(cat "$STATE/$name.pid"), started by this script)"
        else say "$name: not started by this script"; fi
    done
    if answers; then sinfo; else say "no SLURM cluster answers"; return 1; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
