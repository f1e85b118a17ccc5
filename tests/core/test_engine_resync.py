"""An engine whose connection dropped and came back tells the controller which tasks it read and which it
finished; the controller queues again the load-balanced tasks that never arrived and fails the rest with
EngineError saying what happened, so none is left hanging.

The engine here is a socket speaking the wire protocol by hand, so the test chooses exactly what was lost;
a real engine doing the same through a killed ssh tunnel is in tests/ssh/test_tunnel_reopen.py."""
from __future__ import annotations

import os

import pytest
import zmq

from ipphpc import Client, EngineError, TaskAborted, paths
from ipphpc.wire import Session, unwrap

_unread: dict[zmq.Socket, list] = {}  # the rest of an envelope, per socket


def _recv(sock: zmq.Socket, session: Session, want: str, timeout: float = 10.0) -> dict:
    """The next message of type `want`, skipping others; fails after `timeout` seconds."""
    unread = _unread.setdefault(sock, [])
    while True:
        if not unread:
            assert sock.poll(timeout * 1000), f"no {want!r} from the controller within {timeout:g} s"
            frames = sock.recv_multipart()
            unread += unwrap(frames) or [frames]
        _, h, _ = session.split(unread.pop(0))
        if h["t"] == want:
            return h


def test_resync_requeues_unsent_and_fails_the_lost(spawner, pdir) -> None:
    _, einfo, _ = spawner.controller(pdir, "resync", "--Controller.heartbeat_period=5")
    session = Session(einfo["key"])
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"hand-made-engine")
    sock.connect(f"tcp://127.0.0.1:{einfo['ports']['engine']}")
    try:
        fields = {"info": {"host": "here", "pid": os.getpid()}, "hb": "hand-made-heart", "ctl": ""}
        sock.send_multipart(session.pack("register", fields))
        nonce = _recv(sock, session, "challenge")["nonce"]
        sock.send_multipart(session.pack("register", {**fields, "nonce": nonce}))
        eid = _recv(sock, session, "registered")["eid"]
        with Client(paths.connection_file(pdir, "client", "resync")) as rc:
            rc.wait_for_engines(1, timeout=20)
            direct_ran = rc[eid].apply_async(os.getpid)
            sent = [_recv(sock, session, "task")["id"]]
            balanced = rc.load_balanced_view().apply_async(os.getpid)
            sent.append(_recv(sock, session, "task")["id"])
            direct_unread = rc[eid].apply_async(os.getpid)
            sent.append(_recv(sock, session, "task")["id"])
            assert sent == [direct_ran.msg_ids[0], balanced.msg_ids[0], direct_unread.msg_ids[0]]
            # the connection dropped: the first task was read and run, its result lost; the others never came
            sock.send_multipart(session.pack("resync", {}))
            n = _recv(sock, session, "sync")["n"]
            sock.send_multipart(session.pack("synced", {"n": n, "last": sent[0], "done": [sent[0]]}))
            with pytest.raises(EngineError, match=f"engine {eid} .*ran this task, but the connection dropped"):
                direct_ran.get(timeout=10)
            with pytest.raises(EngineError, match=f"engine {eid} .*dropped before this task reached it"):
                direct_unread.get(timeout=10)
            again = _recv(sock, session, "task")
            assert again["id"] == sent[1]  # the load-balanced one is sent again, and its answer gets through
            sock.send_multipart(session.pack("result", {"p": sent[1], "ok": False, "eid": eid, "dur": 0.0,
                                                        "err": {"ename": "TaskAborted", "evalue": "after the resync",
                                                                "tb": ""}}))
            with pytest.raises(TaskAborted, match="after the resync"):
                balanced.get(timeout=10)
            # a late answer to an older sync changes nothing
            sock.send_multipart(session.pack("synced", {"n": n, "last": None, "done": []}))
            assert rc[eid].apply_async(os.getpid).msg_ids
            assert _recv(sock, session, "task")
    finally:
        sock.close(0)
