"""The engine's second line to the controller, served by a thread while a task runs.

The engine runs tasks on its main thread, so anything that must reach it during a task
travels here: signals (SIGINT becomes KeyboardInterrupt inside the task), aborts of tasks
still queued at the engine, and output printed by the running task, sent every tenth of a
second while it runs so that users see long tasks progress. A task that ends sooner sends
nothing here: its result carries the whole output.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import zmq

from .. import serialize
from ..wire import AuthError, Session

log = logging.getLogger("ipphpc.engine")

FLUSH_EVERY = 0.1  # seconds between sends of a running task's output
_ABORTED_KEEP = 100_000  # abort notices remembered; older ones are for tasks long gone

#: the running engine's control line (publish_data reaches it through this)
active: "Control | None" = None


class Output:
    """A task's stdout or stderr: kept whole for the result, and offered in pieces to the control thread."""

    def __init__(self, name: str, control: "Control | None"):
        self.name = name
        self.parts: list[str] = []
        self.sent = 0  # characters already streamed
        self.size = 0
        self.control = control

    # the file protocol print() and friends use
    def write(self, s: str) -> int:
        if s:
            self.parts.append(s)
            self.size += len(s)
        return len(s)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"

    def getvalue(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def unsent(self) -> tuple[int, str]:
        """(offset, text) printed since the last piece streamed (read by the control thread)."""
        size, sent = self.size, self.sent
        if size == sent:
            return sent, ""
        text = "".join(self.parts)[sent:size]
        self.sent = size
        return sent, text


class Control(threading.Thread):
    """Signals, aborts and streamed output for one engine."""

    def __init__(self, ctx: zmq.Context, url: str, session: Session, ident: str, curve: list = ()):
        super().__init__(name="ipphpc-engine-control", daemon=True)
        self.session = session  # of the engine's family: admitted with the engine's registration
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, ident.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        for opt, value in curve:  # the controller's CurveZMQ key, when it encrypts
            self.sock.setsockopt(opt, value)
        self.sock.connect(url)
        self.aborted: dict[str, None] = {}  # insertion-ordered set
        self.task: str | None = None  # msg_id of the task running now
        self.task_started = 0.0
        self.outputs: tuple[Output, ...] = ()
        self.data: list[tuple[str, list]] = []  # publications waiting to be sent: (msg_id, frames)
        self.controller_session: str | None = None
        self.leaving: str | None = None  # why this engine is going, to be told to the controller (once)
        self.signals: dict[int, str] = {}  # signal numbers seen on `wake_fd` -> why the engine leaves on them
        self.wake_fd: int | None = None
        self._last_q = 0
        self._interrupting = False
        self._halt = threading.Event()
        self._lock = threading.Lock()

    # -- main thread -------------------------------------------------------------------------
    def begin(self, msg_id: str, outputs: tuple[Output, ...]) -> None:
        with self._lock:
            self.task, self.task_started, self.outputs = msg_id, time.monotonic(), outputs

    def end(self) -> None:
        with self._lock:
            self.task, self.outputs = None, ()

    def take_data(self) -> list[tuple[str, list]]:
        """Publications not sent yet: the engine sends them ahead of the task's result."""
        with self._lock:
            data, self.data = self.data, []
        return data

    def publish(self, data: dict) -> None:
        with self._lock:
            if self.task is None:
                raise RuntimeError("publish_data is only meaningful inside a task")
            self.data.append((self.task, serialize.dumps(data)))

    def watch_signals(self, signals: dict[int, str]) -> None:
        """Main thread: have the signals `signals` noticed here at once. A signal may be delivered to any thread,
        and Python runs its handler on the main thread only, when that thread next runs bytecode: a task
        sleeping or in a C call would hold it back. Every signal is also written to a wake-up fd, read here."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self.wake_fd, self._wake_w, self.signals = r, w, dict(signals)

    def unwatch_signals(self) -> None:
        """Main thread, once this thread has stopped."""
        if self.wake_fd is not None:
            signal.set_wakeup_fd(-1)
            os.close(self.wake_fd)
            os.close(self._wake_w)
            self.wake_fd = None

    def leave(self, why: str) -> None:
        """Tell the controller this engine is going, even while a task runs on the main thread (the scheduler
        may kill the process before the task ends; the controller then runs the task again elsewhere)."""
        with self._lock:
            if self.leaving is None:
                self.leaving = why

    def stop(self) -> None:
        self._halt.set()

    # -- control thread ----------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.wake_fd is not None:
            poller.register(self.wake_fd, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                ready = dict(poller.poll(FLUSH_EVERY * 1000))
                if self.sock in ready:
                    self._receive()
                if self.wake_fd in ready:
                    self._signalled()
                self._flush()
        except zmq.ZMQError as e:
            if e.errno != zmq.ETERM:
                log.exception("engine control line failed")
        finally:
            self.sock.close(0)

    def _receive(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                _, h, _ = self.session.split(frames)
            except AuthError as e:
                log.warning("dropped a control message: %s", e)
                continue
            if not self._fresh(h):
                continue
            t = h["t"]
            if t == "signal":
                self._signal(int(h["sig"]))
            elif t == "abort":
                for mid in h.get("ids", []):
                    self.aborted[mid] = None
                while len(self.aborted) > _ABORTED_KEEP:
                    self.aborted.pop(next(iter(self.aborted)))

    def _signalled(self) -> None:
        try:
            seen = os.read(self.wake_fd, 256)
        except BlockingIOError:
            return
        for signum in seen:
            if signum in self.signals:
                self.leave(self.signals[signum])

    def _fresh(self, h: dict) -> bool:
        """Only the controller's current session, sequence growing: a replayed signal does nothing."""
        if h.get("s") != self.controller_session:
            return False
        q = h.get("q", 0)
        if q <= self._last_q:
            return False
        self._last_q = q
        return True

    def _signal(self, sig: int) -> None:
        if sig == signal.SIGINT and self.task is None:
            return  # an interrupt between tasks has nothing to interrupt (it must not stop the engine)
        log.info("signal %d requested by the controller", sig)
        if sig == signal.SIGINT:
            self._interrupting = True
        os.kill(os.getpid(), sig)

    def take_interrupt(self) -> bool:
        """True once after the controller asked for an interrupt (read by the SIGINT handler)."""
        asked, self._interrupting = self._interrupting, False
        return asked

    def _flush(self) -> None:
        with self._lock:
            task, outputs, data = self.task, self.outputs, self.data
            self.data = []
            leaving, self.leaving = self.leaving, (self.leaving and "")  # sent once: "" stays, never resent
            young = task is None or time.monotonic() - self.task_started < FLUSH_EVERY
        if leaving:
            self._send("leaving", {"why": leaving}, [])
        for mid, frames in data:
            self._send("data", {"p": mid}, frames)
        if young:
            return  # a short task's output travels with its result
        for out in outputs:
            offset, text = out.unsent()
            if text:
                self._send("stream", {"p": task, "n": out.name, "o": offset}, [text.encode("utf-8", "replace")])

    def _send(self, msg_type: str, fields: dict, payload: list) -> None:
        try:
            self.sock.send_multipart(self.session.pack(msg_type, fields, payload), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the controller is not reading: live output is a courtesy, the result carries it all


def publish_data(data: dict) -> None:
    """Send `data` (a dict) to the client of the running task, where it updates `ar.data`."""
    if not isinstance(data, dict):
        raise TypeError(f"publish_data takes a dict, not {type(data).__name__}")
    if active is None:
        raise RuntimeError("publish_data runs inside a task on an engine")
    active.publish(data)
