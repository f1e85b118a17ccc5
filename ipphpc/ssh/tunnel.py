"""SSH tunnels from this host to a controller that only an ssh server can reach.

One `ssh -N -L ...` process forwards every port a component needs (an engine: engine,
hb_ping, hb_pong; a client: client), so one login and one TCP connection serve them all.
ipphpc starts the process in a session of its own, owns it and kills its process group on
`close()` or at interpreter exit; a process that forks after opening a tunnel leaves it to
its owner.

Key login is tried first (`BatchMode=yes`, nothing can hang on a prompt). Only when the
server refuses it is ssh run again under a pseudo-terminal (pexpect) to answer the
first-contact host-key question and a password or passphrase prompt.
"""
from __future__ import annotations

import atexit
import collections
import ctypes
import getpass
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

from ..error import IpphpcError

PasswordSource = Union[str, Callable[[str], str], None]
PASSWORD_ENV = "IPPHPC_SSH_PASSWORD"
SSH_ENV = "IPPHPC_SSH"

# stderr of a BatchMode attempt that a prompt-answering retry may fix
_NEEDS_PROMPT = re.compile(r"Permission denied|Host key verification failed|[Pp]assword|[Pp]assphrase")
# a local port taken between choosing it and ssh binding it
_PORT_TAKEN = re.compile(r"Address already in use|cannot listen to port|Could not request local forwarding")
_HOSTKEY_PROMPT = r"continue connecting \(yes/no[^)]*\)\?"
_SECRET_PROMPT = r"[Pp]assword:|[Pp]assphrase for key[^:]*:|[Pp]assword for [^:]*:"


class SSHTunnelError(IpphpcError, ConnectionError):
    """The tunnel could not be set up; the message quotes ssh and says what to try."""


@dataclass(frozen=True)
class SSHServer:
    """`[user@]host[:port]`, as the --ssh flag and connection files write it."""

    host: str
    user: str = ""
    port: int | None = None

    @classmethod
    def parse(cls, spec: "str | SSHServer") -> "SSHServer":
        if isinstance(spec, SSHServer):
            return spec
        s = spec.strip()
        if s.startswith("ssh://"):
            s = s[6:].rstrip("/")
        user, _, hostport = s.rpartition("@")
        port: int | None = None
        host = hostport
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], spec)
        elif hostport.count(":") == 1:
            host, p = hostport.split(":")
            port = _port(p, spec)
        if not host:
            raise ValueError(f"no host in ssh server {spec!r}; write [user@]host[:port]")
        return cls(host, user, port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def args(self) -> list[str]:
        return ["-p", str(self.port)] if self.port else []

    def __str__(self) -> str:
        host = _bracket(self.host) if self.port else self.host
        s = f"{self.user}@{host}" if self.user else host
        return f"{s}:{self.port}" if self.port else s


def _port(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad port in ssh server {spec!r}; write [user@]host[:port]") from None


def ssh_command(ssh_cmd: Sequence[str] | str | None = None) -> list[str]:
    """The ssh program and fixed options: given, else $IPPHPC_SSH (e.g. 'ssh -F ~/.ssh/hpc'), else `ssh`."""
    if ssh_cmd is None:
        ssh_cmd = os.environ.get(SSH_ENV) or "ssh"
    return shlex.split(ssh_cmd) if isinstance(ssh_cmd, str) else list(ssh_cmd)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _far_end(port: int, wait: float) -> bool | None:
    """Through the tunnel, does the far end answer? True: it sent bytes (zmq greets at once);
    False: ssh closed the connection (the server could not connect); None: no word either way."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(wait)
            return bool(s.recv(1))
    except socket.timeout:
        return None
    except OSError:
        return False


_libc: Any = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies (no orphaned tunnel)."""
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _resolve_password(source: PasswordSource, prompt: str, server: SSHServer) -> str:
    if callable(source):
        return source(prompt)
    if isinstance(source, str):
        return source
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return env
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"{prompt.strip()} ")
    raise SSHTunnelError(
        f"ssh server {server} asks for a password ({prompt.strip()!r}) and none is available: set up key login "
        f"(ssh-keygen; ssh-copy-id {server.destination}) and pass the key (--sshkey / sshkey=), or give the "
        f"password through ${PASSWORD_ENV} or password=")


class Tunnel:
    """One ssh process forwarding local loopback ports to (host, port) pairs seen from `server`.

    `timeout` bounds the whole set-up (login, prompts, far end answering). `prompts=False` never
    falls back to answering prompts; `accept_new_host_key=False` refuses a host seen for the first
    time instead of trusting it; `probe=False` skips checking that the far end answers (for
    services that do not speak first, unlike zmq). `password` is a string or a callback given the
    prompt; without one, $IPPHPC_SSH_PASSWORD, then a terminal prompt.
    """

    def __init__(self, server: "str | SSHServer", forwards: Sequence[tuple[str, int]], keyfile: str = "",
                 password: PasswordSource = None, timeout: float = 20.0, ssh_cmd: Sequence[str] | str | None = None,
                 ssh_args: Sequence[str] = (), prompts: bool = True, accept_new_host_key: bool = True,
                 probe: bool = True):
        self.server = SSHServer.parse(server)
        self.forwards = [(str(h), int(p)) for h, p in forwards]
        self.keyfile = os.path.expanduser(keyfile) if keyfile else ""
        self.password = password
        self.timeout = timeout
        self.ssh_cmd = ssh_command(ssh_cmd)
        self.ssh_args = list(ssh_args)
        self.prompts = prompts
        self.accept_new_host_key = accept_new_host_key
        self.probe = probe
        self.local_ports: list[int] = []
        self.proc: subprocess.Popen | None = None
        self.child: Any = None  # pexpect.spawn when prompts had to be answered
        self.setup_time: float | None = None
        self.interactive = False
        self._owner = os.getpid()
        self._errfile: Any = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self.opened = 0  # how many times ssh came up: a change means connections through it were remade
        self._closing = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- command -----------------------------------------------------------------------------
    def command(self, batch: bool) -> list[str]:
        opts = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", f"BatchMode={'yes' if batch else 'no'}",
                "-o", f"ConnectTimeout={max(1, int(self.timeout))}"]
        if self.keyfile:
            opts += ["-i", self.keyfile]
        for lp, (host, rp) in zip(self.local_ports, self.forwards):
            opts += ["-L", f"127.0.0.1:{lp}:{_bracket(host)}:{rp}"]
        return [*self.ssh_cmd, *opts, *self.server.args(), *self.ssh_args, self.server.destination]

    @property
    def pid(self) -> int | None:
        if self.child is not None:
            return self.child.pid
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        if self.child is not None:
            return self.child.isalive()
        return self.proc is not None and self.proc.poll() is None

    def local_port(self, host: str, port: int) -> int:
        return self.local_ports[self.forwards.index((host, port))]

    # -- open --------------------------------------------------------------------------------
    def open(self) -> "Tunnel":
        """Start ssh and return once every local port accepts connections (or raise SSHTunnelError)."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        for attempt in range(3):
            self.local_ports = free_ports(len(self.forwards))
            outcome = self._start_batch(deadline)
            if outcome == "ready":
                break
            if outcome == "port-taken" and attempt < 2:
                continue
            if outcome == "needs-prompt" and self.prompts:
                self._start_interactive(deadline)
                break
            raise self._error(self._stderr(), "")
        self.setup_time = time.monotonic() - t0
        self.opened += 1
        _register(self)
        return self

    def reopen(self) -> "Tunnel":
        """Start ssh again on the same local ports, which the sockets using the tunnel keep connecting to,
        after its process died. Key logins only: a tunnel that needed a password is not reopened unattended."""
        if self.interactive:
            raise SSHTunnelError(f"the SSH tunnel through {self.server} needed a password: it is not reopened "
                                 f"unattended; use a key (sshkey=) for tunnels that must survive")
        self._kill()
        if self._start_batch(time.monotonic() + self.timeout) != "ready":
            raise self._error(self._stderr(), "reopening the tunnel")
        self.opened += 1
        return self

    def keep_open(self, log: logging.Logger, retry: float = 2.0) -> None:
        """Reopen the tunnel whenever ssh dies (a dropped network, a killed process), from a thread that lives
        as long as the tunnel, so it comes back within a second even while its owner is busy running a task."""
        if self.interactive:
            log.warning("the SSH tunnel through %s needed a password: if it dies it is not reopened; use a key "
                        "(sshkey=) for tunnels that must survive", self.server)
            return
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep, args=(log, retry), name="ipphpc-tunnel", daemon=True)
            self._keeper.start()

    def _keep(self, log: logging.Logger, retry: float) -> None:
        while not self._closing.is_set():
            proc = self.proc
            if proc is not None:
                proc.wait()
            if self._closing.is_set():
                return
            try:
                self.reopen()
            except SSHTunnelError as e:
                log.error("the ssh tunnel to the controller died and could not be reopened (trying again in %g s): "
                          "%s", retry, e)
                self._closing.wait(retry)
                continue
            if self._closing.is_set():  # closed while it was reopening
                self._kill()
                return
            log.warning("the ssh tunnel to the controller died; reopened it (ssh pid %s)", self.pid)

    def _start_batch(self, deadline: float) -> str:
        global _libc
        if self._errfile is not None:
            self._errfile.close()
        self._errfile = tempfile.TemporaryFile()  # noqa: SIM115 - ssh writes to it; closed above or in close()
        # the starting thread's death signals ssh: only threads that live as long as the tunnel may ask for it
        in_main = threading.current_thread() in (threading.main_thread(), self._keeper)
        if in_main and _libc is None and sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
            except OSError:
                pass
        try:
            self.proc = subprocess.Popen(self.command(batch=True), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self._errfile, start_new_session=True,
                                         close_fds=True, preexec_fn=_die_with_parent if in_main else None)
        except OSError as e:
            raise SSHTunnelError(f"cannot run {self.ssh_cmd[0]!r} to open an SSH tunnel through {self.server}: "
                                 f"{e}; install an OpenSSH client or set ${SSH_ENV}") from None
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc.wait()
                err = self._stderr()
                self.proc = None
                if _PORT_TAKEN.search(err):
                    return "port-taken"
                if _NEEDS_PROMPT.search(err):
                    return "needs-prompt"
                raise self._error(err, f"ssh exited with status {code}")
            if self._ready(deadline):
                return "ready"
            if time.monotonic() > deadline:
                err = self._stderr()
                self._kill()
                raise self._error(err, f"the tunnel did not come up within {self.timeout:g} s")
            time.sleep(0.02)

    def _start_interactive(self, deadline: float) -> None:
        import pexpect  # only when a prompt must be answered

        self.interactive = True
        cmd = self.command(batch=False)
        self.child = child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", codec_errors="replace", timeout=None,
                                           echo=False)
        answered_secret = False
        self._output.clear()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pending = child.before if isinstance(child.before, str) else ""
                self._kill()
                raise self._error(self._stderr() + pending, f"the tunnel did not come up within {self.timeout:g} s")
            i = child.expect([_HOSTKEY_PROMPT, _SECRET_PROMPT, pexpect.EOF, pexpect.TIMEOUT], timeout=min(0.1, left))
            if i != 3:  # on a timeout the unmatched output stays in pexpect's buffer
                self._output.append((child.before or "") + (child.after if isinstance(child.after, str) else ""))
            if i == 0:
                if not self.accept_new_host_key:
                    self._kill()
                    raise self._error(self._stderr(),
                                      "the server's host key is not known and accept_new_host_key is off")
                child.sendline("yes")
            elif i == 1:
                if answered_secret:
                    self._kill()
                    raise self._error(self._stderr(), "the password was rejected")
                prompt = ((child.before or "").splitlines() or [""])[-1] + child.after
                try:
                    secret = _resolve_password(self.password, prompt, self.server)
                except BaseException:
                    self._kill()
                    raise
                child.sendline(secret)
                answered_secret = True
            elif i == 2:
                child.close()
                code = child.exitstatus
                self.child = None
                raise self._error(self._stderr(), f"ssh exited with status {code}")
            elif self._ready(deadline):
                threading.Thread(target=self._drain, name="ipphpc-ssh-drain", daemon=True).start()
                return

    def _drain(self) -> None:
        """Keep reading the pty, so ssh never blocks writing its messages to a full terminal."""
        child = self.child
        while child is not None and child.isalive():
            try:
                self._output.append(child.read_nonblocking(4096, timeout=1.0))
            except Exception as e:  # noqa: BLE001 - pexpect's TIMEOUT means nothing to read; EOF/OSError: gone
                if type(e).__name__ != "TIMEOUT":
                    return

    def _ready(self, deadline: float) -> bool:
        if not all(_accepts(p) for p in self.local_ports):
            return False
        if not self.probe:
            return True
        answer = _far_end(self.local_ports[0], min(2.0, max(0.2, deadline - time.monotonic())))
        if answer is False:
            # the server could not connect onwards (yet): the controller may be starting; retry until the deadline
            if time.monotonic() > deadline - 0.2:
                host, port = self.forwards[0]
                err = self._stderr()
                self._kill()
                raise self._error(err, f"ssh server {self.server} cannot connect to {host}:{port} (the connection "
                                       f"through the tunnel was closed at once); is the controller running, and is "
                                       f"{host} its address as seen from {self.server.host}? Set it with "
                                       f"`ipphpc controller --location=...`")
            time.sleep(0.1)
            return False
        return True

    # -- errors and output -------------------------------------------------------------------
    def _stderr(self) -> str:
        if self.child is not None or self.interactive:
            return "".join(self._output)
        if self._errfile is None:
            return ""
        try:
            self._errfile.seek(0)
            return self._errfile.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def _error(self, err: str, why: str) -> SSHTunnelError:
        quoted = "\n".join("    " + line for line in err.strip().splitlines()[-15:]) or "    (ssh printed nothing)"
        fw = ", ".join(f"{h}:{p}" for h, p in self.forwards)
        hint = ""
        if "Permission denied" in err:
            hint = (f" Key login was refused: pass the key (--sshkey / sshkey=), add it to the server's "
                    f"authorized_keys (ssh-copy-id {self.server.destination}), or give a password.")
        elif "Could not resolve hostname" in err or "Name or service not known" in err:
            hint = f" {self.server.host!r} does not resolve from this host; use its address or an ~/.ssh/config alias."
        elif "Connection refused" in err or "timed out" in err or "No route to host" in err:
            hint = f" Is sshd running on {self.server} and reachable from this host?"
        why = f": {why}" if why else ""
        return SSHTunnelError(f"cannot open an SSH tunnel through {self.server} to {fw}{why}.{hint}\n"
                              f"command: {shlex.join(self.command(batch=not self.interactive))}\nssh said:\n{quoted}")

    # -- close -------------------------------------------------------------------------------
    def _kill(self, grace: float = 2.0) -> None:
        pid = self.pid
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            end = time.monotonic() + wait
            while self.alive and time.monotonic() < end:
                time.sleep(0.02)
            if not self.alive:
                break
        if self.child is not None:
            try:
                self.child.close(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.child = None
        if self.proc is not None:
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None

    def close(self) -> None:
        """Kill the ssh process group and reap it; a no-op in a forked child (the tunnel is its parent's)."""
        if os.getpid() != self._owner:
            return
        self._closing.set()
        _unregister(self)
        self._kill()
        if self._errfile is not None:
            self._errfile.close()
            self._errfile = None

    def __enter__(self) -> "Tunnel":
        return self if self.setup_time is not None else self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        fw = ", ".join(f"{lp}->{h}:{p}" for lp, (h, p) in zip(self.local_ports, self.forwards))
        return f"<Tunnel via {self.server} pid={self.pid} [{fw}]>"


_open: set[Tunnel] = set()
_open_lock = threading.Lock()
_atexit_registered = False


def _register(t: Tunnel) -> None:
    global _atexit_registered
    with _open_lock:
        _open.add(t)
        if not _atexit_registered:
            atexit.register(_close_all)
            _atexit_registered = True


def _unregister(t: Tunnel) -> None:
    with _open_lock:
        _open.discard(t)


def _close_all() -> None:
    for t in list(_open):
        t.close()


def open_tunnel(server: "str | SSHServer", forwards: Sequence[tuple[str, int]], **kwargs: Any) -> Tunnel:
    """Open a tunnel; see `Tunnel` for the options."""
    return Tunnel(server, forwards, **kwargs).open()


def tunnel_info(info: dict[str, Any], port_names: Sequence[str], server: "str | SSHServer", keyfile: str = "",
                password: PasswordSource = None, timeout: float = 20.0, **kwargs: Any) -> tuple[Tunnel, dict[str, Any]]:
    """Tunnel the connection file's ports through `server`; returns the tunnel and a connection
    info that points at its local ends (so the usual connect code runs unchanged).

    The far end is the file's first address (the controller's --location when given), as the
    ssh server sees it: that host, not this one, has to be able to reach it.
    """
    target = info["addresses"][0]
    forwards = [(target, int(info["ports"][p])) for p in port_names]
    t = open_tunnel(server, forwards, keyfile=keyfile, password=password, timeout=timeout, **kwargs)
    local = {**info, "addresses": ["127.0.0.1"],
             "ports": {**info["ports"], **{p: lp for p, lp in zip(port_names, t.local_ports)}},
             "tunnel": {"server": str(t.server), "to": target, "pid": t.pid}}
    local.pop("ipc", None)  # through the tunnel, even to a controller on this host
    return t, local
