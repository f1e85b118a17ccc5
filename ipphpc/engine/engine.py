"""The engine: a plain Python process that registers with the controller and runs tasks.

Usable as soon as the controller answers its registration. A heartbeat echo runs in a C
thread (a zmq device), so an engine busy in user code is not mistaken for a dead one; the
engine itself exits when it has heard nothing from the controller for `controller_timeout`
seconds, so a batch allocation is not burned by an orphan.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from .. import bulk, connection, paths, relay, shm
from ..wire import AuthError, Session, json_bytes, one_message, payload_digest, read_beat, unwrap
from ..zmqpump import Pump, send_frames
from . import control as control_line
from . import options
from .control import Control
from .executor import Executor
from .holding import ResultHold
from .lifetime import allocation, drain_time
from .origin import engine_origin


def _echo_pings(ctx: zmq.Context, ping_url: str, pong_url: str, ident: bytes, curve: list) -> threading.Thread:
    """The heartbeat: every ping from the controller goes straight back, from a thread that forwards them in
    libzmq without the GIL, so an engine busy in a long task still answers. It ends when `ctx` is terminated."""
    sub, dealer = ctx.socket(zmq.SUB), ctx.socket(zmq.DEALER)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    dealer.setsockopt(zmq.IDENTITY, ident)
    for opt, value in curve:
        sub.setsockopt(opt, value)
        dealer.setsockopt(opt, value)
    sub.connect(ping_url)
    dealer.connect(pong_url)

    def run() -> None:
        try:
            zmq.proxy(sub, dealer)
        except zmq.ZMQError:  # the context was terminated: the engine is stopping
            pass
        finally:
            sub.close(0)
            dealer.close(0)
    thread = threading.Thread(target=run, name="ipphpc-heart", daemon=True)
    thread.start()
    return thread

class RegistrationFailed(RuntimeError):
    pass


class Engine:
    """One engine process. Its settings (see :mod:`.options`) are attributes: `Engine(work_dir=...)`, or
    `Engine(config=c)` for a traitlets configuration with `c.Engine`, `c.IPEngine` and `c.MPI` sections."""

    log = logging.getLogger("ipphpc")

    def __init__(self, config: Any = None, **settings: Any):
        values = {name: o.default for name, o in options.ENGINE.items()}
        mpi = {name: o.default for name, o in options.MPI.items()}
        if config:
            from .settings import read  # traitlets: only when there is configuration to read
            values, mpi = read(config)
        for name, value in settings.items():
            if name not in options.ENGINE:
                raise TypeError(f"Engine has no setting {name!r}")
            values[name] = options.ENGINE[name].check(name, value)
        self.__dict__.update(values)
        self.mpi_use, self.mpi_init_script = mpi["use"], mpi["init_script"]

    restart = False  # set when the controller asks for a restart: run_engines then executes a fresh interpreter

    def connection_path(self) -> Path:
        if self.file:
            return Path(self.file).expanduser()
        pdir = paths.profile_dir(self.profile, self.profile_dir or None)
        return paths.connection_file(pdir, "engine", self.cluster_id)

    def prepare(self) -> dict:
        """Everything that may run before forking sibling engines: work dir and connection file."""
        if self.work_dir:
            os.chdir(os.path.expanduser(self.work_dir))
        path = self.connection_path()
        self.log.info("waiting for connection file %s", path)
        return connection.wait_for(path, self.wait_for_file)

    # -- start -------------------------------------------------------------------------------
    def _init_namespace(self) -> Executor:
        ns: dict = {"__name__": "__main__"}
        ex = Executor(ns)
        ex.install_main()
        use = self.mpi or self.mpi_use
        if use:
            if use != "mpi4py":
                raise ValueError(f"MPI.use={use!r} is not supported; use 'mpi4py'")
            # the init script imports mpi4py and leaves MPI (and anything else it likes) in the namespace
            exec(compile(self.mpi_init_script, "<MPI.init_script>", "exec"), ns)
            if "MPI" not in ns:
                raise RuntimeError("MPI.init_script must leave mpi4py's `MPI` module in the namespace "
                                   "(end it with `from mpi4py import MPI`)")
            comm = ns["MPI"].COMM_WORLD
            ns.update(comm=comm, mpi_rank=comm.Get_rank(), mpi_size=comm.Get_size())
            self.mpi_comm = True  # one rank of an MPI job: it cannot be restarted alone
            if self.engine_id < 0:  # its rank, or the id its rank had in the job this one replaces
                ids = os.environ.get("IPPHPC_MPI_ENGINE_IDS", "").split(",")
                rank = comm.Get_rank()
                self.engine_id = int(ids[rank]) if rank < len(ids) and ids[rank].strip().isdigit() else rank
        if self.startup_script:
            path = os.path.expanduser(self.startup_script)
            with open(path) as f:
                exec(compile(f.read(), path, "exec"), ns)
        if self.startup_command:
            exec(compile(self.startup_command, "<startup_command>", "exec"), ns)
        return ex

    async def run(self, info: dict) -> int:
        """Serve until told to stop or the controller is gone; returns the exit status."""
        self.info = info
        self.session = Session(info["key"])
        tag = shm.host_tag()
        # results go through /dev/shm to clients that share it with this engine and the controller
        self.shm_tag = tag if tag is not None and info.get("shm") == tag else None
        self.shm_prefix = shm.prefix(info["key"])
        self.executor = self._init_namespace()
        ctx = zmq.Context()
        self.ctx = ctx
        self.tunnel = None
        server = self.sshserver or info.get("ssh", "")
        try:
            if server:
                from ..ssh import tunnel_info
                self.tunnel, info = tunnel_info(info, connection.ENGINE_PORTS, server, self.sshkey,
                                                timeout=self.register_timeout)
                self.log.info("tunnel to the controller at %s through %s (ssh pid %s, up in %.2f s)",
                              info["tunnel"]["to"], server, self.tunnel.pid, self.tunnel.setup_time)
                self.tunnel.keep_open(self.log)
            addr = connection.reachable_address(info, "engine", self.register_timeout, "controller")
        except ConnectionError as e:
            raise RegistrationFailed(str(e)) from None
        self.url = connection.url(addr, info, "engine")
        self.direct_in = None
        if self.direct and not os.environ.get("IPPHPC_NO_DIRECT"):
            try:  # on the interface that reaches the controller: clients reach it from there too
                self.direct_in = bulk.Listener(bulk.Keys(info["key"]), bulk.local_ip_towards(addr), os.urandom(8).hex(),
                                               self.log)
                self.direct_in.relay = relay.Relay(self.direct_in.keys, self.log)
            except OSError as e:
                self.log.warning("no port for direct transfers (%s): large frames go through the controller", e)
        self.log.info("controller reachable at %s (addresses in the file: %s)", addr, ", ".join(info["addresses"]))
        self.heart_id = os.urandom(8).hex()
        self.sock = ctx.socket(zmq.DEALER)  # the task path: read by a Pump
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.IDENTITY, f"{self.heart_id}-eng".encode())  # the same after a reconnection
        curve = connection.curve_options(info)
        for opt, value in curve:
            self.sock.setsockopt(opt, value)
        # watched from before the connection: a dropped and remade connection may have lost messages both ways
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.dropped = False
        self.last_task = None  # msg_id of the last task read, in the controller's order
        self.done: deque = deque(maxlen=4096)  # msg_ids whose results were sent, newest last
        self.sock.connect(self.url)
        self.ping = zmq.asyncio.Context.shadow(ctx).socket(zmq.SUB)
        self.ping.setsockopt(zmq.SUBSCRIBE, b"")
        for opt, value in curve:
            self.ping.setsockopt(opt, value)
        self.ping.connect(connection.url(addr, info, "hb_ping"))
        self.heart = _echo_pings(ctx, connection.url(addr, info, "hb_ping"), connection.url(addr, info, "hb_pong"),
                                 self.heart_id.encode(), curve)
        self.control = Control(ctx, self.url, self.session.member("ctl"), f"{self.heart_id}-ctl", curve)
        self.executor.control = self.control
        control_line.active = self.control
        self.stopping = asyncio.Event()
        self.pump: Pump | None = None
        self.exit_code = 0
        self.leave_why = "it stopped"
        loop = asyncio.get_running_loop()
        term_why = "it received SIGTERM (its job was cancelled, preempted or reached its walltime, or it was killed)"

        def on_term(signum: int, frame: object) -> None:
            loop.call_soon_threadsafe(self._leave, term_why)
        if threading.current_thread() is threading.main_thread():
            # the loop leaves after the running task; the control thread tells the controller at once (the
            # scheduler's SIGKILL may come before the task ends: the controller then runs it elsewhere)
            signal.signal(signal.SIGTERM, on_term)
            self.control.watch_signals({signal.SIGTERM: term_why})
        self.control.start()
        self.last_heard = time.monotonic()
        # results of the tasks of one envelope, sent together (the thread writes on self.sock only while
        # the main thread is inside a task)
        self.hold = ResultHold(lambda frames: send_frames(self.sock, frames))
        self.early: list = []  # messages that came in one envelope with the answer to the registration
        # SIGINT is the executor's: a running task's KeyboardInterrupt, else a stop
        self.executor.on_idle_interrupt = lambda: loop.call_soon_threadsafe(self.stopping.set)
        try:
            self.register()
            self.pump = pump = Pump(self.sock, self._on_frames)
            for frames in self.early:
                self._on_message(frames)
            watch = Pump(self.monitor, self._on_monitor)
            watcher = asyncio.ensure_future(self._watch_controller())
            await self.stopping.wait()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            self._send("bye", {"why": self.leave_why})
            pump.close()
            watch.close()
        finally:
            self.hold.close()
            self.sock.disable_monitor()
            self.monitor.close(0)
            self.control.stop()
            self.control.join(2)
            self.control.unwatch_signals()
            control_line.active = None
            self.sock.close(linger=500)
            self.ping.close(0)
            if self.direct_in is not None:
                self.direct_in.close()
            ctx.term()
            if self.tunnel is not None:
                self.tunnel.close()
        return self.exit_code

    def _leave(self, why: str) -> None:
        """Stop after the running task, telling the controller why (its queued tasks go to other engines)."""
        if not self.stopping.is_set():
            self.leave_why = why
            self.log.info("leaving: %s", why)
        self.stopping.set()

    def _send(self, msg_type: str, fields: dict, payload=()) -> None:
        frames = self.session.pack(msg_type, fields, payload)
        if self.pump is not None:
            if self.hold.active:  # after the results held so far: the controller reads them in the order made
                self._send_held()
            self.pump.send(frames)
        else:
            send_frames(self.sock, frames)

    def _send_held(self) -> None:
        held = self.hold.take()
        if held:
            self.pump.send(one_message(held))

    def _result(self, fields: dict, payload=()) -> None:
        frames = self.session.pack("result", fields, payload)
        if self.hold.active:
            self.hold.add(frames)
        else:
            self.pump.send(frames)

    def _send_register(self, nonce: str | None = None) -> None:
        fields = {"info": self.origin, "hb": self.heart_id, "ctl": f"{self.heart_id}-ctl"}
        if nonce is not None:  # the controller's challenge, signed back: this register is not a replay
            fields["nonce"] = nonce
        # registering again (controller restarted) asks for the same id, so rc[i] keeps meaning this engine
        want = self.engine_id if self.engine_id >= 0 else getattr(self, "id", -1)
        if want >= 0:
            fields["want_id"] = want
        self._send("register", fields)
        self.register_sent = time.monotonic()

    def _registered(self, h: dict) -> None:
        self.id = h["eid"]
        self.controller_session = self.control.controller_session = h["s"]
        self.last_heard = time.monotonic()
        self.log.info("registered as engine %d with the controller at %s", self.id, self.url)

    def _lifetime(self, span: tuple[float, float] | None) -> dict:
        """`ends` and `drain_at` (epoch seconds) for the registration, when the allocation's end is known."""
        if span is None:
            return {}
        drain_at = drain_time(*span, self.drain_margin, self.drain_stagger)
        hms = [time.strftime("%H:%M:%S", time.localtime(t)) for t in (span[1], drain_at)]
        self.log.info("allocation ends at %s; this engine takes no new tasks from %s", *hms)
        return {"ends": span[1], "drain_at": drain_at}

    def _ask_scheduler_later(self, scheduler: str) -> None:
        """A user's own batch script: its job knows when it ends. Asked on a thread, so that a slow or
        unreachable scheduler (up to two 15 s queries) does not hold up registration; the answer is sent
        to the controller as soon as it comes."""
        loop = asyncio.get_running_loop()

        def ask() -> None:
            from .job_limits import ask_scheduler
            span = ask_scheduler(scheduler, log=self.log)
            if span is not None:
                try:
                    loop.call_soon_threadsafe(self._learned_lifetime, scheduler, span)
                except RuntimeError:
                    pass  # the engine stopped meanwhile
        threading.Thread(target=ask, name="ipphpc-ask-walltime", daemon=True).start()

    def _learned_lifetime(self, scheduler: str, span: tuple[float, float]) -> None:
        self.log.info("the %s job of this engine ends at %s (asked the scheduler)", scheduler,
                      time.strftime("%H:%M:%S", time.localtime(span[1])))
        fields = self._lifetime(span)
        self.origin.update(fields)  # a registration made again (a restarted controller) carries it too
        if not self.stopping.is_set():
            self._send("lifetime", fields)

    def register(self) -> None:
        """The first registration: nothing else runs until it is answered."""
        origin = engine_origin()
        span = allocation(self.walltime)
        self.origin = origin = {**origin, **self._lifetime(span)}
        if span is None and origin.get("scheduler") and self.ask_scheduler:
            self._ask_scheduler_later(origin["scheduler"])
        if getattr(self, "mpi_comm", False):
            origin["mpi_comm"] = True
        if getattr(self, "shm_tag", None):
            origin["shm"] = self.shm_tag
        if getattr(self, "direct_in", None) is not None:
            origin["direct"] = {"at": self.direct_in.address, "id": self.direct_in.ident}
        opened = self.tunnel.opened if self.tunnel is not None else 0
        self._send_register()
        deadline = time.monotonic() + self.register_timeout
        while True:
            left = deadline - time.monotonic()
            if left > 0 and not self.sock.poll(min(left, 1.0) * 1000):
                if self.tunnel is not None and self.tunnel.opened != opened:
                    opened = self.tunnel.opened
                    self._send_register()  # the request or its answer may have died with the tunnel
                continue
            if left <= 0:
                raise RegistrationFailed(
                    f"the controller at {self.url} did not answer registration within {self.register_timeout:g} s; "
                    f"is it running (its pid is in {self.connection_path().parent.parent / 'pid'})? If it listens on "
                    f"127.0.0.1 and this engine runs on another host ({origin['host']}), start it with --ip='*'")
            frames = self.sock.recv_multipart(copy=False)
            try:
                msgs = unwrap(frames) or [frames]
            except AuthError as e:
                self.log.warning("dropped a message while registering: %s", e)
                continue
            for i, frames in enumerate(msgs):
                try:
                    _, h, _ = self.session.split(frames)
                except AuthError as e:
                    self.log.warning("dropped a message while registering: %s", e)
                    continue
                if h["t"] == "refused":
                    raise RegistrationFailed(f"the controller refused this engine: {h.get('why')}")
                if h["t"] == "challenge":
                    self._send_register(h.get("nonce"))
                elif h["t"] == "registered":
                    self._registered(h)
                    self.early = msgs[i + 1:]  # sent with the answer (tasks already): read once serving
                    return

    def _task_id(self, h: dict) -> str:
        """This engine's msg_id for a task: a message sent to many engines lists one per engine."""
        ids = h.get("ids")
        return h["id"] if ids is None else ids[h["to"].index(self.id)]

    def _on_frames(self, frames: list) -> None:
        try:
            msgs = unwrap(frames)
        except AuthError as e:
            self.log.warning("dropped a message: %s", e)
            return
        if msgs is None:
            self._on_message(frames)
            return
        hold = self.hold
        hold.active = True  # the tasks of one turn of the controller: their results leave together
        try:
            for m in msgs:
                self._on_message(m)
        finally:
            hold.active = False
            self._send_held()

    def _on_message(self, frames: list) -> None:
        t = None
        mapped: list = []  # shared-memory files this task's frames are in: a result that is a view of one
        try:
            _, h, payload = self.session.split(frames)
            t = h["t"]
            if t == "task":
                Session.check_payload(h, payload)
                if "sh" in h:
                    payload = shm.resolve(h, payload, mapped=mapped)
                if ("bk" in h or "bp" in h) and self.hold.active:
                    self._send_held()  # its frames may take a while to come: the results before it go now
                if "bk" in h and self._task_id(h) not in self.control.aborted:
                    payload = (self._relay().resolve(h["bk"], payload) if "br" in h
                               else self._channel(h).resolve(h["bk"], payload))
                elif "bp" in h and self._task_id(h) not in self.control.aborted:
                    payload = self._channel(h).resolve(h["bp"], payload, ask=True)  # a load-balanced task's
        except (AuthError, shm.SharedMemoryError, bulk.BulkError) as e:
            self.log.warning("dropped a message: %s", e)
            if t == "task":
                # the header is authentic, only the payload was damaged or gone: say so instead of leaving a hang
                ename = {AuthError: "PayloadError", bulk.BulkError: "DirectTransferError"}.get(type(e),
                                                                                              "SharedMemoryError")
                meta = {"engine_id": self.id, "error": {"ename": ename, "evalue": str(e), "tb": ""}}
                self._result({"p": self._task_id(h), "ok": False, "eid": self.id, "dur": 0.0}, [json_bytes(meta)])
            return
        self.last_heard = time.monotonic()
        if t == "task":
            mid = self._task_id(h)
            if mid in self.control.aborted:
                self.control.aborted.pop(mid, None)
                if "bk" in h:  # its frames were sent straight here: nobody will claim them now
                    self._drop_direct(h, payload)
                self._result({"p": mid, "ok": False, "eid": self.id, "dur": 0.0, "err": {
                    "ename": "TaskAborted", "evalue": f"task {mid} was aborted before it started on engine {self.id}",
                    "tb": ""}})
                self.done.append(mid)
                return
            self.last_task = mid
            hold = self.hold
            if hold.active:
                due = hold.enter()
                if due:
                    self.pump.send(one_message(due))
                try:
                    ok, value, meta = self.executor.run(h["k"], payload, mid)
                finally:
                    hold.leave()
            else:
                ok, value, meta = self.executor.run(h["k"], payload, mid)
            if self.control.data:  # what the task published and the control line has not sent: before the result
                for pmid, frames in self.control.take_data():
                    self._send("data", {"p": pmid}, frames)
            meta["engine_id"] = self.id
            started, completed = meta["started"], meta["completed"]
            fields = {"p": mid, "ok": ok, "eid": self.id, "dur": completed - started, "st": started, "cp": completed}
            if not ok or meta["stdout"] or meta["stderr"] or "execute_result" in meta:
                fields["mo"] = 1  # the metadata holds more than the times: the task database reads it
            if value and self.shm_tag is not None and h.get("sk") == self.shm_tag:
                value, idx = shm.export(value, self.shm_prefix, mapped)
                if idx:
                    fields["sh"] = [i + 1 for i in idx]  # after the metadata frame
            if value and "bc" in h and "sh" not in fields and self.direct_in is not None:
                value = self._direct_out(h["bc"], value, fields)
            body = [json_bytes(meta), *value]
            if value:  # the controller records the metadata frame alone: it checks that without hashing the rest
                fields["dm"] = payload_digest(body[:1])
            self._result(fields, body)
            self.done.append(mid)
        elif t == "sync":
            # read after every task sent before it: the controller learns which of its tasks never came,
            # and which results did not reach it
            self._send("synced", {"n": h["n"], "last": self.last_task, "done": list(self.done)})
        elif t == "restart":
            self.log.info("restart requested by the controller")
            self.restart = True
            self._leave("it restarts")
        elif t == "stop":
            self.log.info("stop requested by the controller")
            self._leave(h.get("why") or "it was asked to stop")
        elif t == "registered":
            self._registered(h)
        elif t == "challenge":
            self._send_register(h.get("nonce"))
        elif t == "refused":
            self.log.error("the controller refused this engine: %s", h.get("why"))
            self.exit_code = 4
            self.stopping.set()
        elif t == "reregister":
            self.log.info("the controller does not know this engine (restarted?); registering again")
            self._send_register()

    def _channel(self, h: dict) -> bulk.Channel:
        ch = self.direct_in.channel(h.get("bc")) if self.direct_in is not None else None
        if ch is None:
            raise bulk.BulkError("this task's large frames were sent straight to this engine, from a client that "
                                 "has no direct connection to it")
        return ch

    def _relay(self) -> relay.Relay:
        if self.direct_in is None:
            raise bulk.BulkError("this task's large frames were passed from engine to engine, and this engine has "
                                 "no port for them")
        return self.direct_in.relay

    def _drop_direct(self, h: dict, payload: list) -> None:
        try:
            if "br" in h:
                self._relay().drop(h["bk"], payload)
            else:
                self._channel(h).drop(h["bk"], payload)
        except bulk.BulkError:
            pass

    def _direct_out(self, token: str, value: list, fields: dict) -> list:
        """A result's large frames sent straight to the client that asked, when it has a direct connection
        here (the result message then names them in `bk`); else through the controller as they are."""
        idx = bulk.large(value)
        ch = self.direct_in.channel(token) if idx else None
        if ch is None or ch.closed is not None:
            return value
        try:
            out = ch.export(value, idx)
        except bulk.BulkError as e:
            self.log.warning("%s; the result goes through the controller", e)
            return value
        fields["bk"] = [i + 1 for i in idx]  # after the metadata frame
        return out

    def _on_monitor(self, frames: list) -> None:
        from zmq.utils.monitor import parse_monitor_message
        event = parse_monitor_message([bytes(f) for f in frames])["event"]
        if event == zmq.EVENT_DISCONNECTED:
            self.dropped = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.dropped:
            self.dropped = False
            if getattr(self, "id", None) is not None:
                self.log.warning("the connection to the controller dropped and is back; checking for lost messages")
                self._send("resync", {})

    async def _watch_controller(self) -> None:
        """Track pings: a new controller session means a restart; silence means it is gone."""
        while True:
            if await self.ping.poll(1000):
                frames = await self.ping.recv_multipart(copy=False)
                # only the controller writes to this socket: a ping that is not of its session is of a new one
                self.last_heard = time.monotonic()
                if read_beat(self.session, self.controller_session, frames[-1]) is None and \
                        time.monotonic() - self.register_sent > 2.0:
                    self.log.info("controller restarted (new session); registering again")
                    self._send_register()
            silent = time.monotonic() - self.last_heard
            if silent > self.controller_timeout:
                self.log.error("no word from the controller at %s for %.0f s; exiting", self.url, silent)
                self.exit_code = 3
                self.stopping.set()
                return
