#!/usr/bin/env bash
# sshd.sh [start|stop|status|prepare] -- a private OpenSSH server for the
# tests on 127.0.0.1:$PORT (2222), with its own host key and a client key,
# and an ssh client configuration plus an `ssh` shim that uses it.
#
#   ssh -F $DIR/ssh_config testhost CMD       (or: PATH=$DIR/bin:$PATH ssh testhost CMD)
#
# Any local user may log in with the client key (root by default). The
# Debian package is installed without ever starting the system sshd on :22.
# `prepare` installs and writes keys and configuration without starting the
# daemon (netns.sh uses it).
set -euo pipefail
SVC=sshd
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"

DIR=$IPPHPC_CI_STATE/ssh
PORT=${IPPHPC_SSHD_PORT:-2222}
LISTEN=127.0.0.1
PIDFILE=$DIR/sshd.pid
ACTION=${1:-start}

# write_sshd_config FILE PIDFILE PORT ADDR...: one sshd instance's configuration
write_sshd_config() {
    local f=$1 pidf=$2 port=$3 a
    shift 3
    {
        echo "# Written by ipphpc .ci/services (test sshd; keys in $DIR)"
        echo "Port $port"
        for a in "$@"; do echo "ListenAddress $a"; done
        cat <<EOF
HostKey $DIR/ssh_host_ed25519_key
PidFile $pidf
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
GatewayPorts no
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 200:30:400
MaxSessions 200
LogLevel INFO
Subsystem sftp internal-sftp
EOF
    } | write_if_changed "$f" 0644 root:root
}

prepare() {
    need_root
    if ! is_installed openssh-server; then
        # Debian's init script would start a system sshd on port 22 unless
        # this file exists (and policy-rc.d says no): we only want ours.
        mkdir -p /etc/ssh
        touch /etc/ssh/sshd_not_to_be_run
        apt_install openssh-server openssh-client
    fi
    [ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing after installing openssh-server"
    install -d -m 0700 "$DIR"
    install -d -m 0755 "$DIR/bin" "$DIR/ssh_config.d" /run/sshd
    [ -s "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C ipphpc-ci-host -f "$DIR/ssh_host_ed25519_key"
    [ -s "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ipphpc-ci-client -f "$DIR/id_ed25519"
    write_if_changed "$DIR/authorized_keys" 0644 root:root <"$DIR/id_ed25519.pub" || true
    CONF_CHANGED=0
    if write_sshd_config "$DIR/sshd_config" "$PIDFILE" "$PORT" "$LISTEN"; then CONF_CHANGED=1; fi
    # Client side. First value wins in ssh_config: specific hosts first, then
    # the included fragments (netns.sh adds its hosts there), then defaults.
    write_if_changed "$DIR/ssh_config" 0644 root:root <<EOF || true
# Written by ipphpc .ci/services/sshd.sh: client configuration for the test sshds
Include $DIR/ssh_config.d/*.conf
Host testhost
    HostName $LISTEN
Host testhost $LISTEN localhost
    Port $PORT
Host *
    User root
    IdentityFile $DIR/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 5
    ServerAliveInterval 15
EOF
    # OpenSSH reads ~/.ssh/config from the passwd entry's home, not $HOME, so
    # code that runs a plain `ssh` (pyzmq tunnels, mpiexec) is pointed at this
    # configuration by putting the shim directory first on PATH.
    local t
    for t in ssh scp sftp; do
        write_if_changed "$DIR/bin/$t" 0755 root:root <<EOF || true
#!/bin/sh
# $t with the ipphpc CI test configuration (written by .ci/services/sshd.sh).
# IPPHPC_SSH_IGNORE_HUP=1: ignore SIGHUP (a background tunnel started from a
# pty that closes early would otherwise die with it).
[ "\${IPPHPC_SSH_IGNORE_HUP:-0}" = 1 ] && trap '' HUP
exec /usr/bin/$t -F $DIR/ssh_config "\$@"
EOF
    done
    /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd -t rejects $DIR/sshd_config"
}

login_ok() { timeout 10 /usr/bin/ssh -F "$DIR/ssh_config" testhost true </dev/null >/dev/null 2>&1; }

do_status() {
    if ! pid_alive "$PIDFILE" sshd; then echo "$SVC: NOT running"; return 3; fi
    if ! login_ok; then echo "$SVC: sshd $(pid_of "$PIDFILE") running but key login to testhost fails"; return 3; fi
    echo "$SVC: running (sshd=$(pid_of "$PIDFILE") on $LISTEN:$PORT); ssh -F $DIR/ssh_config testhost, or PATH=$DIR/bin:\$PATH"
}

do_stop() {
    stop_pid "$PIDFILE" sshd 10
    smoke_forget
    env_fragment_forget
    summary "stopped"
}

do_start() {
    prepare
    phase prepare
    local started="already running"
    if pid_alive "$PIDFILE" sshd && [ "$CONF_CHANGED" = 1 ]; then
        log "configuration changed: reloading sshd"
        kill -HUP "$(pid_of "$PIDFILE")"
        sleep 0.3
    fi
    if ! pid_alive "$PIDFILE" sshd; then
        port_open $LISTEN "$PORT" && die "port $LISTEN:$PORT is taken by another program"
        rm -f "$PIDFILE"
        # without -D sshd daemonises and writes its PidFile
        run_daemon "$DIR/sshd.out" /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log" \
            || die "sshd failed to start (see $DIR/sshd.out, $DIR/sshd.log)"
        started="started sshd"
    fi
    wait_until 15 "key login to testhost ($LISTEN:$PORT; see $DIR/sshd.log)" login_ok
    phase daemon
    local out
    out=$(timeout 10 "$DIR/bin/ssh" testhost 'echo "$USER@$(hostname)"' </dev/null 2>&1) \
        || die "ssh through the shim failed: $out"
    env_fragment <<EOF
export IPPHPC_SSH_CONFIG=$DIR/ssh_config
export IPPHPC_SSH_BIN=$DIR/bin
export IPPHPC_SSH_KEY=$DIR/id_ed25519
export IPPHPC_SSH_HOST=testhost
export IPPHPC_SSHD_ADDR=$LISTEN
export IPPHPC_SSHD_PORT=$PORT
EOF
    summary "up ($started, pid $(pid_of "$PIDFILE"), $LISTEN:$PORT; '$DIR/bin/ssh testhost' -> $out); config $DIR/ssh_config, key $DIR/id_ed25519"
}

case $ACTION in
    start) do_start ;;
    prepare) prepare; summary "prepared (keys and configuration in $DIR)" ;;
    stop) need_root; do_stop ;;
    status) _REPORTED=1; do_status ;;
    *) USAGE="[start|stop|status|prepare]"; usage_error ;;
esac
