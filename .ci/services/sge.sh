#!/usr/bin/env bash
# sge.sh [start|stop|status] -- a real single-node Son of Grid Engine 8.1.9
# (Debian 12 gridengine-* packages) for the integration tests, without systemd.
#
# Cell "default" (SGE_ROOT=/var/lib/gridengine; the /usr/bin clients set it
# themselves), queue all.q with IPPHPC_SGE_SLOTS (16) slots, PEs smp and mpi,
# root may run jobs, 1 s scheduling and accounting flush.
# Smoke test: a 2-task -t 1-2 array runs and qacct -j reports both tasks.
set -euo pipefail
SVC=sge
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

SLOTS=${IPPHPC_SGE_SLOTS:-16}
STATE=$IPPHPC_CI_STATE/sge
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export SGE_EXECD_PIDFILE=/run/gridengine/execd.pid
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QMASTER_PID=$SPOOL/qmaster/qmaster.pid
PKGS=(gridengine-common gridengine-client gridengine-master gridengine-exec)
ACTION=${1:-start}

sge_host() { /usr/lib/gridengine/gethostname -name 2>/dev/null || hostname; }

daemon_pids() {
    local a=- b=-
    pid_alive "$QMASTER_PID" sge_qmaster && a=$(pid_of "$QMASTER_PID")
    pid_alive "$SGE_EXECD_PIDFILE" sge_execd && b=$(pid_of "$SGE_EXECD_PIDFILE")
    echo "sge_qmaster=$a sge_execd=$b"
}

# "" when all.q@host is usable, else why not
queue_problem() {
    local h=$1 line
    line=$(qstat -f -q "all.q@$h" 2>&1 | awk -v q="all.q@$h" '$1==q') || true
    [ -n "$line" ] || { echo "queue instance all.q@$h not listed"; return; }
    # columns: queuename qtype resv/used/tot load_avg arch [states]
    set -- $line
    [ "$4" != "-NA-" ] || { echo "no load report from execd yet"; return; }
    [ -z "${6:-}" ] || echo "queue state $6"
}

do_status() {
    local pids h p
    pids=$(daemon_pids)
    if [[ $pids == *=-* ]]; then echo "$SVC: NOT running ($pids)"; return 3; fi
    h=$(sge_host)
    p=$(queue_problem "$h")
    if [ -n "$p" ]; then echo "$SVC: running ($pids) but all.q@$h not ready: $p"; return 3; fi
    echo "$SVC: running ($pids); all.q@$h $(qstat -f -q "all.q@$h" | awk -v q="all.q@$h" '$1==q {print $3}') slots (resv/used/tot)"
}

do_stop() {
    if pid_alive "$QMASTER_PID" sge_qmaster; then
        qconf -ke all >/dev/null 2>&1 || true
    fi
    stop_pid "$SGE_EXECD_PIDFILE" sge_execd 15
    stop_pid "$QMASTER_PID" sge_qmaster 30
    smoke_forget
    env_fragment_forget
    summary "stopped"
}

# The global configuration we want: root may run jobs (min_uid/min_gid 0),
# accounting is flushed every second, qdel kills the whole process group.
global_conf_filter() {
    sed -e 's/^min_uid .*/min_uid                      0/' \
        -e 's/^min_gid .*/min_gid                      0/' \
        -e 's/flush_time=[0-9:]*/flush_time=00:00:01/' \
        -e 's/^execd_params .*/execd_params                 ENABLE_ADDGRP_KILL=true/' \
        -e 's/^load_report_time .*/load_report_time             00:00:10/'
}

# qconf -m* insists on an editor: this one copies $IPPHPC_SRC over the file.
make_editor() {
    printf '#!/bin/sh\ncat "$IPPHPC_SRC" > "$1"\n' >"$WORK/editor"
    chmod 755 "$WORK/editor"
}
qc() { # run qconf quietly, die with its output on failure
    local o
    o=$(qconf "$@" 2>&1) || die "qconf $* failed: $o"
}

write_objects() {
    local h=$1
    cat >"$WORK/pe.smp" <<EOF
pe_name            smp
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
EOF
    sed -e 's/^pe_name .*/pe_name            mpi/' -e 's/\$pe_slots/$fill_up/' \
        -e 's/^control_slaves .*/control_slaves     TRUE/' "$WORK/pe.smp" >"$WORK/pe.mpi"
    cat >"$WORK/exechost" <<EOF
hostname              $h
load_scaling          NONE
complex_values        NONE
user_lists            NONE
xuser_lists           NONE
projects              NONE
xprojects             NONE
usage_scaling         NONE
report_variables      NONE
EOF
    # load_thresholds NONE: a busy 2-core box must not put the queue in alarm;
    # shell_start_mode unix_behavior: honour the job script's #! line.
    cat >"$WORK/all.q" <<EOF
qname                 all.q
hostlist              $h
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               smp mpi
rerun                 FALSE
slots                 $SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
}

smoke_test() {
    local dir out id n name
    dir=$(mktemp -d "$STATE/smoke.XXXXXX")
    name=ipphpc-ci-smoke-${dir##*.}
    printf '#!/bin/bash\necho "task $SGE_TASK_ID of $JOB_ID"\n' >"$dir/job.sh"
    chmod 755 "$dir/job.sh"
    out=$(cd "$dir" && qsub -terse -t 1-2 -cwd -j y -N "$name" -o "$dir/" "$dir/job.sh" 2>&1) \
        || die "smoke: qsub failed: $out"
    id=${out%%.*}
    [[ $id =~ ^[0-9]+$ ]] || die "smoke: unexpected qsub output: $out"
    wait_until 60 "smoke array $id to finish (qstat -j $id)" bash -c "! qstat -j $id >/dev/null 2>&1"
    n=$(cat "$dir/$name.o$id".* 2>/dev/null | grep -c "^task [12] of $id$" || true)
    [ "$n" = 2 ] || die "smoke: expected output of 2 tasks, got $n (see $dir)"
    # by (unique) job name: job numbers are not unique across re-installs
    wait_until 60 "qacct -j $name to show 2 tasks of job $id with exit_status 0" \
        bash -c "[ \"\$(qacct -j $name 2>/dev/null | grep -c '^exit_status *0')\" = 2 ]"
    rm -rf "$dir"
    SMOKE_MSG="smoke ok (array $id: 2/2 tasks in qacct)"
}

do_start() {
    need_root
    is_installed slurm-wlm-torque && die "slurm-wlm-torque is installed: it conflicts with gridengine-client (both ship qsub/qstat/qdel); remove it"
    local host fresh=0 started=() h
    host=$(hostname)
    [ -n "$host" ] || die "empty host name"
    getent hosts "$host" >/dev/null || die "host name $host does not resolve (add it to /etc/hosts)"
    local p need_install=0
    for p in "${PKGS[@]}"; do is_installed "$p" || need_install=1; done
    if [ $need_install = 1 ]; then
        # Non-interactive install: the postinst creates cell "default" with
        # this host as master.
        debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $host
EOF
        apt_install "${PKGS[@]}"
        fresh=1
    fi
    phase install

    mkdir -p "$STATE"
    WORK=$(mktemp -d)
    at_exit 'rm -rf "$WORK"'
    make_editor
    for d in $SPOOL/qmaster $SPOOL/qmaster/job_scripts $SPOOL/execd /run/gridengine; do
        install -d -m 0755 -o sgeadmin -g sgeadmin "$d"
    done
    [ -s "$COMMON/bootstrap" ] || die "$COMMON/bootstrap is missing: the gridengine-master postinst did not create the cell (dpkg-reconfigure gridengine-common, or purge and re-run)"

    # SGE insists that the name a client's address reverse-resolves to equals
    # the client's own host name. Here 127.0.0.1 -> "localhost" but the host
    # is "vm": declare them aliases (host_aliases: canonical name first).
    h=$(sge_host)
    local aliases="" n
    for n in localhost "$(/usr/lib/gridengine/gethostbyaddr -name 127.0.0.1 2>/dev/null || true)" \
        "$host" "$(hostname -f 2>/dev/null || true)" \
        "$(/usr/lib/gridengine/gethostbyaddr -name "$(getent ahostsv4 "$host" | awk '{print $1; exit}')" 2>/dev/null || true)"; do
        [ -n "$n" ] && [ "$n" != "$h" ] || continue
        [[ " $aliases " == *" $n "* ]] || aliases+=" $n"
    done
    local master_changed=0
    if echo "$h$aliases" | write_if_changed "$COMMON/host_aliases" 0644 sgeadmin:sgeadmin; then master_changed=1; fi
    if echo "$h" | write_if_changed "$COMMON/act_qmaster" 0644 sgeadmin:sgeadmin; then master_changed=1; fi
    if [ $master_changed = 1 ]; then
        log "host aliases / act_qmaster changed: restarting the daemons"
        stop_pid "$SGE_EXECD_PIDFILE" sge_execd
        stop_pid "$QMASTER_PID" sge_qmaster 30
    fi

    # On a fresh cell, write our global configuration into the spool before
    # the qmaster's first start: otherwise the first accounting flush still
    # runs on the old 15 s timer and execd must be restarted for min_uid.
    if [ $fresh = 1 ] && ! pid_alive "$QMASTER_PID" sge_qmaster; then
        global_conf_filter </usr/share/gridengine/default-configuration >"$WORK/global.seed"
        chmod 644 "$WORK/global.seed"
        chmod 755 "$WORK"
        runuser -u sgeadmin -- env SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL \
            /usr/lib/gridengine/spooldefaults configuration "$WORK/global.seed" >"$WORK/seed.log" 2>&1 \
            || warn "could not seed the global configuration offline: $(cat "$WORK/seed.log")"
    fi

    # --- qmaster
    if ! pid_alive "$QMASTER_PID" sge_qmaster; then
        # The qmaster saves its job-number counter only on a clean shutdown.
        # After a kill (e.g. the end of a CI session) it would hand out old
        # job numbers again, and `qacct -j N` would mix old and new jobs.
        local seq acct
        seq=$(tr -dc 0-9 <"$SPOOL/qmaster/jobseqnum" 2>/dev/null || true)
        acct=$(awk -F: '!/^#/ && $6+0 > m {m = $6+0} END {print m+0}' "$COMMON/accounting" 2>/dev/null || echo 0)
        if [ "${acct:-0}" -gt "${seq:-0}" ]; then
            log "job number counter $seq is behind accounting ($acct): moving it on"
            echo "$acct" | write_if_changed "$SPOOL/qmaster/jobseqnum" 0644 sgeadmin:sgeadmin || true
        fi
        run_daemon "$STATE/daemons.log" env SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL /usr/sbin/sge_qmaster \
            || die "sge_qmaster failed to start (see $SPOOL/qmaster/messages)"
        started+=(sge_qmaster)
    fi
    wait_until 60 "sge_qmaster to answer qconf (see $SPOOL/qmaster/messages)" qconf -sh
    log "sge_qmaster answers"

    # --- configuration through the qmaster (cheap when nothing changes)
    qconf -sh | grep -qx "$h" || qc -ah "$h"
    qconf -ss 2>/dev/null | grep -qx "$h" || qc -as "$h"
    local global_changed=0
    qconf -sconf global >"$WORK/global.old" || die "qconf -sconf global failed"
    global_conf_filter <"$WORK/global.old" >"$WORK/global.new"
    if ! cmp -s "$WORK/global.old" "$WORK/global.new"; then
        log "updating the global configuration"
        IPPHPC_SRC="$WORK/global.new" EDITOR="$WORK/editor" qc -mconf global
        global_changed=1
    fi
    qconf -ssconf >"$WORK/sched.old"
    sed -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
        -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
        -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' \
        "$WORK/sched.old" >"$WORK/sched.new"
    local sched_changed=0
    if ! cmp -s "$WORK/sched.old" "$WORK/sched.new"; then
        qc -Msconf "$WORK/sched.new"
        sched_changed=1
    fi
    write_objects "$h"
    for p in smp mpi; do
        if qconf -sp "$p" >/dev/null 2>&1; then qc -Mp "$WORK/pe.$p"; else qc -Ap "$WORK/pe.$p"; fi
    done
    qconf -se "$h" >/dev/null 2>&1 || qc -Ae "$WORK/exechost"
    if qconf -sq all.q >/dev/null 2>&1; then qc -Mq "$WORK/all.q"; else qc -Aq "$WORK/all.q"; fi

    # --- execd: it reads the global configuration (min_uid) only at start
    if [ $global_changed = 1 ]; then stop_pid "$SGE_EXECD_PIDFILE" sge_execd; fi
    if ! pid_alive "$SGE_EXECD_PIDFILE" sge_execd; then
        run_daemon "$STATE/daemons.log" env SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL \
            SGE_EXECD_PIDFILE="$SGE_EXECD_PIDFILE" /usr/sbin/sge_execd \
            || die "sge_execd failed to start (see $SPOOL/execd/*/messages)"
        started+=(sge_execd)
    fi
    queue_ready() {
        local why
        why=$(queue_problem "$h")
        WAIT_WHY=$why
        case $why in
            "") return 0 ;;
            *"state"*E*) qmod -c "all.q@$h" >/dev/null 2>&1 ;;      # error state from earlier runs
            *"state"*d*) qmod -e "all.q@$h" >/dev/null 2>&1 ;;      # disabled
        esac
        return 1
    }
    wait_until 90 "queue all.q@$h to become usable" queue_ready
    log "all.q@$h usable"
    # a changed schedule_interval only takes effect after the current
    # (default 15 s) scheduler cycle: trigger one now
    if [ $sched_changed = 1 ]; then qconf -tsm >/dev/null 2>&1 || true; fi
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
export SGE_ROOT=$SGE_ROOT
export SGE_CELL=$SGE_CELL
export IPPHPC_SGE_QUEUE=all.q
export IPPHPC_SGE_SLOTS=$SLOTS
export IPPHPC_SGE_PES="smp mpi"
EOF
    summary "up (${started[*]:-all already running}); all.q@$h $SLOTS slots - $SMOKE_MSG"
}

case $ACTION in
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    *) usage_error ;;
esac
