"""Routing: the engine registry, direct and load-balanced queues, heartbeats.

The hub reads headers only. Payload frames are forwarded as the zmq frames they arrived
in and dropped once sent, so memory holds no copy of work already handed to an engine.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from ..wire import AuthError, ReplayGuard, Session, check_version
from ..zmqpump import Pump, send_frames


@dataclass(eq=False)
class EngineRecord:
    eid: int
    ident: bytes
    heart: bytes
    info: dict
    session: str
    registered: float = field(default_factory=time.time)
    outstanding: dict = field(default_factory=dict)  # msg_id -> client ident
    queued: bool = False  # in the hub's round-robin queue of engines with room for another task
    last_pong: int = 0
    alive: bool = True


@dataclass
class QueuedTask:
    msg_id: str
    client: bytes
    frames: list
    deadline: float | None


class Hub:
    def __init__(self, session: Session, socks: dict, cfg: Any, log: logging.Logger):
        self.session = session
        self.cfg = cfg
        self.log = log
        self.client_sock = socks["client"]
        self.engine_sock = socks["engine"]
        self.ping_sock = socks["hb_ping"]
        self.pong_sock = socks["hb_pong"]  # drained in bulk once per heartbeat period
        self.guard = ReplayGuard(cfg.replay_window)
        self.engines: dict[int, EngineRecord] = {}
        self.by_ident: dict[bytes, EngineRecord] = {}
        self.by_heart: dict[bytes, EngineRecord] = {}
        self.clients: dict[str, bytes] = {}  # client id -> result socket ident
        self.quiet: set[bytes] = set()  # result sockets that want no registry notes
        self.orphans: dict[str, list] = {}  # tasks of clients whose hello has not arrived yet
        self.free: deque[EngineRecord] = deque()  # engines with room, each at most once, round robin
        self.lb_queue: deque[QueuedTask] = deque()
        # tasks with a timeout go only to idle engines, so they start at once or time out here
        self.timed: deque[QueuedTask] = deque()
        self.next_eid = 0
        self.ping_seq = 0
        self.avg_task = None  # moving average of engine-reported task durations
        self.limit = 2
        self.pending_notes: dict[str, Any] = {"add": {}, "rm": []}
        self.note_scheduled = False
        self.stats = {"tasks": 0, "results": 0, "dropped": 0, "engines_died": 0}
        self._stopping = asyncio.Event()
        self._stop_engines = False

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, engines: bool = False) -> None:
        self._stop_engines = self._stop_engines or engines
        self._stopping.set()

    async def serve(self) -> None:
        self.pumps = {self.client_sock: Pump(self.client_sock, self._guarded(self.on_client, "client")),
                      self.engine_sock: Pump(self.engine_sock, self._guarded(self.on_engine, "engine"))}
        beat = asyncio.ensure_future(self._heartbeat())
        try:
            await self._stopping.wait()
            if self._stop_engines:
                for e in list(self.engines.values()):
                    self._send(self.engine_sock, e.ident, "stop", {})
                await asyncio.sleep(0.05)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            for p in self.pumps.values():
                p.close()

    def _guarded(self, handler, name: str):
        def handle(frames) -> None:
            try:
                handler(frames)
            except AuthError as e:
                self.stats["dropped"] += 1
                self.log.warning("dropped a message on the %s socket: %s", name, e)
        return handle

    def _out(self, sock, frames: list) -> None:
        self.pumps[sock].send(frames)

    def _send(self, sock, ident: bytes, msg_type: str, fields: dict, payload=()) -> None:
        self._out(sock, [ident, *self.session.pack(msg_type, fields, payload)])

    def _split(self, frames) -> tuple[list, dict, list]:
        idents, header, payload = self.session.split(frames)
        self.guard.check(header)
        return [i.bytes for i in idents], header, payload

    # -- clients -------------------------------------------------------------------------------
    def on_client(self, frames) -> None:
        idents, h, payload = self._split(frames)
        t = h["t"]
        if t == "task":
            self.on_task(idents[0], h, frames)
        elif t == "hello":
            self.on_hello(idents[0], h)
        else:
            self.on_request(idents[0], h)

    def on_hello(self, ident: bytes, h: dict) -> None:
        bad = check_version(h, "this client")
        if bad:
            self._send(self.client_sock, ident, "refused", {"p": h["id"], "why": bad})
            self.log.warning("refused client: %s", bad)
            return
        self.clients[h["c"]] = ident
        for _, held_h, held_frames in self.orphans.pop(h["c"], []):
            self.on_task(ident, held_h, held_frames)
        self._send(self.client_sock, ident, "welcome", {
            "p": h["id"], "engines": {str(e.eid): e.info for e in self.engines.values()},
            "cluster_id": self.cfg.cluster_id})

    def _client_ident(self, h: dict) -> bytes | None:
        return self.clients.get(h.get("c"))

    def on_task(self, submit_ident: bytes, h: dict, frames) -> None:
        client = self._client_ident(h)
        if client is None and h.get("sync"):
            # a caller's own channel for synchronous calls: its results go back where the task came
            # from, and it wants no registry notes; known from its first task, so a restart loses nothing
            self.clients[h["c"]] = client = submit_ident
            self.quiet.add(submit_ident)
        if client is None:
            # its hello travels on another connection and may arrive later (e.g. after a restart): hold it
            held = self.orphans.setdefault(h.get("c"), [])
            if len(held) < 100_000:
                held.append((time.monotonic(), h, frames))
            return
        self.stats["tasks"] += 1
        body = frames[1:]
        target = h.get("to")
        if target is not None:
            e = self.engines.get(target)
            if e is None:
                self._fail(client, h["id"], "EngineError", f"engine {target} is not registered", target)
                return
            self._to_engine(e, h["id"], client, body)
            return
        tmo = h.get("tmo")
        task = QueuedTask(h["id"], client, body, time.monotonic() + tmo if tmo else None)
        (self.timed if tmo else self.lb_queue).append(task)
        if self.free:
            self._dispatch()

    def _to_engine(self, e: EngineRecord, msg_id: str, client: bytes, body) -> None:
        e.outstanding[msg_id] = client
        self._out(self.engine_sock, [e.ident, *body])

    def _dispatch(self) -> None:
        if self.timed:
            self._dispatch_timed()
        q, free, limit = self.lb_queue, self.free, self.limit
        while q and free:
            e = free.popleft()
            e.queued = False
            if not e.alive or len(e.outstanding) >= limit:
                continue
            task = q.popleft()
            self._to_engine(e, task.msg_id, task.client, task.frames)
            if len(e.outstanding) < limit:
                free.append(e)
                e.queued = True

    def _dispatch_timed(self) -> None:
        now = time.monotonic()
        idle = [e for e in self.engines.values() if not e.outstanding]
        while self.timed and idle:
            task = self.timed.popleft()
            if now > task.deadline:
                self._fail(task.client, task.msg_id, "TaskTimeout", "task did not start within its timeout")
                continue
            self._to_engine(idle.pop(), task.msg_id, task.client, task.frames)

    def _refill(self, e: EngineRecord) -> None:
        if e.alive and not e.queued and len(e.outstanding) < self.limit:
            self.free.append(e)
            e.queued = True

    def _fail(self, client: bytes, msg_id: str, ename: str, evalue: str, eid: int | None = None) -> None:
        self._send(self.client_sock, client, "result", {
            "p": msg_id, "ok": False, "eid": eid, "err": {"ename": ename, "evalue": evalue, "tb": ""}})

    def on_request(self, ident: bytes, h: dict) -> None:
        """Requests arrive on a client's submit socket; replies go to its result socket."""
        ident = self._client_ident(h) or ident
        t = h["t"]
        reply: dict[str, Any] = {"p": h["id"]}
        if t == "status":
            reply.update(engines={str(e.eid): {**e.info, "outstanding": len(e.outstanding)}
                                  for e in self.engines.values()},
                         queued=len(self.lb_queue) + len(self.timed), stats=self.stats, limit=self.limit,
                         clients=len(self.clients), pid=os.getpid())
        elif t == "shutdown":
            self.log.info("shutdown requested by a client (engines too: %s)", bool(h.get("engines", True)))
            self.request_stop(engines=bool(h.get("engines", True)))
        elif t == "stop_engines":
            for eid in h.get("targets") or list(self.engines):
                e = self.engines.get(eid)
                if e:
                    self._send(self.engine_sock, e.ident, "stop", {})
        elif t == "bye":
            self.quiet.discard(self.clients.pop(h.get("c"), b""))
            return
        else:
            reply.update(error=f"unknown request {t!r}")
        self._send(self.client_sock, ident, "reply", reply)


    # -- engines -------------------------------------------------------------------------------
    def on_engine(self, frames) -> None:
        idents, h, payload = self._split(frames)
        ident, t = idents[0], h["t"]
        e = self.by_ident.get(ident)
        if t == "result":
            if e is None:
                self._send(self.engine_sock, ident, "reregister", {})
                return
            self.on_result(e, h, frames)
        elif t == "register":
            self.on_register(ident, h)
        elif t == "bye":
            if e is not None:
                self._unregister(e, "it stopped")
        elif e is None:
            self._send(self.engine_sock, ident, "reregister", {})

    def on_register(self, ident: bytes, h: dict) -> None:
        bad = check_version(h, "this engine")
        if bad:
            self._send(self.engine_sock, ident, "refused", {"p": h["id"], "why": bad})
            self.log.warning("refused engine from %s: %s", h.get("info", {}).get("host"), bad)
            return
        old = self.by_ident.get(ident)
        if old is not None:
            self._unregister(old, "it registered again")
        want = h.get("want_id")
        if isinstance(want, int) and want >= 0 and want not in self.engines:
            eid = want
        else:
            while self.next_eid in self.engines:
                self.next_eid += 1
            eid = self.next_eid
        self.next_eid = max(self.next_eid, eid + 1)
        info = {**h.get("info", {}), "engine_id": eid}
        heart = h["hb"].encode()
        e = EngineRecord(eid, ident, heart, info, h["s"], last_pong=self.ping_seq)
        self.engines[eid], self.by_ident[ident], self.by_heart[heart] = e, e, e
        self._send(self.engine_sock, ident, "registered", {"p": h["id"], "eid": eid,
                                                          "hb": self.cfg.heartbeat_period})
        self._note("add", eid, info)
        self._refill(e)
        self._dispatch()

    def on_result(self, e: EngineRecord, h: dict, frames) -> None:
        client = e.outstanding.pop(h["p"], None)
        self.stats["results"] += 1
        if client is not None:
            self._out(self.client_sock, [client, *frames[1:]])
        dur = h.get("dur")
        if dur is not None:
            avg = self.avg_task
            avg = dur if avg is None else 0.9 * avg + 0.1 * dur
            self.avg_task = avg
            self.limit = max(1, min(self.cfg.prefetch_max, int(self.cfg.prefetch_target / max(avg, 1e-6))))
        self._refill(e)
        if self.lb_queue or self.timed:
            self._dispatch()

    def _unregister(self, e: EngineRecord, why: str) -> None:
        if not e.alive:
            return
        e.alive = False
        self.engines.pop(e.eid, None)
        self.by_ident.pop(e.ident, None)
        self.by_heart.pop(e.heart, None)
        self.guard.forget(e.session)
        host = e.info.get("host")
        for msg_id, client in e.outstanding.items():
            self._fail(client, msg_id, "EngineError",
                       f"engine {e.eid} (pid {e.info.get('pid')} on {host}) was lost while running "
                       f"this task: {why}", e.eid)
        e.outstanding.clear()
        self.log.info("engine %d (%s pid %s) unregistered: %s", e.eid, host, e.info.get("pid"), why)
        self._note("rm", e.eid, None)

    def _note(self, kind: str, eid: int, info: dict | None) -> None:
        """Tell clients of registry changes, coalesced to one message per loop turn."""
        if kind == "add":
            self.pending_notes["add"][str(eid)] = info
        else:
            self.pending_notes["add"].pop(str(eid), None)
            self.pending_notes["rm"].append(eid)
        if not self.note_scheduled:
            self.note_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_notes)

    def _flush_notes(self) -> None:
        self.note_scheduled = False
        notes, self.pending_notes = self.pending_notes, {"add": {}, "rm": []}
        for ident in self.clients.values():
            if ident not in self.quiet:
                self._send(self.client_sock, ident, "engines", notes)

    # -- heartbeats -----------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Ping on a PUB socket; each engine's heart echoes it from a C thread, so busy engines still answer."""
        period = self.cfg.heartbeat_period
        while True:
            self.ping_seq += 1
            send_frames(self.ping_sock, self.session.pack("ping", {"n": self.ping_seq}))
            await asyncio.sleep(period)
            self._drain_pongs()
            self._sweep_timeouts()
            cutoff = self.ping_seq - self.cfg.heartbeat_misses
            for e in [e for e in self.engines.values() if e.last_pong < cutoff]:
                self.stats["engines_died"] += 1
                self._unregister(e, f"no heartbeat for {self.cfg.heartbeat_misses * period:g} s")

    def _drain_pongs(self) -> None:
        while True:
            try:
                frames = self.pong_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                idents, h, _ = self.session.split(frames)
            except AuthError:
                self.stats["dropped"] += 1
                continue
            e = self.by_heart.get(idents[0]) if idents else None
            if e is not None and h.get("s") == self.session.id:
                e.last_pong = max(e.last_pong, h.get("n", 0))

    def _sweep_orphans(self, older_than: float = 30.0) -> None:
        now = time.monotonic()
        for cid in [c for c, held in self.orphans.items() if now - held[0][0] > older_than]:
            n = len(self.orphans.pop(cid))
            self.log.warning("dropped %d tasks of client %s: it never said hello", n, cid)

    def _sweep_timeouts(self) -> None:
        if self.orphans:
            self._sweep_orphans()
        if not self.timed:
            return
        now = time.monotonic()
        keep = deque()
        for t in self.timed:
            if now > t.deadline:
                self._fail(t.client, t.msg_id, "TaskTimeout", "task did not start within its timeout")
            else:
                keep.append(t)
        self.timed = keep
