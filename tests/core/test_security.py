"""Forged, replayed and tampered messages are dropped; an incompatible client is refused."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
import zmq

from ipphpc import Client, connection, paths, serialize, wire
from ipphpc.error import ProtocolMismatch
from ipphpc.wire import Session, new_key

from .helpers import ship_by_value, wait_until

ship_by_value(__name__)


class _TouchOnLoad:
    """Unpickling this creates a file: proof of whether a payload was deserialized."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _append_line(path: str) -> int:
    with open(path, "a") as f:
        f.write("ran\n")
    with open(path) as f:
        return len(f.read().splitlines())


class RawPeer:
    """A bare zmq DEALER speaking the wire protocol by hand."""

    def __init__(self, ctx: zmq.Context, url: str, key: str):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        self.session = Session(key)
        self.unread: list[list] = []  # the rest of an envelope

    def send(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 10.0) -> tuple[dict, list] | None:
        if not self.unread:
            if not self.sock.poll(timeout * 1000):
                return None
            frames = self.sock.recv_multipart()
            self.unread = wire.unwrap(frames) or [frames]
        _, h, payload = self.session.split(self.unread.pop(0))
        return h, payload

    def recv_reply_to(self, msg_id: str, timeout: float = 10.0) -> tuple[dict, list]:
        while True:
            got = self.recv(timeout)
            assert got is not None, f"no reply to {msg_id}"
            if got[0].get("p") == msg_id:
                return got


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _client_info(cluster) -> dict:
    return connection.read(cluster.client_file)


def _engine_info(cluster) -> dict:
    return connection.read(paths.connection_file(cluster.pdir, "engine", cluster.cluster_id))


def _dropped(rc) -> int:
    return rc.controller_status()["stats"]["dropped"]


def _hello(peer: RawPeer) -> str:
    """Introduce a raw client: results for its tasks come back on this socket."""
    frames = peer.session.pack("hello", {"c": peer.session.id})
    peer.send(frames)
    h, _ = peer.recv_reply_to(_msg_id(frames))
    assert h["t"] == "challenge"  # first prove this hello is no replay: sign the controller's nonce
    frames = peer.session.pack("hello", {"c": peer.session.id, "nonce": h["nonce"]})
    peer.send(frames)
    h, _ = peer.recv_reply_to(_msg_id(frames))
    assert h["t"] == "welcome"
    return peer.session.id


def _register(peer: RawPeer, fields: dict) -> tuple[dict, list]:
    """Register a raw engine, answering the controller's challenge; (its answer, the frames that got it)."""
    frames = peer.session.pack("register", fields)
    peer.send(frames)
    h, _ = peer.recv_reply_to(_msg_id(frames))
    if h["t"] != "challenge":
        return h, frames
    frames = peer.session.pack("register", {**fields, "nonce": h["nonce"]})
    peer.send(frames)
    return peer.recv_reply_to(_msg_id(frames))[0], frames


def _msg_id(frames: list) -> str:
    head = next(f for f in frames if f[:len(wire.DELIM)] == wire.DELIM)
    return json.loads(wire.head_parts(head)[1])["id"]


def _task(peer: RawPeer, eid: int, f, *args, payload: list | None = None, digest: str | None = None) -> list:
    body = serialize.dumps((f, args, {}))
    return peer.session.pack("task", {"k": "apply", "c": peer.session.id, "to": eid}, payload or body,
                             digest=digest)


def test_forged_messages_dropped_and_controller_keeps_serving(rc, cluster, ctx):
    """Messages signed with a wrong key, to the client and engine ports, are counted as dropped and
    have no effect: a forged shutdown does not stop the controller, a forged register adds no engine."""
    cinfo, einfo = _client_info(cluster), _engine_info(cluster)
    before, ids = _dropped(rc), rc.ids
    bad = new_key()
    to_client = RawPeer(ctx, connection.urls(cinfo, "client")[0], bad)
    to_engine = RawPeer(ctx, connection.urls(einfo, "engine")[0], bad)
    to_client.send(to_client.session.pack("shutdown", {"c": to_client.session.id, "engines": True}))
    to_client.send(to_client.session.pack("status", {"c": to_client.session.id}))
    to_engine.send(to_engine.session.pack("register", {"info": {"host": "forged"}, "hb": os.urandom(8).hex()}))
    wait_until(lambda: _dropped(rc) >= before + 3, 10, what="the controller to count three dropped messages")
    # no answer of any kind went back to the forgers
    assert to_client.sock.poll(200) == 0 and to_engine.sock.poll(0) == 0
    assert rc.ids == ids
    assert all(info.get("host") != "forged" for info in rc.engines.values())
    assert cluster.controller_launcher.running
    assert rc[:].apply_sync(lambda: 6 * 7) == [42] * len(ids)
    assert rc.load_balanced_view().apply_sync(lambda: "still here") == "still here"


def test_replayed_task_dropped(rc, cluster, ctx, tmp_path):
    """A captured task message sent again (on the same or another connection) is dropped, not run twice."""
    cinfo = _client_info(cluster)
    url = connection.urls(cinfo, "client")[0]
    peer = RawPeer(ctx, url, cinfo["key"])
    _hello(peer)
    out = tmp_path / "runs.txt"
    captured = _task(peer, rc.ids[0], _append_line, str(out))
    peer.send(captured)
    h, payload = peer.recv_reply_to(_msg_id(captured))
    assert h["ok"] and serialize.loads(payload[1:]) == 1

    before = _dropped(rc)
    peer.send(captured)
    eavesdropper = RawPeer(ctx, url, cinfo["key"])
    eavesdropper.send(captured)
    wait_until(lambda: _dropped(rc) >= before + 2, 10, what="two dropped replays")
    # a fresh task to the same engine is answered; the replays never ran
    check = _task(peer, rc.ids[0], _append_line, str(out))
    peer.send(check)
    h, payload = peer.recv_reply_to(_msg_id(check))
    assert h["ok"] and serialize.loads(payload[1:]) == 2
    assert out.read_text().splitlines() == ["ran", "ran"]
    assert eavesdropper.sock.poll(0) == 0


def test_replayed_register_dropped(rc, cluster, ctx):
    """A captured engine registration sent again does not register another engine."""
    einfo = _engine_info(cluster)
    peer = RawPeer(ctx, connection.urls(einfo, "engine")[0], einfo["key"])
    h, frames = _register(peer, {"info": {"host": "replay-test", "pid": 1}, "hb": os.urandom(8).hex()})
    assert h["t"] == "registered"
    eid = h["eid"]
    wait_until(lambda: eid in rc.ids, 10, what="the registration to reach the client")
    before = _dropped(rc)
    other = RawPeer(ctx, connection.urls(einfo, "engine")[0], einfo["key"])
    other.send(frames)
    peer.send(frames)
    wait_until(lambda: _dropped(rc) >= before + 2, 10, what="two dropped replays")
    assert other.sock.poll(200) == 0
    assert [i for i, info in rc.engines.items() if info.get("host") == "replay-test"] == [eid]
    # this engine will never answer: say goodbye so it does not linger until the heartbeat notices
    peer.send(peer.session.pack("bye", {}))
    wait_until(lambda: eid not in rc.ids, 10, what="the fake engine to unregister")
    # the engine is gone and its session forgotten: its register, replayed, is only asked for a new nonce
    phantom = RawPeer(ctx, connection.urls(einfo, "engine")[0], einfo["key"])
    phantom.send(frames)
    got = phantom.recv(5)
    assert got is not None and got[0]["t"] == "challenge"
    assert phantom.sock.poll(500) == 0
    assert not [i for i, info in rc.engines.items() if info.get("host") == "replay-test"]


def test_tampered_payload_never_deserialized_by_engine(rc, cluster, ctx, tmp_path):
    """A task whose payload does not match its signed digest is dropped by the engine before unpickling;
    the same payload with its own digest is unpickled (so the check, not luck, made the difference)."""
    cinfo = _client_info(cluster)
    peer = RawPeer(ctx, connection.urls(cinfo, "client")[0], cinfo["key"])
    _hello(peer)
    eid = rc.ids[0]
    marker = tmp_path / "unpickled"
    evil = serialize.dumps((repr, (_TouchOnLoad(marker),), {}))
    harmless = serialize.dumps((repr, (1,), {}))
    tampered = _task(peer, eid, repr, payload=evil, digest=wire.payload_digest(harmless))
    peer.send(tampered)
    probe = _task(peer, eid, os.getpid)
    peer.send(probe)
    h, payload = peer.recv_reply_to(_msg_id(probe))  # the engine handled the tampered task before this
    assert h["ok"]
    assert not marker.exists()

    honest = _task(peer, eid, repr, payload=evil)
    peer.send(honest)
    h, _ = peer.recv_reply_to(_msg_id(honest))
    assert marker.exists()


def test_incompatible_client_refused(rc, cluster, monkeypatch):
    """A client speaking another major protocol version gets ProtocolMismatch; a newer minor is accepted."""
    major, minor = wire.PROTOCOL_VERSION
    monkeypatch.setattr(wire, "PROTOCOL_VERSION", (major + 1, 0))
    with pytest.raises(ProtocolMismatch) as err:
        Client(cluster.client_file, timeout=10)
    assert str([major + 1, 0]) in str(err.value) and "same ipphpc version" in str(err.value)

    monkeypatch.setattr(wire, "PROTOCOL_VERSION", (major, minor + 1))
    with Client(cluster.client_file, timeout=10) as ok:
        assert ok.session.version == [major, minor + 1]
        assert ok.ids == rc.ids
    monkeypatch.undo()
    assert rc[0].apply_sync(lambda: "served") == "served"


def test_incompatible_engine_refused(cluster, ctx):
    """An engine registering with another major protocol version is refused with the reason."""
    einfo = _engine_info(cluster)
    peer = RawPeer(ctx, connection.urls(einfo, "engine")[0], einfo["key"])
    peer.session.version = [wire.PROTOCOL_VERSION[0] + 1, 0]
    h, _ = _register(peer, {"info": {"host": "old"}, "hb": os.urandom(8).hex()})
    assert h["t"] == "refused" and "same ipphpc version" in h["why"]


def test_open_security_folder_is_closed_with_a_warning(tmp_path, caplog):
    pdir = paths.profile_dir(profile_dir=str(tmp_path / "p"))
    os.chmod(pdir / "security", 0o755)
    with caplog.at_level("WARNING", logger="ipphpc"):
        paths.profile_dir(profile_dir=str(tmp_path / "p"))
    assert (pdir / "security").stat().st_mode & 0o777 == 0o700
    assert [r for r in caplog.records if "open to group or others (mode 755)" in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger="ipphpc"):
        paths.profile_dir(profile_dir=str(tmp_path / "p"))
    assert not caplog.records


def test_readable_connection_file_warns_once(tmp_path, caplog):
    f = tmp_path / "ipcontroller-x-client.json"
    connection.write(f, {"key": "k", "addresses": ["127.0.0.1"], "ports": {"client": 1}})
    with caplog.at_level("WARNING", logger="ipphpc"):
        connection.read(f)
    assert not caplog.records  # written 0600
    os.chmod(f, 0o644)
    with caplog.at_level("WARNING", logger="ipphpc"):
        connection.read(f)
        connection.read(f)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "readable by group or others (mode 644)" in warned[0] and f"chmod 600 {f}" in warned[0]
