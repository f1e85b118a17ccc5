#!/usr/bin/env bash
# all.sh [start|stop|status|env] [SERVICE...] -- start (stop, check) every
# test service: slurm sge htcondor sshd netns mpi podman (or only those named).
#
# start runs the services' scripts in parallel (their apt-get runs are
# serialised on a lock; netns waits for sshd, whose keys it uses), prints each
# one's summary line and the total time, and writes $ENVFILE:
#   IPPHPC_CI_SERVICES="slurm sge ..."   the services that are up
#   plus each service's paths (ssh config, HTCondor shims, shared dir, ...).
# Tests source it and must FAIL, not skip, when a declared service is missing.
# Exit status: 0 when every requested service is up, 1 otherwise (env.sh is
# written either way, listing only what is up). Per-service logs are in
# $LOGDIR. `env` only rewrites env.sh from the services' status.
#   VENV=...  the venv mpi.sh installs into (default: the repo's .venv)
set -euo pipefail
SVC=all
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

ALL=(slurm sge htcondor sshd netns mpi podman)
ENVFILE=$HERE/env.sh
LOGDIR=$IPPHPC_CI_STATE/logs
ACTION=${1:-start}
[ $# -gt 0 ] && shift
case $ACTION in start | stop | status | env) ;; *) USAGE="[start|stop|status|env] [${ALL[*]}]"; usage_error ;; esac

SEL=()
if [ $# -eq 0 ]; then
    SEL=("${ALL[@]}")
else
    for s in "$@"; do
        [[ " ${ALL[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${ALL[*]})"
    done
    for s in "${ALL[@]}"; do [[ " $* " == *" $s "* ]] && SEL+=("$s"); done
fi
selected() { [[ " ${SEL[*]} " == *" $1 "* ]]; }

declare -A OK=()

write_env() { # from OK[]: the services that are up
    local s up=() tmp
    for s in "${ALL[@]}"; do [ "${OK[$s]:-0}" = 1 ] && up+=("$s"); done
    tmp=$(mktemp "$HERE/.env.sh.XXXXXX")
    {
        echo "# Written by .ci/services/all.sh at $(date -u +%Y-%m-%dT%H:%M:%SZ): the test services up on this machine."
        echo "# Tests must fail, not skip, when a service listed here does not work."
        echo "export IPPHPC_CI_SERVICES=\"${up[*]}\""
        echo "export IPPHPC_CI_SHARED_DIR=$IPPHPC_CI_SHARED"
        echo "export IPPHPC_CI_STATE=$IPPHPC_CI_STATE"
        for s in "${up[@]}"; do
            [ -s "$IPPHPC_CI_STATE/env.d/$s.sh" ] || continue
            echo "# $s"
            cat "$IPPHPC_CI_STATE/env.d/$s.sh"
        done
    } >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$ENVFILE"
    ENV_UP="${up[*]}"
}

status_of() { "$HERE/$1.sh" status >"$LOGDIR/$1.status" 2>&1; }

# OK[] for services outside the selection: whatever their status says
fill_unselected() {
    local s
    for s in "${ALL[@]}"; do
        selected "$s" && continue
        if status_of "$s"; then OK[$s]=1; else OK[$s]=0; fi
    done
}

run_start() { # run_start SVC: in the background job; writes LOGDIR/SVC.rc
    local s=$1 rc=0
    if [ "$s" = mpi ]; then
        "$HERE/mpi.sh" start ${VENV:+"$VENV"} >"$LOGDIR/$s.log" 2>&1 || rc=$?
    else
        "$HERE/$s.sh" start >"$LOGDIR/$s.log" 2>&1 || rc=$?
    fi
    echo $rc >"$LOGDIR/$s.rc"
}

report() { # report SVC RC: its summary line, and the log's tail on failure
    local s=$1 rc=$2 line
    line=$(grep -a "^$s: " "$LOGDIR/$s.log" 2>/dev/null | tail -n1 || true)
    echo "  ${line:-$s: no summary line (exit $rc)}"
    if [ "$rc" != 0 ]; then
        echo "  ---- last lines of $LOGDIR/$s.log ----"
        tail -n 15 "$LOGDIR/$s.log" 2>/dev/null | sed 's/^/  | /'
    fi
}

do_start() {
    need_root
    mkdir -p "$LOGDIR"
    local s pids=() failed=()
    rm -f "$LOGDIR"/*.rc
    # HTCondor's chroot build is the longest chain: give it its one host
    # package before the others queue up on the apt lock for half a minute.
    if selected htcondor; then apt_install "${IPPHPC_HTCONDOR_BOOTSTRAP:-mmdebstrap}"; fi
    # in the order slurm, sge, htcondor, podman, (sshd then netns), mpi
    for s in slurm sge htcondor podman; do
        selected "$s" && { run_start "$s" & pids+=($!); }
    done
    if selected sshd || selected netns; then
        { selected sshd && run_start sshd; selected netns && run_start netns; true; } &
        pids+=($!)
    fi
    selected mpi && { run_start mpi & pids+=($!); }
    for p in "${pids[@]}"; do wait "$p" || true; done
    phase start

    echo "services:"
    for s in "${SEL[@]}"; do
        local rc
        rc=$(cat "$LOGDIR/$s.rc" 2>/dev/null || echo 99)
        report "$s" "$rc"
        if [ "$rc" = 0 ]; then OK[$s]=1; else OK[$s]=0; failed+=("$s"); fi
    done
    fill_unselected
    write_env
    if [ ${#failed[@]} -gt 0 ]; then
        _REPORTED=1
        summary "FAILED: ${failed[*]} (up: ${ENV_UP:-none}); env written to $ENVFILE; logs in $LOGDIR"
        exit 1
    fi
    summary "up: $ENV_UP; env written to $ENVFILE"
}

do_stop() {
    need_root
    mkdir -p "$LOGDIR"
    local s pids=() failed=()
    for s in "${SEL[@]}"; do
        { rc=0; "$HERE/$s.sh" stop >"$LOGDIR/$s.stop.log" 2>&1 || rc=$?; echo $rc >"$LOGDIR/$s.stop.rc"; } &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    echo "services:"
    for s in "${SEL[@]}"; do
        local rc
        rc=$(cat "$LOGDIR/$s.stop.rc" 2>/dev/null || echo 99)
        echo "  $(grep -a "^$s: " "$LOGDIR/$s.stop.log" | tail -n1 || echo "$s: stop exit $rc")"
        [ "$rc" = 0 ] || failed+=("$s")
        OK[$s]=0
    done
    fill_unselected
    write_env
    [ ${#failed[@]} -eq 0 ] || { _REPORTED=1; summary "stop FAILED for: ${failed[*]}"; exit 1; }
    summary "stopped: ${SEL[*]}; still up: ${ENV_UP:-none}; env rewritten"
}

do_status() {
    local s bad=()
    mkdir -p "$LOGDIR"
    for s in "${SEL[@]}"; do
        if status_of "$s"; then :; else bad+=("$s"); fi
        sed 's/^/  /' "$LOGDIR/$s.status"
    done
    [ ${#bad[@]} -eq 0 ] || { echo "all: NOT up: ${bad[*]}"; return 3; }
    echo "all: up: ${SEL[*]}"
}

case $ACTION in
    start) do_start ;;
    stop) do_stop ;;
    status) _REPORTED=1; do_status ;;
    env)
        mkdir -p "$LOGDIR"
        SEL=()
        fill_unselected
        write_env
        summary "env written to $ENVFILE: IPPHPC_CI_SERVICES=\"$ENV_UP\""
        ;;
esac
