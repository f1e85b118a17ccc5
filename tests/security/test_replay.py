"""Frames a real client sent, captured and sent again by someone without the key, never run anything and
never get an answer worth having: not in the same controller's lifetime, not after a --reuse restart while
the client is still connected, and not after a restart once the client has gone.

The capture is what the client's sessions signed and sent (every `Session.pack` of this process while
the client works), exactly the frames an eavesdropper on the wire would hold."""
from __future__ import annotations

import json
import os
import types

import pytest
import zmq

from ipphpc import Client, connection, paths
from ipphpc.engine.engine import Engine
from ipphpc.wire import DELIM, Session, family, head_parts
from tests.core.helpers import clean_env, ship_by_value, wait_until

ship_by_value(__name__)


def _touch(path: str) -> str:
    open(path, "w").close()
    return "ran"


def _capture(monkeypatch) -> list[list]:
    """Record every message this process signs from now on (until monkeypatch undoes it)."""
    sent: list[list] = []
    real = Session.pack

    def pack(self, *args, **kw):
        frames = real(self, *args, **kw)
        sent.append([bytes(f) if not isinstance(f, bytes) else f for f in frames])
        return frames

    monkeypatch.setattr(Session, "pack", pack)
    return sent


def _header(frames: list) -> dict:
    """The header of a message, unchecked (the test reads what went on the wire)."""
    return json.loads(head_parts(next(f for f in frames if f[:len(DELIM)] == DELIM))[1])


def _types(frames: list[list]) -> list[str]:
    return [_header(f)["t"] for f in frames]


def _of(client: Client, frames: list[list]) -> list[list]:
    """The messages of one client's sessions."""
    return [f for f in frames if family(_header(f)["s"]) == client.cid]


def _replay(ctx: zmq.Context, url: str, frames: list[list]) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    for f in frames:
        s.send_multipart(f)
    return s


def _answers(sock: zmq.Socket, wait: float) -> list[str]:
    """The types of the signed messages that come back within `wait` seconds."""
    got = []
    while sock.poll(wait * 1000):
        f = sock.recv_multipart()
        got.append(_header(f)["t"])
    return got


def test_captured_client_frames_never_run_again(spawner, pdir, tmp_path, monkeypatch) -> None:
    cid = "replay"
    args = ("--reuse", "--Controller.hold_time=1")
    p1, _, cinfo = spawner.controller(pdir, cid, *args)
    engine = spawner.engine(pdir, cid, "--controller-timeout", "60", env=clean_env())
    url = f"tcp://127.0.0.1:{cinfo['ports']['client']}"
    marker = tmp_path / "ran"
    ctx = zmq.Context()
    socks = []
    try:
        with Client(paths.connection_file(pdir, "client", cid)) as gone:  # a client that leaves before the restart
            gone.wait_for_engines(1, timeout=30)
            sent = _capture(monkeypatch)
            assert gone[0].apply_async(_touch, str(marker)).get(timeout=10) == "ran"
            captured_gone = _of(gone, sent)
        with Client(paths.connection_file(pdir, "client", cid)) as rc:  # one that stays through the restart
            assert rc[0].apply_async(_touch, str(marker)).get(timeout=10) == "ran"
            captured = _of(rc, sent)  # its hello, the answer to the challenge, a task, ...
            monkeypatch.undo()
            assert {"hello", "task"} <= set(_types(captured)) and "task" in _types(captured_gone)
            marker.unlink()

            # 1. the same controller, the client still there: every frame is a repeat, dropped and counted
            before = rc.controller_status()["stats"]["dropped"]
            socks.append(_replay(ctx, url, captured))
            wait_until(lambda: rc.controller_status()["stats"]["dropped"] >= before + len(captured), 10,
                       what="the replays to be counted")
            assert _answers(socks[-1], 1.0) == []

            # 2. restarted with --reuse (same key and ports); the client reconnects and proves itself again
            assert spawner.stop(p1) == 0
            spawner.controller(pdir, cid, *args)
            wait_until(lambda: rc._generation == 1, 20, what="the client to meet the restarted controller")
            rc.wait_for_engines(1, timeout=30)
            status = rc.controller_status()
            socks.append(_replay(ctx, url, captured))
            wait_until(lambda: rc.controller_status()["stats"]["dropped"] >= status["stats"]["dropped"] + 1, 10,
                       what="the replays to be counted")
            # a hello without a fresh nonce earns only a challenge; all else is refused as older than the hello
            assert set(_answers(socks[-1], 1.0)) <= {"challenge"}

            # 3. the client that left: its family is unknown here, so its tasks are held, then dropped
            status = rc.controller_status()
            socks.append(_replay(ctx, url, captured_gone))
            assert set(_answers(socks[-1], 1.0)) <= {"challenge"}
            wait_until(lambda: rc.controller_status()["held"] == 0 and
                       rc.controller_status()["stats"]["dropped"] > status["stats"]["dropped"], 10,
                       what="the held replays to be dropped")
            assert not marker.exists()
            assert rc.controller_status()["stats"]["tasks"] == status["stats"]["tasks"]
            # and the real client is served all along
            assert rc[0].apply_async(os.getpid).get(timeout=10) == engine.pid
            assert not marker.exists()
    finally:
        for s in socks:
            s.close(0)
        ctx.destroy(linger=0)


@pytest.mark.parametrize("when", ["before", "after"])
def test_captured_engine_register_after_its_death_registers_nothing(spawner, pdir, when) -> None:
    """An engine's register frames (made by the engine's own code, answering the challenge), sent again after
    the engine has gone (and, `after`, after a --reuse restart), earn a challenge and nothing else: no phantom
    engine appears to take tasks."""
    cid = f"phantom-{when}"
    p1, einfo, _ = spawner.controller(pdir, cid, "--reuse")
    engine = spawner.engine(pdir, cid, env=clean_env())
    url = connection.urls(einfo, "engine")[0]
    session = Session(einfo["key"])
    frames: list[list] = []
    fake = types.SimpleNamespace(origin={"host": "phantom", "pid": 1}, engine_id=-1, heart_id="feedface",
                                 _send=lambda t, f: frames.append(session.pack(t, f)))
    ctx = zmq.Context()
    try:
        with Client(paths.connection_file(pdir, "client", cid)) as rc:
            rc.wait_for_engines(1, timeout=30)
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(url)
            Engine._send_register(fake)
            sock.send_multipart(frames[-1])
            assert sock.poll(10_000), "no answer to the register"
            f = sock.recv_multipart()
            h = _header(f)
            assert h["t"] == "challenge"
            Engine._send_register(fake, h["nonce"])
            sock.send_multipart(frames[-1])
            wait_until(lambda: len(rc.ids) == 2, 10, what="the hand-made engine to register")
            sock.send_multipart(session.pack("bye", {}))
            wait_until(lambda: len(rc.ids) == 1, 10, what="the hand-made engine to leave")
            sock.close(0)
            if when == "after":
                assert spawner.stop(p1) == 0
                spawner.controller(pdir, cid, "--reuse")
                wait_until(lambda: rc._generation == 1, 20, what="the client to meet the restarted controller")
                rc.wait_for_engines(1, timeout=30)
            replay = _replay(ctx, url, frames)
            assert set(_answers(replay, 2.0)) <= {"challenge"}
            replay.close(0)
            assert [e.get("host") for e in rc.engines.values()] != ["phantom"] and len(rc.ids) == 1
            assert rc[:].apply_async(os.getpid).get(timeout=10) == [engine.pid]
    finally:
        ctx.destroy(linger=0)
