#!/usr/bin/env bash
# slurm.sh [start|stop|status] -- a real single-node Slurm 22.05 (Debian 12
# packages) for the integration tests: munge, MariaDB + slurmdbd (so that
# sacct works), slurmctld and slurmd, all on 127.0.0.1, without systemd.
#
# The node advertises IPPHPC_SLURM_CPUS (16) one-CPU slots whatever the
# hardware has; partitions: debug (default) and batch. Finished jobs stay
# in squeue -t all / scontrol for IPPHPC_SLURM_MIN_JOB_AGE (600) seconds.
# Smoke test: a 2-task --array job runs and sacct reports both tasks.
set -euo pipefail
SVC=slurm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

CPUS=${IPPHPC_SLURM_CPUS:-16}
GPUS=${IPPHPC_SLURM_GPUS:-4}
MIN_JOB_AGE=${IPPHPC_SLURM_MIN_JOB_AGE:-600}
CLUSTER=ipphpc
STATE=$IPPHPC_CI_STATE/slurm
GPU_DIR=$STATE/gpu
LOGDIR=/var/log/slurm
PKGS=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server)
ACTION=${1:-start}

# name, pid file and command name of each daemon, in start order
DAEMONS=("munged /run/munge/munged.pid" "slurmdbd /run/slurmdbd.pid"
    "slurmctld /run/slurmctld.pid" "slurmd /run/slurmd.pid")

mariadb_up() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }

daemon_pids() { # "munged=1 slurmdbd=2 ..." (or "name=-")
    local d out=""
    for d in "${DAEMONS[@]}"; do
        set -- $d
        if pid_alive "$2" "$1"; then out+="$1=$(pid_of "$2") "; else out+="$1=- "; fi
    done
    echo "${out% }"
}

node_state() { sinfo -h -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1; }

do_status() {
    local pids st
    pids=$(daemon_pids)
    if [[ $pids == *=-* ]] || ! mariadb_up; then
        echo "$SVC: NOT running ($pids$(mariadb_up || echo ' mariadb=down'))"
        return 3
    fi
    st=$(node_state)
    echo "$SVC: running ($pids); node $(hostname -s) $st; partitions $(sinfo -h -o '%P' | tr '\n' ' ')"
    [[ $st =~ ^(idle|mixed|allocated|completing) ]] || return 3
}

do_stop() {
    local d i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        set -- ${DAEMONS[$i]}
        stop_pid "$2" "$1" 20
    done
    if [ -e "$STATE/mariadb-started-by-us" ] && [ -x /etc/init.d/mariadb ]; then
        log "stopping MariaDB"
        /etc/init.d/mariadb stop </dev/null >>"$STATE/mariadb-init.log" 2>&1 || warn "mariadb stop failed"
        rm -f "$STATE/mariadb-started-by-us"
    fi
    smoke_forget
    env_fragment_forget
    summary "stopped"
}

write_configs() { # sets CONF_CHANGED / DBD_CHANGED
    local node=$1 dbpass=$2
    CONF_CHANGED=0 DBD_CHANGED=0
    if write_if_changed /etc/slurm/slurm.conf 0644 root:root <<EOF; then CONF_CHANGED=1; fi
# Written by ipphpc .ci/services/slurm.sh: one node, no cgroups, loopback only.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# believe CPUs= below rather than the 2 real cores (16 one-CPU slots)
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=5
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
Waittime=0
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
GresTypes=gpu
# a node feature, so that tests can see a --constraint arrive, and GPUs
# that are character devices standing in for real ones (see gres.conf)
NodeName=$node NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 Features=ipphpc-ci Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=batch Nodes=$node Default=NO MaxTime=INFINITE State=UP
EOF
    if write_if_changed /etc/slurm/gres.conf 0644 root:root <<EOF; then CONF_CHANGED=1; fi
# Written by ipphpc .ci/services/slurm.sh: no GPU here, so $GPUS character
# devices (copies of /dev/null) play them; Slurm hands them out and sets
# CUDA_VISIBLE_DEVICES for each job as it would for real ones.
AutoDetect=off
NodeName=$node Name=gpu File=$GPU_DIR/nvidia[0-$((GPUS - 1))]
EOF
    if write_if_changed /etc/slurm/slurmdbd.conf 0600 slurm:slurm <<EOF; then DBD_CHANGED=1; fi
# Written by ipphpc .ci/services/slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
}

smoke_test() {
    local dir jid n
    dir=$(mktemp -d "$STATE/smoke.XXXXXX")
    jid=$(cd "$dir" && sbatch --parsable --array=1-2 --time=2 -J ipphpc-ci-smoke \
        -o "$dir/%A_%a.out" --wrap 'echo "task $SLURM_ARRAY_TASK_ID"' 2>&1) \
        || die "smoke: sbatch failed: $jid"
    jid=${jid%%;*}
    wait_until 60 "smoke array $jid to leave the queue" \
        bash -c "[ -z \"\$(squeue -h -j $jid 2>/dev/null)\" ]"
    n=$(cat "$dir"/*.out 2>/dev/null | grep -c '^task [12]$' || true)
    [ "$n" = 2 ] || die "smoke: expected output of 2 tasks, got $n (see $dir)"
    wait_until 60 "sacct to report array $jid as 2 x COMPLETED" \
        bash -c "[ \"\$(sacct -n -X -P -j $jid -o State | grep -c '^COMPLETED')\" = 2 ]"
    rm -rf "$dir"
    SMOKE_MSG="smoke ok (array $jid: 2/2 COMPLETED in sacct)"
}

do_start() {
    need_root
    if is_installed slurm-wlm-torque && is_installed gridengine-client; then
        die "slurm-wlm-torque and gridengine-client are both installed (they fight over qsub/qstat)"
    fi
    apt_install "${PKGS[@]}"
    phase install

    local node dbpass started=()
    node=$(hostname -s)
    [ -n "$node" ] || die "empty host name"
    getent hosts "$node" >/dev/null || die "host name $node does not resolve (add it to /etc/hosts)"
    mkdir -p "$STATE"
    install -d -m 0755 -o slurm -g slurm /var/lib/slurm /var/lib/slurm/slurmctld "$LOGDIR"
    install -d -m 0755 /var/lib/slurm/slurmd /etc/slurm
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0700 -o munge -g munge /etc/munge /var/lib/munge /var/log/munge

    # --- munge
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating munge key"
        mungekey --create --keyfile=/etc/munge/munge.key --force
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if ! pid_alive /run/munge/munged.pid munged; then
        rm -f /run/munge/munged.pid
        run_daemon /var/log/munge/ipphpc-start.log runuser -u munge -- /usr/sbin/munged \
            || die "munged failed to start (see /var/log/munge/munged.log)"
        started+=(munged)
    fi

    # --- MariaDB (for slurmdbd); its start overlaps with munge's
    if ! mariadb_up; then
        log "starting MariaDB"
        run_daemon "$STATE/mariadb-init.log" /etc/init.d/mariadb start \
            || die "MariaDB failed to start (see $STATE/mariadb-init.log, /var/log/mysql)"
        touch "$STATE/mariadb-started-by-us"
        started+=(mariadb)
    fi
    wait_until 30 "munge to issue credentials" sh -c 'munge -n | unmunge'
    wait_until 60 "MariaDB" mariadb_up

    if [ ! -s "$STATE/dbpass" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/dbpass")
    fi
    dbpass=$(cat "$STATE/dbpass")
    mysql -u root <<EOF || die "cannot set up the slurm_acct_db database in MariaDB"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$dbpass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

    # --- stand-in GPUs: character devices with /dev/null's numbers
    install -d -m 0755 "$GPU_DIR"
    local i
    for ((i = 0; i < GPUS; i++)); do
        [ -c "$GPU_DIR/nvidia$i" ] || mknod -m 0666 "$GPU_DIR/nvidia$i" c 1 3
    done

    # --- configuration; a changed file means the daemons reading it restart
    write_configs "$node" "$dbpass"
    if [ $DBD_CHANGED = 1 ]; then stop_pid /run/slurmdbd.pid slurmdbd; fi
    if [ $CONF_CHANGED = 1 ]; then
        log "slurm.conf changed"
        stop_pid /run/slurmd.pid slurmd
        stop_pid /run/slurmctld.pid slurmctld
    fi

    # --- slurmdbd, slurmctld, slurmd
    if ! pid_alive /run/slurmdbd.pid slurmdbd; then
        run_daemon "$LOGDIR/ipphpc-start.log" slurmdbd || die "slurmdbd failed to start (see $LOGDIR/slurmdbd.log)"
        started+=(slurmdbd)
    fi
    wait_until 60 "slurmdbd on port 6819 (see $LOGDIR/slurmdbd.log)" port_open 127.0.0.1 6819
    if ! pid_alive /run/slurmctld.pid slurmctld; then
        run_daemon "$LOGDIR/ipphpc-start.log" slurmctld || die "slurmctld failed to start (see $LOGDIR/slurmctld.log)"
        started+=(slurmctld)
    fi
    wait_until 60 "slurmctld to answer scontrol ping (see $LOGDIR/slurmctld.log)" scontrol ping
    log "slurmctld answers"
    if ! pid_alive /run/slurmd.pid slurmd; then
        run_daemon "$LOGDIR/ipphpc-start.log" slurmd || die "slurmd failed to start (see $LOGDIR/slurmd.log)"
        started+=(slurmd)
    fi

    node_ready() {
        case "$(node_state)" in
            idle* | mixed* | allocated* | completing*) return 0 ;;
            down* | drain* | fail*) # e.g. after an unclean stop
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                return 1 ;;
            *) return 1 ;;
        esac
    }
    wait_until 90 "node $node to become idle (see $LOGDIR/slurmd.log)" node_ready
    log "node $node idle"
    wait_until 60 "cluster $CLUSTER to register in slurmdbd" \
        bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    phase daemons

    SMOKE_MSG="smoke skipped (already passed against these daemons)"
    local key
    key=$(daemon_pids)
    if smoke_wanted "$key"; then
        smoke_test
        smoke_done "$key"
        phase smoke
    fi
    env_fragment <<EOF
export IPPHPC_SLURM_PARTITIONS="debug batch"
export IPPHPC_SLURM_CPUS=$CPUS
export IPPHPC_SLURM_GPUS=$GPUS
export IPPHPC_SLURM_MIN_JOB_AGE=$MIN_JOB_AGE
EOF
    summary "up (${started[*]:-all already running}); node $node $(node_state) $(sinfo -h -n "$node" -o %c) cpus; partitions $(sinfo -h -o %P | tr '\n' ' ')- $SMOKE_MSG"
}

case $ACTION in
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    *) usage_error ;;
esac
