"""Client: connects to a controller, sends tasks, receives results.

Tasks leave from the caller's thread on a submit socket (no hop through another thread);
results come back on a second socket read by an I/O thread running an asyncio loop, which
completes each task's Future.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import platform
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import zmq

from .. import bulk, connection, paths, serialize, shm
from ..error import (
    ControllerLost,
    ControllerUnreachable,
    EngineError,
    ImpossibleDependency,
    NoEnginesRegistered,
    ProtocolMismatch,
    RemoteError,
    TaskAborted,
    TaskTimeout,
    UnknownEngine,
)
from ..wire import AuthError, Session, json_value, one_message, payload_digest, unwrap
from ..wire import raw as frame_buffer
from ..zmqpump import Pump, recv_frames, send_frames
from .asyncresult import AsyncHubResult, AsyncResult, Metadata, build_metadata
from .direct import DirectLinks
from .held import Held
from .taskdb import TaskDBMixin

log = logging.getLogger("ipphpc.client")
_PYTHON = platform.python_version()
_MINOR = _PYTHON.rsplit(".", 1)[0]
_CONTROLLER_ERRORS = {"EngineError": EngineError, "TaskTimeout": TaskTimeout, "TaskAborted": TaskAborted,
                      "ImpossibleDependency": ImpossibleDependency, "NoEnginesRegistered": NoEnginesRegistered}


@dataclass(slots=True)
class _Pending:
    ar: AsyncResult
    index: int
    submitted: float
    target: int | None
    # kept only for tasks that may be retried or sent to another engine
    resend: tuple | None = None
    retries: int = 0
    tried: set | None = None  # engines that said UnmetDependency
    duration: float | None = None  # seconds it was expected to run (sent as `xd`): kept for a retry
    fkey: str | None = None  # the function it runs, when its run time is being learned


def _copy_child(ar: AsyncResult, i: int, src: AsyncResult, mid: str) -> None:
    j = src.msg_ids.index(mid)
    ar._child_done(i, src._values[j], src._errors[j], {})


def _send_tracked(sock: zmq.Socket, frames: list) -> zmq.MessageTracker:
    """Send without copying and track it: `ar.wait_for_send()` tells when buffers may be changed again."""
    last = len(frames) - 1
    trackers = [sock.send(f, zmq.SNDMORE if i < last else 0, copy=False, track=True) for i, f in enumerate(frames)]
    return zmq.MessageTracker(*trackers)


def find_client_file(profile: str = "default", profile_dir: str | None = None, cluster_id: str | None = None) -> Path:
    """The client connection file; without a cluster id, the newest cluster of the profile."""
    pdir = paths.profile_dir(profile, profile_dir)
    if cluster_id is not None:
        return paths.connection_file(pdir, "client", cluster_id)
    default = paths.connection_file(pdir, "client", "")
    if default.exists():
        return default
    found = sorted((pdir / "security").glob("ipcontroller-*-client.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ControllerUnreachable(
            f"no controller of profile {pdir.name[8:] or profile!r} is running: no connection file in "
            f"{pdir / 'security'}; start one with `ipphpc submit -n 4` or pass url_file=")
    return found[-1]


class Client(TaskDBMixin):
    """A connection to one cluster's controller; `rc[:]`, `rc.load_balanced_view()` send it work."""

    _latest: "Client | None" = None  # the most recently connected client (magics, joblib use it)

    def __init__(self, url_file: str | os.PathLike | None = None, profile: str = "default",
                 profile_dir: str | None = None, cluster_id: str | None = None, timeout: float = 10.0,
                 sshserver: str | None = None, sshkey: str | None = None, password: str | None = None,
                 controller_timeout: float = 5.0, **kwargs: Any):
        path = Path(url_file) if url_file else find_client_file(profile, profile_dir, cluster_id)
        self.url_file = path
        self._info = info = connection.read(path)
        self.cluster_id = info.get("cluster_id", "")
        self.session = Session(info["key"])
        tag = shm.host_tag()
        # large frames go through /dev/shm to engines that share it with this client and the controller
        self._shm = tag if tag is not None and info.get("shm") == tag else None
        self._shm_prefix = shm.prefix(info["key"])
        self._shm_engines: frozenset = frozenset()
        # large frames go straight to engines elsewhere that listen for it (one hop each way, sealed)
        self._direct = DirectLinks(info["key"]) if not os.environ.get("IPPHPC_NO_DIRECT") else None
        # the result socket signs with a session of its own (each session's sequence must arrive in order),
        # of the same family: one hello proves both fresh to the controller
        self._rsession = self.session.member("r")
        self._hello_q = 0  # sequence number of the last hello that answered a challenge
        self.cid = self.session.id
        self._tunnel = None
        server = sshserver or info.get("ssh", "")
        try:
            if server:
                from ..ssh import tunnel_info
                self._tunnel, info = tunnel_info(info, connection.CLIENT_PORTS, server, sshkey or "",
                                                 password=password, timeout=max(timeout, 10.0))
                self._tunnel.keep_open(log)  # a dropped tunnel comes back on the same ports; the sockets reconnect
            addr = connection.reachable_address(info, "client", timeout, "controller")
        except ConnectionError as e:
            if self._tunnel is not None:
                self._tunnel.close()
            raise ControllerUnreachable(f"{e} (connection file {path})") from None
        self.url = connection.url(addr, info, "client")
        self._ctx = zmq.Context()
        self._lock = threading.RLock()  # held tasks are sent from inside it
        self._submit = self._ctx.socket(zmq.DEALER)
        self._submit.setsockopt(zmq.LINGER, 1000)
        self._submit.setsockopt(zmq.SNDHWM, 0)
        # tasks for _submit sent while one sent before has not been followed by a turn of the I/O thread:
        # they leave together (one envelope) when it comes, so a burst of apply_async costs few messages
        self._outbox: list[list] = []
        self._flush_due = False
        connection.secure(self._submit, info).connect(self.url)
        self._pending: dict[str, _Pending] = {}
        self._requests: dict[str, asyncio.Future] = {}
        self._engines: dict[int, dict] = {}
        self._other_python: dict[int, str] = {}  # engines whose Python cannot read this one's bytecode
        self._durations: dict[str, deque] = {}  # function -> its last run times (load-balanced tasks)
        self._ends_known = False  # an engine's allocation has a known end: run times are learned
        self._engine_cond = threading.Condition()
        self._local = threading.local()  # each calling thread's channel for synchronous calls
        self._channels: set[_SyncChannel] = set()
        self._generation = 0  # grows when the controller restarts: channels of before are stale
        self._closed = False
        # why the controller is taken for gone (None while it is there): seconds it may stay away first
        self._lost: str | None = None
        self.controller_timeout = controller_timeout
        # IPython Parallel's client-side records, keyed by msg_id
        self.block = False  # views made afterwards start with this
        self.results: dict[str, Any] = {}
        self.metadata: dict[str, Metadata] = {}
        self.history: list[str] = []
        self._hub_waiting: dict[str, list] = {}  # msg_id -> [(AsyncHubResult, index)] awaiting the controller
        self._hub_submitted: dict[str, float] = {}  # msg_id -> when it was submitted, from the task database
        self._held = Held(self)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._io_main, name="ipphpc-client-io", daemon=True)
        self._thread.start()
        self._ready.wait()
        try:
            welcome = self._request("hello", {"c": self.cid}, timeout=timeout, via_results=True)
            if welcome["t"] == "challenge":  # sign its nonce into a second hello: proof this one is not a replay
                welcome = self._request("hello", {"c": self.cid, "nonce": welcome.get("nonce")}, timeout=timeout,
                                        via_results=True)
        except TimeoutError:
            self.close()
            raise ControllerUnreachable(
                f"no answer from the controller at {self.url} within {timeout:g} s (connection file {path}); "
                f"is it running? `ipphpc list` shows the clusters of this profile") from None
        if welcome["t"] == "refused":
            self.close()
            raise ProtocolMismatch(welcome.get("why"))
        self._controller_session = welcome.get("s")
        Client._latest = self
        if "IPython" in sys.modules:  # in IPython, %px and friends work on the newest client, as they do there
            from .magics import register_for_client
            register_for_client(self)

    # -- I/O thread ----------------------------------------------------------------------------
    def _io_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._results = self._ctx.socket(zmq.DEALER)
        self._results.setsockopt(zmq.LINGER, 0)
        self._results.setsockopt(zmq.RCVHWM, 0)
        # the same routing id after a reconnection: results the controller sends to it later (of tasks
        # still running while the connection was down) reach the new connection, not a vanished one
        self._results.setsockopt(zmq.IDENTITY, f"{self.cid}-r".encode())
        # a controller that stops answering (stopped, its host gone) drops the connection as one that died
        self._results.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self._results.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        # the monitor before the connection: a first handshake it missed would make the first
        # reconnection look like the first connection, and the client would not say hello again
        monitor = self._results.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._handshakes = 0
        self._connected = False
        self._away: asyncio.TimerHandle | None = None
        connection.secure(self._results, self._info).connect(self.url)
        self._io_stop = self._loop.create_future()

        async def serve() -> None:
            self._pump = Pump(self._results, self._on_frames)
            watch = Pump(monitor, self._on_monitor)
            alive = asyncio.ensure_future(self._keepalive())
            self._ready.set()
            await self._io_stop
            alive.cancel()
            self._pump.close()
            watch.close()
            self._results.disable_monitor()
            monitor.close(0)
        try:
            self._loop.run_until_complete(serve())
        finally:
            self._results.close(0)
            self._loop.close()

    def _on_frames(self, frames: list) -> None:
        try:
            msgs = unwrap(frames) or (frames,)
        except AuthError as e:
            log.warning("dropped a message from the controller: %s", e)
            return
        split = self.session.split
        for m in msgs:
            try:
                _, h, payload = split(m)
            except AuthError as e:
                log.warning("dropped a message from the controller: %s", e)
                continue
            self._dispatch(h, payload)

    async def _keepalive(self) -> None:
        """A word a second, so the controller knows this client is there (it drops the queued tasks of
        clients gone silent) and the connection's heartbeat has traffic to ride on."""
        while True:
            await asyncio.sleep(1.0)
            if self._connected:
                self._pump.send(self._rsession.pack("ka", {"c": self.cid}))

    def _on_monitor(self, frames: list) -> None:
        from zmq.utils.monitor import parse_monitor_message
        event = parse_monitor_message([bytes(f) for f in frames])["event"]
        if event == zmq.EVENT_DISCONNECTED:
            self._connected = False
            if self._away is None and not self._closed:
                self._away = self._loop.call_later(self.controller_timeout, self._controller_lost, time.time())
            return
        if event != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        self._connected = True
        if self._away is not None:
            self._away.cancel()
            self._away = None
        self._handshakes += 1
        if self._handshakes > 1:
            self._lost = None
            self._reconnected()

    def _controller_lost(self, since: float) -> None:
        """The controller did not come back in time: fail what waits on it rather than hang."""
        self._away = None
        self._lost = (f"the controller at {self.url} is gone: its connection closed or fell silent at "
                      f"{datetime.datetime.fromtimestamp(since):%H:%M:%S} and it did not come back within "
                      f"{self.controller_timeout:g} s (Client(controller_timeout=...)); `ipphpc list` shows "
                      f"whether it runs")
        if getattr(self, "_ending", False):
            self._lost = f"the controller at {self.url} was shut down"
        with self._lock:
            lost = [self._pending.pop(mid) for mid in list(self._pending)]
        if lost or not getattr(self, "_ending", False):
            log.error("%s; %d unfinished tasks failed", self._lost, len(lost))
        for p in lost:
            p.ar._child_done(p.index, None, ControllerLost(self._lost), {})
        for f in list(self._requests.values()):
            if not f.done():
                f.set_exception(ControllerLost(self._lost))
        self._requests.clear()

    def _reconnected(self) -> None:
        """The connection is back: say hello again; the welcome tells a restarted controller (what it held
        is gone) from the same one after a dropped connection (results sent meanwhile are fetched again)."""
        self._pump.send(self._rsession.pack("hello", {"c": self.cid}))

    def _registry(self, welcome: dict) -> None:
        """The engines as the controller knew them when it welcomed this client. Taken here, in the order
        of the socket: registry notes sent after it (an engine's job end, an engine gone) come after it
        and must not be undone by this older picture."""
        with self._engine_cond:
            self._engines = {int(k): v for k, v in welcome.get("engines", {}).items()}
            self._note_pythons()
            self._engine_cond.notify_all()

    def _welcomed_again(self, h: dict) -> None:
        if h.get("s") == self._controller_session:
            self._resync()
            return
        self._controller_session = h.get("s")
        self._generation += 1
        with self._lock:  # what was sent before the hello it answered is refused as stale: it did not run
            lost = [self._pending.pop(mid) for mid in list(self._pending) if _seq_of(mid) < self._hello_q]
        log.warning("reconnected to the controller at %s (restarted); %d unfinished tasks failed", self.url,
                    len(lost))
        for p in lost:
            p.ar._child_done(p.index, None, TaskAborted("the controller restarted before this task finished"), {})

    def _resync(self) -> None:
        """Ask the controller's task database again for the results of tasks still pending here: those it
        sent while the connection was down were dropped on the way."""
        with self._lock:
            mids = list(self._pending)
        if not mids:
            return
        q, rid = self._rsession.next_id()
        f = self._loop.create_future()
        self._requests[rid] = f
        f.add_done_callback(lambda f: self._resynced(f, mids))
        self._pump.send(self._rsession.pack("db_get", {"ids": mids, "c": self.cid}, seq=(q, rid)))

    def _resynced(self, f: asyncio.Future, mids: list[str]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        h = f.result()
        if h.get("error"):
            lost = {m: f"the connection to the controller dropped and came back, and {h['error']}" for m in mids}
        else:
            lost = {m: f"its result was lost while the connection to the controller was down: {why or 'no record'}"
                    for m, why in (h.get("missing") or {}).items()}
        with self._lock:
            gone = [(self._pending.pop(m), why) for m, why in lost.items() if m in self._pending]
        for p, why in gone:
            p.ar._child_done(p.index, None, TaskAborted(why), {})

    def _dispatch(self, h: dict, payload: list) -> None:
        t = h["t"]
        if t == "result":
            self._on_result(h, payload)
        elif t in ("stream", "data"):
            self._on_output(t, h, payload)
        elif t == "engines":
            with self._engine_cond:
                for k in h.get("rm", []):  # before the additions: an engine that left and came back is there
                    self._engines.pop(int(k), None)
                    if self._direct is not None:
                        self._direct.forget(int(k))
                for k, v in h.get("add", {}).items():
                    self._engines[int(k)] = v
                self._note_pythons()
                self._engine_cond.notify_all()
        else:
            fut = self._requests.pop(h.get("p"), None)
            if fut is not None and not fut.done():
                if payload:  # records of db_query: their buffers, checked against the signed digest
                    try:
                        Session.check_payload(h, payload)
                        h["_payload"] = payload
                    except AuthError as e:
                        h["error"] = f"a reply from the controller was damaged: {e}"
                if t == "welcome":
                    self._registry(h)
                fut.set_result(h)
            elif t == "challenge":  # after a reconnection, from a controller that does not know this client
                q, mid = self._rsession.next_id()
                self._hello_q = q
                self._pump.send(self._rsession.pack("hello", {"c": self.cid, "nonce": h.get("nonce")}, seq=(q, mid)))
            elif t == "welcome":  # after a reconnection: the controller's engines now
                self._registry(h)
                self._welcomed_again(h)

    def _on_result(self, h: dict, payload: list) -> None:
        mid = h["p"]
        p = self._pending.pop(mid, None)
        pulled = self._direct is not None and self._direct.release(mid)  # its frames waited here: let them go
        if p is None:
            if not (self._hub_waiting and self._hub_result(h, payload)):
                if "sh" in h:
                    shm.remove(shm.names(h, payload))  # a result nobody here waits for: nobody will read its files
                elif "bk" in h and self._direct is not None:
                    self._direct.drop(h, payload)
            return
        value, error, meta = self._decode(h, payload, self._direct)
        if len(payload) > 2 and self._direct is not None and "bk" not in h and "sh" not in h:
            self._direct_later(h.get("eid"), payload)
        if pulled and error is not None and getattr(error, "ename", None) == "DirectTransferError" \
                and p.resend is not None:
            # its engine could not ask this client for the large frames (no connection from here yet):
            # the task goes again with its frames, the long way
            kind, payload, target, timeout, digest, among = p.resend
            self._send_task(kind, payload, p.ar, p.index, target, timeout, p.retries, digest, among=among,
                            tried=p.tried, duration=p.duration, fkey=p.fkey, pull=False)
            return
        if error is not None and p.resend is not None:
            if getattr(error, "ename", "") == "UnmetDependency" and self._elsewhere(p, h.get("eid")):
                return
            if p.retries > 0:
                self._retry(p)
                return
        if p.fkey is not None and error is None and h.get("dur") is not None:
            self._learn(p.fkey, float(h["dur"]))
        self._record_done(mid, value, error)
        p.ar._child_done(p.index, value, error, build_metadata(mid, p.submitted, meta, h.get("eid")))
        if self._held:
            with self._lock:
                self._held.done(mid)

    def _record_done(self, mid: str, value: Any, error: BaseException | None) -> None:
        self.results[mid] = error if error is not None else value

    def _on_output(self, t: str, h: dict, payload: list) -> None:
        """Output printed, or data published, by a task still running."""
        p = self._pending.get(h.get("p"))
        if p is None:
            return
        try:
            Session.check_payload(h, payload)
            if t == "stream":
                p.ar._on_stream(p.index, h["n"], h.get("o", 0), bytes(payload[0]).decode("utf-8", "replace"))
            else:
                p.ar._on_data(p.index, serialize.loads(payload))
        except Exception as e:  # noqa: BLE001 - live output is a courtesy: never let it break results
            log.warning("dropped live output of task %s: %s", h.get("p"), e)

    def _elsewhere(self, p: _Pending, eid: Any) -> bool:
        """An engine could not meet the task's dependency: send it to one that has not tried (True),
        or fail it with ImpossibleDependency when every engine has (False, after failing it)."""
        p.tried = (p.tried or set()) | {eid}
        kind, payload, target, timeout, digest, among = p.resend
        left = (set(self.ids) if among is None else set(among)) - p.tried
        if not left:
            error = ImpossibleDependency(f"no engine could meet this task's dependencies (tried engines "
                                         f"{sorted(e for e in p.tried if e is not None)})")
            mid = p.ar.msg_ids[p.index]
            self._record_done(mid, None, error)
            p.ar._child_done(p.index, None, error, {})
            return True
        self._send_task(kind, payload, p.ar, p.index, target, timeout, p.retries, digest, among=frozenset(left),
                        tried=p.tried)
        return True

    def _direct_later(self, eid: Any, payload: list) -> None:
        """A large result came the long way from an engine that listens for direct connections: open one, so
        the next comes straight."""
        if eid not in self._shm_engines and bulk.large(payload[1:]):
            self._direct.open_later(eid, self._engines.get(eid))

    def _direct_out(self, fields: dict, payload: Sequence[Any], target: int | None, among: Any = None,
                    pull: bool = True) -> Sequence[Any]:
        """The payload for one engine with its large frames sent straight there, when it is elsewhere and
        listens. A load-balanced task's large frames stay here until the engine that gets it asks for them
        (`bp`), when every engine it may go to has a connection from here; `bc` names the connections, for
        that and for a large result to come back on."""
        if self._direct is None or "sh" in fields or target in self._shm_engines:
            return payload
        if target is None:
            idx = bulk.large(payload) if pull else []
            if idx and not self._shm_engines and self._direct.pull_ready(among, self._engines):
                fields["bp"] = idx
                payload = self._direct.hold(payload, idx)
            if self._direct.links:
                fields["bc"] = self._direct.token_hex
            return payload
        return self._direct.out(fields, payload, target, self._engines.get(target))

    @staticmethod
    def _decode(h: dict, payload: list, direct: DirectLinks | None = None) -> tuple[Any, BaseException | None,
                                                                                       dict | None]:
        """(value, error, engine metadata) of a result message; `direct`: where its direct frames arrive."""
        err = h.get("err")
        meta = None
        value = error = None
        if err is not None:
            cls = _CONTROLLER_ERRORS.get(err["ename"], EngineError)
            error = cls(err["evalue"])
        else:
            try:
                Session.check_payload(h, payload)
                if "cp" in h and "mo" not in h:  # the metadata frame holds only what the signed header says
                    meta = {"started": h["st"], "completed": h["cp"], "stdout": "", "stderr": "",
                            "engine_id": h.get("eid")}
                else:
                    meta = json_value(frame_buffer(payload[0]))
                if "sh" in h:  # this client is the frames' last reader: map them, then remove their names
                    payload = shm.resolve(h, payload, unlink=True)
                elif "bk" in h:
                    if direct is None:
                        raise bulk.BulkError("this result's large frames went straight from the engine to the "
                                             "client that sent the task; the controller does not have them")
                    payload = direct.resolve(h, payload)
                if h["ok"]:
                    value = serialize.loads(payload[1:]) if len(payload) > 1 else None
                else:
                    e = meta["error"]
                    error = RemoteError(e["ename"], e["evalue"], e["tb"], {"engine_id": h.get("eid")})
            except Exception as e:  # noqa: BLE001 - the task must finish, with the reason it could not be read
                error = e if isinstance(e, (AuthError, bulk.BulkError)) else RemoteError(
                    type(e).__name__, f"the result arrived but could not be deserialized here: {e}", "",
                    {"engine_id": h.get("eid")})
        return value, error, meta

    def _note_pythons(self) -> None:
        """Remember the engines on another Python minor version, whether any engine's allocation has a known
        end, and which engines can map this client's /dev/shm, so that sending a task need not look through
        the engines (called with _engine_cond held)."""
        self._other_python = {eid: v["python"] for eid, v in self._engines.items()
                              if v.get("python") and v["python"].rsplit(".", 1)[0] != _MINOR}
        self._ends_known = any(v.get("ends") for v in self._engines.values())
        if self._shm is not None:
            self._shm_engines = frozenset(eid for eid, v in self._engines.items() if v.get("shm") == self._shm)

    def _shm_out(self, fields: dict, payload: Sequence[Any], target: Any, among: Any) -> Sequence[Any]:
        """The payload to send: its large frames in /dev/shm when every engine that may read it can map
        them (`fields` then says which, and tells engines they may answer the same way)."""
        fields["sk"] = self._shm
        ok = self._shm_engines
        if target is not None:
            reach = target in ok
        elif among is not None:
            reach = all(e in ok for e in among)
        else:
            reach = bool(ok) and len(ok) == len(self._engines)
        if reach and payload:
            out, idx = shm.export(payload, self._shm_prefix)
            if idx:
                fields["sh"] = idx
                return out
        return payload

    def _check_python(self, payload: Sequence[Any], targets: Iterable[int] | None) -> None:
        """Refuse to send bytecode to an engine of another Python version: reading it there may crash the
        engine (a segfault, not an exception), and the task would be lost with it."""
        other = self._other_python
        if targets is not None:
            other = {t: other[t] for t in targets if t in other}
        if not other or b"cloudpickle" not in payload[0]:  # only by-value functions and classes carry code
            return
        shown = ", ".join(f"engine {e}: Python {v}" for e, v in sorted(other.items())[:5])
        raise RuntimeError(
            f"this task carries a function or class by value (a lambda, or something defined in __main__), "
            f"whose bytecode only Python {_MINOR} can read, and it may run on engines with another Python "
            f"({shown}{', ...' if len(other) > 5 else ''}; this client: Python {_PYTHON}). Start the engines "
            f"with the same Python version (HPCCluster(engine_cmd=...)), or send functions defined in a "
            f"module that the engines can import")

    # -- synchronous calls -------------------------------------------------------------------------
    def _call_sync(self, kind: str, payload: list, target: int | None) -> Any:
        """Send one task and wait for its value on the calling thread's own channel."""
        if self._other_python and payload:
            self._check_python(payload, None if target is None else [target])
        if self._lost:
            raise ControllerLost(self._lost)
        channel = getattr(self._local, "channel", None)
        if channel is None or channel.generation != self._generation:
            if channel is not None:
                channel.close()
            channel = self._local.channel = _SyncChannel(self)
            with self._lock:
                if self._closed:
                    channel.close()
                    raise RuntimeError("this client is closed")
                self._channels.add(channel)
        return channel.call(kind, payload, target)

    def _quiet(self) -> bool:
        """No task of this client is on its way or unanswered: a synchronous call may take a connection of
        its own (it could pass one sent before it on the submit connection, and run first on its engine)."""
        return not self._pending and not self._outbox

    # -- sending ---------------------------------------------------------------------------------
    def _send_task(self, kind: str, payload: Sequence[Any], ar: AsyncResult, index: int, target: int | None = None,
                   timeout: float | None = None, retries: int = 0, digest: str | None = None,
                   among: frozenset | None = None, msg_id: str | None = None, label: str | None = None,
                   track: bool = False, resend: bool = False, tried: set | None = None,
                   duration: float | None = None, fkey: str | None = None, pull: bool = True) -> str:
        """Send one task; `among` limits a load-balanced task to some engines, `resend` keeps its payload
        so that an engine that cannot meet its dependencies hands it to another. `fkey` names the function
        of a load-balanced task: without a `duration`, the longest of its last runs is sent as one."""
        if fkey is not None and not duration:
            duration = self._learned(fkey)
        fields: dict[str, Any] = {"k": kind, "c": self.cid}
        if target is not None:
            fields["to"] = target
        if timeout:
            fields["tmo"] = timeout
        if label is not None:
            fields["lbl"] = label  # recorded by the controller's task database, queryable there
        if duration:
            fields["xd"] = duration  # the controller starts it only on an engine that lives that long
        if among is not None:
            fields["among"] = sorted(among)
        if self._other_python and kind in ("apply", "push") and payload:
            self._check_python(payload, None if target is None else [target])
        sent = payload if self._shm is None else self._shm_out(fields, payload, target, among)
        if self._direct is not None:
            sent = self._direct_out(fields, sent, target, among, pull)
        if sent is not payload:
            digest = None  # the signed digest is over the descriptors
        if digest is None and sent:
            digest = payload_digest(sent)
        with self._lock:
            self._check_open(fields, sent)
            seq = self.session.next_id()
            if msg_id is not None:
                seq = (seq[0], msg_id)
            mid = seq[1]
            if "bp" in fields:  # its frames wait here: kept with the task, to send it the long way if need be
                self._direct.held_for(mid, [bulk.descriptor_id(sent[i]) for i in fields["bp"]])
            # the digest is kept only when it is the payload's own (not over descriptors a resend may not use)
            keep = (kind, payload, target, timeout, digest if sent is payload else None, among) \
                if retries or resend or tried or "bp" in fields else None
            now = time.time()
            self._pending[mid] = _Pending(ar, index, now, target, keep, retries, tried, duration, fkey)
            if ar.msg_ids[index] != mid:
                ar.msg_ids[index] = mid
                self._note_submitted(mid, ar, index, now, target, label)
            frames = self.session.pack("task", fields, sent, seq=seq, digest=digest)
            if track or any(f.__class__ is not bytes for f in frames):  # the caller's buffers: not kept waiting
                self._submit_now(frames, ar, track)
            elif not self._flush_due:  # nothing sent lately: at once, and the next ones wait for the I/O thread
                send_frames(self._submit, frames)
                self._flush_due = True
                try:
                    self._loop.call_soon_threadsafe(self._flush_later)
                except RuntimeError:  # the I/O thread has stopped (the client is closing): nothing will wait
                    self._flush_due = False
            else:
                box = self._outbox
                box.append(frames)
                if len(box) >= 64:
                    self._flush_submit()
        return mid

    def _flush_submit(self) -> None:
        """Send the tasks waiting in the outbox, several as one envelope (call with the lock held)."""
        box = self._outbox
        if box:
            self._outbox = []
            send_frames(self._submit, one_message(box))

    def _submit_now(self, frames: list, ar: AsyncResult, track: bool) -> None:
        """Send a task behind those waiting in the outbox (call with the lock held); `track`: its buffers
        are the caller's until `ar.wait_for_send()`."""
        self._flush_submit()
        if track:
            ar._track(_send_tracked(self._submit, frames))
        else:
            send_frames(self._submit, frames)

    def _flush_later(self) -> None:
        with self._lock:
            self._flush_submit()
            self._flush_due = False

    def _send_fan(self, kind: str, payload: Sequence[Any], ar: AsyncResult, targets: list[int],
                  label: str | None = None, track: bool = False) -> list[str]:
        """One message for a task sent to many engines: the controller forwards the same frames to each
        (one copy of the payload on the wire from here and in the controller's memory), and each engine
        answers under its own msg_id, `ids[to.index(its id)]`."""
        fields: dict[str, Any] = {"k": kind, "c": self.cid, "to": list(targets)}
        if label is not None:
            fields["lbl"] = label
        if self._other_python and kind in ("apply", "push") and payload:
            self._check_python(payload, list(targets))
        if self._shm is not None:
            payload = self._shm_out(fields, payload, None, targets)
        if self._direct is not None and "sh" not in fields and not self._shm_engines.intersection(targets):
            payload = self._direct.out_many(fields, payload, targets, self._engines)
        with self._lock:
            self._check_open(fields, payload)
            mids = [self.session.next_id()[1] for _ in targets]
            seq = self.session.next_id()
            fields["ids"] = mids
            now = time.time()
            for i, (mid, eid) in enumerate(zip(mids, targets)):
                self._pending[mid] = _Pending(ar, i, now, eid)
                ar.msg_ids[i] = mid
                self._note_submitted(mid, ar, i, now, eid, label)
            self._submit_now(self.session.pack("task", fields, payload, seq=seq), ar, track)
        return mids

    def _check_open(self, fields: dict, sent: Sequence[Any]) -> None:
        """Raise when no task can be sent now; the files of frames already put in /dev/shm go first."""
        if self._closed or self._lost:
            if "sh" in fields:
                shm.remove(shm.names(fields, sent))
            if "bp" in fields:
                self._direct.release_frames(sent, fields["bp"])
            if self._closed:
                raise RuntimeError("this client is closed")
            raise ControllerLost(self._lost)

    def _note_submitted(self, mid: str, ar: AsyncResult, index: int, now: float, target: int | None,
                        label: str | None) -> None:
        md = ar._meta[index]
        md.update(msg_id=mid, submitted=datetime.datetime.fromtimestamp(now), engine_id=target)
        ar._rc = self
        if label is not None:
            md["label"] = label
        self.metadata[mid] = md
        self.history.append(mid)

    def _reserve_id(self) -> str:
        """A msg_id for a task sent later (held for its dependencies); others may depend on it now."""
        with self._lock:
            q, _ = self.session.next_id()
        return f"{self.session.id}-h{q}"

    # -- what the client knows of its tasks ---------------------------------------------------
    def _known(self, mid: str) -> bool:
        return mid in self.metadata or mid in self._pending or mid in self._held.tasks

    def _task_state(self, mid: str) -> str | None:
        """'pending', 'ok' or 'error' for a task of this client; None if unknown."""
        if mid in self._pending or mid in self._held.tasks:
            return "pending"
        if mid in self.results:
            return "error" if isinstance(self.results[mid], BaseException) else "ok"
        return "pending" if mid in self.metadata else None

    def _engine_of(self, mid: str) -> int | None:
        md = self.metadata.get(mid)
        return md.get("engine_id") if md is not None else None

    def _retry(self, p: _Pending) -> None:
        kind, payload, target, timeout, digest, among = p.resend
        self._send_task(kind, payload, p.ar, p.index, target, timeout, p.retries - 1, digest, among=among,
                        duration=p.duration, fkey=p.fkey)

    # -- run times learned, for engines whose allocation ends ----------------------------------------
    def _learning(self) -> bool:
        """Whether an engine's allocation has a known end: only then does a task's run time matter."""
        return self._ends_known

    def _learned(self, fkey: str) -> float | None:
        runs = self._durations.get(fkey)
        return max(runs) if runs else None

    def _learn(self, fkey: str, seconds: float) -> None:
        runs = self._durations.setdefault(fkey, deque(maxlen=5))
        runs.append(seconds)
        if len(self._durations) > 1000:  # functions seen long ago are forgotten first
            self._durations.pop(next(iter(self._durations)))

    def _request(self, msg_type: str, fields: dict | None = None, timeout: float = 10.0,
                 via_results: bool = False) -> dict:
        """Send a request to the controller and wait for its reply (from any thread but the I/O thread)."""
        fields = dict(fields or {}, c=self.cid)
        if msg_type == "shutdown":
            self._ending = True  # the controller's going is expected from now on

        def send() -> asyncio.Future:
            f = self._loop.create_future()
            if via_results:
                q, mid = self._rsession.next_id()
                self._requests[mid] = f
                self._pump.send(self._rsession.pack(msg_type, fields, seq=(q, mid)))
            else:
                with self._lock:  # sequence numbers must reach the controller in order
                    q, mid = self.session.next_id()
                    self._requests[mid] = f
                    self._flush_submit()
                    self._submit.send_multipart(self.session.pack(msg_type, fields, seq=(q, mid)))
            return f

        async def roundtrip() -> dict:
            return await asyncio.wait_for(send(), timeout)

        try:
            return asyncio.run_coroutine_threadsafe(roundtrip(), self._loop).result(timeout + 1)
        except (asyncio.TimeoutError, TimeoutError):
            raise TimeoutError(f"the controller at {self.url} did not answer {msg_type!r} "
                               f"within {timeout:g} s") from None

    # -- public API ------------------------------------------------------------------------------
    @property
    def ids(self) -> list[int]:
        with self._engine_cond:
            return sorted(self._engines)

    @property
    def engines(self) -> dict[int, dict]:
        """Engine id -> what it reported at registration (host, pid, job id, array index, MPI rank)."""
        with self._engine_cond:
            return dict(self._engines)

    def __len__(self) -> int:
        return len(self.ids)

    def wait_for_engines(self, n: int | None = None, timeout: float = -1, block: bool = True) -> None:
        """Wait until at least `n` engines are registered."""
        n = n if n is not None else 1
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        with self._engine_cond:
            while len(self._engines) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(self._engines)} of {n} engines registered after {timeout:g} s; "
                                       f"see the engine logs in the profile's log/ folder")
                self._engine_cond.wait(left if left is not None else 1.0)

    def _resolve(self, targets: Any) -> list[int]:
        """Engine ids of `targets`: 'all'/None, an id (negative counts from the end), a slice, or ids."""
        ids = self.ids
        if targets is None or targets == "all":
            return ids
        if isinstance(targets, int):
            if targets < 0:
                if -targets > len(ids):
                    raise UnknownEngine(f"no engine {targets}: {len(ids)} registered ({ids})")
                return [ids[targets]]
            targets = [targets]
        elif isinstance(targets, slice):
            targets = ids[targets]
        elif isinstance(targets, str):
            raise TypeError(f"targets={targets!r}: use 'all', an engine id, a slice or a list of ids")
        targets = list(targets)
        missing = [t for t in targets if t not in self._engines]
        if missing:
            raise UnknownEngine(f"engine(s) {missing} are not registered; registered: {ids}")
        return targets

    def _view_flags(self, flags: dict) -> dict:
        flags.setdefault("block", self.block)
        return flags

    def direct_view(self, targets: Any = "all", **flags: Any):
        """Work sent to chosen engines; 'all' follows engines as they come and go, anything else
        (a slice, negative ids) is resolved to engine ids now, as IPython Parallel does."""
        from .view import DirectView
        return DirectView(self, self._fixed_targets(targets), **self._view_flags(flags))

    def _fixed_targets(self, targets: Any) -> Any:
        if targets is None or targets == "all":
            return "all"
        ids = self._resolve(targets)
        return ids[0] if isinstance(targets, int) else ids

    def broadcast_view(self, targets: Any = "all", is_coalescing: bool = False, **flags: Any):
        """Like direct_view, but a task for many engines leaves this client once; the controller copies it."""
        from .view import BroadcastView
        return BroadcastView(self, targets, is_coalescing=is_coalescing, **self._view_flags(flags))

    def load_balanced_view(self, targets: Any = None, **flags: Any):
        """Work sent to whichever engine is free (among `targets`, when given)."""
        from .view import LoadBalancedView
        return LoadBalancedView(self, targets, **self._view_flags(flags))

    def __getitem__(self, key: Any):
        if isinstance(key, int):
            self._resolve(key)  # an engine that is not there fails here, naming the ones there are
            return self.direct_view(key)
        if isinstance(key, slice):
            if not self.ids[key]:
                raise NoEnginesRegistered(f"no engine selected by {key}; registered: {self.ids}")
            return self.direct_view(key)
        if isinstance(key, (list, tuple, range)):
            return self.direct_view(list(key))
        raise TypeError(f"rc[...] takes an engine id, a slice or a list of ids, not {type(key).__name__}")

    def __iter__(self):
        for eid in self.ids:
            yield self.direct_view(eid)

    def executor(self, targets: Any = None, **flags: Any):
        """A concurrent.futures.Executor that load-balances over the engines (or `targets`)."""
        return self.load_balanced_view(targets, **flags).executor

    def activate(self, targets: Any = "all", suffix: str = ""):
        """The %px magics (with `suffix`) on a blocking DirectView of `targets`, in the running IPython."""
        view = self.direct_view(targets, block=True)
        view.activate(suffix)
        return view

    def become_dask(self, targets: Any = "all", port: int = 0, nanny: bool = False, scheduler_args: dict | None = None,
                    **worker_args: Any):
        """A dask.distributed Client whose workers live in the engines (needs `distributed`)."""
        from .dask import become_dask
        return become_dask(self, targets, port, nanny, scheduler_args, **worker_args)

    def stop_dask(self, targets: Any = "all") -> None:
        from .dask import stop_dask
        stop_dask(self, targets)

    become_distributed = become_dask
    stop_distributed = stop_dask

    # -- the controller's view of the queues ------------------------------------------------------
    def controller_status(self) -> dict:
        """The controller's own counters: engines with outstanding tasks, tasks queued there, the prefetch
        limit, clients, messages dropped, its pid."""
        return self._request("status")

    def queue_status(self, targets: Any = "all", verbose: bool = False) -> dict:
        """Per engine: {'queue': direct tasks waiting, 'completed': n, 'tasks': load-balanced ones held},
        and 'unassigned': tasks no engine holds yet; with `verbose`, msg_ids instead of counts."""
        raw = self._request("queue_status", {"verbose": bool(verbose)})["status"]
        status: dict[Any, Any] = {int(k): v for k, v in raw.items() if k != "unassigned"}
        held = list(self._held.tasks)
        unassigned = raw["unassigned"]
        status["unassigned"] = unassigned + held if verbose else unassigned + len(held)
        if targets is None or targets == "all":
            return status
        ids = self._resolve(targets)
        if isinstance(targets, int):
            return status[ids[0]]
        return {**{i: status[i] for i in ids if i in status}, "unassigned": status["unassigned"]}

    # -- waiting ----------------------------------------------------------------------------------
    @property
    def outstanding(self) -> set[str]:
        """msg_ids of tasks sent and not yet finished (or held for their dependencies)."""
        return set(self._pending) | set(self._held.tasks)

    def _jobs(self, jobs: Any) -> tuple[list[AsyncResult], set[str]]:
        """AsyncResults and msg_ids named by `jobs`: a history index, a msg_id, an AsyncResult, or a list."""
        if jobs is None:
            return [], self.outstanding
        if isinstance(jobs, (str, int, AsyncResult)) or not isinstance(jobs, Iterable):
            jobs = [jobs]
        ars, mids = [], set()
        for job in jobs:
            if isinstance(job, AsyncResult):
                ars.append(job)
            elif isinstance(job, int):
                mids.add(self.history[job])
            elif isinstance(job, str):
                if not self._known(job):
                    raise ValueError(f"unknown task {job!r}: not sent by this client")
                mids.add(job)
            else:
                raise TypeError(f"jobs: expected msg_ids, history indices or AsyncResults, not {type(job).__name__}")
        return ars, mids

    def _ars_of(self, mids: set[str]) -> list[AsyncResult]:
        found = {}
        for m in mids:
            p = self._pending.get(m) or self._held.tasks.get(m)
            if p is not None:
                found[id(p.ar)] = p.ar
        return list(found.values())

    def wait(self, jobs: Any = None, timeout: float = -1) -> bool:
        """Wait for tasks (default: every outstanding one); False if `timeout` seconds passed first."""
        ars, mids = self._jobs(jobs)
        ars += self._ars_of(mids)
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for ar in ars:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                return False
        return True

    def wait_interactive(self, jobs: Any = None, interval: float = 1.0, timeout: float = -1) -> None:
        """wait() with a progress bar."""
        from .asyncresult import AsyncResultSet
        ars, mids = self._jobs(jobs)
        AsyncResultSet(ars + self._ars_of(mids)).wait_interactive(interval=interval, timeout=timeout)

    def _expire_held(self) -> None:
        with self._lock:
            self._held.expire()

    def spin(self) -> None:
        """Results are read by this client's I/O thread as they arrive: nothing is left to flush."""

    def spin_thread(self, interval: float = 1) -> None:
        """A no-op: the client's I/O thread already keeps results flowing in the background."""

    def stop_spin_thread(self) -> None:
        """A no-op (see spin_thread)."""

    # -- control ----------------------------------------------------------------------------------
    def abort(self, jobs: Any = None, targets: Any = None, block: bool | None = None) -> None:
        """Drop tasks that have not started (default: every outstanding one); started ones run on."""
        ars, mids = self._jobs(jobs)
        for ar in ars:
            mids.update(m for m in ar.msg_ids if m)
        with self._lock:
            self._held.abort(mids)
        eids = None if targets is None else self._resolve(targets)
        self._request("abort", {"ids": sorted(mids), "targets": eids})

    def send_signal(self, sig: int | str, targets: Any = None, block: bool | None = None) -> list[int]:
        """Send a signal to engines (SIGINT: KeyboardInterrupt in the running task; the engine serves on).

        The engine signals itself, wherever it runs (a batch node, over ssh, under mpiexec)."""
        import signal as _signal
        if isinstance(sig, str):
            name = sig if sig.startswith("SIG") else f"SIG{sig}"
            if not hasattr(_signal, name):
                raise ValueError(f"unknown signal {sig!r}; e.g. 'SIGINT', 'SIGTERM', 'SIGUSR1'")
            sig = getattr(_signal, name)
        eids = None if targets is None or targets == "all" else self._resolve(targets)
        return self._request("signal", {"sig": int(sig), "targets": eids})["reached"]

    def clear(self, targets: Any = None, block: bool | None = None) -> Any:
        """Empty the engines' namespaces."""
        ar = self.direct_view(targets if targets is not None else "all")._send_all("clear", [], "clear")
        block = self.block if block is None else block
        if block:
            ar.get()
            return None
        return ar

    def purge_local_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget results and metadata kept here: `'all'`, chosen tasks, or every task of some engines."""
        if not jobs and not targets and targets != 0:
            raise ValueError("purge_local_results needs jobs (msg_ids, AsyncResults or 'all') or targets")
        if jobs == "all":
            mids = set(self.metadata)
        else:
            ars, mids = self._jobs(jobs) if jobs else ([], set())
            for ar in ars:
                mids.update(ar.msg_ids)
            if targets or targets == 0:
                eids = set(self._resolve(targets)) if targets != "all" else None
                mids.update(m for m, md in self.metadata.items() if eids is None or md.get("engine_id") in eids)
        busy = mids & self.outstanding
        if busy:
            raise RuntimeError(f"can't purge {len(busy)} outstanding task(s), e.g. {sorted(busy)[:3]}; wait or "
                               f"abort them first")
        for m in mids:
            self.results.pop(m, None)
            self.metadata.pop(m, None)
        if jobs == "all" or mids:
            keep = set(self.metadata)
            self.history = [m for m in self.history if m in keep]

    def purge_results(self, jobs: Any = (), targets: Any = ()) -> None:
        """Forget finished results here and in the controller's task database: 'all', msg_ids or
        AsyncResults (of any client), or every task of some engines."""
        if not jobs and not targets and targets != 0:
            raise ValueError("purge_results needs jobs (msg_ids, AsyncResults or 'all') or targets")
        local = jobs
        if jobs != "all" and jobs:
            items = [jobs] if isinstance(jobs, (str, int, AsyncResult)) or not isinstance(jobs, Iterable) else jobs
            local = [j for j in items if not isinstance(j, str) or self._known(j)]
        if local or targets or targets == 0:
            self.purge_local_results(local, targets)
        from .taskdb import NoTaskDatabase
        try:
            self.purge_hub_results(jobs, targets)
        except NoTaskDatabase:
            pass  # nothing is kept there

    def purge_everything(self) -> None:
        """Forget every finished result, here and in the controller's task database."""
        self.purge_results("all")

    def get_result(self, indices_or_msg_ids: Any = None, block: bool | None = None, owner: bool = False):
        """An AsyncHubResult by history index or msg_id (default: the last): tasks of this client from what
        it holds, any other (another client's, purged here, of an earlier client) from the controller's task
        database; an unknown msg_id raises KeyError naming it."""
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        single = not isinstance(indices_or_msg_ids, (list, tuple, set))
        items = [indices_or_msg_ids] if single else list(indices_or_msg_ids)
        mids = [self.history[i] if isinstance(i, int) else i for i in items]
        ar = AsyncHubResult(len(mids), "get_result", single=single)
        ar.owner = owner
        ar._rc = self
        remote = []
        for i, m in enumerate(mids):
            ar.msg_ids[i] = m
            p = self._pending.get(m) or self._held.tasks.get(m)
            if p is not None:
                ar._meta[i] = self.metadata.get(m, ar._meta[i])
                p.ar.add_done_callback(lambda f, i=i, src=p.ar, m=m: _copy_child(ar, i, src, m))
            elif m in self.results:
                ar._meta[i] = self.metadata.get(m, ar._meta[i])
                value = self.results[m]
                err = value if isinstance(value, BaseException) else None
                ar._child_done(i, None if err else value, err, self.metadata.get(m, {}))
            else:
                remote.append((i, m))
        if remote:
            self._fetch(ar, remote)
        block = self.block if block is None else block
        return ar.get() if block else ar

    def shutdown(self, targets: Any = "all", restart: bool = False, hub: bool = False,
                 block: bool | None = None) -> None:
        """Stop engines (`targets`), and the controller too with `hub=True`."""
        if restart:
            raise ValueError("shutdown(restart=True): restart engines through their cluster "
                             "(HPCCluster.restart_engines) instead")
        if hub:
            self._request("shutdown", {"engines": True})
        else:
            self._request("stop_engines", {"targets": None if targets in ("all", None) else self._resolve(targets)})

    def close(self, linger: float = 1.0) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
            self._flush_submit()
        if self._thread.is_alive():
            try:
                def end() -> None:
                    if not self._io_stop.done():
                        self._io_stop.set_result(None)

                def stop():
                    try:
                        self._results.send_multipart(self._rsession.pack("bye", {"c": self.cid}))
                    finally:
                        # requests still waiting (another thread's long poll) end now, and their waiters
                        # are given a moment to see it before the loop stops
                        waiting = [f for f in self._requests.values() if not f.done()]
                        for f in waiting:
                            f.set_exception(ConnectionError("the client was closed"))
                        self._requests.clear()
                        if waiting:
                            self._loop.call_later(0.05, end)
                        else:
                            end()
                self._loop.call_soon_threadsafe(stop)
            except RuntimeError:
                pass
            self._thread.join(5)
        self._submit.close(int(linger * 1000))
        if self._direct is not None:
            self._direct.close()
        for channel in list(self._channels):
            channel.close()
        self._channels.clear()
        self._ctx.term()
        if self._tunnel is not None:
            self._tunnel.close()
        for p in list(self._pending.values()):
            p.ar._child_done(p.index, None, TaskAborted("the client was closed before this task finished"), {})
        self._pending.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.cluster_id or self.url_file.name}: {len(self._engines)} engines>"


def _seq_of(msg_id: str) -> int:
    """The sequence number in a msg_id (`<session>-<number>`); 0 for another form."""
    try:
        return int(msg_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


class _SyncChannel:
    """One calling thread's socket for synchronous calls (`apply_sync` on one engine or load-balanced).

    The task leaves on it and its result comes back on it (its tasks say so, and the controller then
    knows it as a client of its own, which wants no registry notes), so the caller wakes straight
    from the socket: no I/O thread, future or lock hand-off in between, a quarter of a short call.
    """

    def __init__(self, client: Client):
        self.client = client
        self.generation = client._generation
        self.session = client.session.member(f"s{os.urandom(4).hex()}")  # admitted with its client
        self.cid = self.session.id
        self.sock = client._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.rcvtimeo = 500  # wake now and then to see whether the client closed or reconnected
        connection.secure(self.sock, client._info).connect(client.url)

    def _wait(self, mid: str) -> tuple[dict, list]:
        """The result of task `mid` (anything else that arrives is dropped)."""
        while True:
            if self.client._closed:
                raise TaskAborted("the client was closed before this task finished")
            if self.generation != self.client._generation:
                raise TaskAborted("the controller restarted before this task finished")
            if self.client._lost:
                raise ControllerLost(self.client._lost)
            try:  # a blocking receive wakes at once on the message; a Poller costs a call more
                frames = recv_frames(self.sock)
            except zmq.Again:
                continue
            try:
                _, h, payload = self.session.split(frames)
            except AuthError as e:
                log.warning("dropped a message from the controller: %s", e)
                continue
            if h.get("t") == "result" and h.get("p") == mid:
                return h, payload

    def call(self, kind: str, payload: list, target: int | None, pull: bool = True) -> Any:
        fields: dict[str, Any] = {"k": kind, "c": self.cid, "sync": 1}
        if target is not None:
            fields["to"] = target
        client = self.client
        sent = payload
        if client._shm is not None:
            sent = client._shm_out(fields, sent, target, None)
        if client._direct is not None:
            sent = client._direct_out(fields, sent, target, pull=pull)
        q, mid = self.session.next_id()
        try:
            send_frames(self.sock, self.session.pack("task", fields, sent, seq=(q, mid)))
            h, result = self._wait(mid)
        finally:
            if "bp" in fields:  # held here for its engine to ask for: the result came (or never will)
                client._direct.release_frames(sent, fields["bp"])
        value, error, _ = Client._decode(h, result, client._direct)
        if len(result) > 2 and client._direct is not None and "bk" not in h and "sh" not in h:
            client._direct_later(h.get("eid"), result)
        if error is not None:
            if "bp" in fields and getattr(error, "ename", None) == "DirectTransferError":
                return self.call(kind, payload, target, pull=False)  # its engine could not ask: the long way
            raise error
        return value

    def close(self) -> None:
        try:
            self.sock.send_multipart(self.session.pack("bye", {"c": self.cid}), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.close(0)
        self.client._channels.discard(self)
