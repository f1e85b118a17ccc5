# shellcheck shell=bash
# Helpers shared by the .ci/services/*.sh scripts. Sourced, never executed.
#
# A script sets SVC=<name> and then sources this file. It gets:
#   log/die/warn        timestamped messages on stderr (die exits 1)
#   phase NAME          close the running phase and record its duration
#   summary TEXT        the final one-line summary on stdout
#   apt_install PKG...  install what is missing (serialised between scripts)
#   pid_alive, stop_pid, wait_until, port_open, run_daemon, write_if_changed
#   smoke_wanted/smoke_done  decide whether the smoke test must run again

IPPHPC_CI_STATE=${IPPHPC_CI_STATE:-/var/lib/ipphpc-ci}
IPPHPC_CI_SHARED=${IPPHPC_CI_SHARED:-/tmp/ipphpc-shared}
# auto: smoke-test after a daemon was (re)started; always; never
IPPHPC_CI_SMOKE=${IPPHPC_CI_SMOKE:-auto}
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
SYS_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# A command failing under `set -e` outside die() still ends with a FAILED
# summary line naming it (the ERR trap only records; the EXIT trap reports).
set -E
_LAST_ERR=""
_REPORTED=0
_EXIT_HOOKS=()
trap '_LAST_ERR="${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR
at_exit() { _EXIT_HOOKS+=("$1"); }
_on_exit() {
    local rc=$? h
    for h in "${_EXIT_HOOKS[@]}"; do eval "$h" || true; done
    if [ $rc != 0 ] && [ $_REPORTED = 0 ]; then
        printf '[%s %6s] ERROR: unexpected failure (exit %s) at %s\n' "$SVC" "$(elapsed)" "$rc" "${_LAST_ERR:-?}" >&2
        printf '%s: %s FAILED after %s: exit %s at %s\n' "$SVC" "${ACTION:-start}" "$(elapsed)" "$rc" "${_LAST_ERR:-?}"
    fi
}
trap _on_exit EXIT

_now_us() { local t=${EPOCHREALTIME//[.,]/}; echo "$t"; }
_T0=$(_now_us)
_PHASE_T0=$_T0
PHASES=()

_fmt_secs() { # microseconds -> "12.3s"
    local us=$1
    printf '%d.%ds' $((us / 1000000)) $(((us / 100000) % 10))
}
elapsed() { _fmt_secs $(($(_now_us) - _T0)); }

log() { printf '[%s %6s] %s\n' "$SVC" "$(elapsed)" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
    _REPORTED=1
    printf '[%s %6s] ERROR: %s\n' "$SVC" "$(elapsed)" "$*" >&2
    printf '%s: %s FAILED after %s: %s\n' "$SVC" "${ACTION:-start}" "$(elapsed)" "$*"
    exit 1
}

phase() { # phase NAME: record the time since the previous phase under NAME
    local now
    now=$(_now_us)
    PHASES+=("$1 $(_fmt_secs $((now - _PHASE_T0)))")
    _PHASE_T0=$now
}
summary() { # summary TEXT: the one line a caller (all.sh) reports
    local p=""
    [ ${#PHASES[@]} -gt 0 ] && p=" [$(IFS=,; echo "${PHASES[*]}" | sed 's/,/, /g')]"
    printf '%s: %s\n' "$SVC" "$* in $(elapsed)$p"
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"; }

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# apt_install PKG...: install the missing ones. Scripts started in parallel by
# all.sh serialise here on a lock, so that only one apt/dpkg runs at a time and
# the temporary policy-rc.d of one is not removed under another's feet.
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)
apt_install() {
    local missing=() p own_policy=0 rc=0
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    mkdir -p "$IPPHPC_CI_STATE"
    exec 9>"$IPPHPC_CI_STATE/apt.lock"
    flock 9
    missing=()
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        # Keep maintainer scripts from starting daemons (no systemd here; the
        # scripts start what they need themselves).
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            own_policy=1
        fi
        # one `apt-get update` per 30 minutes is enough for all the scripts
        if [ -z "$(find "$IPPHPC_CI_STATE/apt.updated" -mmin -30 2>/dev/null)" ]; then
            log "apt-get update"
            if apt-get "${APT_OPTS[@]}" update -qq >"$IPPHPC_CI_STATE/apt.log" 2>&1; then
                touch "$IPPHPC_CI_STATE/apt.updated"
            else
                rc=$?
            fi
        fi
        if [ $rc = 0 ]; then
            log "apt-get install ${missing[*]}"
            apt-get "${APT_OPTS[@]}" install -y -qq --no-install-recommends "${missing[@]}" \
                >>"$IPPHPC_CI_STATE/apt.log" 2>&1 || rc=$?
        fi
        [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    fi
    flock -u 9
    exec 9>&-
    [ $rc = 0 ] || { tail -n 20 "$IPPHPC_CI_STATE/apt.log" >&2; die "apt-get failed for: ${missing[*]} (log: $IPPHPC_CI_STATE/apt.log)"; }
}

# pid_alive PIDFILE COMM: the pid in PIDFILE is alive and its command is COMM
pid_alive() {
    local f=$1 comm=$2 p
    [ -s "$f" ] || return 1
    p=$(head -n1 "$f" 2>/dev/null | tr -dc 0-9)
    [ -n "$p" ] && proc_running "$p" || return 1
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ]
}
# proc_running PID: exists and is not a zombie waiting to be reaped
proc_running() {
    local st
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
pid_of() { head -n1 "$1" 2>/dev/null | tr -dc 0-9; }

# stop_pid PIDFILE COMM [SECONDS] [SIGNAL]: signal, wait, then SIGKILL; remove the file
stop_pid() {
    local f=$1 comm=$2 secs=${3:-15} sig=${4:-TERM} p i
    if pid_alive "$f" "$comm"; then
        p=$(pid_of "$f")
        log "stopping $comm (pid $p)"
        kill -s "$sig" "$p" 2>/dev/null || true
        for ((i = 0; i < secs * 10; i++)); do
            proc_running "$p" || break
            sleep 0.1
        done
        if proc_running "$p"; then
            warn "$comm (pid $p) did not exit in ${secs}s: SIGKILL"
            kill -9 "$p" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$f"
}

# wait_until SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s (CMD may set
# WAIT_WHY to say what it saw last; it is shown on timeout)
wait_until() {
    local secs=$1 what=$2 end
    shift 2
    end=$(($(_now_us) + secs * 1000000))
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        [ "$(_now_us)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what${WAIT_WHY:+ (last seen: $WAIT_WHY)}"
        sleep 0.2
    done
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# run_daemon LOG CMD...: start a self-daemonising program with a clean
# environment (jobs inherit a daemon's environment) and no tie to our stdio.
run_daemon() {
    local logf=$1
    shift
    env -i PATH="$SYS_PATH" LANG=C.UTF-8 HOME=/root "$@" </dev/null >>"$logf" 2>&1
}

# write_if_changed DEST MODE OWNER:GROUP < content; returns 0 if DEST changed
write_if_changed() {
    local dst=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if cmp -s "$tmp" "$dst" 2>/dev/null; then
        rm -f "$tmp"
        return 1
    fi
    install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$dst"
    rm -f "$tmp"
    return 0
}

# smoke_wanted KEY: should the smoke test run? KEY identifies the running
# daemons (their pids); with IPPHPC_CI_SMOKE=auto a test that already passed
# against exactly these daemons is not repeated.
smoke_wanted() {
    case $IPPHPC_CI_SMOKE in
        never) return 1 ;;
        always) return 0 ;;
    esac
    [ "$(cat "$IPPHPC_CI_STATE/$SVC.smoke-ok" 2>/dev/null)" != "$1" ]
}
smoke_done() { mkdir -p "$IPPHPC_CI_STATE"; echo "$1" >"$IPPHPC_CI_STATE/$SVC.smoke-ok"; }
smoke_forget() { rm -f "$IPPHPC_CI_STATE/$SVC.smoke-ok"; }

# ensure_test_user NAME UID [ROOTDIR]: an ordinary user with a fixed uid/gid,
# on the host or inside a chroot (same number on both sides)
ensure_test_user() {
    local name=$1 uid=$2 root=${3:-}
    local pre=()
    [ -n "$root" ] && pre=(chroot "$root")
    if ! "${pre[@]}" getent group "$name" >/dev/null; then
        "${pre[@]}" groupadd -g "$uid" "$name" || die "cannot create group $name ($uid)${root:+ in $root}"
    fi
    if ! "${pre[@]}" getent passwd "$name" >/dev/null; then
        "${pre[@]}" useradd -m -u "$uid" -g "$uid" -s /bin/bash "$name" \
            || die "cannot create user $name ($uid)${root:+ in $root}"
    fi
    [ "$("${pre[@]}" id -u "$name")" = "$uid" ] \
        || die "user $name exists${root:+ in $root} with uid $("${pre[@]}" id -u "$name"), expected $uid"
}

# env_fragment < lines: the exports all.sh puts into env.sh for this service
env_fragment() { mkdir -p "$IPPHPC_CI_STATE/env.d"; cat >"$IPPHPC_CI_STATE/env.d/$SVC.sh"; }
env_fragment_forget() { rm -f "$IPPHPC_CI_STATE/env.d/$SVC.sh"; }

usage_error() { _REPORTED=1; echo "usage: $0 ${USAGE:-[start|stop|status]}" >&2; exit 2; }
