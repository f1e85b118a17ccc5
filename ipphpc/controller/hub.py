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
from .memtrim import Trimmer
from .taskdb.service import TaskDBService


@dataclass(eq=False)
class EngineRecord:
    eid: int
    ident: bytes
    heart: bytes
    info: dict
    session: str
    registered: float = field(default_factory=time.time)
    outstanding: dict = field(default_factory=dict)  # msg_id -> client ident
    balanced: set = field(default_factory=set)  # the load-balanced ones among them
    completed: int = 0
    ctl: bytes = b""  # the engine's control line: signals, aborts, streamed output
    queued: bool = False  # in the hub's round-robin queue of engines with room for another task
    last_pong: int = 0
    alive: bool = True


@dataclass
class QueuedTask:
    msg_id: str
    client: bytes
    frames: list
    deadline: float | None
    among: frozenset | None = None  # engines allowed to run it (a view over some engines, or `follow`)


class Hub:
    def __init__(self, session: Session, socks: dict, cfg: Any, log: logging.Logger, store: Any = None,
                 recorder: Any = None):
        self.session = session
        # the task database: one queue put per task and per result when a backend records
        self.db = TaskDBService(self, store, recorder)
        self.recording = recorder is not None
        self.trimmer = Trimmer()
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
        self.by_ctl: dict[bytes, EngineRecord] = {}
        self.clients: dict[str, bytes] = {}  # client id -> result socket ident
        self.quiet: set[bytes] = set()  # result sockets that want no registry notes
        self.orphans: dict[str, list] = {}  # tasks of clients whose hello has not arrived yet
        self.free: deque[EngineRecord] = deque()  # engines with room, each at most once, round robin
        self.lb_queue: deque[QueuedTask] = deque()
        # tasks with a timeout go only to idle engines, so they start at once or time out here
        self.timed: deque[QueuedTask] = deque()
        # tasks that only some engines may run, checked before the open queue
        self.picky: deque[QueuedTask] = deque()
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
        if self.recording:
            self.db.task(h, frames)
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
        among = h.get("among")
        task = QueuedTask(h["id"], client, body, time.monotonic() + tmo if tmo else None,
                          frozenset(among) if among is not None else None)
        if among is not None:
            if not self._possible(task):
                return
            self.picky.append(task)
        else:
            (self.timed if tmo else self.lb_queue).append(task)
        if self.free:
            self._dispatch()

    def _possible(self, task: QueuedTask) -> bool:
        """A task that only absent engines may run fails now rather than waiting forever."""
        if any(eid in self.engines for eid in task.among):
            return True
        self._fail(task.client, task.msg_id, "ImpossibleDependency",
                   f"no engine that may run this task is registered (allowed: {sorted(task.among)})")
        return False

    def _to_engine(self, e: EngineRecord, msg_id: str, client: bytes, body) -> None:
        e.outstanding[msg_id] = client
        self._out(self.engine_sock, [e.ident, *body])

    def _balanced_to(self, e: EngineRecord, task: QueuedTask) -> None:
        e.balanced.add(task.msg_id)
        self._to_engine(e, task.msg_id, task.client, task.frames)

    def _dispatch(self) -> None:
        if self.timed:
            self._dispatch_timed()
        if self.picky:
            self._dispatch_picky()
        q, free, limit = self.lb_queue, self.free, self.limit
        while q and free:
            e = free.popleft()
            e.queued = False
            if not e.alive or len(e.outstanding) >= limit:
                continue
            task = q.popleft()
            self._balanced_to(e, task)
            if len(e.outstanding) < limit:
                free.append(e)
                e.queued = True

    def _dispatch_picky(self) -> None:
        """Each task to the least busy engine it allows that has room, in queue order."""
        limit, engines = self.limit, self.engines
        keep: deque[QueuedTask] = deque()
        room = sum(1 for e in engines.values() if len(e.outstanding) < limit)
        while self.picky:
            task = self.picky.popleft()
            if room:
                choices = [engines[i] for i in task.among if i in engines and len(engines[i].outstanding) < limit]
                if choices:
                    e = min(choices, key=lambda x: len(x.outstanding))
                    self._balanced_to(e, task)
                    if len(e.outstanding) >= limit:
                        room -= 1
                    continue
            keep.append(task)
        self.picky = keep

    def _dispatch_timed(self) -> None:
        now = time.monotonic()
        idle = [e for e in self.engines.values() if not e.outstanding]
        while self.timed and idle:
            task = self.timed.popleft()
            if now > task.deadline:
                self._fail(task.client, task.msg_id, "TaskTimeout", "task did not start within its timeout")
                continue
            self._balanced_to(idle.pop(), task)

    def _refill(self, e: EngineRecord) -> None:
        if e.alive and not e.queued and len(e.outstanding) < self.limit:
            self.free.append(e)
            e.queued = True

    def _fail(self, client: bytes, msg_id: str, ename: str, evalue: str, eid: int | None = None) -> None:
        fields = {"p": msg_id, "ok": False, "eid": eid, "err": {"ename": ename, "evalue": evalue, "tb": ""}}
        frames = [client, *self.session.pack("result", fields)]
        if self.recording:
            self.db.result(fields, frames)
        self._out(self.client_sock, frames)

    def on_request(self, ident: bytes, h: dict) -> None:
        """Requests arrive on a client's submit socket; replies go to its result socket."""
        ident = self._client_ident(h) or ident
        t = h["t"]
        if t.startswith("db_"):
            self.db.request(ident, h)
            return
        reply: dict[str, Any] = {"p": h["id"]}
        if t == "status":
            reply.update(engines={str(e.eid): {**e.info, "outstanding": len(e.outstanding)}
                                  for e in self.engines.values()},
                         queued=len(self.lb_queue) + len(self.timed), stats=self.stats, limit=self.limit,
                         clients=len(self.clients), pid=os.getpid(), taskdb=self.db.stats())
        elif t == "queue_status":
            reply.update(status=self._status(bool(h.get("verbose"))))
        elif t == "abort":
            reply.update(dropped=self.abort(list(h.get("ids", [])), h.get("targets")))
        elif t == "signal":
            targets = h.get("targets")
            reply.update(reached=self._control(list(self.engines) if targets is None else targets, "signal",
                                               {"sig": int(h["sig"])}))
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
        if e is None and ident in self.by_ctl:
            self.on_control(self.by_ctl[ident], h, frames)
            return
        if t == "result":
            if e is None:
                self._send(self.engine_sock, ident, "reregister", {})
                return
            self.on_result(e, h, frames)
        elif t == "data" and e is not None:
            self.on_control(e, h, frames)
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
        e = EngineRecord(eid, ident, heart, info, h["s"], last_pong=self.ping_seq, ctl=h.get("ctl", "").encode())
        self.engines[eid], self.by_ident[ident], self.by_heart[heart] = e, e, e
        if e.ctl:
            self.by_ctl[e.ctl] = e
        self._send(self.engine_sock, ident, "registered", {"p": h["id"], "eid": eid,
                                                          "hb": self.cfg.heartbeat_period})
        self._note("add", eid, info)
        self._refill(e)
        self._dispatch()

    def on_result(self, e: EngineRecord, h: dict, frames) -> None:
        client = e.outstanding.pop(h["p"], None)
        if e.balanced:
            e.balanced.discard(h["p"])
        e.completed += 1
        self.stats["results"] += 1
        if self.recording:
            self.db.result(h, frames)
        if client is not None:
            self._out(self.client_sock, [client, *frames[1:]])
        dur = h.get("dur")
        if dur is not None:
            avg = self.avg_task
            avg = dur if avg is None else 0.9 * avg + 0.1 * dur
            self.avg_task = avg
            self.limit = max(1, min(self.cfg.prefetch_max, int(self.cfg.prefetch_target / max(avg, 1e-6))))
        self._refill(e)
        if self.lb_queue or self.timed or self.picky:
            self._dispatch()

    def on_control(self, e: EngineRecord, h: dict, frames) -> None:
        """Output streamed and data published by a running task go to the client that sent it."""
        if h["t"] in ("stream", "data"):
            client = e.outstanding.get(h.get("p"))
            if client is not None:
                self._out(self.client_sock, [client, *frames[1:]])

    def _control(self, eids: list, msg_type: str, fields: dict) -> list[int]:
        """Send a control message to each engine of `eids` that has a control line; returns those reached."""
        reached = []
        for eid in eids:
            e = self.engines.get(eid)
            if e is not None and e.ctl:
                self._send(self.engine_sock, e.ctl, msg_type, fields)
                reached.append(eid)
        return reached

    def abort(self, ids: list[str], targets: list | None) -> list[str]:
        """Drop queued tasks among `ids` here, and tell engines to skip those they hold but have not started."""
        wanted = set(ids)
        dropped = []
        for name in ("lb_queue", "timed", "picky"):
            q = getattr(self, name)
            if not q:
                continue
            keep = deque()
            for t in q:
                if t.msg_id in wanted:
                    dropped.append(t.msg_id)
                    self._fail(t.client, t.msg_id, "TaskAborted", "the task was aborted before it started")
                else:
                    keep.append(t)
            setattr(self, name, keep)
        for e in list(self.engines.values()):
            if targets is not None and e.eid not in targets:
                continue
            held = [m for m in e.outstanding if m in wanted]
            if held:
                self._control([e.eid], "abort", {"ids": held})
        return dropped

    def _status(self, verbose: bool) -> dict:
        """IPython Parallel's queue_status shape: per engine, direct tasks waiting ('queue'), load-balanced
        ones assigned to it ('tasks'), 'completed'; 'unassigned' for tasks no engine holds yet."""
        out: dict[str, Any] = {}
        for e in self.engines.values():
            direct = [m for m in e.outstanding if m not in e.balanced]
            if verbose:
                out[str(e.eid)] = {"queue": direct, "completed": e.completed, "tasks": sorted(e.balanced)}
            else:
                out[str(e.eid)] = {"queue": len(direct), "completed": e.completed, "tasks": len(e.balanced)}
        waiting = [*self.lb_queue, *self.timed, *self.picky]
        out["unassigned"] = [t.msg_id for t in waiting] if verbose else len(waiting)
        return out

    def _unregister(self, e: EngineRecord, why: str) -> None:
        if not e.alive:
            return
        e.alive = False
        self.engines.pop(e.eid, None)
        self.by_ident.pop(e.ident, None)
        self.by_heart.pop(e.heart, None)
        self.by_ctl.pop(e.ctl, None)
        self.guard.forget(e.session)
        host = e.info.get("host")
        for msg_id, client in e.outstanding.items():
            self._fail(client, msg_id, "EngineError",
                       f"engine {e.eid} (pid {e.info.get('pid')} on {host}) was lost while running "
                       f"this task: {why}", e.eid)
        e.outstanding.clear()
        e.balanced.clear()
        if self.picky:
            self.picky = deque(t for t in self.picky if self._possible(t))
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
            self.trimmer.check(self.stats["tasks"], self._idle() and self.db.idle())
            cutoff = self.ping_seq - self.cfg.heartbeat_misses
            for e in [e for e in self.engines.values() if e.last_pong < cutoff]:
                self.stats["engines_died"] += 1
                self._unregister(e, f"no heartbeat for {self.cfg.heartbeat_misses * period:g} s")

    def _idle(self) -> bool:
        return not (self.lb_queue or self.timed or self.picky) and not any(e.outstanding
                                                                            for e in self.engines.values())

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
