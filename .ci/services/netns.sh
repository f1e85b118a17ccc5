#!/usr/bin/env bash
# netns.sh [start|stop|status|exec NODE CMD...] -- three emulated hosts in
# network namespaces, for tests of what crosses a network:
#
#   ipp-ctl  10.201.1.1 ==== 10.201.1.2  ipp-login  10.201.2.1 ==== 10.201.2.2  ipp-compute
#   (workstation /         (login node: sshd on both          (compute node:
#    controller)            addresses, NO forwarding)          sshd)
#
# compute has no route to ctl: the only way between them is ssh through
# login. The namespaces are linked only to each other (never to the root
# namespace or a real interface), so nothing leaves them.
# Host names (ctl, login, login-ext, login-int, compute) come from
# /etc/netns/<ns>/hosts; from compute, "login" is the login node's inner
# address. sshd (key and client configuration from sshd.sh, port 22) runs in
# login and compute with its own host name (UTS namespace), so an ssh session
# there sees `hostname` = login / compute.
#
#   ip netns exec ipp-ctl ssh -F <ssh_config> login hostname
#   .ci/services/netns.sh exec ctl CMD...     (also sets the host name)
set -euo pipefail
SVC=netns
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

SSHDIR=$IPPHPC_CI_STATE/ssh
STATE=$IPPHPC_CI_STATE/netns
NODES=(ctl login compute)
ACTION=${1:-start}

ns_of() { echo "ipp-$1"; }
ns_exists() { [ -e "/run/netns/$1" ] && ip netns exec "$1" true 2>/dev/null; }

hosts_for() { # hosts_for NODE: the /etc/hosts that node sees
    local self
    case $1 in ctl) self=10.201.1.1 ;; login) self=10.201.1.2 ;; compute) self=10.201.2.2 ;; esac
    echo "# Written by ipphpc .ci/services/netns.sh: the view from node $1"
    echo "127.0.0.1 localhost"
    echo "10.201.1.1 ctl"
    if [ "$1" = compute ]; then
        echo "10.201.2.1 login login-int"
        echo "10.201.1.2 login-ext"
    else
        echo "10.201.1.2 login login-ext"
        echo "10.201.2.1 login-int"
    fi
    echo "10.201.2.2 compute"
    # processes started with a plain `ip netns exec` keep the machine's name
    echo "$self $(hostname)"
}

# veth NS1 IF1 NS2 IF2: a cable between two namespaces
veth() {
    ip -n "$1" link show "$2" >/dev/null 2>&1 && return 0
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
}

setup_namespaces() {
    local n ns
    for n in "${NODES[@]}"; do
        ns=$(ns_of "$n")
        if ! ns_exists "$ns"; then
            ip netns del "$ns" 2>/dev/null || true
            ip netns add "$ns" || die "ip netns add $ns failed"
            CREATED+=("$ns")
        fi
        ip -n "$ns" link set lo up
        mkdir -p "/etc/netns/$ns"
        hosts_for "$n" | write_if_changed "/etc/netns/$ns/hosts" 0644 root:root || true
    done
    veth ipp-ctl v-ctl ipp-login v-login-ext
    veth ipp-login v-login-int ipp-compute v-compute
    ip -n ipp-ctl addr replace 10.201.1.1/24 dev v-ctl
    ip -n ipp-login addr replace 10.201.1.2/24 dev v-login-ext
    ip -n ipp-login addr replace 10.201.2.1/24 dev v-login-int
    ip -n ipp-compute addr replace 10.201.2.2/24 dev v-compute
    ip -n ipp-ctl link set v-ctl up
    ip -n ipp-login link set v-login-ext up
    ip -n ipp-login link set v-login-int up
    ip -n ipp-compute link set v-compute up
    # the login node must not route between its two networks
    ip netns exec ipp-login sysctl -qw net.ipv4.ip_forward=0
}

sshd_pidfile() { echo "$STATE/sshd-$1.pid"; }

start_sshd() { # start_sshd NODE ADDR...
    local node=$1 ns pidf cfg changed=0
    shift
    ns=$(ns_of "$node")
    pidf=$(sshd_pidfile "$node")
    cfg=$STATE/sshd_config-$node
    # reuse sshd.sh's configuration writer through its output: same keys
    if sed -e '/^Port /d' -e '/^ListenAddress /d' -e '/^PidFile /d' -e '/^#/d' "$SSHDIR/sshd_config" \
        | { echo "# Written by ipphpc .ci/services/netns.sh: sshd of node $node"
            echo "Port 22"; for a in "$@"; do echo "ListenAddress $a"; done
            echo "PidFile $pidf"; cat; } | write_if_changed "$cfg" 0644 root:root; then changed=1; fi
    if pid_alive "$pidf" sshd && [ $changed = 1 ]; then stop_pid "$pidf" sshd 5; fi
    if ! pid_alive "$pidf" sshd; then
        rm -f "$pidf"
        # own UTS namespace: sessions on this node see its host name
        run_daemon "$STATE/sshd-$node.out" ip netns exec "$ns" unshare --uts \
            sh -c "hostname $node && exec /usr/sbin/sshd -f $cfg -E $STATE/sshd-$node.log" \
            || die "sshd in $ns failed to start (see $STATE/sshd-$node.out, $STATE/sshd-$node.log)"
        STARTED+=("sshd@$node")
    fi
}

on() { # on NODE CMD...: run CMD in NODE's namespace
    local ns
    ns=$(ns_of "$1")
    shift
    ip netns exec "$ns" "$@"
}
ssh_from() { # ssh_from NODE HOST CMD...
    local n=$1
    shift
    on "$n" timeout 15 /usr/bin/ssh -F "$SSHDIR/ssh_config" "$@" </dev/null
}
unreachable() { # unreachable NODE ADDR: a TCP connect fails at once
    ! on "$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/22" 2>/dev/null
}

check() {
    local out
    out=$(ssh_from ctl login hostname 2>&1) && [ "$out" = login ] || die "ctl -> ssh login: $out"
    out=$(ssh_from compute login hostname 2>&1) && [ "$out" = login ] || die "compute -> ssh login: $out"
    out=$(ssh_from login compute hostname 2>&1) && [ "$out" = compute ] || die "login -> ssh compute: $out"
    out=$(ssh_from ctl -J login compute hostname 2>&1) && [ "$out" = compute ] || die "ctl -> ssh -J login compute: $out"
    unreachable compute 10.201.1.1 || die "compute can reach ctl (10.201.1.1): the login node forwards?"
    unreachable ctl 10.201.2.2 || die "ctl can reach compute (10.201.2.2) directly"
    CHECK_MSG="ssh ctl->login, compute->login, login->compute, ctl-(login)->compute ok; compute->ctl unreachable"
}

all_pids() {
    local n out=""
    for n in login compute; do
        pid_alive "$(sshd_pidfile $n)" sshd && out+="sshd@$n=$(pid_of "$(sshd_pidfile $n)") " || out+="sshd@$n=- "
    done
    echo "${out% }"
}

write_ssh_fragment() {
    # port 22 for the emulated hosts in the shared client configuration
    install -d -m 0755 "$SSHDIR/ssh_config.d"
    write_if_changed "$SSHDIR/ssh_config.d/netns.conf" 0644 root:root <<'EOF' || true
# Written by ipphpc .ci/services/netns.sh: the emulated hosts' sshd listen on 22
Host ctl login login-ext login-int compute 10.201.*
    Port 22
EOF
}

do_status() {
    local n missing=()
    for n in "${NODES[@]}"; do ns_exists "$(ns_of "$n")" || missing+=("$(ns_of "$n")"); done
    if [ ${#missing[@]} -gt 0 ]; then echo "$SVC: NOT set up (missing ${missing[*]})"; return 3; fi
    local pids
    pids=$(all_pids)
    if [[ $pids == *=-* ]]; then echo "$SVC: namespaces up but not every sshd runs ($pids)"; return 3; fi
    echo "$SVC: running (ipp-ctl ipp-login ipp-compute; $pids); ip netns exec ipp-ctl ssh -F $SSHDIR/ssh_config login"
}

do_stop() {
    local n
    for n in login compute; do stop_pid "$(sshd_pidfile $n)" sshd 5; done
    for n in "${NODES[@]}"; do
        if [ -e "/run/netns/$(ns_of "$n")" ]; then
            # nothing of ours may be left inside
            local pids
            pids=$(ip netns pids "$(ns_of "$n")" 2>/dev/null || true)
            [ -z "$pids" ] || { log "killing processes left in $(ns_of "$n"): $(echo $pids)"; kill $pids 2>/dev/null || true; sleep 0.5; }
            ip netns del "$(ns_of "$n")" || warn "ip netns del $(ns_of "$n") failed"
        fi
        rm -rf "/etc/netns/$(ns_of "$n")"
    done
    rm -f "$SSHDIR/ssh_config.d/netns.conf"
    smoke_forget
    env_fragment_forget
    summary "stopped (namespaces deleted)"
}

do_start() {
    need_root
    command -v ip >/dev/null || apt_install iproute2
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    if [ ! -s "$SSHDIR/sshd_config" ] || [ ! -s "$SSHDIR/id_ed25519" ]; then
        log "no test ssh keys yet: running sshd.sh prepare"
        "$HERE/sshd.sh" prepare >/dev/null || die "sshd.sh prepare failed"
    fi
    install -d -m 0755 "$STATE" /run/sshd
    CREATED=() STARTED=()
    setup_namespaces
    write_ssh_fragment
    start_sshd login 10.201.1.2 10.201.2.1
    start_sshd compute 10.201.2.2
    wait_until 15 "sshd on login and compute" bash -c \
        "ip netns exec ipp-ctl bash -c 'exec 3<>/dev/tcp/10.201.1.2/22' && ip netns exec ipp-login bash -c 'exec 3<>/dev/tcp/10.201.2.2/22'"
    phase setup
    CHECK_MSG="checks skipped (already passed against these sshds)"
    local key
    key=$(all_pids)
    if smoke_wanted "$key"; then
        check
        smoke_done "$key"
        phase check
    fi
    local what="${CREATED[*]} ${STARTED[*]}"
    [ -n "${what// /}" ] || what="all already up"
    env_fragment <<EOF
export IPPHPC_NETNS_CTL=ipp-ctl
export IPPHPC_NETNS_LOGIN=ipp-login
export IPPHPC_NETNS_COMPUTE=ipp-compute
export IPPHPC_NETNS_CTL_ADDR=10.201.1.1
export IPPHPC_NETNS_LOGIN_ADDR=10.201.1.2
export IPPHPC_NETNS_LOGIN_INT_ADDR=10.201.2.1
export IPPHPC_NETNS_COMPUTE_ADDR=10.201.2.2
EOF
    summary "up (${what# }); ctl 10.201.1.1 | login 10.201.1.2 + 10.201.2.1 | compute 10.201.2.2 - $CHECK_MSG"
}

case $ACTION in
    start) do_start ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    exec)
        shift
        [ $# -ge 2 ] || { USAGE="exec ctl|login|compute CMD [ARG...]"; usage_error; }
        node=$1
        shift
        case $node in ctl | login | compute) ;; *) die "unknown node '$node' (ctl, login, compute)" ;; esac
        _REPORTED=1
        exec ip netns exec "$(ns_of "$node")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
        ;;
    *) USAGE="[start|stop|status|exec NODE CMD...]"; usage_error ;;
esac
