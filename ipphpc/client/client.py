"""Client: connects to a controller, sends tasks, receives results.

Tasks leave from the caller's thread on a submit socket (no hop through another thread);
results come back on a second socket read by an I/O thread running an asyncio loop, which
completes each task's Future.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import zmq

from .. import connection, paths, serialize
from ..error import (ControllerUnreachable, EngineError, NoEnginesRegistered, ProtocolMismatch, RemoteError,
                      TaskAborted, TaskTimeout)
from ..wire import AuthError, Session, payload_digest
from ..zmqpump import Pump, send_frames
from .asyncresult import AsyncResult, build_metadata

log = logging.getLogger("ipphpc.client")
_PYTHON = platform.python_version()
_MINOR = _PYTHON.rsplit(".", 1)[0]
_CONTROLLER_ERRORS = {"EngineError": EngineError, "TaskTimeout": TaskTimeout, "TaskAborted": TaskAborted}


@dataclass
class _Pending:
    ar: AsyncResult
    index: int
    submitted: float
    target: int | None
    # kept only for tasks that may be retried
    resend: tuple | None = None
    retries: int = 0


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


class Client:
    """A connection to one cluster's controller; `rc[:]`, `rc.load_balanced_view()` send it work."""

    def __init__(self, url_file: str | os.PathLike | None = None, profile: str = "default",
                 profile_dir: str | None = None, cluster_id: str | None = None, timeout: float = 10.0,
                 sshserver: str | None = None, sshkey: str | None = None, password: str | None = None,
                 **kwargs: Any):
        path = Path(url_file) if url_file else find_client_file(profile, profile_dir, cluster_id)
        self.url_file = path
        self._info = info = connection.read(path)
        self.cluster_id = info.get("cluster_id", "")
        self.session = Session(info["key"])
        # the result socket signs with a session of its own: each session's sequence must arrive in order
        self._rsession = Session(info["key"])
        self.cid = self.session.id
        self._tunnel = None
        server = sshserver or info.get("ssh", "")
        try:
            if server:
                from ..ssh import tunnel_info
                self._tunnel, info = tunnel_info(info, connection.CLIENT_PORTS, server, sshkey or "",
                                                 password=password, timeout=max(timeout, 10.0))
            addr = connection.reachable_address(info, "client", timeout, "controller")
        except ConnectionError as e:
            if self._tunnel is not None:
                self._tunnel.close()
            raise ControllerUnreachable(f"{e} (connection file {path})") from None
        self.url = connection.url(addr, info, "client")
        self._ctx = zmq.Context()
        self._lock = threading.Lock()
        self._submit = self._ctx.socket(zmq.DEALER)
        self._submit.setsockopt(zmq.LINGER, 1000)
        self._submit.setsockopt(zmq.SNDHWM, 0)
        self._submit.connect(self.url)
        self._pending: dict[str, _Pending] = {}
        self._requests: dict[str, asyncio.Future] = {}
        self._engines: dict[int, dict] = {}
        self._other_python: dict[int, str] = {}  # engines whose Python cannot read this one's bytecode
        self._engine_cond = threading.Condition()
        self._local = threading.local()  # each calling thread's channel for synchronous calls
        self._channels: set[_SyncChannel] = set()
        self._generation = 0  # grows when the controller restarts: channels of before are stale
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._io_main, name="ipphpc-client-io", daemon=True)
        self._thread.start()
        self._ready.wait()
        try:
            welcome = self._request("hello", {"c": self.cid}, timeout=timeout, via_results=True)
        except TimeoutError:
            self.close()
            raise ControllerUnreachable(
                f"no answer from the controller at {self.url} within {timeout:g} s (connection file {path}); "
                f"is it running? `ipphpc list` shows the clusters of this profile") from None
        if welcome["t"] == "refused":
            self.close()
            raise ProtocolMismatch(welcome.get("why"))
        with self._engine_cond:
            self._engines.update({int(k): v for k, v in welcome.get("engines", {}).items()})
            self._note_pythons()

    # -- I/O thread ----------------------------------------------------------------------------
    def _io_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._results = self._ctx.socket(zmq.DEALER)
        self._results.setsockopt(zmq.LINGER, 0)
        self._results.setsockopt(zmq.RCVHWM, 0)
        # the monitor before the connection: a first handshake it missed would make the first
        # reconnection look like the first connection, and the client would not say hello again
        monitor = self._results.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._handshakes = 0
        self._results.connect(self.url)
        self._io_stop = self._loop.create_future()

        async def serve() -> None:
            self._pump = Pump(self._results, self._on_frames)
            watch = Pump(monitor, self._on_monitor)
            self._ready.set()
            await self._io_stop
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
            _, h, payload = self.session.split(frames)
        except AuthError as e:
            log.warning("dropped a message from the controller: %s", e)
            return
        self._dispatch(h, payload)

    def _on_monitor(self, frames: list) -> None:
        from zmq.utils.monitor import parse_monitor_message
        if parse_monitor_message([bytes(f) for f in frames])["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        self._handshakes += 1
        if self._handshakes > 1:
            self._reconnected()

    def _reconnected(self) -> None:
        """The controller came back (restarted with --reuse): what it held is gone; say hello again."""
        self._generation += 1
        lost = [self._pending.pop(mid) for mid in list(self._pending)]
        log.warning("reconnected to the controller at %s; %d unfinished tasks failed", self.url, len(lost))
        for p in lost:
            p.ar._child_done(p.index, None, TaskAborted("the controller restarted before this task finished"), {})
        self._pump.send(self._rsession.pack("hello", {"c": self.cid}))

    def _dispatch(self, h: dict, payload: list) -> None:
        t = h["t"]
        if t == "result":
            self._on_result(h, payload)
        elif t == "engines":
            with self._engine_cond:
                for k, v in h.get("add", {}).items():
                    self._engines[int(k)] = v
                for k in h.get("rm", []):
                    self._engines.pop(int(k), None)
                self._note_pythons()
                self._engine_cond.notify_all()
        else:
            fut = self._requests.pop(h.get("p"), None)
            if fut is not None and not fut.done():
                fut.set_result(h)
            elif t == "welcome":  # after a reconnection: the new controller's engines
                with self._engine_cond:
                    self._engines = {int(k): v for k, v in h.get("engines", {}).items()}
                    self._note_pythons()
                    self._engine_cond.notify_all()

    def _on_result(self, h: dict, payload: list) -> None:
        p = self._pending.pop(h["p"], None)
        if p is None:
            return
        value, error, meta = self._decode(h, payload)
        if error is not None and p.retries > 0 and p.resend is not None:
            self._retry(p)
            return
        p.ar._child_done(p.index, value, error, build_metadata(h["p"], p.submitted, meta, h.get("eid")))

    @staticmethod
    def _decode(h: dict, payload: list) -> tuple[Any, BaseException | None, dict | None]:
        """(value, error, engine metadata) of a result message."""
        err = h.get("err")
        meta = None
        value = error = None
        if err is not None:
            cls = _CONTROLLER_ERRORS.get(err["ename"], EngineError)
            error = cls(err["evalue"])
        else:
            try:
                Session.check_payload(h, payload)
                meta = json.loads(bytes(payload[0]))
                if h["ok"]:
                    value = serialize.loads(payload[1:]) if len(payload) > 1 else None
                else:
                    e = meta["error"]
                    error = RemoteError(e["ename"], e["evalue"], e["tb"], {"engine_id": h.get("eid")})
            except Exception as e:  # noqa: BLE001 - the task must finish, with the reason it could not be read
                error = e if isinstance(e, AuthError) else RemoteError(
                    type(e).__name__, f"the result arrived but could not be deserialized here: {e}", "",
                    {"engine_id": h.get("eid")})
        return value, error, meta

    def _note_pythons(self) -> None:
        """Remember the engines on another Python minor version (called with _engine_cond held)."""
        self._other_python = {eid: v["python"] for eid, v in self._engines.items()
                              if v.get("python") and v["python"].rsplit(".", 1)[0] != _MINOR}

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

    # -- sending ---------------------------------------------------------------------------------
    def _send_task(self, kind: str, payload: Sequence[Any], ar: AsyncResult, index: int, target: int | None = None,
                   timeout: float | None = None, retries: int = 0, digest: str | None = None) -> str:
        fields: dict[str, Any] = {"k": kind, "c": self.cid}
        if target is not None:
            fields["to"] = target
        if timeout:
            fields["tmo"] = timeout
        if self._other_python and kind in ("apply", "push") and payload:
            self._check_python(payload, None if target is None else [target])
        if digest is None and payload:
            digest = payload_digest(payload)
        with self._lock:
            if self._closed:
                raise RuntimeError("this client is closed")
            seq = self.session.next_id()
            mid = seq[1]
            resend = (kind, payload, target, timeout, digest) if retries else None
            self._pending[mid] = _Pending(ar, index, time.time(), target, resend, retries)
            ar.msg_ids[index] = mid
            send_frames(self._submit, self.session.pack("task", fields, payload, seq=seq, digest=digest))
        return mid

    def _retry(self, p: _Pending) -> None:
        kind, payload, target, timeout, digest = p.resend
        self._send_task(kind, payload, p.ar, p.index, target, timeout, p.retries - 1, digest)

    def _request(self, msg_type: str, fields: dict | None = None, timeout: float = 10.0,
                 via_results: bool = False) -> dict:
        """Send a request to the controller and wait for its reply (from any thread but the I/O thread)."""
        fields = dict(fields or {}, c=self.cid)
        fut: asyncio.Future

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
                    self._submit.send_multipart(self.session.pack(msg_type, fields, seq=(q, mid)))
            return f

        async def roundtrip() -> dict:
            return await asyncio.wait_for(send(), timeout)

        try:
            return asyncio.run_coroutine_threadsafe(roundtrip(), self._loop).result(timeout + 1)
        except (asyncio.TimeoutError, TimeoutError):
            raise TimeoutError(f"the controller at {self.url} did not answer {msg_type!r} within {timeout:g} s")

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
        ids = self.ids
        if targets is None or targets == "all":
            return ids
        if isinstance(targets, int):
            targets = [targets]
        elif isinstance(targets, slice):
            targets = ids[targets]
        targets = list(targets)
        missing = [t for t in targets if t not in self._engines]
        if missing:
            raise NoEnginesRegistered(f"engine(s) {missing} are not registered; registered: {ids}")
        return targets

    def direct_view(self, targets: Any = "all", **flags: Any):
        from .view import DirectView
        return DirectView(self, targets, **flags)

    def load_balanced_view(self, targets: Any = None, **flags: Any):
        from .view import LoadBalancedView
        return LoadBalancedView(self, targets, **flags)

    def __getitem__(self, key: Any):
        if isinstance(key, int):
            if key not in self._engines:
                raise IndexError(f"engine {key} is not registered; registered: {self.ids}")
            return self.direct_view(key)
        if isinstance(key, slice):
            targets = self.ids[key]
            if not targets:
                raise NoEnginesRegistered(f"no engine selected by {key}; registered: {self.ids}")
            return self.direct_view(targets)
        return self.direct_view(list(key))

    def executor(self, targets: Any = None, **flags: Any):
        """A concurrent.futures.Executor that load-balances over the engines."""
        return self.load_balanced_view(targets, **flags).executor

    def queue_status(self) -> dict:
        """What the controller knows: engines with their outstanding tasks, queued tasks, counters."""
        return self._request("status")

    def wait(self, jobs: Iterable[AsyncResult] | None = None, timeout: float = -1) -> bool:
        if jobs is None:
            jobs = {p.ar for p in list(self._pending.values())}
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        for ar in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                return False
        return True

    @property
    def outstanding(self) -> set[str]:
        return set(self._pending)

    def shutdown(self, targets: Any = "all", hub: bool = True, block: bool = True) -> None:
        """Stop the engines, and the controller when `hub` (the default)."""
        if hub:
            self._request("shutdown", {"engines": True})
        else:
            self._request("stop_engines", {"targets": None if targets == "all" else self._resolve(targets)})

    def close(self, linger: float = 1.0) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
        if self._thread.is_alive():
            try:
                def stop():
                    try:
                        self._results.send_multipart(self._rsession.pack("bye", {"c": self.cid}))
                    finally:
                        if not self._io_stop.done():
                            self._io_stop.set_result(None)
                self._loop.call_soon_threadsafe(stop)
            except RuntimeError:
                pass
            self._thread.join(5)
        self._submit.close(int(linger * 1000))
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


class _SyncChannel:
    """One calling thread's socket for synchronous calls (`apply_sync` on one engine or load-balanced).

    The task leaves on it and its result comes back on it (its tasks say so, and the controller then
    knows it as a client of its own, which wants no registry notes), so the caller wakes straight
    from the socket: no I/O thread, future or lock hand-off in between, a quarter of a short call.
    """

    def __init__(self, client: Client):
        self.client = client
        self.generation = client._generation
        self.session = Session(client._info["key"])
        self.cid = self.session.id
        self.sock = client._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.rcvtimeo = 500  # wake now and then to see whether the client closed or reconnected
        self.sock.connect(client.url)

    def _wait(self, mid: str) -> tuple[dict, list]:
        """The result of task `mid` (anything else that arrives is dropped)."""
        while True:
            if self.client._closed:
                raise TaskAborted("the client was closed before this task finished")
            if self.generation != self.client._generation:
                raise TaskAborted("the controller restarted before this task finished")
            try:  # a blocking receive wakes at once on the message; a Poller costs a call more
                frames = self.sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            try:
                _, h, payload = self.session.split(frames)
            except AuthError as e:
                log.warning("dropped a message from the controller: %s", e)
                continue
            if h.get("t") == "result" and h.get("p") == mid:
                return h, payload

    def call(self, kind: str, payload: list, target: int | None) -> Any:
        fields: dict[str, Any] = {"k": kind, "c": self.cid, "sync": 1}
        if target is not None:
            fields["to"] = target
        q, mid = self.session.next_id()
        send_frames(self.sock, self.session.pack("task", fields, payload, seq=(q, mid)))
        value, error, _ = Client._decode(*self._wait(mid))
        if error is not None:
            raise error
        return value

    def close(self) -> None:
        try:
            self.sock.send_multipart(self.session.pack("bye", {"c": self.cid}), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.close(0)
        self.client._channels.discard(self)
