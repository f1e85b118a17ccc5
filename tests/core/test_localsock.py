"""Engines and clients on the controller's host connect through Unix sockets; everyone else over TCP."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from ipphpc import Client, connection, localsock, paths

from .helpers import clean_env, wait_until

NAMES = ("client", "engine", "hb_ping", "hb_pong")


def tcp_links_to(ports: set[int]) -> int:
    """Established TCP connections of this process to any of `ports` on this host, from the kernel's tables."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) in ports and f[9] in mine:
                n += 1
    return n


def test_peers_on_this_host_use_unix_sockets(spawner, pdir) -> None:
    p, einfo, cinfo = spawner.controller(pdir, "loc", "--Controller.heartbeat_period=0.2")
    local = einfo["ipc"]["paths"]
    assert cinfo["ipc"] == einfo["ipc"] and sorted(local) == sorted(NAMES)
    ports = {**einfo["ports"], **cinfo["ports"]}
    for name, path in local.items():
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and path.endswith(f"-{ports[name]}")  # next to the TCP port it shadows
        folder = os.lstat(os.path.dirname(path))
        assert folder.st_uid == os.getuid() and stat.S_IMODE(folder.st_mode) == 0o700
    eng = spawner.engine(pdir, "loc", env=clean_env())
    with Client(paths.connection_file(pdir, "client", "loc")) as rc:
        rc.wait_for_engines(1, timeout=30)
        assert rc.url == f"ipc://{local['client']}"
        assert rc[:].apply_async(os.getpid).get(timeout=10) == [eng.pid]
        # neither the engine nor this client holds a TCP connection to the controller: the traffic is local
        assert rc[:].apply_async(tcp_links_to, set(ports.values())).get(timeout=10) == [0]
        assert tcp_links_to(set(ports.values())) == 0
        assert rc.load_balanced_view().map_sync(lambda x: x * 2, range(20)) == [2 * x for x in range(20)]
    assert spawner.stop(p) == 0
    assert [path for path in local.values() if os.path.exists(path)] == []  # the controller removed them


def test_no_ipc_keeps_everyone_on_tcp(spawner, pdir) -> None:
    _, einfo, cinfo = spawner.controller(pdir, "tcp", "--no-ipc")
    assert "ipc" not in einfo and "ipc" not in cinfo
    spawner.engine(pdir, "tcp", env=clean_env())
    ports = {*einfo["ports"].values(), *cinfo["ports"].values()}
    with Client(paths.connection_file(pdir, "client", "tcp")) as rc:
        rc.wait_for_engines(1, timeout=30)
        assert rc.url == f"tcp://127.0.0.1:{cinfo['ports']['client']}"
        assert tcp_links_to(ports) >= 1
        assert rc[:].apply_async(tcp_links_to, ports).get(timeout=10)[0] >= 1


def test_a_peer_elsewhere_connects_over_tcp(tmp_path) -> None:
    """Another host, boot or namespace (another tag), a socket gone, or a path that is not a socket: TCP."""
    d = localsock.socket_dir()
    assert d is not None
    sock_path = localsock.socket_path(0)
    import socket as pysocket
    server = pysocket.socket(pysocket.AF_UNIX)
    try:
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        server.bind(sock_path)
        info = {"ports": {"client": 4242}, "ipc": {"tag": localsock.host_tag(), "paths": {"client": sock_path}}}
        assert connection.url("127.0.0.1", info, "client") == f"ipc://{sock_path}"
        elsewhere = {**info, "ipc": {**info["ipc"], "tag": "0" * 16}}
        assert connection.url("10.1.2.3", elsewhere, "client") == "tcp://10.1.2.3:4242"
        plain = tmp_path / "not-a-socket"
        plain.write_text("")
        odd = {**info, "ipc": {**info["ipc"], "paths": {"client": str(plain)}}}
        assert connection.url("127.0.0.1", odd, "client") == "tcp://127.0.0.1:4242"
    finally:
        server.close()
        os.unlink(sock_path)
    assert connection.url("127.0.0.1", info, "client") == "tcp://127.0.0.1:4242"  # gone
    assert connection.url("127.0.0.1", {"ports": {"client": 4242}}, "client") == "tcp://127.0.0.1:4242"


def test_a_folder_others_can_enter_is_not_used(tmp_path, monkeypatch) -> None:
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = tmp_path / f"ipphpc-{os.getuid()}"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    assert localsock.socket_dir() is None and localsock.socket_path(5000) is None
    folder.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(tmp_path / "elsewhere")  # a link someone planted: not followed
    assert localsock.socket_dir() is None
    folder.unlink()
    assert localsock.socket_dir() == folder and stat.S_IMODE(folder.stat().st_mode) == 0o700
    deep = tmp_path / ("x" * 120)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    assert localsock.socket_path(5000) is None  # longer than a Unix socket's path can be


def test_controller_without_a_private_folder_says_so_and_uses_tcp(spawner, pdir, tmp_path) -> None:
    (tmp_path / f"ipphpc-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmp_path / f"ipphpc-{os.getuid()}", 0o777)
    p, einfo, _ = spawner.controller(pdir, "open", env=clean_env(TMPDIR=str(tmp_path)))
    assert "ipc" not in einfo
    log = pdir / "log" / f"ipcontroller-open-{p.pid}.log"
    wait_until(lambda: "peers on this host use TCP" in log.read_text(), 10, what="the controller's log line")
    with Client(paths.connection_file(pdir, "client", "open")) as rc:
        assert rc.url.startswith("tcp://") and rc.controller_status()["t"] == "reply"


@pytest.mark.parametrize("flag", ["--ipc", "--no-ipc"])
def test_flag_is_a_controller_trait(flag) -> None:
    from ipphpc.cli.main import build_parser, to_config
    ns, extra = build_parser().parse_known_args(["controller", flag])
    assert to_config(ns, extra, ("Controller",))["Controller"]["ipc"] is (flag == "--ipc")


def test_a_path_someone_listens_at_is_left_alone(spawner, pdir) -> None:
    """Two controllers may bind one port number on two addresses: each has its own path, and a controller
    never takes over a path another process listens at (its peers would come to the wrong controller)."""
    import socket as pysocket

    from .test_controller import _free_ports
    ports = _free_ports(4)
    assert localsock.socket_path(ports[0], "127.0.0.1") != localsock.socket_path(ports[0], "127.0.0.2")
    squatter = pysocket.socket(pysocket.AF_UNIX)
    path = localsock.socket_path(ports[0], "127.0.0.1")
    try:
        squatter.bind(path)
        squatter.listen()
        p, einfo, cinfo = spawner.controller(pdir, "busy", "--ip", "127.0.0.1", "--ports", ",".join(map(str, ports)))
        assert "ipc" not in cinfo and "ipc" not in einfo
        log = pdir / "log" / f"ipcontroller-busy-{p.pid}.log"
        wait_until(lambda: f"another process listens at {path}" in log.read_text(), 10, what="the log line")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # still there, still the squatter's
        with Client(paths.connection_file(pdir, "client", "busy")) as rc:
            assert rc.url == f"tcp://127.0.0.1:{ports[0]}"
        assert spawner.stop(p) == 0
        assert os.path.exists(path)
    finally:
        squatter.close()
        os.unlink(path)


def test_sockets_of_killed_controllers_are_swept(spawner, pdir) -> None:
    """A controller killed with SIGKILL leaves its sockets; the next one on this host removes them, and only
    them (a live controller's stay)."""
    import signal

    live, linfo, _ = spawner.controller(pdir, "live")
    killed, kinfo, _ = spawner.controller(pdir, "killed")
    assert spawner.stop(killed, signal.SIGKILL) == -signal.SIGKILL
    left = list(kinfo["ipc"]["paths"].values())
    assert all(os.path.exists(p) for p in left)  # nobody removed them
    assert localsock.sweep() == 0  # made a moment ago: perhaps by a controller between bind and listen
    for x in [*left, *linfo["ipc"]["paths"].values()]:  # old enough: only listening keeps a socket now
        os.utime(x, (time.time() - 120, time.time() - 120))
    p, _, _ = spawner.controller(pdir, "next")
    assert [x for x in left if os.path.exists(x)] == []
    assert all(os.path.exists(x) for x in linfo["ipc"]["paths"].values())
    log = pdir / "log" / f"ipcontroller-next-{p.pid}.log"
    wait_until(lambda: "Unix sockets of controllers that are gone" in log.read_text(), 10, what="the log line")
    with Client(paths.connection_file(pdir, "client", "live")) as rc:
        assert rc.url.startswith("ipc://") and rc.controller_status()["pid"] == live.pid
