"""The controller process: sockets, connection files, heartbeats, lifecycle.

Routing decisions live in `hub.Hub`; this module binds the sockets, runs the asyncio loop
and owns the files other processes use to find it.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import zmq
from traitlets import Bool, Dict, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from .. import connection, localsock, paths, shm
from .._version import __version__
from ..config import read_before
from ..netutil import advertised_addresses, is_loopback, is_wildcard
from ..wire import SIGNATURE_SCHEME, Session, new_key
from . import record
from .hub import Hub
from .taskdb import backend_name, default_path, open_store
from .taskdb.lost import mark_lost
from .taskdb.recorder import Recorder

PORT_NAMES = ("client", "engine", "hb_ping", "hb_pong")


class Controller(LoggingConfigurable):
    """Binds the ports engines and clients connect to, and routes their messages."""

    @classmethod
    def section_names(cls) -> list[str]:
        return read_before(super().section_names(), "Controller", "IPController")

    ip = Unicode("127.0.0.1", config=True, help="Interface to listen on; '*' for all (needed when engines "
                 "run on other hosts).")
    location = Unicode("", config=True, help="Host name or address engines and clients should use to reach "
                       "this controller; listed first in the connection files.")
    ports = List(Integer(), [], config=True, help="Four ports: client, engine, hb_ping, hb_pong. Random free "
                 "ports when empty.")
    reuse = Bool(False, config=True, help="Reload ports and key from existing connection files, so engines "
                 "and clients written against them keep working across a restart.")
    new_key = Bool(False, config=True, help="With reuse: keep the ports but make a new key (and new CurveZMQ keys), "
                   "so whoever held the old connection files can no longer connect.")
    cluster_id = Unicode("", config=True, help="Cluster id: part of file names, so clusters can share a profile.")
    profile = Unicode("default", config=True)
    profile_dir = Unicode("", config=True)
    heartbeat_period = Float(1.0, config=True, help="Seconds between heartbeat pings to engines.")
    heartbeat_misses = Integer(5, config=True, help="Pings an engine may miss before it is declared dead "
                               "and its tasks fail with EngineError.")
    prefetch_max = Integer(64, config=True, help="Most load-balanced tasks queued on one engine at once.")
    prefetch_target = Float(0.005, config=True, help="Seconds of queued work each engine is given ahead, "
                            "so short tasks never wait for a round trip while long ones stay balanced.")
    engine_wait = Float(60.0, config=True, help="Seconds queued tasks wait for an engine once every engine has "
                        "gone; then they fail with NoEnginesRegistered instead of waiting forever. Until the first "
                        "engine registers, tasks wait without bound (engines may be pending in a batch queue).")
    verdict_wait = Float(0.0, config=True, help="Seconds the tasks of a batch engine that went silent without a "
                         "word wait for the scheduler's reason (node failure, walltime, preemption, a cancel), which "
                         "the process holding the cluster reads; a load-balanced task the scheduler cut short then "
                         "runs again without using a retry, and direct tasks fail naming the reason. Used only while "
                         "such a process listens; 0: never wait. Batch clusters set 60.")
    client_timeout = Float(10.0, config=True, help="Seconds a client may stay silent (it says something every "
                           "second) before its queued tasks are dropped; 0 keeps them running after it is gone "
                           "(a laptop that disconnects from a long run: fetch the results later from the task "
                           "database).")
    interrupt_orphans = Bool(True, config=True, help="When a client is gone, also interrupt (SIGINT) the tasks of "
                             "it that engines are running.")
    curve = Bool(None, allow_none=True, config=True, help="Encrypt every connection with CurveZMQ. Default: on "
                 "when listening on anything but loopback (engines on other hosts), off for a loopback-only cluster. "
                 "The public key goes into the connection files; sockets without it cannot complete the handshake.")
    shm = Bool(True, config=True, help="Let clients and engines on this controller's host pass frames of 1 MiB "
               "or more through files in /dev/shm (written once, mapped by the reader) instead of sockets. "
               "Off: every frame travels through the controller's sockets.")
    ipc = Bool(True, config=True, help="Also listen on Unix sockets (ipc://) in a private directory of this user, "
               "used by engines and clients on this host (same host, network and mount namespaces): less CPU "
               "and latency per message than TCP loopback, and unreachable by other users. Off: TCP only.")
    hold_time = Float(30.0, config=True, help="Seconds a message of a sender that has not proven it is alive (by "
                      "a hello answering the controller's challenge) is held for that hello to arrive; then it is "
                      "dropped, never run.")
    extra_info = Dict({}, config=True, help="Extra fields for the connection files.")
    enginessh = Unicode("", config=True, help="[user@]host[:port] of an ssh server engines tunnel through to reach "
                        "this controller; written into the engine connection file as 'ssh'.")
    clientssh = Unicode("", config=True, help="The same for clients; written into the client connection file.")
    db_class = Unicode("dict", config=True, help="Task database: 'dict' (in memory, bounded by c.DictDB.record_limit "
                       "and size_limit), 'sqlite', 'hdf5', 'mongodb' (c.MongoDB.url) or 'none'. IPython Parallel's "
                       "names (DictDB, SQLiteDB, MongoDB, NoDB) work too.")
    db_file = Unicode("", config=True, help="File of the sqlite or hdf5 task database; default "
                      "<profile>/db/tasks-<cluster id>.sqlite (or .h5).")

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pdir = paths.profile_dir(self.profile, self.profile_dir or None)
        self.engine_file = paths.connection_file(self.pdir, "engine", self.cluster_id)
        self.client_file = paths.connection_file(self.pdir, "client", self.cluster_id)
        self.pid_file = paths.pid_file(self.pdir, "ipcontroller", self.cluster_id)
        self.curve_file = self.engine_file.with_name(self.engine_file.name.replace("-engine.json", "-curve.key"))
        self.urls: dict[str, str] = {}
        self.ipc_paths: dict[str, str] = {}  # socket name -> its Unix socket, for peers on this host
        self._ipc_inodes: dict[str, int] = {}
        self.record_file: Path | None = None  # the cluster file this controller wrote itself, if any

    # -- files -----------------------------------------------------------------------------
    @property
    def curve_on(self) -> bool:
        return self.curve if self.curve is not None else not is_loopback(self.ip)

    def _load_reuse(self) -> tuple[str | None, list[int]]:
        if not (self.reuse and self.engine_file.exists() and self.client_file.exists()):
            return None, list(self.ports)
        e, c = connection.read(self.engine_file), connection.read(self.client_file)
        self.log.info("reusing %s from %s", "ports (with a new key)" if self.new_key else "key and ports",
                      self.engine_file)
        ports = [c["ports"]["client"], e["ports"]["engine"], e["ports"]["hb_ping"], e["ports"]["hb_pong"]]
        return (None if self.new_key else e["key"]), ports

    def _curve_keys(self) -> tuple[bytes, bytes] | None:
        """The CurveZMQ key pair: kept (0600, never in the connection files) so a --reuse restart keeps the
        public key engines and clients already hold."""
        if not self.curve_on:
            return None
        if not zmq.has("curve"):
            raise SystemExit("ipphpc controller: this pyzmq/libzmq has no CurveZMQ support; install pyzmq from "
                             "PyPI (its wheels include it) or start with --no-curve")
        path = self.curve_file
        if self.reuse and not self.new_key:
            try:
                public, secret = path.read_bytes().split()
                if zmq.curve_public(secret) == public:
                    return public, secret
            except (OSError, ValueError, zmq.ZMQError):
                pass
        public, secret = zmq.curve_keypair()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(public + b"\n" + secret + b"\n")
        return public, secret

    def _write_files(self, key: str, ports: dict[str, int], curve: bytes | None = None) -> None:
        # the pid file first: whoever sees the connection files may look for it
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, self.pid_file)
        addrs = advertised_addresses(self.ip, self.location)
        base = {"key": key, "signature_scheme": SIGNATURE_SCHEME, "transport": "tcp", "addresses": addrs,
                "bind_ip": self.ip, "location": self.location, "cluster_id": self.cluster_id,
                "version": __version__, "pid": os.getpid(), "host": socket.gethostname(), **self.extra_info}
        if curve is not None:
            base["curve"] = curve.decode()
        if self.ipc_paths:
            base["ipc"] = {"tag": localsock.host_tag(), "paths": self.ipc_paths}
        if self.shm and shm.host_tag():
            base["shm"] = shm.host_tag()  # who shares it shares this host's /dev/shm as this user
        eng = {"ssh": self.enginessh} if self.enginessh else {}
        cli = {"ssh": self.clientssh} if self.clientssh else {}
        connection.write(self.engine_file, {**base, **eng, "ports": {k: ports[k] for k in connection.ENGINE_PORTS},
                                            "heartbeat_period": self.heartbeat_period})
        connection.write(self.client_file, {**base, **cli, "ports": {k: ports[k] for k in connection.CLIENT_PORTS}})
        self.record_file = record.claim(self.pdir, self.cluster_id, self.ip)


    def _remove_files(self) -> None:
        record.release(self.record_file)
        files = [self.pid_file] + ([] if self.reuse else [self.engine_file, self.client_file, self.curve_file])
        for f in files:
            try:
                f.unlink()
            except FileNotFoundError:
                pass

    # -- sockets ---------------------------------------------------------------------------
    def _bind(self, ctx: zmq.Context, ports: list[int], curve: tuple[bytes, bytes] | None = None
              ) -> dict[str, zmq.Socket]:
        host = "*" if is_wildcard(self.ip) else self.ip
        kinds = {"client": zmq.ROUTER, "engine": zmq.ROUTER, "hb_ping": zmq.PUB, "hb_pong": zmq.ROUTER}
        socks, bound = {}, {}
        for i, name in enumerate(PORT_NAMES):
            s = ctx.socket(kinds[name])
            s.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                s.curve_server = True
                s.curve_secretkey = curve[1]
            if name in ("hb_ping", "hb_pong"):
                # heartbeats are tiny: a larger frame (a subscription topic, too) ends its connection, and a
                # flood waits in its own pipe (not smaller: CurveZMQ handshakes pass through this limit)
                s.setsockopt(zmq.MAXMSGSIZE, 1024)
                s.setsockopt(zmq.RCVHWM, 10_000)
            if kinds[name] == zmq.ROUTER:
                s.setsockopt(zmq.SNDHWM, 0)
                if name != "hb_pong":
                    s.setsockopt(zmq.RCVHWM, 0)
                s.setsockopt(zmq.ROUTER_HANDOVER, 1)
            try:
                if i < len(ports) and ports[i]:
                    s.bind(f"tcp://{host}:{ports[i]}")
                    bound[name] = ports[i]
                else:
                    bound[name] = s.bind_to_random_port(f"tcp://{host}")
            except zmq.ZMQError as e:
                raise SystemExit(f"ipphpc controller: cannot listen on {host}:{ports[i] if i < len(ports) else '?'} "
                                 f"for {name}: {e}; choose other --ports or stop the process using them") from None
            socks[name] = s
        self.ports_bound = bound
        self.ipc_paths = self._bind_local(socks) if self.ipc else {}
        return socks

    def _bind_local(self, socks: dict[str, zmq.Socket]) -> dict[str, str]:
        """Each socket also on a Unix socket next to its TCP port, for the peers of this host; {} when this host
        offers no private place for them (they then use TCP)."""
        paths = {name: localsock.socket_path(self.ports_bound[name], self.ip) for name in socks}
        if not localsock.host_tag() or None in paths.values():
            self.log.info("no private directory for Unix sockets (%s): peers on this host use TCP",
                          localsock.socket_dir() or "not private")
            return {}
        swept = localsock.sweep()
        if swept:
            self.log.info("removed %d Unix sockets of controllers that are gone from %s", swept,
                          localsock.socket_dir())
        taken = [p for p in paths.values() if localsock.in_use(p)]
        if taken:
            self.log.warning("another process listens at %s: peers on this host use TCP", taken[0])
            return {}
        try:
            for name, s in socks.items():
                s.bind(f"ipc://{paths[name]}")
                self._ipc_inodes[paths[name]] = os.stat(paths[name]).st_ino
        except (zmq.ZMQError, OSError) as e:
            self.log.warning("cannot listen on Unix sockets (%s): peers on this host use TCP", e)
            return {}
        return paths

    def _remove_local(self) -> None:
        """The Unix sockets this controller made (libzmq leaves them), unless another has taken the path since."""
        for path, ino in self._ipc_inodes.items():
            try:
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass

    # -- task database ---------------------------------------------------------------------
    def _open_db(self, session: Session):
        """The backend and its writer thread (None, None with --db=none); a file that cannot be opened
        stops the controller at once with the path and the reason."""
        try:
            kind = backend_name(self.db_class)
        except ValueError as e:
            raise SystemExit(f"ipphpc controller: --db: {e}") from None
        path = Path(self.db_file).expanduser() if self.db_file else default_path(self.pdir, self.cluster_id, kind)
        try:
            store = open_store(kind, path, self.cluster_id, parent=self)
        except Exception as e:  # noqa: BLE001 - any failure to open is the user's to fix: say which file and why
            where = f"--db-file={path}" if kind in ("sqlite", "hdf5") else f"the {kind} server"
            raise SystemExit(f"ipphpc controller: cannot open the {kind} task database {where}: "
                             f"{type(e).__name__}: {e}") from None
        if store is None:
            return None, None
        if store.persistent:
            n = mark_lost(store, session)
            self.log.info("task database: %s at %s%s", kind, path if kind != "mongodb" else "the server",
                          f"; {n} tasks of an earlier controller were in flight and are marked lost" if n else "")
        return store, Recorder(store, self.log)

    # -- run -------------------------------------------------------------------------------
    async def run(self) -> None:
        key, ports = self._load_reuse()
        key = key or new_key()
        session = Session(key)
        store, recorder = self._open_db(session)
        curve = self._curve_keys()
        ctx = zmq.Context()
        socks = self._bind(ctx, ports, curve)
        shm_prefix = shm.prefix(key) if self.shm and shm.host_tag() else None
        if shm_prefix and shm.sweep(shm_prefix):  # left by an earlier life of this cluster, killed
            self.log.info("removed shared-memory frames an earlier controller of this cluster left in %s", shm.SHM_DIR)
        hub = Hub(session, socks, self, self.log, store, recorder, shm_prefix)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before the files: whoever reads them may stop us at once
            try:
                loop.add_signal_handler(sig, hub.request_stop)
            except (NotImplementedError, RuntimeError):
                pass
        self._write_files(key, self.ports_bound, curve[0] if curve else None)
        self.log.info("controller %s (ipphpc %s) listening on %s ports %s%s; files %s", self.cluster_id or "-",
                      __version__, self.ip, self.ports_bound, ", CurveZMQ-encrypted" if curve else "",
                      self.engine_file.parent)
        try:
            await hub.serve()
        finally:
            self._remove_files()
            for s in socks.values():
                s.close(0)
            ctx.term()
            self._remove_local()
            if recorder is not None:
                recorder.close()
            self.log.info("controller stopped")
