"""A tunnel whose ssh process dies is opened again on the same ports, so a client (and an engine) that
tunnels to its controller goes on instead of hanging or failing."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import ipphpc
from tests.core.helpers import Spawner, kill_matching, wait_until

from .conftest import SSHEnv


def nap(s: float, marker: str = "") -> float:
    import time as _t
    if marker:
        open(marker, "w").close()
    _t.sleep(s)
    return s


@pytest.mark.ssh
def test_client_tunnel_killed_is_reopened(shim_path: SSHEnv, tmp_path) -> None:
    from ipphpc import paths
    sp = Spawner(tmp_path)
    pdir = paths.profile_dir(profile_dir=str(tmp_path / "profile"))
    try:
        _, _, cinfo = sp.controller(pdir, "tun", "--curve")  # encrypted inside the tunnel too
        assert "curve" in cinfo
        sp.engine(pdir, "tun")
        with ipphpc.Client(profile_dir=str(pdir), cluster_id="tun", sshserver=shim_path.host) as rc:
            rc.wait_for_engines(1, timeout=30)
            assert rc.url == f"tcp://127.0.0.1:{rc._tunnel.local_ports[0]}"  # not the controller's Unix socket
            marker = tmp_path / "started"
            pending = rc.load_balanced_view().apply_async(nap, 2, str(marker))
            wait_until(marker.exists, 20, what="the task to start")  # the controller has it
            old = rc._tunnel.pid
            os.kill(old, signal.SIGKILL)
            assert pending.get(timeout=20) == 2  # its result still arrives
            assert rc._tunnel.alive and rc._tunnel.pid != old
            t0 = time.monotonic()
            assert rc[:].apply_async(nap, 0).get(timeout=10) == [0]
            assert time.monotonic() - t0 < 10
    finally:
        sp.cleanup()
        left = kill_matching(str(tmp_path.resolve()))
        assert not left, f"processes left behind: {left}"


def ssh_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` and that run ssh (an engine's tunnel)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"-N" in cmd:
            out.append(int(d))
    return out


def connections_to(port: int) -> int:
    """Established TCP connections to 127.0.0.1:`port`, from the kernel's table."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            n += 1
    return n


@pytest.mark.ssh
def test_engine_tunnel_killed_is_reopened(shim_path: SSHEnv, tmp_path) -> None:
    """Tasks sent while the engine's tunnel is down are not left hanging: load-balanced ones run after it
    is back, a direct one fails saying it never reached the engine, and the engine keeps its id."""
    from ipphpc import paths
    sp = Spawner(tmp_path)
    pdir = paths.profile_dir(profile_dir=str(tmp_path / "profile"))
    try:
        _, einfo, _ = sp.controller(pdir, "etun", "--curve")
        assert "curve" in einfo
        engine = sp.engine(pdir, "etun", "--ssh", shim_path.host)
        with ipphpc.Client(profile_dir=str(pdir), cluster_id="etun") as rc:
            rc.wait_for_engines(1, timeout=30)
            (eid,) = rc.ids
            assert rc[eid].apply_async(nap, 0).get(timeout=20) == 0
            (ssh,) = wait_until(lambda: ssh_children(engine.pid), 10, what="the engine's ssh tunnel")
            marker = tmp_path / "started"
            running = rc[eid].apply_async(nap, 3, str(marker))
            wait_until(marker.exists, 20, what="the task to start")
            os.kill(ssh, signal.SIGKILL)
            port = einfo["ports"]["engine"]
            wait_until(lambda: connections_to(port) == 0, 10, what="the engine's connections to the controller "
                       "to close")
            direct = rc[eid].apply_async(nap, 0)
            balanced = rc.load_balanced_view().apply_async(nap, 0)
            assert running.get(timeout=20) == 3
            assert balanced.get(timeout=20) == 0
            with pytest.raises(ipphpc.EngineError, match=f"engine {eid} .* dropped before this task reached it"):
                direct.get(timeout=20)
            assert [p for p in ssh_children(engine.pid) if p != ssh]
            assert rc[eid].apply_async(nap, 0).get(timeout=10) == 0
            assert rc.ids == [eid]
    finally:
        sp.cleanup()
        left = kill_matching(str(tmp_path.resolve()))
        assert not left, f"processes left behind: {left}"
