"""CurveZMQ: on by default when the controller listens beyond loopback, the public key in the connection
files, the secret key kept apart, and a socket without the key gets nothing from any port."""
from __future__ import annotations

import os
import stat
import time

import pytest
import zmq

from ipphpc import Client, connection, paths
from ipphpc.netutil import is_loopback
from ipphpc.wire import Session

from .helpers import clean_env, wait_until


def _silent(sock: zmq.Socket, seconds: float) -> bool:
    """True when nothing arrives on `sock` within `seconds`."""
    return not sock.poll(seconds * 1000)


def test_loopback_is_not_encrypted_unless_asked(spawner, pdir) -> None:
    _, einfo, cinfo = spawner.controller(pdir, "plain")
    assert "curve" not in einfo and "curve" not in cinfo
    _, einfo, _ = spawner.controller(pdir, "asked", "--curve")
    assert len(einfo["curve"]) == 40  # a Z85-encoded 32-byte public key


def test_wildcard_is_encrypted_and_refuses_plain_sockets(spawner, pdir) -> None:
    _, einfo, cinfo = spawner.controller(pdir, "enc", "--ip", "*", "--Controller.heartbeat_period=0.2")
    assert einfo["curve"] == cinfo["curve"]
    secret = pdir / "security" / "ipcontroller-enc-curve.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, private = secret.read_bytes().split()
    assert public.decode() == einfo["curve"]
    for f in (paths.connection_file(pdir, "engine", "enc"), paths.connection_file(pdir, "client", "enc")):
        assert private.decode() not in f.read_text()  # the files hold the public key only

    eng = spawner.engine(pdir, "enc", env=clean_env())
    with Client(paths.connection_file(pdir, "client", "enc")) as rc:
        rc.wait_for_engines(1, timeout=30)
        assert rc[:].apply_async(os.getpid).get(timeout=10) == [eng.pid]

        # a socket that has the HMAC key but not the Curve key cannot even say hello
        ctx = zmq.Context.instance()
        session = Session(cinfo["key"])
        socks = []
        try:
            local = einfo["ipc"]["paths"]  # the same sockets on this host's Unix sockets
            for url in [f"tcp://127.0.0.1:{port}" for port in (cinfo["ports"]["client"], einfo["ports"]["engine"],
                                                                einfo["ports"]["hb_pong"])] + \
                       [f"ipc://{local[name]}" for name in ("client", "engine", "hb_pong")]:
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.connect(url)
                s.send_multipart(session.pack("hello", {"c": session.id}), zmq.NOBLOCK)
                s.send_multipart(session.pack("register", {"info": {}, "hb": "x", "ctl": ""}), zmq.NOBLOCK)
                socks.append(s)
            # the engine's port for direct transfers speaks no ZMTP: a zmq socket never completes a handshake
            direct = ctx.socket(zmq.DEALER)
            direct.setsockopt(zmq.LINGER, 0)
            direct.connect(f"tcp://{rc.engines[rc.ids[0]]['direct']['at']}")
            direct.send_multipart(session.pack("hello", {"c": session.id}), zmq.NOBLOCK)
            socks.append(direct)
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(f"tcp://127.0.0.1:{einfo['ports']['hb_ping']}")
            sub.connect(f"ipc://{local['hb_ping']}")
            socks.append(sub)
            time.sleep(0.1)
            assert all(_silent(s, 1.5) for s in socks), "a socket without the Curve key got a message"
        finally:
            for s in socks:
                s.close(0)
        assert rc[:].apply_async(os.getpid).get(timeout=10) == [eng.pid]


def test_no_curve_on_wildcard_and_reuse_keeps_the_key(spawner, pdir) -> None:
    _, einfo, _ = spawner.controller(pdir, "off", "--ip", "*", "--no-curve")
    assert "curve" not in einfo
    p, einfo, _ = spawner.controller(pdir, "kept", "--ip", "*", "--reuse")
    assert spawner.stop(p) == 0
    _, again, _ = spawner.controller(pdir, "kept", "--ip", "*", "--reuse")
    assert again["curve"] == einfo["curve"]


@pytest.mark.parametrize("ip, loop", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                      ("localhost", True), ("*", False), ("0.0.0.0", False),
                                      ("10.1.2.3", False), ("eth0", False)])
def test_is_loopback(ip: str, loop: bool) -> None:
    assert is_loopback(ip) is loop


@pytest.mark.parametrize("argv, want", [([], None), (["--engines", "slurm"], True), (["--engines", "mpi"], True),
                                        (["--engines", "ssh"], True), (["--engines", "slurm", "--no-curve"], False),
                                        (["--curve"], True), (["--ip", "*"], None)])
def test_submit_encrypts_unless_engines_are_local(tmp_path, argv: list[str], want: bool | None) -> None:
    """Engines that are not local processes reach the controller over a network: Curve unless refused.
    (`--ip '*'` alone is left to the controller, which turns Curve on for any non-loopback interface.)"""
    from ipphpc import HPCCluster
    from ipphpc.cli.main import build_parser, to_config
    ns, extra = build_parser().parse_known_args(["submit", "-n", "2", "--profile-dir", str(tmp_path / "p"), *argv])
    cmd = HPCCluster(config=to_config(ns, extra, ("HPCCluster", "Controller", "Engine")))._controller_cmd()
    flags = {"--curve": True, "--no-curve": False, "--Controller.curve=True": True,
             "--Controller.curve=False": False}
    assert {flags[a] for a in cmd if a in flags} == ({want} if want is not None else set()), cmd


def test_reuse_with_new_key_rotates_every_key_and_keeps_the_ports(spawner, pdir) -> None:
    """`--reuse --new-key`: the same ports, a new HMAC key and new Curve keys; the old files open nothing."""
    p, old, _ = spawner.controller(pdir, "rot", "--ip", "*", "--reuse")
    assert spawner.stop(p) == 0
    _, new, cinfo = spawner.controller(pdir, "rot", "--ip", "*", "--reuse", "--new-key")
    assert new["ports"] == old["ports"] and new["key"] != old["key"] and new["curve"] != old["curve"]
    ctx = zmq.Context.instance()
    with Client(paths.connection_file(pdir, "client", "rot")) as rc:
        before = rc.controller_status()["stats"]["dropped"]
        socks = []
        try:
            # the old key through the new Curve key (someone who also read the new public key): dropped, counted
            stale = Session(old["key"])
            s = connection.secure(ctx.socket(zmq.DEALER), cinfo)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://127.0.0.1:{cinfo['ports']['client']}")
            s.send_multipart(stale.pack("hello", {"c": stale.id}))
            socks.append(s)
            # the old files as they were: the Curve handshake with the old server key fails
            s = connection.secure(ctx.socket(zmq.DEALER), {**old, "curve": old["curve"]})
            s.setsockopt(zmq.LINGER, 0)
            s.connect(f"tcp://127.0.0.1:{cinfo['ports']['client']}")
            s.send_multipart(stale.pack("hello", {"c": stale.id}))
            socks.append(s)
            wait_until(lambda: rc.controller_status()["stats"]["dropped"] == before + 1, 10,
                       what="the old-key hello to be dropped")
            assert all(_silent(s, 1.0) for s in socks)
        finally:
            for s in socks:
                s.close(0)
