#!/usr/bin/env bash
# htcondor.sh [start|stop|status|install-project SRC_DIR] -- a real personal
# HTCondor pool (collector, negotiator, schedd, startd on 127.0.0.1:9618) for
# the integration tests.
#
# Debian 12 has no HTCondor, so the pool runs in a Debian 13 (trixie) chroot
# made with mmdebstrap (HTCondor 23.9 from Debian). The chroot shares the
# host's network and pid namespaces. Jobs run inside it, with its Python 3.13
# and the venv $VENV_IN (pyzmq, cloudpickle, ... preinstalled;
# `install-project SRC_DIR` pip-installs a source tree into it).
#
# The shared directory $IPPHPC_CI_SHARED (/tmp/ipphpc-shared, mode 1777) is
# bind-mounted at the same path inside the chroot: it plays the cluster's
# shared file system. Submit from inside it.
#
# Host shims condor_submit, condor_q, ... (in $BIN, also linked into
# /usr/local/bin) run the real tool inside the chroot as the unprivileged
# user $CUSER (uid $CUID): HTCondor refuses jobs submitted by root.
set -euo pipefail
SVC=htcondor
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

STATE=$IPPHPC_CI_STATE/htcondor
ROOT=$STATE/root                      # the trixie chroot
BIN=$STATE/bin                        # host shims
SHARED=$IPPHPC_CI_SHARED
SUITE=${IPPHPC_HTCONDOR_SUITE:-trixie}
MIRROR=${IPPHPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BOOTSTRAP=${IPPHPC_HTCONDOR_BOOTSTRAP:-mmdebstrap}   # or debootstrap
case $BOOTSTRAP in mmdebstrap | debootstrap) ;; *) die "IPPHPC_HTCONDOR_BOOTSTRAP must be mmdebstrap or debootstrap" ;; esac
CUSER=ipptest
CUID=1500
VENV_IN=/opt/ipphpc-venv              # path inside the chroot
CHROOT_PKGS="htcondor python3 python3-venv"
VENV_PKGS="pyzmq cloudpickle traitlets jinja2 pexpect tqdm hatchling"
PIDFILE_IN=/run/condor/ipphpc-master.pid
PIDFILE=$ROOT$PIDFILE_IN
TOOLS="condor_submit condor_q condor_rm condor_history condor_status condor_hold condor_release
       condor_wait condor_qedit condor_version condor_config_val condor_userlog condor_tail"
ACTION=${1:-start}

# host-side path of a file inside the chroot, refusing symlinks (an absolute
# symlink would be followed to the host's own file)
# (sets RP; called in the main shell so that die() ends the script)
rootpath() {
    RP=$ROOT$1
    [ "$(readlink -m "$RP")" = "$RP" ] || die "$RP is or passes a symlink: refusing to write through it"
}
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

# pip inside the chroot trusts the host's CA bundle (a site may intercept TLS
# with its own CA, which only the host's bundle knows) and the host's index.
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
CA_IN=/usr/local/share/ipphpc-ci/host-ca.crt
pip_in_root() {
    local env=(PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1)
    if [ -s "$HOST_CA" ]; then
        rootpath $CA_IN
        install -D -m 0644 "$HOST_CA" "$RP"
        env+=("PIP_CERT=$CA_IN")
    fi
    [ -n "${PIP_INDEX_URL:-}" ] && env+=(PIP_INDEX_URL="$PIP_INDEX_URL")
    in_root env "${env[@]}" "$VENV_IN/bin/pip" "$@"
}
as_user() { chroot --userspec=$CUID:$CUID "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin \
    HOME=/home/$CUSER USER=$CUSER LOGNAME=$CUSER LANG=C.UTF-8 "$@"; }
master_alive() { [ -x "$ROOT/usr/sbin/condor_master" ] && pid_alive "$PIDFILE" condor_master; }

# mount points we own inside the chroot, deepest first
our_mounts() { awk -v r="$ROOT/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r; }

umount_all() {
    local m
    for m in $(our_mounts); do
        umount "$m" 2>/dev/null || { warn "$m busy: lazy unmount"; umount -l "$m"; }
    done
}

# processes whose root directory is the chroot (pool daemons, jobs)
chroot_pids() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$ROOT" ] && echo "${p#/proc/}"
    done
    return 0
}

do_status() {
    if ! master_alive; then echo "$SVC: NOT running (no condor_master)"; return 3; fi
    local slots schedd
    slots=$(in_root condor_status -af Name Cpus 2>/dev/null | tr '\n' ' ' || true)
    schedd=$(in_root condor_status -schedd -af Name 2>/dev/null | head -n1 || true)
    if [ -z "$slots" ] || [ -z "$schedd" ]; then
        echo "$SVC: condor_master $(pid_of "$PIDFILE") running but pool not ready (slots: ${slots:-none}, schedd: ${schedd:-none})"
        return 3
    fi
    echo "$SVC: running (condor_master=$(pid_of "$PIDFILE")); slots: $slots; schedd $schedd; shims in $BIN; submit as $CUSER from $SHARED"
}

do_stop() {
    local p left
    if master_alive; then
        p=$(pid_of "$PIDFILE")
        log "stopping condor_master (pid $p) and its daemons"
        stop_pid "$PIDFILE" condor_master 30 QUIT
    fi
    rm -f "$PIDFILE"
    left=$(chroot_pids)
    if [ -n "$left" ]; then
        log "killing leftover processes in the chroot: $(echo $left)"
        kill $left 2>/dev/null || true
        sleep 1
        left=$(chroot_pids)
        [ -z "$left" ] || kill -9 $left 2>/dev/null || true
    fi
    umount_all
    smoke_forget
    env_fragment_forget
    summary "stopped"
}

# ----------------------------------------------------------------- build
build_chroot() {
    mkdir -p "$STATE"
    local want="$SUITE: $CHROOT_PKGS" want_base have
    have=$(cat "$STATE/built.chroot" 2>/dev/null || true)
    if [ "${have%%:*}" != "$SUITE" ] || [ ! -x "$ROOT/usr/bin/apt-get" ]; then
        if [ -e "$ROOT" ]; then
            log "removing an unfinished or outdated chroot"
            stop_pid "$PIDFILE" condor_master 30 QUIT
            umount_all
            [ -z "$(our_mounts)" ] || die "cannot unmount everything under $ROOT"
            rm -rf --one-file-system "$ROOT"
        fi
        rm -f "$STATE"/built.*
        # mmdebstrap (apt inside) is about twice as fast as debootstrap
        # followed by apt-get install, and leaves no mounts behind;
        # IPPHPC_HTCONDOR_BOOTSTRAP=debootstrap takes the classic way.
        if [ "$BOOTSTRAP" = mmdebstrap ]; then
            log "mmdebstrap $SUITE with $CHROOT_PKGS (log: $STATE/build.log)"
            mmdebstrap --mode=root --variant=minbase --include="${CHROOT_PKGS// /,}" \
                --aptopt='Acquire::Retries "3"' "$SUITE" "$ROOT" "$MIRROR" >"$STATE/build.log" 2>&1 \
                || { tail -n 20 "$STATE/build.log" >&2; die "mmdebstrap $SUITE from $MIRROR failed (log: $STATE/build.log)"; }
            want_base=$want
        else
            log "debootstrap $SUITE (log: $STATE/build.log)"
            debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$STATE/build.log" 2>&1 \
                || { tail -n 20 "$STATE/build.log" >&2; die "debootstrap $SUITE from $MIRROR failed (log: $STATE/build.log)"; }
            want_base="$SUITE: "     # the packages follow below
        fi
        [ -z "$(our_mounts)" ] || umount_all
        rootpath /usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$RP"
        chmod 755 "$RP"
        echo "$want_base" >"$STATE/built.chroot"
        phase "$BOOTSTRAP"
    fi
    rootpath /etc/resolv.conf
    cp /etc/resolv.conf "$RP" 2>/dev/null || true
    if [ "$(cat "$STATE/built.chroot")" != "$want" ]; then
        mount_basics
        log "installing $CHROOT_PKGS in the chroot"
        in_root sh -c "export DEBIAN_FRONTEND=noninteractive
            apt-get -o Acquire::Retries=3 update -q &&
            apt-get -o Acquire::Retries=3 install -y -q --no-install-recommends $CHROOT_PKGS &&
            apt-get clean" >>"$STATE/build.log" 2>&1 \
            || { tail -n 20 "$STATE/build.log" >&2; die "apt-get install in the chroot failed (log: $STATE/build.log)"; }
        echo "$want" >"$STATE/built.chroot"
        phase chroot-packages
    fi
    if [ "$(cat "$STATE/built.venv" 2>/dev/null)" != "$VENV_PKGS" ] || [ ! -x "$ROOT$VENV_IN/bin/python" ]; then
        mount_basics
        log "creating $VENV_IN in the chroot: $VENV_PKGS"
        { in_root python3 -m venv "$VENV_IN" && pip_in_root install -q $VENV_PKGS; } >>"$STATE/build.log" 2>&1 \
            || { tail -n 20 "$STATE/build.log" >&2; die "creating the venv $VENV_IN in the chroot failed (log: $STATE/build.log)"; }
        echo "$VENV_PKGS" >"$STATE/built.venv"
        phase venv
    fi
}

mount_basics() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    mountpoint -q "$ROOT/dev/pts" || mount --bind /dev/pts "$ROOT/dev/pts"
}

mount_shared() {
    install -d -m 1777 "$SHARED"
    chmod 1777 "$SHARED"
    rootpath "$SHARED"
    mkdir -p "$RP"
    # a bind mount left from before the host's directory was removed and made again points at the old one
    if mountpoint -q "$ROOT$SHARED" && [ "$(stat -c %d:%i "$SHARED")" != "$(stat -c %d:%i "$ROOT$SHARED")" ]; then
        umount -l "$ROOT$SHARED"
    fi
    mountpoint -q "$ROOT$SHARED" || mount --bind "$SHARED" "$ROOT$SHARED"
    [ "$(stat -c %d:%i "$SHARED")" = "$(stat -c %d:%i "$ROOT$SHARED")" ] \
        || die "$ROOT$SHARED is not the host's $SHARED"
}

configure() {
    local host changed=0
    host=$(hostname)
    ensure_test_user $CUSER $CUID
    ensure_test_user $CUSER $CUID "$ROOT"
    # the daemons look up this machine's name inside the chroot
    rootpath /etc/hosts
    if write_if_changed "$RP" 0644 root:root <<EOF; then changed=1; fi
127.0.0.1 localhost
127.0.1.1 $host
EOF
    # A personal pool: one machine in every role, IPv4 loopback only.
    rootpath /etc/condor/config.d/50-ipphpc-ci.config
    if write_if_changed "$RP" 0644 root:root <<'EOF'; then changed=1; fi
# Written by ipphpc .ci/services/htcondor.sh
use ROLE: CentralManager
use ROLE: Submit
use ROLE: Execute
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
BIND_ALL_INTERFACES = False
# otherwise the daemons also advertise the host's IPv6 address
ENABLE_IPV6 = False
SEC_DEFAULT_AUTHENTICATION_METHODS = FS
SEC_CLIENT_AUTHENTICATION_METHODS = FS
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_INTEGRITY = REQUIRED
ALLOW_DAEMON = condor@$(UID_DOMAIN) root@$(UID_DOMAIN)
ALLOW_NEGOTIATOR = condor@$(UID_DOMAIN) root@$(UID_DOMAIN)
ALLOW_ADMINISTRATOR = root@$(UID_DOMAIN) condor@$(UID_DOMAIN)
ALLOW_READ = *
ALLOW_WRITE = *
# 8 one-CPU job slots whatever the hardware has
NUM_CPUS = 8
# the starter cannot make a private mount namespace inside a chroot
MOUNT_UNDER_SCRATCH =
# react within seconds, not minutes
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 5
SCHEDD_MIN_INTERVAL = 1
STARTER_UPDATE_INTERVAL = 5
SHADOW_QUEUE_UPDATE_INTERVAL = 5
UPDATE_INTERVAL = 5
RUNBENCHMARKS = False
# show every user's jobs; default output is the long table, not -batch
CONDOR_Q_ONLY_MY_JOBS = False
CONDOR_Q_DASH_BATCH_IS_DEFAULT = False
EOF
    # (made from inside: /var/lock is an absolute symlink, which seen from
    # the host would point at the host's /run/lock)
    in_root sh -c 'mkdir -p /run/condor /var/lock/condor && chown condor:condor /run/condor /var/lock/condor'
    CONF_CHANGED=$changed
}

write_shims() {
    mkdir -p "$BIN"
    write_if_changed "$BIN/condor-chroot-run" 0755 root:root <<EOF || true
#!/bin/sh
# Runs a command inside the ipphpc CI HTCondor chroot ($ROOT) as user
# $CUSER (uid $CUID), in the current directory, which must be visible there
# (i.e. under $SHARED). Invoked through the condor_* links, it runs that tool.
# Written by ipphpc .ci/services/htcondor.sh.
root=$ROOT
case \${0##*/} in
    condor-chroot-run) [ \$# -gt 0 ] || { echo "usage: condor-chroot-run CMD [ARG...]" >&2; exit 2; } ;;
    *) set -- "\${0##*/}" "\$@" ;;
esac
if [ "\$(id -u)" != 0 ]; then
    echo "\$1: the HTCondor test pool is reached through chroot: run as root" >&2; exit 126
fi
if [ ! -x "\$root/usr/bin/condor_q" ]; then
    echo "\$1: the HTCondor test pool is not installed (\$root): run .ci/services/htcondor.sh" >&2; exit 127
fi
dir=\$(pwd)
if [ "\$(stat -c %d:%i "\$dir" 2>/dev/null)" != "\$(stat -c %d:%i "\$root\$dir" 2>/dev/null)" ]; then
    case \$1 in
        condor_submit|condor-chroot-run)
            echo "\$1: the current directory \$dir is not visible inside the HTCondor chroot: work under $SHARED (the shared file system)" >&2
            exit 1 ;;
    esac
    dir=/
fi
exec chroot --userspec=$CUID:$CUID "\$root" /usr/bin/env -u VIRTUAL_ENV -u PYTHONHOME -u CONDOR_CONFIG \\
    HOME=/home/$CUSER USER=$CUSER LOGNAME=$CUSER PATH=$VENV_IN/bin:/usr/local/bin:/usr/bin:/bin \\
    /bin/sh -c 'cd "\$1" || exit 1; shift; exec "\$@"' sh "\$dir" "\$@"
EOF
    local t l
    for t in $TOOLS; do
        [ "$(readlink "$BIN/$t" 2>/dev/null)" = condor-chroot-run ] || ln -sfn condor-chroot-run "$BIN/$t"
        l=/usr/local/bin/$t
        if [ -e "$l" ] || [ -L "$l" ]; then
            [ "$(readlink "$l")" = "$BIN/$t" ] && continue
            [[ "$(readlink "$l")" == "$STATE"/* ]] || die "$l exists and is not ours: not replacing it"
        fi
        ln -sfn "$BIN/$t" "$l"
    done
}

pool_ready() {
    WAIT_WHY="no slots in condor_status"
    in_root condor_status -af Name 2>/dev/null | grep -q . || return 1
    WAIT_WHY="no schedd in condor_status -schedd"
    in_root condor_status -schedd -af Name 2>/dev/null | grep -q . || return 1
    WAIT_WHY="condor_q as $CUSER failed"
    as_user condor_q -af ClusterId >/dev/null 2>&1
}

smoke_test() {
    local dir out cl n
    dir=$(mktemp -d "$SHARED/ipphpc-ci-condor-smoke.XXXXXX")
    chown $CUID:$CUID "$dir"
    cat >"$dir/job.sh" <<EOF
#!/bin/sh
exec $VENV_IN/bin/python -c 'import sys, zmq, cloudpickle; print("proc", sys.argv[1], "python%d.%d" % sys.version_info[:2], "zmq", zmq.__version__)' "\$1"
EOF
    chmod 755 "$dir/job.sh"
    # (no $(...) shell syntax in a submit file: that is HTCondor macro syntax)
    cat >"$dir/job.sub" <<'EOF'
executable = job.sh
arguments = $(Process)
output = out.$(Process)
error = err.$(Process)
log = job.log
should_transfer_files = NO
request_cpus = 1
request_memory = 64
queue 2
EOF
    out=$(cd "$dir" && "$BIN/condor_submit" -terse job.sub 2>&1) || die "smoke: condor_submit failed: $out"
    cl=${out%%.*}
    [[ $cl =~ ^[0-9]+$ ]] || die "smoke: unexpected condor_submit output: $out"
    n=$("$BIN/condor_q" -af:j JobStatus 2>/dev/null | grep -c "^$cl\." || true)
    # (if both already finished, condor_q no longer lists them: that is fine)
    wait_until 90 "cluster $cl to leave condor_q" \
        bash -c "! '$BIN/condor_q' $cl -af ProcId 2>/dev/null | grep -q ."
    wait_until 30 "condor_history to show cluster $cl as 2 x Completed" \
        bash -c "[ \"\$('$BIN/condor_history' $cl -af JobStatus ExitCode 2>/dev/null | grep -c '^4 0$')\" = 2 ]"
    [ "$(cat "$dir"/out.* 2>/dev/null | grep -c '^proc [01] python3\.[0-9]* zmq ')" = 2 ] \
        || die "smoke: unexpected job output in $dir: $(cat "$dir"/out.* "$dir"/err.* 2>&1 | head -5)"
    rm -rf "$dir"
    SMOKE_MSG="smoke ok (cluster $cl: 2 procs, $n seen in condor_q, 2 Completed in condor_history)"
}

do_start() {
    need_root
    apt_install "$BOOTSTRAP"
    phase host-packages
    build_chroot
    mount_basics
    mount_shared
    configure
    write_shims
    phase configure

    local started="already running"
    if master_alive && [ "$CONF_CHANGED" = 1 ]; then
        log "configuration changed: condor_reconfig"
        in_root condor_reconfig >/dev/null 2>&1 || warn "condor_reconfig failed"
    fi
    if ! master_alive; then
        rm -f "$PIDFILE"
        run_daemon "$STATE/master.out" chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
            LANG=C.UTF-8 /usr/sbin/condor_master -pidfile "$PIDFILE_IN" \
            || die "condor_master failed to start (see $STATE/master.out, $ROOT/var/log/condor/MasterLog)"
        started="started condor_master"
    fi
    wait_until 60 "the pool to come up (see $ROOT/var/log/condor/)" pool_ready
    master_alive || die "condor_master is not running (see $ROOT/var/log/condor/MasterLog)"
    phase daemons

    SMOKE_MSG="smoke skipped (already passed against this condor_master)"
    local key
    key="condor_master=$(pid_of "$PIDFILE")"
    if smoke_wanted "$key"; then
        smoke_test
        smoke_done "$key"
        phase smoke
    fi
    env_fragment <<EOF
export IPPHPC_HTCONDOR_BIN=$BIN
export IPPHPC_HTCONDOR_RUN=$BIN/condor-chroot-run
export IPPHPC_HTCONDOR_ROOT=$ROOT
export IPPHPC_HTCONDOR_USER=$CUSER
export IPPHPC_HTCONDOR_UID=$CUID
export IPPHPC_HTCONDOR_VENV=$VENV_IN
EOF
    summary "up ($started, HTCondor $(in_root condor_version | awk 'NR==1 {print $2}'), $(in_root condor_status -af TotalCpus | awk 'NR==1 {printf "%d", $1}') cpus); shims in $BIN (+ /usr/local/bin); submit as $CUSER ($CUID) from $SHARED; job python $VENV_IN/bin/python - $SMOKE_MSG"
}

do_install_project() {
    local src=${1:-}
    need_root
    [ -n "$src" ] && [ -f "$src/pyproject.toml" ] || die "install-project needs a source directory with a pyproject.toml (got '${src}')"
    [ -x "$ROOT$VENV_IN/bin/python" ] || die "the chroot venv $VENV_IN does not exist: run $0 start first"
    mount_basics
    local dst=/opt/ipphpc-src
    rootpath $dst
    rm -rf "$RP"
    mkdir -p "$RP"
    tar -C "$src" --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.egg-info' \
        --exclude=build --exclude=dist --exclude=.pytest_cache -cf - . | tar -C "$ROOT$dst" -xf -
    phase copy
    local logf=$STATE/install-project.log
    # hatchling is preinstalled in the venv: no build isolation, no download.
    # (pip always reinstalls a project given as a directory; missing
    # dependencies come from the index.)
    if ! pip_in_root install -q --no-build-isolation "$dst" >"$logf" 2>&1; then
        warn "build without isolation failed, retrying with an isolated build"
        pip_in_root install -q "$dst" >>"$logf" 2>&1 \
            || { tail -n 20 "$logf" >&2; die "pip install of $src into the chroot venv failed (log: $logf)"; }
    fi
    phase pip
    local name ver
    name=$(in_root "$VENV_IN/bin/python" -c "import tomllib; print(tomllib.load(open('$dst/pyproject.toml','rb'))['project']['name'])")
    ver=$(in_root "$VENV_IN/bin/pip" show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$ver" ] || die "$name does not show up in the chroot venv after pip install"
    as_user "$VENV_IN/bin/python" -c "import ${name//-/_}" \
        || die "$name is installed in the chroot venv but 'import ${name//-/_}' fails there as $CUSER"
    summary "installed $name $ver from $src into the chroot venv $VENV_IN (python $VENV_IN/bin/python inside $ROOT)"
}

case $ACTION in
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    install-project) shift; ACTION=install-project; do_install_project "$@" ;;
    *) USAGE="[start|stop|status|install-project SRC_DIR]"; usage_error ;;
esac
