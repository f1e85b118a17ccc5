"""`ipphpc controller`: files it writes, ports, --reuse, shutdown, listening on all interfaces."""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import struct

import pytest

from ipphpc import Client, paths

from .helpers import clean_env, wait_until


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _host_ipv4_addresses() -> set[str]:
    """This host's IPv4 addresses, read from the kernel per interface (independent of ipphpc.netutil)."""
    found = set()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                found.add(socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24]))  # SIOCGIFADDR
            except OSError:
                pass
    finally:
        s.close()
    return found


def test_files_pid_and_log(spawner, pdir):
    """Both connection files are 0600 and named by cluster id; a pid file and a log in log/ exist."""
    p, einfo, cinfo = spawner.controller(pdir, "c1")
    efile = pdir / "security" / "ipcontroller-c1-engine.json"
    cfile = pdir / "security" / "ipcontroller-c1-client.json"
    assert efile == paths.connection_file(pdir, "engine", "c1")
    for f in (efile, cfile):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((pdir / "security").stat().st_mode) == 0o700
    assert einfo["key"] == cinfo["key"] and len(einfo["key"]) >= 32
    assert set(einfo["ports"]) == {"engine", "hb_ping", "hb_pong"}
    assert set(cinfo["ports"]) == {"client"}
    assert einfo["cluster_id"] == "c1" and "heartbeat_period" in einfo
    pid_file = pdir / "pid" / "ipcontroller-c1.pid"
    # written right after the connection files, and not atomically: wait until it has content
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, what="the pid file")
    assert int(pid_file.read_text()) == p.pid
    log = pdir / "log" / f"ipcontroller-c1-{p.pid}.log"
    wait_until(lambda: log.exists() and "listening" in log.read_text(), 10, what="controller log")
    assert einfo["key"] not in log.read_text()
    with Client(cfile) as client:
        assert client.cluster_id == "c1"
        assert client.controller_status()["pid"] == p.pid


def test_ports_honoured(spawner, pdir):
    """--ports client,engine,hb_ping,hb_pong binds exactly those ports (over TCP: --no-ipc)."""
    ports = _free_ports(4)
    _, einfo, cinfo = spawner.controller(pdir, "ports", "--ports", ",".join(map(str, ports)), "--no-ipc")
    assert cinfo["ports"]["client"] == ports[0]
    assert [einfo["ports"][k] for k in ("engine", "hb_ping", "hb_pong")] == ports[1:]
    assert "ipc" not in einfo and "ipc" not in cinfo
    with Client(paths.connection_file(pdir, "client", "ports")) as client:
        assert client.url == f"tcp://127.0.0.1:{ports[0]}"
        assert client.controller_status()["engines"] == {}


def test_sigterm_removes_files(spawner, pdir):
    """A clean shutdown (SIGTERM) exits 0 and removes the connection files and the pid file."""
    p, _, _ = spawner.controller(pdir, "term")
    files = [paths.connection_file(pdir, r, "term") for r in ("engine", "client")]
    files.append(paths.pid_file(pdir, "ipcontroller", "term"))
    assert all(f.exists() for f in files)
    assert spawner.stop(p) == 0
    assert [f for f in files if f.exists()] == []


def test_reuse_keeps_ports_and_key_and_engines_reregister(spawner, pdir):
    """A controller restarted with --reuse has the same ports and key; a connected engine re-registers
    and a new client works."""
    cid = "reuse"
    p1, e1, c1 = spawner.controller(pdir, cid, "--reuse", "--Controller.heartbeat_period=0.2")
    eng = spawner.engine(pdir, cid, "--controller-timeout", "60", env=clean_env())
    cfile = paths.connection_file(pdir, "client", cid)
    with Client(cfile) as client:
        client.wait_for_engines(1, timeout=20)
        (eid,) = client.ids
        engine_pid = client[eid].apply_sync(os.getpid)
    assert engine_pid == eng.pid

    assert spawner.stop(p1) == 0
    # reused files stay, the pid file goes
    assert paths.connection_file(pdir, "engine", cid).exists() and cfile.exists()
    assert not paths.pid_file(pdir, "ipcontroller", cid).exists()
    assert eng.poll() is None

    p2, e2, c2 = spawner.controller(pdir, cid, "--reuse", "--Controller.heartbeat_period=0.2")
    assert p2.pid != p1.pid
    assert e2["key"] == e1["key"] and c2["key"] == c1["key"]
    assert e2["ports"] == e1["ports"] and c2["ports"] == c1["ports"]
    assert e2["ipc"] == e1["ipc"]  # the engine, connected through its Unix socket, finds it at the same path
    with Client(cfile) as client:
        client.wait_for_engines(1, timeout=20)
        (eid2,) = client.ids
        assert client[eid2].apply_sync(os.getpid) == engine_pid
        assert client.engines[eid2]["pid"] == engine_pid
    assert spawner.stop(p2) == 0
    assert cfile.exists()  # reused: kept for the next restart


def test_client_connected_before_reuse_restart_keeps_working(spawner, pdir):
    """A client that was connected before a --reuse restart can still run tasks afterwards (or at least
    gets an error), instead of having its tasks dropped silently."""
    cid = "reuse-client"
    p1, _, _ = spawner.controller(pdir, cid, "--reuse", "--Controller.heartbeat_period=0.2")
    eng = spawner.engine(pdir, cid, "--controller-timeout", "60", env=clean_env())
    cfile = paths.connection_file(pdir, "client", cid)
    with Client(cfile) as old:
        old.wait_for_engines(1, timeout=20)
        assert old[old.ids[0]].apply_sync(os.getpid) == eng.pid
        assert spawner.stop(p1) == 0
        spawner.controller(pdir, cid, "--reuse", "--Controller.heartbeat_period=0.2")
        with Client(cfile) as fresh:  # the engine is back
            fresh.wait_for_engines(1, timeout=20)
            eid = fresh.ids[0]
        wait_until(lambda: eid in old.ids, 10, what="the old client to list the engine")
        ar = old[eid].apply_async(os.getpid)
        try:
            assert ar.get(timeout=5) == eng.pid
        except TimeoutError:
            pytest.fail("a task from a client connected before the restart got no answer at all")
        # the synchronous channel of before the restart is replaced by one the new controller knows
        assert old[eid].apply_sync(os.getpid) == eng.pid


def test_ip_wildcard_lists_host_addresses(spawner, pdir):
    """--ip '*' advertises every address of the host, not only loopback, and clients connect through it."""
    _, einfo, cinfo = spawner.controller(pdir, "wild", "--ip", "*", "--no-ipc")  # the client picks a TCP address
    assert einfo["bind_ip"] == "*"
    assert "127.0.0.1" in einfo["addresses"]
    others = _host_ipv4_addresses() - {a for a in _host_ipv4_addresses() if a.startswith("127.")}
    if not others:
        pytest.skip("this host has only loopback addresses")
    assert others <= set(einfo["addresses"]), (others, einfo["addresses"])
    assert not einfo["addresses"][0].startswith("127.")
    assert cinfo["addresses"] == einfo["addresses"]
    # every advertised interface accepts connections, not only the one a client happens to pick
    for addr in sorted(others):
        for port in [cinfo["ports"]["client"], *einfo["ports"].values()]:
            socket.create_connection((addr, port), timeout=5).close()
    with Client(paths.connection_file(pdir, "client", "wild")) as client:
        assert any(f"//{a}:" in client.url for a in einfo["addresses"])
        assert client.controller_status()["t"] == "reply"


def test_loopback_by_default(spawner, pdir):
    """Without --ip the controller listens on and advertises 127.0.0.1 only."""
    _, einfo, _ = spawner.controller(pdir, "lo")
    assert einfo["addresses"] == ["127.0.0.1"]
    others = [a for a in _host_ipv4_addresses() if not a.startswith("127.")]
    if others:
        s = socket.socket()
        s.settimeout(2)
        try:
            with pytest.raises(OSError):
                s.connect((others[0], einfo["ports"]["engine"]))
        finally:
            s.close()


def test_busy_port_fails_clearly(spawner, pdir):
    """A port already in use makes the controller exit non-zero with a message naming the port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        p = spawner.ipphpc("controller", "--profile-dir", str(pdir), "--cluster-id", "busy",
                           "--ports", f"{port},0,0,0", name="busy")
        code = p.wait(20)
        _, err = spawner.output(p)
    finally:
        holder.close()
    assert code != 0
    assert str(port) in err and "--ports" in err
    assert not paths.connection_file(pdir, "client", "busy").exists()


def test_unreachable_controller_is_explained(spawner, pdir):
    """A client or engine that cannot reach the controller names the address, why it failed, and the fix:
    a stale file of a controller that died here says so; a loopback-only controller says --ip='*'."""
    import json

    from ipphpc.error import ControllerUnreachable

    p, einfo, cinfo = spawner.controller(pdir, "gone")
    saved = {role: paths.connection_file(pdir, role, "gone").read_text() for role in ("client", "engine")}
    spawner.stop(p, signal.SIGKILL)  # no clean shutdown: the files stay behind, as after a crash
    for role, text in saved.items():
        paths.connection_file(pdir, role, "gone").write_text(text)
    port = cinfo["ports"]["client"]
    with pytest.raises(ControllerUnreachable) as info:
        Client(paths.connection_file(pdir, "client", "gone"), timeout=1)
    msg = str(info.value)
    assert f"127.0.0.1:{port} (connection refused: nothing listens there)" in msg
    assert f"pid {p.pid} on this host) is no longer running: the file is stale" in msg

    engine = spawner.engine(pdir, "gone", "--Engine.register_timeout=1", "--log-to-stderr")
    assert engine.wait(30) != 0
    _, err = spawner.output(engine)
    assert f"127.0.0.1:{einfo['ports']['engine']} (connection refused" in err and "the file is stale" in err

    # written on another host: the loopback address cannot be the controller's, so the fix is --ip='*'
    path = paths.connection_file(pdir, "client", "gone")
    path.write_text(json.dumps({**json.loads(saved["client"]), "host": "elsewhere"}))
    with pytest.raises(ControllerUnreachable, match=r"listens on loopback only.*--ip='\*'"):
        Client(path, timeout=1)
