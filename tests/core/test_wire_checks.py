"""What the controller checks on every message: the protocol version (a task signed with the right key but
carrying another major version is dropped and counted, and nothing runs), and heartbeat echoes."""
from __future__ import annotations

import os

import pytest

from ipphpc import Client, paths

from .helpers import clean_env, wait_until


def _touch(path: str) -> None:
    open(path, "w").close()


def test_task_of_another_protocol_version_is_dropped(spawner, pdir, tmp_path) -> None:
    spawner.controller(pdir, "ver")
    spawner.engine(pdir, "ver", env=clean_env())
    with Client(paths.connection_file(pdir, "client", "ver")) as rc:
        rc.wait_for_engines(1, timeout=30)
        before = rc.controller_status()["stats"]["dropped"]
        marker = tmp_path / "ran"
        real, rc.session.version = rc.session.version, [99, 0]  # the headers of what the client sends now
        try:
            ar = rc[:].apply_async(_touch, str(marker))
        finally:
            rc.session.version = real
        wait_until(lambda: rc.controller_status()["stats"]["dropped"] > before, 10,
                   what="the controller to count the dropped task")
        with pytest.raises(TimeoutError):
            ar.get(timeout=1.0)
        assert not marker.exists()
        assert rc[:].apply_async(os.getpid).get(timeout=10)


def test_heartbeat_reveals_only_a_counter(spawner, pdir) -> None:
    """A reader of the ping port learns a number and a MAC: not the controller's session id; an echo with
    a made-up MAC is dropped and counted."""
    import re

    import zmq
    _, einfo, _ = spawner.controller(pdir, "beat", "--Controller.heartbeat_period=0.1")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{einfo['ports']['hb_ping']}")
    pong = ctx.socket(zmq.DEALER)
    pong.setsockopt(zmq.LINGER, 0)
    pong.connect(f"tcp://127.0.0.1:{einfo['ports']['hb_pong']}")
    try:
        with Client(paths.connection_file(pdir, "client", "beat")) as rc:
            session = rc._controller_session
            pings = []
            while len(pings) < 3:
                assert sub.poll(5000), "no heartbeat ping within 5 s"
                pings.append(sub.recv_multipart())
            for frames in pings:
                assert len(frames) == 1 and re.fullmatch(rb"\d+:[0-9a-f]{32}", frames[0]), frames
                assert session.encode() not in frames[0]
            before = rc.controller_status()["stats"]["dropped"]
            n = pings[-1][0].split(b":")[0]
            pong.send(n + b":" + b"0" * 32)
            wait_until(lambda: rc.controller_status()["stats"]["dropped"] > before, 10,
                       what="the forged echo to be counted")
    finally:
        sub.close(0)
        pong.close(0)
