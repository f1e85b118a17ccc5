"""A peer without the key fuzzes a real controller's four ports; the controller must survive it.

The corpus is made of real frames: a real `Client` and a real engine are pointed at sockets this test binds
itself, which record everything they send (signed with a capture key that is not the fuzzed controller's:
the attacker knows the protocol to the byte, not the key). Among them are tasks whose function, if it ever
ran, would leave a marker file behind. A seeded `random.Random` then mutates those frames (bit flips,
truncation, extra, missing and empty frames, envelopes, duplicated delimiters, garbage JSON headers, headers signed
with a wrong key, valid JSON with wrongly typed fields, routing prefixes, many and large frames) and
DEALER sockets send them to the client, engine and hb_pong ports of a controller that serves one real
engine and one real `Client`; XSUB sockets send garbage subscriptions to hb_ping (a PUB socket reads
nothing else); raw TCP connections write bytes that are not even ZMTP, or ZMTP that breaks off.

Asserted: the controller stays alive; no fuzzing socket gets an answer; the real client is served within a
bound after every batch; the controller counts every mutated message to the client and engine ports as
dropped; nothing runs (the marker never appears, the engine completed only the real client's tasks); and,
last, the captured task payload is shown to be live: signed with the real key, the same frames do create the marker.

Failures name the seed, the port, the batch and a pickle of the recorded corpus (with the time the forged
headers claim): `Mutator(seed, *pickle.load(f))` makes the same messages again, in the same order. The long variant
(`-m fuzz` or IPPHPC_FUZZ=1) runs more messages under other seeds.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from ipphpc import Client, connection, paths, serialize, wire
from ipphpc.error import EngineError
from ipphpc.wire import DELIM, AuthError, Session, head_parts, new_key
from tests.core.helpers import alive, clean_env, ship_by_value, wait_until

ship_by_value(__name__)  # the captured tasks carry this module's functions by value

SEED = 20_240_611
LONG_SEEDS = (1, 977, 65_537)
PER_PORT = 10_000
LONG_PER_PORT = 100_000
BATCH = 1_000
SERVE_TIMEOUT = 1.0  # seconds the real client may wait for an answer after each batch
HUGE = 100 * 2**20  # one frame this large per port, no more: memory stays sane
HEARTBEAT = 0.25
CONTROLLER_ARGS = (f"--Controller.heartbeat_period={HEARTBEAT}", "--Controller.heartbeat_misses=8")
ROUTER_PORTS = ("client", "engine", "hb_pong")
# message types of the protocol, put into forged headers
TYPES = ("hello", "welcome", "task", "result", "ka", "bye", "register", "registered", "reregister", "refused",
         "ping", "status", "queue_status", "abort", "signal", "shutdown", "restart", "stop_engines", "engine_wait",
         "resync", "sync", "synced", "stream", "data", "stop", "reply", "engines", "db_query", "db_get", "db_purge")


# -- what the captured tasks run ------------------------------------------------------------------------
def _touch_marker(path: str) -> str:
    """The captured tasks' function: it leaves a file behind if it ever runs."""
    with open(path, "a") as f:
        f.write("ran\n")
    return path


def _chatty() -> int:
    """Run by the capture engine, so that it sends streamed output and published data before its result."""
    import time as _time

    from ipphpc.datapub import publish_data
    print("output of a captured task", flush=True)
    publish_data({"step": 1})
    _time.sleep(0.3)
    print("more output", flush=True)
    return 42


# -- capture ------------------------------------------------------------------------------------------
class Recorder:
    """Sockets bound by this test where a controller's would be: they record what a real Client and a real
    engine send, and answer just enough (welcome, registered, a task, sync, stop) for them to go on."""

    KINDS = {"client": zmq.ROUTER, "engine": zmq.ROUTER, "hb_ping": zmq.PUB, "hb_pong": zmq.ROUTER}

    def __init__(self, key: str):
        self.key = key
        self.session = Session(key)
        self.ctx = zmq.Context()
        self.socks: dict[str, zmq.Socket] = {}
        self.ports: dict[str, int] = {}
        for name, kind in self.KINDS.items():
            s = self.ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 0)
            self.ports[name] = s.bind_to_random_port("tcp://127.0.0.1")
            self.socks[name] = s
        self.records: dict[str, list[tuple[str, list[bytes]]]] = {"client": [], "engine": [], "hb_pong": []}
        self.errors: list[str] = []
        self.clients: dict[str, bytes] = {}
        self.engine_bye = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fuzz-recorder", daemon=True)
        self._thread.start()

    def info(self, role: str) -> dict:
        names = connection.CLIENT_PORTS if role == "client" else connection.ENGINE_PORTS
        return {"key": self.key, "signature_scheme": wire.SIGNATURE_SCHEME, "transport": "tcp",
                "addresses": ["127.0.0.1"], "ports": {n: self.ports[n] for n in names}, "cluster_id": "capture",
                "location": "",
                "bind_ip": "127.0.0.1", "host": socket.gethostname(), "pid": os.getpid(), "heartbeat_period": 0.05}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.ctx.destroy(linger=0)

    def _serve(self) -> None:
        poller = zmq.Poller()
        names = {}
        for name in ("client", "engine", "hb_pong"):
            poller.register(self.socks[name], zmq.POLLIN)
            names[self.socks[name]] = name
        pings, next_ping = 0, 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_ping:  # the capture engine's heart echoes these to hb_pong
                    pings += 1
                    self.socks["hb_ping"].send_multipart(self._ping(pings))
                    next_ping = now + 0.05
                for sock, _ in poller.poll(20):
                    frames = sock.recv_multipart()
                    name = names[sock]
                    ident, body = frames[0], frames[1:]
                    try:
                        messages = wire.unwrap(body) or [body]  # a client sends a burst as one envelope
                    except AuthError:
                        messages = [body]
                    for body in messages:
                        try:
                            _, h, _ = self.session.split(body)
                        except AuthError:  # a heartbeat echo, when heartbeats are not wire messages
                            self.records[name].append((f"{name}:raw", body))
                            continue
                        self.records[name].append((f"{name}:{h['t']}", body))
                        self._answer(name, ident, h)
        except zmq.ZMQError as e:
            self.errors.append(f"recorder stopped: {e}")

    def _ping(self, n: int) -> list:
        """A heartbeat as the controller sends it (a frame of its own where the wire module says how)."""
        beat = getattr(wire, "beat", None)
        return [beat(self.session, n)] if beat is not None else self.session.pack("ping", {"n": n})

    def _send(self, name: str, ident: bytes, msg_type: str, fields: dict, payload: list | tuple = ()) -> None:
        self.socks[name].send_multipart([ident, *self.session.pack(msg_type, fields, payload)])

    def _answer(self, name: str, ident: bytes, h: dict) -> None:
        t = h["t"]
        if name == "client":
            if t == "hello":
                self.clients[h["c"]] = ident
                self._send(name, ident, "welcome", {"p": h["id"], "cluster_id": "capture",
                                                    "engines": {"0": {"host": "capture", "pid": 0}}})
            elif t == "task":  # a synchronous call waits on its own socket; other results go to the result socket
                to = ident if h.get("sync") else self.clients.get(h.get("c"), ident)
                self._send(name, to, "result", {"p": h["id"], "ok": False, "eid": 0, "err": {
                    "ename": "EngineError", "evalue": "recorded, not run", "tb": ""}})
            elif t not in ("ka", "bye"):
                self._send(name, self.clients.get(h.get("c"), ident), "reply",
                           {"p": h["id"], "status": {"unassigned": 0}, "reached": [], "dropped": []})
        elif name == "engine":
            if t == "register":
                self._send(name, ident, "registered", {"p": h["id"], "eid": 0, "hb": 0.05})
                self._send(name, ident, "task", {"k": "apply", "c": "capture"}, serialize.dumps((_chatty, (), {})))
            elif t == "result":
                self._send(name, ident, "sync", {"n": 1})
            elif t == "synced":
                self._send(name, ident, "stop", {"why": "capture done"})
            elif t == "bye":
                self.engine_bye.set()


def capture_client(rec: Recorder, tmp: Path, marker: Path) -> None:
    """A real Client's messages: hello, keepalive, tasks of several kinds (each would touch `marker`),
    requests, bye."""
    cfile = tmp / "capture-client.json"
    connection.write(cfile, rec.info("client"))
    cap = Client(cfile, timeout=10)
    try:
        cap[0].apply_async(_touch_marker, str(marker))
        cap.load_balanced_view().apply_async(_touch_marker, str(marker))
        cap[0].execute(f"open({str(marker)!r}, 'a').write('executed\\n')", block=False)
        cap[0].push({"fuzz": 1}, block=False)
        # answered (as failed): a synchronous call takes a socket of its own only when none is outstanding
        assert cap.wait(timeout=10), "the recorder did not answer the capture client's tasks"
        # a synchronous call, on a socket of its own; it waits without bound, so in a thread given 10 s
        answered = threading.Event()

        def call() -> None:
            try:
                cap[0].apply_sync(_touch_marker, str(marker))
            except EngineError:
                answered.set()  # the recorder's answer
        sync = threading.Thread(target=call, daemon=True)
        sync.start()
        sync.join(10)
        assert answered.is_set(), "the capture client's synchronous call got no answer from the recorder"
        cap.controller_status()
        cap.queue_status()
        cap.send_signal(2)
        cap.abort()
        cap.shutdown(hub=True)
        wait_until(lambda: any(lbl == "client:ka" for lbl, _ in rec.records["client"]), 5,
                   what="a keepalive from the capture client")
    finally:
        cap.close()
    wait_until(lambda: any(lbl == "client:bye" for lbl, _ in rec.records["client"]), 5,
               what="the capture client's bye")


def start_capture_engine(spawner, rec: Recorder, tmp: Path):
    cpdir = paths.profile_dir(profile_dir=str(tmp / "capture-profile"))
    connection.write(paths.connection_file(cpdir, "engine", "capture"), rec.info("engine"))
    return spawner.engine(cpdir, "capture", "--Engine.register_timeout=20", env=clean_env())


def build_corpus(rec: Recorder) -> dict[str, list[tuple[str, list[bytes]]]]:
    """Recorded messages per port, plus messages built for the types that did not occur while recording."""
    corpus = {name: list(msgs) for name, msgs in rec.records.items()}
    built = Session(rec.key)
    corpus["engine"].append(("built:resync", built.pack("resync", {})))
    for t, fields in (("restart", {"targets": [0]}), ("stop_engines", {"targets": None}),
                      ("engine_wait", {"seconds": 1e9}), ("db_query", {"query": {}, "keys": None}),
                      ("db_purge", {"ids": []})):
        corpus["client"].append((f"built:{t}", built.pack(t, {"c": built.id, **fields})))
    return corpus


# -- the generator of mutated messages ---------------------------------------------------------------
def _header_at(frames: list[bytes]) -> int | None:
    """Index of the head frame (delimiter, signature and header in one)."""
    return next((i for i, f in enumerate(frames) if f[:len(DELIM)] == DELIM and len(f) > len(DELIM)), None)


def _head(frames: list[bytes]) -> dict:
    """The header of a recorded message (its head frame is the first)."""
    return json.loads(head_parts(frames[0])[1])


BAD_VALUES = {
    "t": [5, None, ["task"], {"t": "task"}, "", "x" * 300, "tásk"],
    "s": [5, None, [], {}, "", "s" * 1000],
    "q": ["1", -1, 0, 2**70, 1.5, None, [1], {"q": 1}, True, float("inf"), float("nan")],
    "id": [None, 5, [], {}],
    "ts": ["now", None, 1e308, -1e308, float("nan"), float("inf"), [], {}],
    "v": [{}, "2", [], [None], [2**70], [-1, 0], None, 2, [[2], 0]],
    "d": [5, None, "", "0" * 64, []],
    "c": [5, [], {}, None, ""],
    "to": ["0", -1, 2**64, [], {}, None, 1.5],
    "hb": [5, None, [], ""],
    "info": ["x", [], 5, None],
    "among": ["x", 5, [[]], [None], {}],
    "tmo": ["x", -1, 1e308, []],
    "n": ["x", None, 2**70, []],
    "p": [None, 5, [], {}],
    "sig": ["x", 2**40, None, -9],
    "seconds": ["x", None, -1, float("nan")],
    "targets": ["all", 5, [None], [[]], {}],
    "ids": ["x", 5, [None], {}],
    "err": ["x", [], None],
}
GARBAGE_HEADERS = [b"", b"{", b"}", b"null", b"[]", b"{}", b"0", b'"t"', b'{"t":', b'{"t":"task"', b"\xff\xfe\xfd",
                   b'{"t":"task","t":"hello"}', b"NaN", b'{"q":NaN}', b"[" * 50_000, b"{\"a\":" * 20_000,
                   b"1" * 10_000, b'"' + b"\\u" * 1000 + b'"', b"\x00" * 64, b'{"t":"\xed\xa0\x80"}']


class Mutator:
    """Mutated messages from a corpus: the same seed, corpus and `now` (the time forged headers claim) give the
    same messages, in the same order."""

    def __init__(self, seed: int, corpus: dict[str, list[tuple[str, list[bytes]]]], now: float):
        self.seed = seed
        self.corpus = corpus
        self.now = now
        self.rng = random.Random(seed)
        self.wrong_keys = [Session(self.rng.randbytes(32).hex(), self.rng.randbytes(8).hex()) for _ in range(4)]
        self.everything = [m for msgs in corpus.values() for m in msgs]
        heads = [f[i] for _, f in self.everything if (i := _header_at(f)) is not None]
        self.headers = [json.loads(head_parts(h)[1]) for h in heads]
        self.sigs = [head_parts(h)[0] for h in heads]
        self.big = self.rng.randbytes(4 * 2**20)
        self.ops = [(self.bitflip, 6), (self.truncate, 3), (self.extra_frame, 3), (self.drop_frame, 2),
                    (self.empty_frame, 2), (self.dup_delimiter, 2), (self.garbage_header, 3),
                    (self.wrong_key, 5), (self.wrong_types, 5), (self.bad_signature, 3), (self.routing_prefix, 2),
                    (self.many_frames, 0.3), (self.large_frame, 0.05), (self.envelope, 2)]
        self.op_weights = [w for _, w in self.ops]

    def message(self, port: str) -> tuple[str, list[bytes]]:
        rng = self.rng
        if rng.random() < 0.03:
            return "random", [rng.randbytes(rng.randrange(0, 80)) for _ in range(rng.randrange(1, 6))]
        pool = self.corpus.get(port) or self.everything
        label, frames = rng.choice(pool if rng.random() < 0.8 else self.everything)
        frames = list(frames)
        names = []
        for op in rng.choices([o for o, _ in self.ops], self.op_weights, k=rng.choice((1, 1, 1, 2, 2, 3))):
            frames = op(frames)
            names.append(op.__name__)
        if not frames:
            frames = [b""]
        return f"{label}+{'+'.join(names)}", frames

    # each mutation takes and returns a list of frames
    def bitflip(self, frames: list[bytes]) -> list[bytes]:
        i = self.rng.randrange(len(frames))
        b = bytearray(frames[i])
        if b:
            for _ in range(self.rng.randrange(1, 9)):
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
        frames[i] = bytes(b)
        return frames

    def truncate(self, frames: list[bytes]) -> list[bytes]:
        i = self.rng.randrange(len(frames))
        frames[i] = frames[i][:self.rng.randrange(len(frames[i]) + 1)]
        return frames

    def extra_frame(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        extra = rng.choice([rng.randbytes(rng.randrange(0, 64)), DELIM, rng.randbytes(32).hex().encode(),
                            b'{"t":"task"}', rng.choice(self.everything)[1][-1]])
        frames.insert(rng.randrange(len(frames) + 1), extra)
        return frames

    def drop_frame(self, frames: list[bytes]) -> list[bytes]:
        if len(frames) > 1:
            del frames[self.rng.randrange(len(frames))]
        return frames

    def envelope(self, frames: list[bytes]) -> list[bytes]:
        """The message in an envelope (clients send bursts so): counts that hold it whole, or counts that
        cannot be right (more frames than there are, an empty message, bytes that are not whole counts)."""
        rng, n = self.rng, len(frames)
        counts = rng.choice([n.to_bytes(4, "little"), (n + rng.randrange(1, 5)).to_bytes(4, "little"),
                             (0).to_bytes(4, "little") + n.to_bytes(4, "little"),
                             rng.randbytes(rng.choice((1, 2, 3, 5, 7))), b""])
        return [wire.ENVELOPE + counts, *frames]

    def empty_frame(self, frames: list[bytes]) -> list[bytes]:
        i = self.rng.randrange(len(frames) + 1)
        if i < len(frames) and self.rng.random() < 0.5:
            frames[i] = b""
        else:
            frames.insert(i, b"")
        return frames

    def dup_delimiter(self, frames: list[bytes]) -> list[bytes]:
        for _ in range(self.rng.randrange(1, 4)):
            frames.insert(self.rng.randrange(len(frames) + 1), DELIM)
        return frames

    def garbage_header(self, frames: list[bytes]) -> list[bytes]:
        i = _header_at(frames)
        if i is None:
            frames[self.rng.randrange(len(frames))] = self.rng.choice(GARBAGE_HEADERS)
        else:  # under the signature it had
            frames[i] = frames[i][:len(DELIM) + 64] + self.rng.choice(GARBAGE_HEADERS)
        return frames

    def _header(self, frames: list[bytes]) -> tuple[int | None, dict]:
        i = _header_at(frames)
        if i is not None:
            try:
                h = json.loads(head_parts(frames[i])[1])
                if isinstance(h, dict):
                    return i, h
            except (ValueError, RecursionError):  # the garbage headers above
                pass
        return i, self.rng.choice(self.headers)  # a header of the corpus, in place of one that does not parse

    def _resign(self, frames: list[bytes], i: int | None, h: dict) -> list[bytes]:
        """Frames with header `h` and a well-formed signature (64 hex digits) under a wrong key."""
        hb = json.dumps(h, separators=(",", ":")).encode()
        sig = self.rng.choice(self.wrong_keys).sign(hb)
        if i is None:
            return [DELIM + sig + hb, *frames[:self.rng.randrange(0, 3)]]
        frames[i] = DELIM + sig + hb
        return frames

    def wrong_key(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        i, h = self._header(frames)
        h = dict(h)
        roll = rng.random()
        if roll < 0.4:
            h["t"] = rng.choice(TYPES)
        elif roll < 0.6:
            h.update(q=h.get("q", 1) if isinstance(h.get("q"), int) else 1, ts=self.now + self.rng.uniform(-1, 1),
                     s=rng.randbytes(8).hex())  # fresh: it would pass the replay guard
        elif roll < 0.8:
            h.update(to=0, k="apply", t="task", sync=1, c=h.get("s", "x"))
        return self._resign(frames, i, h)

    def wrong_types(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        i, h = self._header(frames)
        h = dict(h)
        for name in rng.sample(sorted(BAD_VALUES), rng.randrange(1, 4)):
            h[name] = rng.choice(BAD_VALUES[name])
        if rng.random() < 0.7:
            return self._resign(frames, i, h)
        hb = json.dumps(h).encode()
        if i is None:
            return [DELIM + rng.randbytes(32).hex().encode() + hb]
        frames[i] = frames[i][:len(DELIM) + 64] + hb  # the signature of the header it replaces
        return frames

    def bad_signature(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        i = _header_at(frames)
        if i is None:
            return frames
        sig, hb = head_parts(frames[i])
        try:
            raw = bytes.fromhex(sig.decode())  # the digest itself instead of its hex
        except ValueError:
            raw = sig[:32]
        bad = rng.choice([rng.randbytes(32).hex().encode(), sig.upper(), sig[:-1], sig + b"0", raw, b"",
                          rng.choice(self.sigs), b"0" * 64, sig[::-1]])
        frames[i] = DELIM + bad + hb
        return frames

    def routing_prefix(self, frames: list[bytes]) -> list[bytes]:
        rng = self.rng
        prefix = [rng.choice([rng.randbytes(rng.randrange(1, 17)), b"", DELIM, b"\x00" + rng.randbytes(4),
                              rng.randbytes(8).hex().encode() + b"-eng"]) for _ in range(rng.randrange(1, 4))]
        return prefix + frames

    def many_frames(self, frames: list[bytes]) -> list[bytes]:
        n = self.rng.randrange(50, 500)
        return frames + [self.rng.randbytes(self.rng.randrange(0, 4)) for _ in range(n)]

    def large_frame(self, frames: list[bytes]) -> list[bytes]:
        size = self.rng.randrange(2**20, len(self.big))
        i = self.rng.randrange(len(frames) + 1)
        frames.insert(i, self.big[:size])
        return frames

    # -- for the hb_ping port: a PUB reads subscriptions and nothing else
    def subscription(self) -> list[bytes]:
        rng = self.rng
        roll = rng.random()
        # subscribed topics are kept by the PUB socket, tens of bytes of memory per byte: short ones only
        if roll < 0.35:
            first = [b"\x01" + rng.randbytes(rng.randrange(0, 48))]
        elif roll < 0.45:  # a prefix of heartbeats (a wire message, or a numbered frame): they match it
            first = [b"\x01" + rng.choice([DELIM, b"1", b"12:"])[:rng.randrange(4)]]
        elif roll < 0.65:
            first = [b"\x00" + rng.randbytes(rng.randrange(0, 48))]  # cancel what was never subscribed
        elif roll < 0.8:
            first = [bytes([rng.randrange(2, 256)]) + rng.randbytes(rng.randrange(0, 200))]
        elif roll < 0.85:
            first = [b""]
        else:
            _, frames = rng.choice(self.everything)  # a whole message of the corpus, mutated
            first = [f for f in self.bitflip(list(frames)) if f[:1] not in (b"\x00", b"\x01")] or [b"\x02"]
        for _ in range(rng.choice((0, 0, 0, 1, 3))):
            first.append(rng.choice([b"\x01" + rng.randbytes(8), b"\x00", rng.randbytes(16), b""]))
        return first


# -- raw TCP: not even ZMTP, or ZMTP that breaks off -----------------------------------------------------
def _greeting(version: bytes = b"\x03\x00", mechanism: bytes = b"NULL", as_server: int = 0) -> bytes:
    return b"\xff" + b"\x00" * 8 + b"\x7f" + version + mechanism.ljust(20, b"\x00") + bytes([as_server]) + b"\x00" * 31


def _ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def raw_blobs(rng: random.Random) -> list[bytes]:
    """Byte streams for raw TCP connections: noise, other protocols, and ZMTP handshakes gone wrong."""
    greet = _greeting()
    return [
        rng.randbytes(rng.randrange(1, 8192)),
        rng.randbytes(rng.randrange(1, 64)),
        b"\x00" * 1024,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(500),  # a TLS ClientHello, roughly
        b"\xff" + rng.randbytes(200),  # the ZMTP signature's first byte, then noise
        greet[:10] + rng.randbytes(54),  # a signature, then a bad greeting
        _greeting(b"\x09\x09") + rng.randbytes(100),  # a version that does not exist
        _greeting(mechanism=b"CURVE") + rng.randbytes(100),  # a mechanism the controller does not speak
        _greeting(mechanism=b"PLAIN") + rng.randbytes(100),
        _greeting(mechanism=rng.randbytes(20)),
        greet + rng.randbytes(300),  # a good greeting, then noise
        greet + _ready(b"PUB") + rng.randbytes(50),  # an incompatible socket type
        greet + _ready(rng.randbytes(12)),
        greet + b"\x04\xff" + rng.randbytes(255),  # a command that is not one
        greet + _ready(b"DEALER") + b"\x02" + struct.pack(">Q", 2**62),  # a frame of 4 EiB announced, never sent
        greet + _ready(b"DEALER") + b"\x03" + struct.pack(">Q", 2**40) + rng.randbytes(1000),  # 1 TiB, then stop
        greet + _ready(b"DEALER") + b"\x01\x05" * 5000,  # a message that never ends
        greet + _ready(b"SUB") + b"\x00\x06\x01" + rng.randbytes(5),  # a ZMTP 3.0 subscription, then garbage
    ]


# -- the controller under attack ------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Target:
    proc: subprocess.Popen
    einfo: dict
    cinfo: dict
    rc: Client
    engine_pid: int
    tasks: int = 0  # tasks the real client sent: the only ones allowed to run
    served_max: float = 0.0  # the longest wait for an answer, in seconds

    def url(self, port: str) -> str:
        info = self.cinfo if port == "client" else self.einfo
        return f"tcp://127.0.0.1:{info['ports'][port]}"

    def status(self) -> dict:
        return self.rc.controller_status()

    def served(self, where: str, timeout: float = SERVE_TIMEOUT) -> None:
        assert self.proc.poll() is None, f"the controller exited with {self.proc.returncode} {where}"
        t0 = time.monotonic()
        ar = self.rc[:].apply_async(os.getpid)
        self.tasks += 1
        try:
            got = ar.get(timeout=timeout)
        except TimeoutError:
            pytest.fail(f"the real client was not served within {timeout:g} s {where}")
        assert got == [self.engine_pid], f"unexpected answer {got!r} {where}"
        self.served_max = max(self.served_max, time.monotonic() - t0)


def attacker_socket(ctx: zmq.Context, kind: int, info: dict) -> zmq.Socket:
    """A socket of a peer without the key. When the controller encrypts (CurveZMQ), the peer knows its public
    key and brings a key pair of its own: the strongest peer without the key, the one that reaches the hub."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDTIMEO, 10_000)  # a controller that stops reading fails the test, not hangs it
    if info.get("curve"):
        public, secret = zmq.curve_keypair()
        s.setsockopt(zmq.CURVE_SERVERKEY, info["curve"].encode())
        s.setsockopt(zmq.CURVE_PUBLICKEY, public)
        s.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return s


def fuzz_sockets(ctx: zmq.Context, url: str, info: dict, rng: random.Random) -> list[zmq.Socket]:
    """DEALERs to one port: some with routing ids of their own (the delimiter, 255 bytes, an engine's shape)."""
    ids = [None, None, None, DELIM, rng.randbytes(255), rng.randbytes(8).hex().encode() + b"-eng"]
    socks = []
    for rid in ids:
        s = attacker_socket(ctx, zmq.DEALER, info)
        s.setsockopt(zmq.SNDHWM, 0)
        if rid is not None:
            s.setsockopt(zmq.ROUTING_ID, rid)
        s.connect(url)
        socks.append(s)
    return socks


def drain(socks: list[zmq.Socket], limit: int = 100) -> list[list[bytes]]:
    got = []
    for s in socks:
        for _ in range(limit):
            try:
                got.append(s.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
    return got


def _short(frames: list[bytes]) -> str:
    return repr([f[:120] + (b"..." if len(f) > 120 else b"") for f in frames[:8]])


def run_fuzz(spawner, pdir: Path, tmp_path: Path, seed: int, per_port: int) -> dict:
    """The whole attack; returns what it measured (for the report of the test)."""
    t_start = time.monotonic()
    marker = tmp_path / "marker-ran"
    cid = f"fuzz{seed}"
    proc, einfo, cinfo = spawner.controller(pdir, cid, *CONTROLLER_ARGS)
    engine = spawner.engine(pdir, cid, "--controller-timeout", "60", env=clean_env())

    capture_key = new_key()
    assert capture_key != einfo["key"]
    rec = Recorder(capture_key)
    try:
        cap_engine = start_capture_engine(spawner, rec, tmp_path)
        capture_client(rec, tmp_path, marker)
        wait_until(rec.engine_bye.is_set, 30, what="the capture engine to register, run a task and leave")
        assert cap_engine.wait(15) == 0, spawner.output(cap_engine)
        wait_until(lambda: len(rec.records["hb_pong"]) >= 3, 5, what="heartbeats echoed by the capture engine")
    finally:
        rec.close()
    assert not rec.errors, rec.errors
    corpus = build_corpus(rec)
    seen = {lbl for msgs in corpus.values() for lbl, _ in msgs}
    wanted = {"client:hello", "client:ka", "client:task", "client:status", "client:shutdown", "client:bye",
              "engine:register", "engine:result", "engine:synced", "engine:stream", "engine:bye"}
    assert wanted <= seen, f"the capture missed {sorted(wanted - seen)}; recorded {sorted(seen)}"
    tasks = [f for lbl, f in corpus["client"] if lbl == "client:task"]
    marker_tasks = [f for f in tasks if str(marker).encode() in b"".join(f[1:])]
    assert len(marker_tasks) >= 3, "the captured tasks do not carry the marker function"
    t_capture = time.monotonic() - t_start

    rc = Client(paths.connection_file(pdir, "client", cid), timeout=10)
    ctx = zmq.Context()
    try:
        rc.wait_for_engines(1, timeout=30)
        assert rc.ids == [0], f"the captured tasks target engine 0; the engines are {rc.ids}"
        target = Target(proc, einfo, cinfo, rc, engine.pid)
        target.served("before the fuzz")
        before, tasks_before = target.status()["stats"], target.tasks
        rss_before = _rss_mb(proc.pid)
        now = time.time()
        fz = Mutator(seed, corpus, now)
        corpus_file = tmp_path / "fuzz-corpus.pickle"  # Mutator(seed, *pickle.load(f)) makes the same messages
        corpus_file.write_bytes(pickle.dumps((corpus, now)))
        tag = f"seed {seed}, corpus {corpus_file}"
        ctl_rng = random.Random(seed + 1)
        huge = bytearray(ctl_rng.randbytes(2**20))
        huge[0] = 2  # not a subscription, for hb_ping
        huge = bytes(huge) * (HUGE // 2**20)

        sent = {p: 0 for p in (*ROUTER_PORTS, "hb_ping")}
        replies: list[str] = []
        socks_by_port = {p: fuzz_sockets(ctx, target.url(p), cinfo if p == "client" else einfo, ctl_rng)
                         for p in ROUTER_PORTS}
        t_fuzz = time.monotonic()
        counted_before = before["dropped"]
        for port in ROUTER_PORTS:
            socks = socks_by_port[port]
            for b in range(per_port // BATCH):
                where = f"after batch {b} of {per_port // BATCH} on the {port} port ({tag})"
                labels = []
                for k in range(BATCH):
                    label, frames = fz.message(port)
                    labels.append(label)
                    try:
                        socks[k % len(socks)].send_multipart(frames, copy=False)
                    except zmq.Again:
                        pytest.fail(f"the controller stopped reading the {port} port {where}")
                sent[port] += BATCH
                if b == per_port // BATCH // 2:  # one frame of 100 MB in the header's place, halfway
                    socks[0].send_multipart([DELIM + ctl_rng.randbytes(32).hex().encode() + huge], copy=False)
                    sent[port] += 1
                    target.served(f"after a {HUGE >> 20} MB frame on the {port} port ({tag})", 10.0)
                target.served(where)
                got = drain(socks)
                replies += [f"{port} {where}: {_short(r)}; sent in this batch: {labels[:5]}..." for r in got]
            if port != "hb_pong":
                # every message counted as dropped
                def counted(_want=counted_before + sent[port]) -> bool:
                    return target.status()["stats"]["dropped"] >= _want
                wait_until(counted, 20, interval=0.1,
                           what=f"the controller to count {sent[port]} dropped messages on the {port} port ({tag})")
                now_dropped = target.status()["stats"]["dropped"]
                assert now_dropped - counted_before == sent[port], (port, tag, counted_before, now_dropped, sent)
                counted_before = now_dropped
            else:
                # hb_pong takes frames of at most 256 bytes: a larger one closes its connection before the
                # controller reads anything (and what was in flight on it goes too), so not all are counted;
                # what is read is read in bounded batches, once per heartbeat
                time.sleep(2.5)
                now_dropped = target.status()["stats"]["dropped"]
                assert 0 < now_dropped - counted_before <= sent[port], (port, tag, counted_before, now_dropped, sent)
        after = target.status()["stats"]

        t_routers = time.monotonic() - t_fuzz
        # hb_ping: garbage subscriptions from XSUB sockets, and a few SUB sockets with garbage topics. A reference
        # subscriber, connected first, gets every heartbeat the controller publishes from then on
        reference = attacker_socket(ctx, zmq.SUB, einfo)
        reference.setsockopt(zmq.SUBSCRIBE, b"")
        reference.connect(target.url("hb_ping"))
        assert reference.poll(int(8 * HEARTBEAT * 1000)), f"no heartbeat before the hb_ping fuzz ({tag})"
        published = [reference.recv_multipart()]
        xsubs = []
        for _ in range(4):
            s = attacker_socket(ctx, zmq.XSUB, einfo)
            s.connect(target.url("hb_ping"))
            xsubs.append(s)
        subs = []
        for _ in range(8):
            s = attacker_socket(ctx, zmq.SUB, einfo)
            for _ in range(ctl_rng.randrange(1, 20)):
                s.setsockopt(zmq.SUBSCRIBE, ctl_rng.randbytes(ctl_rng.randrange(0, 48)))
                if ctl_rng.random() < 0.3:
                    s.setsockopt(zmq.UNSUBSCRIBE, ctl_rng.randbytes(ctl_rng.randrange(0, 8)))
            s.connect(target.url("hb_ping"))
            subs.append(s)
        for b in range(per_port // BATCH):
            where = f"after batch {b} of {per_port // BATCH} on the hb_ping port ({tag})"
            for k in range(BATCH):
                try:
                    xsubs[k % len(xsubs)].send_multipart(fz.subscription(), copy=False)
                except zmq.Again:
                    pytest.fail(f"the controller stopped reading the hb_ping port {where}")
            sent["hb_ping"] += BATCH
            if b == per_port // BATCH // 2:  # not a subscription: one of 100 MB would cost the controller ~10 GB
                xsubs[0].send(huge, copy=False)
                sent["hb_ping"] += 1
                target.served(f"after a {HUGE >> 20} MB frame on the hb_ping port ({tag})", 10.0)
            target.served(where)
        time.sleep(4 * HEARTBEAT)  # the PUB socket reads subscriptions when it sends a heartbeat
        # a PUB answers nothing: what the fuzzing sockets got must be heartbeats published to everyone
        published += drain([reference], limit=10_000)
        heard = drain(xsubs + subs, limit=1000)
        for frames in heard:
            if frames not in published:
                replies.append(f"hb_ping: not a published heartbeat: {_short(frames)}")

        # raw TCP, on every port
        conns = []
        for port in (*ROUTER_PORTS, "hb_ping"):
            info = cinfo if port == "client" else einfo
            for blob in raw_blobs(ctl_rng):
                c = socket.create_connection(("127.0.0.1", info["ports"][port]), timeout=5)
                try:
                    c.sendall(blob)
                except OSError:
                    pass  # the controller hung up on it first: fine
                conns.append((port, c))
        target.served(f"after {len(conns)} raw TCP connections writing garbage ({tag})")
        for port, c in conns:
            c.setblocking(False)
            try:
                data = c.recv(1 << 16)
            except (BlockingIOError, OSError):
                data = b""
            c.close()
            if port != "hb_ping" and DELIM in data:
                replies.append(f"raw TCP on {port}: {data[:300]!r}")
        target.served(f"after the raw TCP connections closed ({tag})")

        # the end: still alive, nothing answered, nothing ran, the real client and engine fine
        poller = zmq.Poller()
        for s in (x for ss in socks_by_port.values() for x in ss):
            poller.register(s, zmq.POLLIN)
        poller.poll(500)
        for port, socks in socks_by_port.items():
            replies += [f"{port} at the end: {_short(r)}" for r in drain(socks)]
        assert not replies, f"the controller answered the fuzzer ({tag}): {replies[:10]}"
        assert proc.poll() is None and alive(proc.pid), f"the controller died ({tag})"
        assert engine.poll() is None, f"the engine died ({tag}): {spawner.output(engine)}"
        final = target.status()
        routed = final["stats"]["tasks"] - before["tasks"]
        assert routed == target.tasks - tasks_before, f"the controller routed a fuzzer's task ({tag}): {final}"
        assert final["stats"]["engines_died"] == 0, (tag, final)
        assert rc.ids == [0] and rc.engines[0]["pid"] == engine.pid, (tag, rc.engines)
        qs = rc.queue_status()
        assert qs["unassigned"] == 0 and qs[0]["queue"] == 0 and qs[0]["tasks"] == 0, (tag, qs)
        assert qs[0]["completed"] == target.tasks, f"the engine ran tasks the real client never sent ({tag})"
        assert not marker.exists(), f"a fuzzed message ran the captured task ({tag}): {marker.read_text()}"
        # heartbeats still go out, and the engine still answers them (it would have been declared dead)
        assert reference.poll(int(8 * HEARTBEAT * 1000)), f"no heartbeat after the fuzz ({tag})"
        rss_after = _rss_mb(proc.pid)
        t_total = time.monotonic() - t_start

        # the control: the captured payload is live ammunition. Signed as the real client signs (its session,
        # which the controller admitted), the same payload frames run and leave the marker
        captured = next(f for f in marker_tasks if _head(f).get("to") == 0 and _head(f)["k"] == "apply")
        h = _head(captured)
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(target.url("client"))
        peer.send_multipart(rc.session.pack("task", {"k": h["k"], "c": rc.cid, "to": 0}, captured[1:], digest=h["d"]))
        wait_until(marker.exists, 10, what="the captured task, signed with the real key, to run")
        wait_until(lambda: marker.read_text() == "ran\n", 5, what="the marker's content")
        return {"seed": seed, "sent": sent, "dropped": after["dropped"] - before["dropped"],
                "capture_s": round(t_capture, 2), "router_ports_s": round(t_routers, 2),
                "fuzz_s": round(t_total - t_capture, 2), "total_s": round(t_total, 2),
                "served_max_s": round(target.served_max, 3), "rss_mb": (round(rss_before), round(rss_after)),
                "raw_tcp": len(conns), "hb_ping_heard": len(heard),
                "corpus": dict(Counter(lbl for msgs in corpus.values() for lbl, _ in msgs))}
    finally:
        rc.close()
        ctx.destroy(linger=0)


def test_mutator_is_seeded_and_uses_every_mutation():
    """The generator is reproducible (same seed, corpus and time: same messages), a different seed differs,
    and every kind of mutation occurs within one batch, so the fuzz never silently loses one."""
    s = Session(new_key())
    corpus = {"client": [("client:task", s.pack("task", {"k": "apply", "c": s.id, "to": 0},
                                                 serialize.dumps((_touch_marker, ("/nonexistent",), {})))),
                         ("client:hello", s.pack("hello", {"c": s.id}))],
              "engine": [("engine:register", s.pack("register", {"info": {"host": "h"}, "hb": "ab"}))],
              "hb_pong": [("hb_pong:raw", [b"1:0123456789abcdef"])]}

    def run(seed: int) -> list:
        m = Mutator(seed, corpus, 1e9)
        return [m.message(p) for p in ROUTER_PORTS for _ in range(BATCH)] + [m.subscription() for _ in range(300)]

    first = run(SEED)
    assert first == run(SEED)
    assert first != run(SEED + 1)
    used = {op for label, _ in first[:3 * BATCH] for op in label.split("+")[1:]}
    assert used == {op.__name__ for op, _ in Mutator(SEED, corpus, 1e9).ops}, used
    assert all(frames for _, frames in first[:3 * BATCH]), "a message without frames"


def test_fuzz_controller_ports(spawner, pdir, tmp_path):
    """10,000 mutated messages per port, seed SEED: the controller survives, answers nothing, runs nothing."""
    report = run_fuzz(spawner, pdir, tmp_path, SEED, PER_PORT)
    print(report)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", LONG_SEEDS)
def test_fuzz_controller_ports_long(spawner, pdir, tmp_path, seed):
    """100,000 mutated messages per port under each of several other seeds."""
    report = run_fuzz(spawner, pdir, tmp_path, seed, LONG_PER_PORT)
    print(report)


# -- reproducers of what the fuzzing found ---------------------------------------------------------------
@pytest.mark.parametrize("port", ROUTER_PORTS)
def test_reflected_heartbeat_gets_no_reply(spawner, pdir, port):
    """Anyone may subscribe to hb_ping: what the controller publishes there, sent back verbatim to one of its
    ROUTER ports, must not be taken for a message of a keyed peer and answered. (Found by this fuzzer while
    heartbeats were signed wire messages: a reflected ping got a signed 'reply' on the client port and a
    'reregister' on the engine port.)"""
    _, einfo, cinfo = spawner.controller(pdir, "reflect", *CONTROLLER_ARGS)
    ctx = zmq.Context()
    try:
        sub = attacker_socket(ctx, zmq.SUB, einfo)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{einfo['ports']['hb_ping']}")
        assert sub.poll(int(8 * HEARTBEAT * 1000)), "no heartbeat published"
        published = sub.recv_multipart()
        info = cinfo if port == "client" else einfo
        peer = attacker_socket(ctx, zmq.DEALER, info)
        peer.connect(f"tcp://127.0.0.1:{info['ports'][port]}")
        peer.send_multipart(published)
        got = peer.recv_multipart() if peer.poll(1000) else None
        assert got is None, f"the {port} port answered a reflected heartbeat {published!r}: {got!r}"
    finally:
        ctx.destroy(linger=0)


def _grown_after(proc, send) -> float:
    """MB the controller grew by after `send()`, once its size settles (bounded wait)."""
    time.sleep(4 * HEARTBEAT)  # settled
    before = _rss_mb(proc.pid)
    send()
    deadline, last, grown = time.monotonic() + 8, -1.0, 0.0
    while time.monotonic() < deadline:
        time.sleep(2 * HEARTBEAT)
        grown = _rss_mb(proc.pid) - before
        if abs(grown - last) < 1:
            break
        last = grown
    return grown


@pytest.mark.parametrize("case", ["curve-many-topics", "large-topics"])
def test_subscription_flood_memory_bounded(spawner, pdir, case):
    """Garbage subscriptions to hb_ping from a peer without the key must not cost the controller much memory.
    A PUB socket keeps every subscribed topic in a trie of about one node per byte (2 MB of random topics hold
    ~95 MB; one 4 MB topic ~440 MB, kept after the subscriber has gone). With Curve on, a peer without the
    server's key never completes the handshake, so nothing it sends is read; without Curve, frames above 1 KB
    end their connection, so no topic is large (a local peer streaming small topics is not stopped:
    clusters that must withstand their host's other users turn Curve on). Allowed: 16 MB."""
    curve = case.startswith("curve")
    proc, einfo, _ = spawner.controller(pdir, "subs", *CONTROLLER_ARGS, "--curve" if curve else "--no-curve")
    ctx = zmq.Context()
    rng = random.Random(SEED)
    x = ctx.socket(zmq.XSUB)  # no Curve keys at all: it does not know the server's
    x.setsockopt(zmq.LINGER, 0)
    x.setsockopt(zmq.SNDTIMEO, 10_000)
    x.connect(f"tcp://127.0.0.1:{einfo['ports']['hb_ping']}")

    def send() -> None:
        if curve:
            for _ in range(4000):
                x.send(b"\x01" + rng.randbytes(512))
        else:
            # 20 topics of 50 KB (1 MB): a PUB would keep ~100 MB for them. Longer topics overflow the stack
            # of the attacker itself (its XSUB keeps them in a trie too, and frees it recursively)
            for _ in range(20):
                x.send(b"\x01" + rng.randbytes(50_000))

    try:
        grown = _grown_after(proc, send)
        assert proc.poll() is None, "the controller died"
        assert grown <= 16, f"subscriptions from a peer without the key grew the controller by {grown:.0f} MB ({case})"
    finally:
        ctx.destroy(linger=0)


FLOOD = """
import sys, time, zmq
ctx = zmq.Context()
socks = []
for _ in range(2):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 1_000_000)
    s.connect(sys.argv[1])
    socks.append(s)
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    for _ in range(1000):
        try:
            socks[n % 2].send(b"x", zmq.NOBLOCK)
        except zmq.Again:
            pass
        n += 1
print(n)
"""


def test_heartbeat_port_flood_does_not_stall_controller(spawner, pdir, tmp_path):
    """A peer without the key that writes one-frame messages to hb_pong as fast as one Python process can must
    not stop the controller from serving its clients: hb_pong is read once per heartbeat, and a reading loop
    that went on until the socket was empty would never end under such a flood, while the client port waits."""
    proc, einfo, cinfo = spawner.controller(pdir, "flood", *CONTROLLER_ARGS)
    engine = spawner.engine(pdir, "flood", "--controller-timeout", "60", env=clean_env())
    with Client(paths.connection_file(pdir, "client", "flood"), timeout=10) as rc:
        rc.wait_for_engines(1, timeout=30)
        assert rc[:].apply_async(os.getpid).get(timeout=5) == [engine.pid], "not served before the flood"
        # the private directory on the command line: the spawner fixture finds and kills it if it is left
        attacker = subprocess.Popen([sys.executable, "-c", FLOOD, f"tcp://127.0.0.1:{einfo['ports']['hb_pong']}",
                                     "3", str(tmp_path)], stdout=subprocess.PIPE, start_new_session=True)
        try:
            time.sleep(1.0)
            t0 = time.monotonic()
            ar = rc[:].apply_async(os.getpid)
            try:
                ar.get(timeout=2.0)
                took = time.monotonic() - t0
            except TimeoutError:
                took = None
            out, _ = attacker.communicate(timeout=15)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.wait(5)
        assert proc.poll() is None, "the controller died"
        assert took is not None, (f"the controller did not serve a client within 2 s while hb_pong was flooded "
                                  f"({out.decode().strip()} one-frame messages [b'x'] in 3 s)")
