"""SSH tunnels against the test sshd on 127.0.0.1:2222: forwarding, errors, prompts, reaping."""
from __future__ import annotations

import io
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq

from ipphpc.ssh import SSHServer, SSHTunnelError, Tunnel, open_tunnel

from .conftest import FAKE_SSH, PY, SSHEnv, alive, procs_matching, wait_until


# -- parsing (no services) -------------------------------------------------------------------------
@pytest.mark.parametrize("spec,host,user,port", [
    ("login.node", "login.node", "", None),
    ("alice@login.node", "login.node", "alice", None),
    ("alice@login.node:2222", "login.node", "alice", 2222),
    ("login:22", "login", "", 22),
    ("ssh://bob@10.0.0.1:2200", "10.0.0.1", "bob", 2200),
    ("[::1]:2222", "::1", "", 2222),
    ("u@[fe80::1]", "fe80::1", "u", None),
])
def test_server_forms(spec: str, host: str, user: str, port: int | None) -> None:
    s = SSHServer.parse(spec)
    assert (s.host, s.user, s.port) == (host, user, port)
    assert SSHServer.parse(str(s)) == s
    assert s.args() == (["-p", str(port)] if port else [])
    assert s.destination == (f"{user}@{host}" if user else host)


@pytest.mark.parametrize("bad", ["", "alice@", "host:abc"])
def test_server_bad_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="user@"):
        SSHServer.parse(bad)


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture
def routers():
    """Three zmq ROUTER sockets on loopback: what a controller's engine-facing ports look like."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.ROUTER) for _ in range(3)]
    ports = [s.bind_to_random_port("tcp://127.0.0.1") for s in socks]
    yield socks, ports
    for s in socks:
        s.close(0)
    ctx.term()


def roundtrip(router: zmq.Socket, local_port: int, payload: bytes) -> bytes:
    ctx = zmq.Context.instance()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.connect(f"tcp://127.0.0.1:{local_port}")
    try:
        d.send(payload)
        assert router.poll(5000), f"nothing arrived through the tunnel on local port {local_port}"
        ident, msg = router.recv_multipart()
        router.send_multipart([ident, msg + b"!"])
        assert d.poll(5000), "no answer came back through the tunnel"
        return d.recv()
    finally:
        d.close(0)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


# -- key login -------------------------------------------------------------------------------------
@pytest.mark.ssh
def test_one_ssh_process_forwards_all_ports(shim_path: SSHEnv, routers) -> None:
    socks, ports = routers
    t = open_tunnel(shim_path.host, [("127.0.0.1", p) for p in ports], timeout=15)
    try:
        assert t.alive and not t.interactive
        args = cmdline(t.pid)
        assert args.count("-L") == 3 and "-N" in args and "ExitOnForwardFailure=yes" in args
        assert os.getpgid(t.pid) == t.pid, "ssh must lead its own process group"
        for sock, lp, p in zip(socks, t.local_ports, ports):
            assert t.local_port("127.0.0.1", p) == lp
            assert roundtrip(sock, lp, b"hello") == b"hello!"
    finally:
        t.close()
    assert not alive(t.pid or -1) and not t.alive


@pytest.mark.ssh
def test_user_host_port_form_and_keyfile(sshenv: SSHEnv, routers) -> None:
    """No configuration file at all: user@host:port and the key are what make the login work."""
    socks, ports = routers
    bare = ["/usr/bin/ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    server = f"root@{os.environ['IPPHPC_SSHD_ADDR']}:{os.environ['IPPHPC_SSHD_PORT']}"
    with Tunnel(server, [("127.0.0.1", ports[0])], keyfile=sshenv.key, ssh_cmd=bare, timeout=15) as t:
        assert roundtrip(socks[0], t.local_ports[0], b"k") == b"k!"
        args = cmdline(t.pid)
        assert args[args.index("-i") + 1] == sshenv.key
        assert args[args.index("-p") + 1] == os.environ["IPPHPC_SSHD_PORT"] and args[-1] == server.split(":")[0]
    t0 = time.monotonic()
    with pytest.raises(SSHTunnelError) as ei:
        open_tunnel(server, [("127.0.0.1", ports[0])], ssh_cmd=bare, timeout=15, prompts=False)
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "Permission denied" in msg and "--sshkey" in msg and server in msg


@pytest.mark.ssh
def test_far_end_refused_is_reported(shim_path: SSHEnv) -> None:
    """The ssh server accepts the forward but cannot connect onwards: say so, do not hang."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(SSHTunnelError, match=f"cannot connect to 127.0.0.1:{closed}.*--location"):
        open_tunnel(shim_path.host, [("127.0.0.1", closed)], timeout=2)
    assert time.monotonic() - t0 < 6
    assert not [p for p in procs_matching(f":127.0.0.1:{closed}") if "ssh" in p[1]]


@pytest.mark.ssh
def test_unknown_server_quotes_ssh(shim_path: SSHEnv) -> None:
    t0 = time.monotonic()
    with pytest.raises(SSHTunnelError) as ei:
        open_tunnel("no-such-host.invalid", [("127.0.0.1", 9)], timeout=10)
    assert time.monotonic() - t0 < 8
    assert "Could not resolve hostname" in str(ei.value) and "ssh said:" in str(ei.value)


@pytest.mark.ssh
def test_setup_time(shim_path: SSHEnv, routers) -> None:
    """How long an engine waits for its tunnel (key login, three ports, far end answering)."""
    socks, ports = routers
    times = []
    for _ in range(5):
        with Tunnel(shim_path.host, [("127.0.0.1", p) for p in ports], timeout=15) as t:
            times.append(t.setup_time)
    print(f"\ntunnel set-up (key login, 3 ports): median {statistics.median(times):.3f} s, "
          f"min {min(times):.3f} s, max {max(times):.3f} s over {len(times)}")
    assert max(times) < 5.0


# -- prompts (a stand-in ssh that asks like a password-only server) --------------------------------
@pytest.fixture
def fake_ssh(shim_path: SSHEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    log = tmp_path / "fake_ssh.log"
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("FAKE_SSH_PASSWORD", "s3cret pass")
    monkeypatch.setenv("FAKE_SSH_REAL", os.path.join(shim_path.bin, "ssh"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # never a terminal: getpass must not be reached
    return ["sh", str(FAKE_SSH)], log


@pytest.mark.ssh
def test_prompts_answered_with_callback(fake_ssh, routers) -> None:
    cmd, log = fake_ssh
    socks, ports = routers
    asked: list[str] = []

    def password(prompt: str) -> str:
        asked.append(prompt)
        return "s3cret pass"
    with Tunnel("testhost", [("127.0.0.1", ports[0])], ssh_cmd=cmd, password=password, timeout=15) as t:
        assert t.interactive
        assert roundtrip(socks[0], t.local_ports[0], b"p") == b"p!"
        pid = t.pid
        assert os.getpgid(pid) == pid
    assert log.read_text().split() == ["batch", "hostkey:yes", "password:ok"]
    assert asked == ["root@127.0.0.1's password:"]
    wait_until(lambda: not alive(pid), 5, "the ssh under the pty to exit")


@pytest.mark.ssh
def test_password_from_environment(fake_ssh, routers, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd, log = fake_ssh
    socks, ports = routers
    monkeypatch.setenv("IPPHPC_SSH_PASSWORD", "s3cret pass")
    with Tunnel("testhost", [("127.0.0.1", p) for p in ports], ssh_cmd=cmd, timeout=15) as t:
        assert all(roundtrip(s, lp, b"e") == b"e!" for s, lp in zip(socks, t.local_ports))
    assert log.read_text().split()[-1] == "password:ok"


@pytest.mark.ssh
def test_wrong_password_fails_clearly(fake_ssh, routers) -> None:
    cmd, log = fake_ssh
    _, ports = routers
    t = Tunnel("testhost", [("127.0.0.1", ports[0])], ssh_cmd=cmd, password="wrong", timeout=15)
    t0 = time.monotonic()
    with pytest.raises(SSHTunnelError, match="password was rejected") as ei:
        t.open()
    assert time.monotonic() - t0 < 5
    assert "Permission denied, please try again" in str(ei.value)
    assert log.read_text().split() == ["batch", "hostkey:yes", "password:wrong"]
    assert t.pid is None


@pytest.mark.ssh
def test_no_password_available(fake_ssh, routers) -> None:
    cmd, _ = fake_ssh
    _, ports = routers
    with pytest.raises(SSHTunnelError, match="IPPHPC_SSH_PASSWORD"):
        open_tunnel("testhost", [("127.0.0.1", ports[0])], ssh_cmd=cmd, timeout=15)


@pytest.mark.ssh
def test_unknown_host_key_refused_when_asked_to(fake_ssh, routers) -> None:
    cmd, log = fake_ssh
    _, ports = routers
    with pytest.raises(SSHTunnelError, match="host key is not known"):
        open_tunnel("testhost", [("127.0.0.1", ports[0])], ssh_cmd=cmd, password="s3cret pass", timeout=15,
                    accept_new_host_key=False)
    assert log.read_text().split() == ["batch"]


# -- ownership and reaping -------------------------------------------------------------------------
def _owner_script(ports: list[int], end: str) -> str:
    return textwrap.dedent(f"""
        import os, signal, sys
        from ipphpc.ssh import open_tunnel
        t = open_tunnel("testhost", [("127.0.0.1", p) for p in {ports!r}], timeout=15)
        print(t.pid, flush=True)
        {end}
    """)


@pytest.mark.ssh
@pytest.mark.parametrize("end", ["sys.exit(0)", "os.kill(os.getpid(), signal.SIGKILL)"],
                         ids=["atexit", "owner-killed"])
def test_tunnel_dies_with_its_owner(shim_path: SSHEnv, routers, end: str) -> None:
    _, ports = routers
    r = subprocess.run([PY, "-c", _owner_script(ports, end)], capture_output=True, text=True, timeout=30)
    pid = int(r.stdout.split()[0])
    wait_until(lambda: not alive(pid), 5, f"ssh {pid} to go after its owner ended ({end})")


@pytest.mark.ssh
def test_forked_child_leaves_the_tunnel_alone(shim_path: SSHEnv, routers) -> None:
    socks, ports = routers
    with Tunnel(shim_path.host, [("127.0.0.1", ports[0])], timeout=15) as t:
        child = os.fork()
        if child == 0:
            t.close()
            os._exit(0)
        os.waitpid(child, 0)
        assert t.alive
        assert roundtrip(socks[0], t.local_ports[0], b"f") == b"f!"


@pytest.mark.ssh
def test_reopen_keeps_the_local_ports(shim_path: SSHEnv, routers) -> None:
    socks, ports = routers
    t = open_tunnel(shim_path.host, [("127.0.0.1", p) for p in ports], timeout=15)
    try:
        before, pid = list(t.local_ports), t.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not t.alive, 10, what="the ssh process to die")
        t.reopen()
        assert t.alive and t.pid != pid and t.local_ports == before
    finally:
        t.close()
