"""Routing: the engine registry, direct and load-balanced queues, heartbeats.

The hub reads headers only. Payload frames are forwarded as the zmq frames they arrived
in and dropped once sent, so memory holds no copy of work already handed to an engine.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from .. import shm
from .._version import PROTOCOL_VERSION
from ..logflood import FloodLog
from ..wire import (
    PAYLOAD_AT,
    AuthError,
    Freshness,
    NotAdmitted,
    Session,
    beat,
    check_version,
    envelope,
    family,
    fan_part,
    read_beat,
    unwrap,
)
from ..zmqpump import Pump
from .memtrim import Trimmer
from .taskdb.service import TaskDBService
from .verdicts import Verdicts


@dataclass(eq=False)
class EngineRecord:
    eid: int
    ident: bytes
    heart: bytes
    info: dict
    session: str
    registered: float = field(default_factory=time.time)
    # msg_id -> client ident, in the order sent: the engine runs them in that order, so the first one is
    # the one running and the rest have not started
    outstanding: dict = field(default_factory=dict)
    balanced: dict = field(default_factory=dict)  # the load-balanced ones among them: msg_id -> QueuedTask
    completed: int = 0
    ctl: bytes = b""  # the engine's control line: signals, aborts, streamed output
    queued: bool = False  # in the hub's round-robin queue of engines with room for another task
    last_pong: int = 0
    alive: bool = True
    ends: float | None = None  # epoch seconds at which its allocation ends (walltime), if known
    drain_at: float | None = None  # from then on it takes no new load-balanced tasks
    draining: bool = False
    leaving: str = ""  # why, once the engine said it is going (its job was sent SIGTERM); it may be killed next
    sync: tuple = ()  # (number, msg_ids outstanding when the last "sync" was sent) while one is unanswered


@dataclass
class QueuedTask:
    msg_id: str
    client: bytes
    frames: list
    deadline: float | None
    among: frozenset | None = None  # engines allowed to run it (a view over some engines, or `follow`)
    duration: float | None = None  # seconds it is expected to run: only engines that live that long


class Hub:
    def __init__(self, session: Session, socks: dict, cfg: Any, log: logging.Logger, store: Any = None,
                 recorder: Any = None, shm_prefix: str | None = None):
        self.session = session
        # shared-memory frames (see ipphpc.shm): this cluster's file prefix, and msg_id -> [file names,
        # engines still to answer] of each task that sent some, removed once all have answered
        self.shm_prefix = shm_prefix
        self.shm_files: dict[str, list] = {}
        # the task database: one queue put per task and per result when a backend records
        self.db = TaskDBService(self, store, recorder)
        self.recording = recorder is not None
        self.trimmer = Trimmer(tidy=self.db.tidy)
        self.cfg = cfg
        self.log = log
        self.client_sock = socks["client"]
        self.engine_sock = socks["engine"]
        self.ping_sock = socks["hb_ping"]
        self.pong_sock = socks["hb_pong"]  # drained in bulk once per heartbeat period
        self.fresh = Freshness()
        # messages of session families that have not proven freshness (yet): (arrival, handler, frames, family)
        self.held: deque[tuple[float, str, list, str]] = deque()
        self.engines: dict[int, EngineRecord] = {}
        self.by_ident: dict[bytes, EngineRecord] = {}
        self.by_heart: dict[bytes, EngineRecord] = {}
        self.by_ctl: dict[bytes, EngineRecord] = {}
        self.clients: dict[str, bytes] = {}  # client id -> result socket ident
        self.quiet: set[bytes] = set()  # result sockets that want no registry notes
        # messages for such peers this turn of the loop, sent together at its end: (socket, ident) -> messages
        self.outbox: dict[tuple[Any, bytes], list[list]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        # result socket -> when it last said anything (a client's own, not a channel's: they read envelopes)
        self.client_seen: dict[bytes, float] = {}
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
        # task_messages: tasks as clients sent them (one message may carry a task for many engines);
        # envelopes_in / envelopes_out: messages that carried several, received / sent
        self.stats = {"tasks": 0, "task_messages": 0, "results": 0, "dropped": 0, "engines_died": 0,
                      "envelopes_in": 0, "envelopes_out": 0}
        self._drops = FloodLog(self.log, "messages dropped")
        self.empty_since: float | None = None  # when the last engine went (None: engines, or none ever)
        self.last_gone = ""
        # hearts of engines declared dead, so one that comes back (SIGCONT, a network healed) is asked to
        # register again instead of staying unknown: heart -> (engine ident, when)
        self.gone_hearts: dict[bytes, tuple[bytes, float]] = {}
        # engines that left, in order, for a cluster that replaces lost batch elements (status "departed_since")
        self.departed: deque[dict] = deque(maxlen=100_000)
        self.departures = 0
        self.verdicts = Verdicts(self, float(getattr(cfg, "verdict_wait", 0.0) or 0.0))
        self._stopping = asyncio.Event()
        self._stop_engines = False

    # -- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, engines: bool = False) -> None:
        self._stop_engines = self._stop_engines or engines
        self._stopping.set()

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.handlers = {"client": self._guarded(self.on_client, "client"),
                         "engine": self._guarded(self.on_engine, "engine")}
        # what a drain of either socket queued for a peer leaves as the drain ends (and what a timer queued,
        # at the end of that turn of the loop)
        self.pumps = {self.client_sock: Pump(self.client_sock, self.handlers["client"], after=self._flush_out),
                      self.engine_sock: Pump(self.engine_sock, self.handlers["engine"], after=self._flush_out)}
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
            self._flush_out()
            self.loop = None
            for p in self.pumps.values():
                p.close()
            if self.shm_prefix:
                shm.sweep(self.shm_prefix)  # files of tasks and results nobody will read now

    def _guarded(self, handler, name: str):
        def handle(frames) -> None:
            try:
                handler(frames)
            except AuthError as e:
                self._dropped(name, str(e))
        return handle

    def _dropped(self, where: str, why: str) -> None:
        """Count a refused message, and log it unless many came this minute."""
        self.stats["dropped"] += 1
        self._drops.warning("dropped a message on the %s socket: %s", where, why)

    def _out(self, sock, frames: list) -> None:
        """Send a message; one for an engine's task socket or a client's result socket waits in the outbox
        for the end of this turn of the loop, so a peer gets everything of one turn as one envelope."""
        ident = frames[0]
        if self.loop is None or (ident not in self.by_ident and ident not in self.client_seen):
            self.pumps[sock].send(frames)
            return
        box = self.outbox
        if not box:
            self.loop.call_soon(self._flush_out)
        msgs = box.get((sock, ident))
        if msgs is None:
            box[sock, ident] = [frames]
        else:
            msgs.append(frames)

    def _flush_out(self) -> None:
        if not self.outbox:
            return
        box, self.outbox = self.outbox, {}
        for (sock, ident), msgs in box.items():
            if len(msgs) == 1:
                self.pumps[sock].send(msgs[0])
            else:
                self.stats["envelopes_out"] += 1
                self.pumps[sock].send([ident, *envelope(msgs, skip=1)])

    def _send(self, sock, ident: bytes, msg_type: str, fields: dict, payload=()) -> None:
        self._out(sock, [ident, *self.session.pack(msg_type, fields, payload)])

    def _split(self, frames, where: str) -> tuple[list, dict, list] | None:
        """(routing ids, header, payload) of an authentic, fresh message; None when it was held or answered
        with a challenge instead. Raises AuthError for a message to drop."""
        idents, header, payload = self.session.split(frames)
        t, v = header.get("t"), header.get("v")
        opening = t in ("hello", "register")
        if not opening and not (isinstance(v, list) and v and v[0] == PROTOCOL_VERSION[0]):
            raise AuthError(f"message of wire protocol {v!r}, this controller speaks {list(PROTOCOL_VERSION)}")
        if opening and not self.fresh.admitted(str(header.get("s"))) and not self.fresh.admit(header):
            if idents:  # prove you are alive now: sign this nonce into the same message again
                sock = self.client_sock if where == "client" else self.engine_sock
                self._send(sock, idents[0].bytes, "challenge", {"p": header.get("id"), "nonce": self.fresh.issue()})
            return None
        try:
            self.fresh.check(header)
        except NotAdmitted:
            if header.get("t") != "bye":  # a goodbye of a family already forgotten needs nothing more
                self._hold(where, frames, header)
            return None
        return [i.bytes for i in idents], header, payload

    def _hold(self, where: str, frames: list, header: dict) -> None:
        """Keep a message of a family not admitted (yet): its hello may be on the way on another connection.
        Bounded in count; what is not released within `held_for` seconds is dropped and counted."""
        if len(self.held) >= 10_000:
            self.held.popleft()
            self._dropped(where, "too many messages of senders that never said hello")
        self.held.append((time.monotonic(), where, frames, family(header["s"])))

    def _release(self, fam: str) -> None:
        """A family was admitted: take its held messages, in arrival order (those older than its hello are
        then refused as stale)."""
        if not self.held:
            return
        mine = [x for x in self.held if x[3] == fam]
        if mine:
            self.held = deque(x for x in self.held if x[3] != fam)
            for _, where, frames, _ in mine:
                self.handlers[where](frames)

    def _expire_held(self, held_for: float = 30.0) -> None:
        now = time.monotonic()
        while self.held and now - self.held[0][0] > held_for:
            _, where, _, fam = self.held.popleft()
            self._dropped(where, f"session {fam} never proved it is alive (a replay, or a sender of before a "
                                 f"restart)")

    # -- clients -------------------------------------------------------------------------------
    def _each(self, frames, handle, where: str) -> None:
        """A message, or an envelope of them (a client's burst of tasks, an engine's results): each is
        checked, handled and, if need be, dropped on its own."""
        inner = unwrap(frames[1:]) if len(frames) > 2 else None
        if inner is None:
            handle(frames)
            return
        self.stats["envelopes_in"] += 1
        ident = frames[0]
        for m in inner:
            try:
                handle([ident, *m])
            except AuthError as e:
                self._dropped(where, str(e))

    def on_client(self, frames) -> None:
        self._each(frames, self._client_message, "client")

    def _client_message(self, frames) -> None:
        split = self._split(frames, "client")
        if split is None:
            return
        idents, h, payload = split
        t = h["t"]
        if t == "task":
            self.on_task(idents[0], h, frames)
        elif t == "ka":
            self.client_seen[idents[0]] = time.monotonic()
            if h.get("c") not in self.clients:  # back after it was taken for gone: its results go there again
                self.clients[h["c"]] = idents[0]
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
        self.client_seen[ident] = time.monotonic()
        for _, held_h, held_frames in self.orphans.pop(h["c"], []):
            self.on_task(ident, held_h, held_frames)
        self._send(self.client_sock, ident, "welcome", {
            "p": h["id"], "engines": {str(e.eid): e.info for e in self.engines.values()},
            "cluster_id": self.cfg.cluster_id})
        self._release(family(h["s"]))

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
        self.stats["task_messages"] += 1
        if "sh" in h:
            self._shm_track(h, frames)
        if self.recording:
            self.db.task(h, self._shm_mapped(h, frames) if "sh" in h else frames)
        body = frames[1:]
        target = h.get("to")
        if isinstance(target, list):  # one message for many engines: the same payload frames go to each,
            self.stats["tasks"] += len(target)  # under a header of its own (signed here)
            payload = frames[PAYLOAD_AT:]
            for eid, mid in zip(target, h["ids"]):
                e = self.engines.get(eid)
                if e is None:
                    self._fail(client, mid, "EngineError", f"engine {eid} is not registered", eid)
                else:
                    self._to_engine(e, mid, client, [self.session.signed(fan_part(h, eid, mid)), *payload])
            return
        self.stats["tasks"] += 1
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
                          frozenset(among) if among is not None else None, h.get("xd"))
        if among is not None or task.duration:
            if among is not None and not self._possible(task):
                return
            self.picky.append(task)
        else:
            (self.timed if tmo else self.lb_queue).append(task)
        if self.free:
            self._dispatch()

    def _shm_track(self, h: dict, frames: list) -> None:
        entry = [shm.names(h, frames[PAYLOAD_AT:]), len(h["ids"]) if "ids" in h else 1]
        for mid in h.get("ids") or (h["id"],):
            self.shm_files[mid] = entry

    def _shm_done(self, mid: str) -> None:
        """An engine answered task `mid`: it mapped the task's files before running it, so once every engine
        it went to has answered, nobody needs their names."""
        entry = self.shm_files.pop(mid, None)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                shm.remove(entry[0])

    def _shm_mapped(self, h: dict, frames: list) -> list:
        """The frames with shared-memory descriptors replaced by the files' pages, mapped (not read), for
        the task database: its records then outlive the files' names."""
        try:
            return [*frames[:PAYLOAD_AT], *shm.resolve(h, frames[PAYLOAD_AT:], populate=False)]
        except shm.SharedMemoryError as e:
            self.log.warning("task database: %s", e)
            return frames

    def _possible(self, task: QueuedTask) -> bool:
        """A task that only absent engines may run fails now rather than waiting forever."""
        if task.among is None or any(eid in self.engines for eid in task.among):
            return True  # (a task picky only for its duration waits for an engine that lives long enough)
        self._fail(task.client, task.msg_id, "ImpossibleDependency",
                   f"no engine that may run this task is registered (allowed: {sorted(task.among)})")
        return False

    def _to_engine(self, e: EngineRecord, msg_id: str, client: bytes, body) -> None:
        e.outstanding[msg_id] = client
        self._out(self.engine_sock, [e.ident, *body])

    def _balanced_to(self, e: EngineRecord, task: QueuedTask) -> None:
        e.balanced[task.msg_id] = task
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
            if not e.alive or e.draining or len(e.outstanding) >= limit:
                continue
            task = q.popleft()
            self._balanced_to(e, task)
            if len(e.outstanding) < limit:
                free.append(e)
                e.queued = True

    def _dispatch_picky(self) -> None:
        """Each task to the least busy engine it allows that has room (and, for a task of known duration,
        enough of its allocation left), in queue order."""
        limit, engines = self.limit, self.engines
        keep: deque[QueuedTask] = deque()
        room = sum(1 for e in engines.values() if len(e.outstanding) < limit and not e.draining)
        now = time.time()
        while self.picky:
            task = self.picky.popleft()
            if room:
                allowed = engines.values() if task.among is None else [engines[i] for i in task.among if i in engines]
                choices = [e for e in allowed if len(e.outstanding) < limit and not e.draining
                           and (not task.duration or e.ends is None or now + task.duration <= e.ends)]
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
        idle = [e for e in self.engines.values() if not e.outstanding and not e.draining]
        while self.timed and idle:
            task = self.timed.popleft()
            if now > task.deadline:
                self._fail(task.client, task.msg_id, "TaskTimeout", "task did not start within its timeout")
                continue
            self._balanced_to(idle.pop(), task)

    def _refill(self, e: EngineRecord) -> None:
        if e.draining:
            if not e.outstanding:
                self._send(self.engine_sock, e.ident, "stop", {"why": self._drain_why(e)})
            return
        if e.alive and not e.queued and len(e.outstanding) < self.limit:
            self.free.append(e)
            e.queued = True

    def _fail(self, client: bytes, msg_id: str, ename: str, evalue: str, eid: int | None = None) -> None:
        fields = {"p": msg_id, "ok": False, "eid": eid, "err": {"ename": ename, "evalue": evalue, "tb": ""}}
        frames = [client, *self.session.pack("result", fields)]
        if self.shm_files:
            self._shm_done(msg_id)
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
            reply.update(engines={str(e.eid): {**e.info, "outstanding": len(e.outstanding), "leaving": e.leaving}
                                  for e in self.engines.values()},
                         queued=len(self.lb_queue) + len(self.timed), stats=self.stats, limit=self.limit,
                         clients=len(self.clients), pid=os.getpid(), taskdb=self.db.stats(), held=len(self.held))
            since = h.get("departed_since")
            if since is not None:
                reply["departed"] = [d for d in self.departed if d["n"] >= since]
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
        elif t == "restart":
            refused, reached = {}, []
            for eid in h.get("targets") or list(self.engines):
                e = self.engines.get(eid)
                if e is None:
                    refused[str(eid)] = "not registered"
                elif e.info.get("mpi_comm"):
                    refused[str(eid)] = ("it is one rank of an MPI job, which cannot restart alone (restart_engines() "
                                         "restarts the whole job)")
                else:
                    self._send(self.engine_sock, e.ident, "restart", {})
                    reached.append(eid)
            reply.update(reached=reached, refused=refused)
        elif t == "watch_engines":  # the cluster's witness: answered once an engine goes silent (verdicts.py)
            self.verdicts.on_watch(ident, h)
            return
        elif t == "verdict":
            reply.update(self.verdicts.on_verdict(h))
        elif t == "engine_wait":  # an adapting cluster lets queued tasks wait while it adds engines
            self.cfg.engine_wait = float(h["seconds"])
        elif t == "stop_engines":
            for eid in h.get("targets") or list(self.engines):
                e = self.engines.get(eid)
                if e:
                    e.draining = True  # no new tasks; it leaves once it has run those it holds
                    self._send(self.engine_sock, e.ident, "stop", {})
        elif t == "bye":
            gone = self.clients.pop(h.get("c"), b"")
            self.quiet.discard(gone)
            self.client_seen.pop(gone, None)
            c = h.get("c")
            if c == family(h["s"]):  # the client itself (not one of its channels) is leaving: with its channels
                for ch in [k for k in self.clients if k.startswith(f"{c}/")]:
                    gone = self.clients.pop(ch)
                    self.quiet.discard(gone)
                    self.client_seen.pop(gone, None)
                self.fresh.forget(h["s"])
            return
        else:
            reply.update(error=f"unknown request {t!r}")
        self._send(self.client_sock, ident, "reply", reply)


    # -- engines -------------------------------------------------------------------------------
    def on_engine(self, frames) -> None:
        self._each(frames, self._engine_message, "engine")

    def _engine_message(self, frames) -> None:
        split = self._split(frames, "engine")
        if split is None:
            return
        idents, h, payload = split
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
        elif t == "resync" and e is not None:
            n = (e.sync[0] if e.sync else 0) + 1
            e.sync = (n, list(e.outstanding))
            self._send(self.engine_sock, ident, "sync", {"n": n})
        elif t == "synced" and e is not None:
            self.on_synced(e, h)
        elif t == "lifetime" and e is not None:
            self.on_lifetime(e, h)
        elif t == "bye":
            if e is not None:
                self._unregister(e, h.get("why") or "it stopped", clean=True)
        elif e is None:
            self._send(self.engine_sock, ident, "reregister", {})

    def on_register(self, ident: bytes, h: dict) -> None:
        bad = check_version(h, "this engine")
        if bad:
            self._send(self.engine_sock, ident, "refused", {"p": h["id"], "why": bad})
            self.log.warning("refused engine from %s: %s", h.get("info", {}).get("host"), bad)
            return
        old = self.by_ident.get(ident)
        if old is not None and old.session == h["s"]:  # asked twice (a lost answer, a reconnection): same answer
            self._send(self.engine_sock, ident, "registered", {"p": h["id"], "eid": old.eid,
                                                              "hb": self.cfg.heartbeat_period})
            return
        want = h.get("want_id")
        if old is not None:
            self._unregister(old, "it registered again")
            if want is None:
                want = old.eid  # the same socket: the same engine, keeping its id
        if isinstance(want, int) and want >= 0 and want not in self.engines:
            eid = want
        else:
            while self.next_eid in self.engines:
                self.next_eid += 1
            eid = self.next_eid
        self.next_eid = max(self.next_eid, eid + 1)
        info = {**h.get("info", {}), "engine_id": eid, "since": time.time()}
        heart = h["hb"].encode()
        e = EngineRecord(eid, ident, heart, info, h["s"], last_pong=self.ping_seq, ctl=h.get("ctl", "").encode(),
                         ends=info.get("ends"), drain_at=info.get("drain_at"))
        self.engines[eid], self.by_ident[ident], self.by_heart[heart] = e, e, e
        self.empty_since = None
        self.gone_hearts.pop(heart, None)
        if e.ctl:
            self.by_ctl[e.ctl] = e
        self._send(self.engine_sock, ident, "registered", {"p": h["id"], "eid": eid,
                                                          "hb": self.cfg.heartbeat_period})
        self._note("add", eid, info)
        if e.drain_at is not None:
            self._drain_later(e)
        self._refill(e)
        self._dispatch()
        self._release(family(h["s"]))

    def on_lifetime(self, e: EngineRecord, h: dict) -> None:
        """An engine learned when its allocation ends after it registered (it asked its scheduler meanwhile)."""
        ends, drain_at = h.get("ends"), h.get("drain_at")
        if e.drain_at is not None or not all(isinstance(v, (int, float)) for v in (ends, drain_at)):
            return
        e.ends, e.drain_at = float(ends), float(drain_at)
        e.info.update(ends=e.ends, drain_at=e.drain_at)
        self._drain_later(e)
        self._note("add", e.eid, e.info)  # clients see the end in rc.engines

    def on_synced(self, e: EngineRecord, h: dict) -> None:
        """The engine's connection dropped and came back. It read the tasks sent to it up to `last`, in order;
        later ones sent before the sync were lost on the way (load-balanced ones go to the queue again, direct
        ones fail), and those it finished whose results have not come were lost on the way back."""
        if not e.sync or h.get("n") != e.sync[0]:
            return  # answers an older sync: a newer one is on its way
        sent, e.sync = e.sync[1], ()
        last, done = h.get("last"), set(h.get("done") or ())
        cut = sent.index(last) + 1 if last in sent else 0
        who = f"engine {e.eid} (pid {e.info.get('pid')} on {e.info.get('host')})"
        requeue, lost = [], 0
        for i, msg_id in enumerate(sent):
            client = e.outstanding.get(msg_id)
            if client is None:
                continue
            if i >= cut:
                task = e.balanced.pop(msg_id, None)
                del e.outstanding[msg_id]
                if task is not None:
                    requeue.append(task)
                else:
                    lost += 1
                    self._fail(client, msg_id, "EngineError", f"the connection to {who} dropped before this task "
                               f"reached it; it did not run", e.eid)
            elif msg_id in done:
                lost += 1
                e.balanced.pop(msg_id, None)
                del e.outstanding[msg_id]
                self._fail(client, msg_id, "EngineError", f"{who} ran this task, but the connection dropped "
                           f"before its result reached the controller", e.eid)
        for task in reversed(requeue):
            (self.picky if task.among is not None else self.timed if task.deadline else self.lb_queue).appendleft(task)
        self.log.warning("the connection to %s dropped and came back: %d tasks queued again, %d failed", who,
                         len(requeue), lost)
        self._refill(e)
        self._dispatch()

    def on_result(self, e: EngineRecord, h: dict, frames) -> None:
        client = e.outstanding.pop(h["p"], None)
        if e.balanced:
            e.balanced.pop(h["p"], None)
        e.completed += 1
        self.stats["results"] += 1
        if self.shm_files:
            self._shm_done(h["p"])
        if self.recording:
            self.db.result(h, self._shm_mapped(h, frames) if "sh" in h else frames)
        if client is not None:
            self._out(self.client_sock, [client, *frames[1:]])
        elif "sh" in h:  # nobody will read its files
            shm.remove(shm.names(h, frames[PAYLOAD_AT:]))
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
        elif h["t"] == "leaving":
            e.leaving, e.draining = str(h.get("why") or "it is stopping"), True
            self.log.info("engine %d (%s pid %s) leaves after its running task: %s", e.eid, e.info.get("host"),
                          e.info.get("pid"), e.leaving)

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

    def _unregister(self, e: EngineRecord, why: str, clean: bool = False) -> None:
        """Forget engine `e`. Its load-balanced tasks that had not started go back to the head of the queue
        for another engine; the one it may have been running fails with EngineError saying why (a client's
        `retries` then resend it); direct tasks fail, as only that engine could run them. An engine that
        said goodbye (`clean`) had finished its running task."""
        if not e.alive:
            return
        e.alive = False
        self.engines.pop(e.eid, None)
        self.by_ident.pop(e.ident, None)
        self.by_heart.pop(e.heart, None)
        self.by_ctl.pop(e.ctl, None)
        now = time.monotonic()
        self.gone_hearts[e.heart] = (e.ident, now)
        if len(self.gone_hearts) > 4096:
            self.gone_hearts = {k: v for k, v in self.gone_hearts.items() if now - v[1] < 3600}
        self.fresh.forget(e.session)  # coming back takes a new nonce: its old register cannot be replayed
        host = e.info.get("host")
        who = f"engine {e.eid} (pid {e.info.get('pid')} on {host})"
        if e.leaving and not clean:  # killed after it was told to go: the scheduler's doing, not its task's
            why = f"{why}, after {e.leaving}"
        # a batch engine lost without a goodbye: the scheduler knows why (see verdicts.py); one that said it was
        # leaving (SIGTERM) has its load-balanced tasks run again anyway, and its direct ones wait for the reason
        ask = not clean and e.info.get("job_id") is not None and self.verdicts.listening()
        requeue, parked = [], []
        for i, (msg_id, client) in enumerate(e.outstanding.items()):
            ran = i == 0 and not clean
            task = e.balanced.get(msg_id)
            if task is not None and (not ran or e.leaving):  # a task cut short by the scheduler runs again
                requeue.append(task)
            elif ask:
                parked.append((msg_id, client, task, ran))
            else:
                self._fail(client, msg_id, "EngineError",
                           f"{who} was lost {'while running' if ran else 'before it started'} this task: {why}",
                           e.eid)
        e.outstanding.clear()
        e.balanced.clear()
        self._requeue(requeue, dispatch=False)
        if self.picky:  # tasks only this engine (among those left) could run fail now
            self.picky = deque(t for t in self.picky if self._possible(t))
        if parked:
            self.verdicts.park(e, why, who, parked)
        self.departures += 1
        drained = clean and e.draining and e.drain_at is not None and time.time() >= e.drain_at  # for its walltime
        self.departed.append({"n": self.departures, "eid": e.eid, "job_id": e.info.get("job_id"),
                              "array_index": e.info.get("array_index"), "drained": drained, "why": why})
        if not self.engines:
            self.empty_since, self.last_gone = time.monotonic(), f"engine {e.eid}: {why}"
        self.log.info("engine %d (%s pid %s) unregistered: %s%s", e.eid, host, e.info.get("pid"), why,
                      f"; {len(requeue)} of its queued tasks go to other engines" if requeue else "")
        self._note("rm", e.eid, None)
        if requeue and self.free:
            self._dispatch()

    def _requeue(self, tasks: list, dispatch: bool = True) -> None:
        """Load-balanced tasks back to the head of their queues, in their order, for other engines; with
        `dispatch`, those only absent engines may run fail and the rest are sent on (_unregister does both
        itself, once the engine is out of every list)."""
        for task in reversed(tasks):
            (self.picky if task.among is not None else self.timed if task.deadline else self.lb_queue).appendleft(task)
        if dispatch and any(t.among is not None for t in tasks):
            self.picky = deque(t for t in self.picky if self._possible(t))
        if tasks and dispatch and self.free:
            self._dispatch()

    def _sweep_clients(self) -> None:
        """A client silent for `client_timeout` is gone (killed, its host lost): its queued tasks are dropped,
        those engines hold for it are aborted, and, with `interrupt_orphans`, the ones running are interrupted,
        so the engines are free again within seconds."""
        now, limit = time.monotonic(), self.cfg.client_timeout
        gone = {ident: cid for cid, ident in self.clients.items()
                if ident not in self.quiet and now - self.client_seen.get(ident, now) > limit}
        if not gone:
            return
        for ident, cid in gone.items():
            del self.clients[cid]
            self.client_seen.pop(ident, None)
        why = f"its client went away (silent for {limit:g} s; c.Controller.client_timeout)"
        dropped = 0
        for name in ("lb_queue", "timed", "picky"):
            q = getattr(self, name)
            if any(t.client in gone for t in q):
                keep = deque()
                for t in q:
                    if t.client in gone:
                        dropped += 1
                        self._fail(t.client, t.msg_id, "TaskAborted", f"the task was dropped before it started: {why}")
                    else:
                        keep.append(t)
                setattr(self, name, keep)
        interrupted = 0
        for e in list(self.engines.values()):
            mine = [m for m, c in e.outstanding.items() if c in gone]
            if not mine:
                continue
            first = next(iter(e.outstanding))
            if self.cfg.interrupt_orphans and first in mine:
                self._control([e.eid], "signal", {"sig": int(signal.SIGINT)})
                interrupted += 1
            waiting = [m for m in mine if m != first]
            if waiting:
                self._control([e.eid], "abort", {"ids": waiting})
            dropped += len(waiting)
        self.log.warning("client(s) %s gone (silent for %g s): %d queued tasks dropped, %d running interrupted",
                         ", ".join(sorted(gone.values())), limit, dropped, interrupted)

    def _drain_later(self, e: EngineRecord) -> None:
        asyncio.get_running_loop().call_later(max(0.0, e.drain_at - time.time()), self._drain, e)

    def _drain(self, e: EngineRecord) -> None:
        """At an engine's drain time (its allocation is about to end): no new tasks for it; once idle, it is
        told to leave, so its job ends on its own instead of being killed at its walltime with a task half done."""
        if e.alive and not e.draining:
            e.draining = True
            self.log.info("engine %d drains: %s", e.eid, self._drain_why(e))
            self._refill(e)

    @staticmethod
    def _drain_why(e: EngineRecord) -> str:
        return (f"its allocation ends at {time.strftime('%H:%M:%S', time.localtime(e.ends))} (walltime); it "
                f"leaves before the scheduler ends it" if e.ends else "it drains")

    def _sweep_stranded(self) -> None:
        """Queued tasks fail once no engine has been there for `engine_wait` seconds: callers get an error,
        not a wait without end."""
        if self.engines or self.empty_since is None or not (self.lb_queue or self.timed or self.picky):
            return
        waited = time.monotonic() - self.empty_since
        if waited < self.cfg.engine_wait:
            return
        why = (f"no engine has been registered for {waited:.0f} s (the last to go was {self.last_gone}); "
               f"start engines, or raise c.Controller.engine_wait ({self.cfg.engine_wait:g} s) to wait longer")
        for name in ("lb_queue", "timed", "picky"):
            q = getattr(self, name)
            setattr(self, name, deque())
            for t in q:
                self._fail(t.client, t.msg_id, "NoEnginesRegistered", why)

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
            self.ping_sock.send(beat(self.session, self.ping_seq))
            await asyncio.sleep(period)
            self._drain_pongs()
            self._expire_held(self.cfg.hold_time)
            self.verdicts.sweep()
            self._sweep_timeouts()
            self._sweep_stranded()
            if self.cfg.client_timeout > 0:
                self._sweep_clients()
            self.trimmer.check(self.stats["tasks"], self._idle() and self.db.idle())
            cutoff = self.ping_seq - self.cfg.heartbeat_misses
            for e in [e for e in self.engines.values() if e.last_pong < cutoff]:
                self.stats["engines_died"] += 1
                self._unregister(e, f"no heartbeat for {self.cfg.heartbeat_misses * period:g} s")

    def _idle(self) -> bool:
        return not (self.lb_queue or self.timed or self.picky) and not any(e.outstanding
                                                                            for e in self.engines.values())

    def _drain_pongs(self) -> None:
        # bounded, so a flood of the pong port (which waits in its own pipe) cannot stall routing
        for _ in range(4 * len(self.engines) + 1000):
            try:
                frames = self.pong_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            n = read_beat(self.session, self.session.id, frames[-1]) if len(frames) == 2 else None
            if n is None or n > self.ping_seq:
                self._dropped("heartbeat", "not an echo of this controller's ping")
                continue
            idents = frames[:1]
            e = self.by_heart.get(idents[0])
            if e is not None:
                e.last_pong = max(e.last_pong, n)
            elif idents[0] in self.gone_hearts:
                ident, _ = self.gone_hearts.pop(idents[0])
                self._send(self.engine_sock, ident, "reregister", {})

    def _sweep_orphans(self, older_than: float = 30.0) -> None:
        now = time.monotonic()
        for cid in [c for c, held in self.orphans.items() if now - held[0][0] > older_than]:
            held = self.orphans.pop(cid)
            n = len(held)
            for _, h, frames in held:
                shm.remove(shm.names(h, frames[PAYLOAD_AT:]))
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
