"""Launchers that start engines and controllers on other hosts over ssh.

Each remote process group is started as

    ssh host 'exec sh -c "printf <marker> pid pgid; cd DIR && exec python -m ipphpc engine -n k ..."'

sshd makes the remote shell a session leader, so its pid is the process group of every engine
forked there. The marker line (unique per set, in the shared log) carries that pgid back, and
`stop()` runs `kill -TERM -<pgid>` on the remote host (then KILL after a grace period) before
reaping the local ssh processes: killing only the local ssh would leave the engines running,
since without a terminal nothing tells them their ssh is gone.

Forms of `SSHEngineSetLauncher.engines`, as IPython Parallel documents them:

    {'host1': 2,                                   # 2 engines with the default engine_args
     'user@host2:2222': (4, ['--work-dir=/tmp']),  # engine_args for this host
     'host3': {'n': 2, 'engine_args': [...], 'engine_cmd': ['python', '-m', 'ipphpc', 'engine'],
               'ssh_args': ['-J', 'login']}}       # ssh_args: an ipphpc extension

On a shared filesystem (the default) connection files need no copying; otherwise list them in
`to_send` (engines: copied before they start) and `to_fetch` (controller: copied back once
written), or set `shared_fs = False` for the usual connection files.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from traitlets import Bool, Dict, Float, List, Unicode, Union
from traitlets.config import Config, LoggingConfigurable

from ..config import read_before
from ..ssh.tunnel import SSHServer, ssh_command
from .processes import HUGEPAGE_SH, pid_alive, spawn, terminate_groups

MARKER = "ipphpc-remote"
_MARKER_RE = re.compile(rf"^{MARKER} (\S+) pid=(\d+) pgid=(\d*)", re.M)


class SSHLaunchError(RuntimeError):
    """A remote process group could not be started; the message quotes ssh and the remote output."""


@dataclass
class RemoteSet:
    """One `ssh host ...` process and the remote process group it started."""

    host: str
    n: int
    argv: list[str]
    ssh_args: list[str] = field(default_factory=list)
    token: str = ""
    pid: int | None = None  # the local ssh
    remote_pid: int | None = None
    remote_pgid: int | None = None
    returncode: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_command(cmd: Sequence[str], sub: str) -> tuple[list[str], list[str]]:
    """`[python, -m, ipphpc, engine, --profile-dir, X]` -> (program part, arguments) at `sub`."""
    for i, a in enumerate(cmd):
        if a == sub and i > 0 and (cmd[i - 1] == "ipphpc" or cmd[i - 1].endswith("/ipphpc")):
            return list(cmd[: i + 1]), list(cmd[i + 1:])
    return list(cmd), []


class SSHLauncherBase(LoggingConfigurable):
    """What every ssh launcher shares: how to run ssh and scp, and how to start and kill remote groups."""

    kind = "ssh-base"
    configurable = True  # takes config= / parent=, so `c.SSHEngineSetLauncher.engines` reaches it

    ssh_cmd = List(Unicode(), [], config=True, help="ssh program and fixed options; default: $IPPHPC_SSH or 'ssh'.")
    ssh_args = List(Unicode(), ["-o", "BatchMode=yes"], config=True,
                    help="Extra ssh options for every host (BatchMode: a background start must never prompt).")
    scp_cmd = List(Unicode(), ["scp"], config=True, help="scp program and fixed options.")
    user = Unicode("", config=True, help="Remote user, for hosts given without user@.")
    sshkey = Unicode("", config=True, help="Private key file for ssh and scp.")
    remote_env = Dict(Unicode(), {}, config=True, help="Environment variables exported remotely before the command "
                      "(sshd starts commands with a bare environment).")
    work_dir = Unicode("", config=True, help="Remote directory to cd into; default: this directory if it exists "
                       "there (shared filesystem), else the remote home.")
    to_send = List(Union([Unicode(), List(Unicode(), minlen=2, maxlen=2)]), [], config=True,
                   help="Files copied to each host before starting: a path (the same on both sides) or "
                   "[local, remote].")
    to_fetch = List(Union([Unicode(), List(Unicode(), minlen=2, maxlen=2)]), [], config=True,
                    help="Files copied back once the remote process wrote them: a path or [remote, local].")
    shared_fs = Bool(True, config=True, help="Hosts share this filesystem; when False, connection files are "
                     "sent and fetched by default.")
    start_timeout = Float(30.0, config=True, help="Seconds to wait for each remote group to report its pid.")
    file_timeout = Float(60.0, config=True, help="Seconds to wait for files to send or fetch to appear.")

    @classmethod
    def section_names(cls) -> list[str]:
        """IPython Parallel's shared section, c.SSHLauncher, is read too, just before this class's own."""
        return read_before(super().section_names(), "SSHLauncherBase", "SSHLauncher")

    def __init__(self, role: str, n: int = 1, config: Config | None = None, parent: Any = None, **kwargs: Any):
        super().__init__(config=config, parent=parent, **kwargs)
        self.role = role
        self.n = n
        self.sets: list[RemoteSet] = []
        self.cmd: list[str] = []
        self.log_path: str = ""
        self._procs: dict[int, subprocess.Popen] = {}

    # -- ssh -----------------------------------------------------------------------------------
    def _server(self, host: str) -> SSHServer:
        s = SSHServer.parse(host)
        return s if s.user or not self.user else SSHServer(s.host, self.user, s.port)

    def ssh_argv(self, host: str, extra: Sequence[str] = ()) -> list[str]:
        s = self._server(host)
        key = ["-i", os.path.expanduser(self.sshkey)] if self.sshkey else []
        return [*ssh_command(self.ssh_cmd or None), *self.ssh_args, *key, *s.args(), *extra, "--", s.destination]

    def scp_argv(self, host: str, extra: Sequence[str] = ()) -> list[str]:
        s = self._server(host)
        key = ["-i", os.path.expanduser(self.sshkey)] if self.sshkey else []
        # scp takes ssh's -o/-J/-F/-i options, not the others
        passthrough: list[str] = []
        opts = [*self.ssh_args, *extra]
        for i, a in enumerate(opts[:-1]):
            if a in ("-o", "-J", "-F", "-i"):
                passthrough += [a, opts[i + 1]]
        return [*self.scp_cmd, "-q", "-B", *passthrough, *key, *(["-P", str(s.port)] if s.port else [])]

    def run_remote(self, host: str, script: str, extra: Sequence[str] = (), timeout: float = 30.0
                   ) -> subprocess.CompletedProcess:
        """Run a short shell command on `host` and wait for it."""
        argv = [*self.ssh_argv(host, extra), f"exec sh -c {shlex.quote(script)}"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def remote_script(self, token: str, argv: Sequence[str]) -> str:
        """Report pid and process group, then become the remote command (same pid, same group)."""
        lines = [f"printf '{MARKER} %s pid=%s pgid=%s\\n' {token} \"$$\" "
                 f"\"$(cut -d' ' -f5 /proc/$$/stat 2>/dev/null || ps -o pgid= -p $$ | tr -d ' ')\""]
        if self.role == "engines":
            lines.append(HUGEPAGE_SH)
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.remote_env.items()]
        if self.work_dir:
            cd = f"cd {shlex.quote(self.work_dir)}"
        else:
            cd = f"{{ cd {shlex.quote(os.getcwd())} 2>/dev/null || cd; }}"
        lines.append(f"{cd} && exec {shlex.join(argv)}")
        return "; ".join(lines)

    # -- files ---------------------------------------------------------------------------------
    @staticmethod
    def _pairs(items: Sequence[Any]) -> list[tuple[str, str]]:
        return [(i, i) if isinstance(i, str) else (i[0], i[1]) for i in items]

    def _wait_local(self, paths: Sequence[str]) -> None:
        deadline = time.monotonic() + self.file_timeout
        missing = [p for p in paths if not os.path.exists(p)]
        while missing:
            if time.monotonic() > deadline:
                raise SSHLaunchError(f"files to send did not appear within {self.file_timeout:g} s: "
                                     f"{', '.join(missing)}")
            time.sleep(0.05)
            missing = [p for p in missing if not os.path.exists(p)]

    def send_files(self, host: str, pairs: Sequence[tuple[str, str]], extra: Sequence[str] = ()) -> None:
        """scp local files to `host` (creating their directories there, mode 0700)."""
        if not pairs:
            return
        self._wait_local([lp for lp, _ in pairs])
        dirs = sorted({os.path.dirname(rp) or "." for _, rp in pairs})
        r = self.run_remote(host, f"mkdir -p -m 0700 -- {shlex.join(dirs)}", extra)
        if r.returncode != 0:
            raise SSHLaunchError(f"cannot create {', '.join(dirs)} on {host}: {r.stderr.strip()}")
        dest = self._server(host)
        for lp, rp in pairs:
            r = subprocess.run([*self.scp_argv(host, extra), lp, f"{dest.destination}:{rp}"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise SSHLaunchError(f"scp {lp} -> {host}:{rp} failed: {r.stderr.strip()}")

    def fetch_files(self, host: str, pairs: Sequence[tuple[str, str]], extra: Sequence[str] = ()) -> None:
        """Wait until the remote files exist and are not empty, then scp them here."""
        if not pairs:
            return
        test = " && ".join(f"test -s {shlex.quote(rp)}" for rp, _ in pairs)
        deadline = time.monotonic() + self.file_timeout
        while True:
            r = self.run_remote(host, test, extra)
            if r.returncode == 0:
                break
            if r.returncode == 255:
                raise SSHLaunchError(f"ssh {host} failed while waiting for files to fetch: {r.stderr.strip()}")
            if time.monotonic() > deadline:
                raise SSHLaunchError(f"files to fetch did not appear on {host} within {self.file_timeout:g} s: "
                                     f"{', '.join(rp for rp, _ in pairs)}")
            time.sleep(0.2)
        src = self._server(host)
        for rp, lp in pairs:
            Path(lp).parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([*self.scp_argv(host, extra), f"{src.destination}:{rp}", lp],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise SSHLaunchError(f"scp {host}:{rp} -> {lp} failed: {r.stderr.strip()}")

    @staticmethod
    def _connection_files(args: Sequence[str], roles: Sequence[str]) -> list[str]:
        """The connection files named by `--profile-dir`/`--cluster-id` in a command line."""
        from .. import paths

        def opt(name: str) -> str | None:
            for i, a in enumerate(args):
                if a == name and i + 1 < len(args):
                    return args[i + 1]
                if a.startswith(name + "="):
                    return a.split("=", 1)[1]
            return None
        pdir = Path(opt("--profile-dir") or paths.profile_dir(opt("--profile") or "default", create=False))
        return [str(paths.connection_file(pdir, r, opt("--cluster-id") or "")) for r in roles]

    # -- start ---------------------------------------------------------------------------------
    def _spawn_sets(self, log_path: Path) -> None:
        """Start every set's ssh at once, then wait for each remote group to report its pid."""
        self.log_path = str(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        offset = log_path.stat().st_size
        base = os.urandom(4).hex()
        for i, rs in enumerate(self.sets):
            rs.token = f"{base}-{i}"
            script = self.remote_script(rs.token, rs.argv)
            argv = [*self.ssh_argv(rs.host, rs.ssh_args), f"exec sh -c {shlex.quote(script)}"]
            p = spawn(argv, log_path)
            rs.pid = p.pid
            self._procs[p.pid] = p
        try:
            self._wait_markers(log_path, offset)
        except BaseException:
            self.stop(grace=2.0)
            raise

    def _wait_markers(self, log_path: Path, offset: int) -> None:
        """Wait until every set reported its remote pid or its ssh ended; one failed host fails the start.

        Sets that are still coming up are waited for even after another failed, so that stop()
        knows their remote groups and can kill them.
        """
        deadline = time.monotonic() + self.start_timeout
        waiting = {rs.token: rs for rs in self.sets}
        failed: list[str] = []
        text = ""
        while waiting:
            with open(log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            for tok, pid, pgid in _MARKER_RE.findall(text):
                rs = waiting.pop(tok, None)
                if rs is not None:
                    rs.remote_pid = int(pid)
                    rs.remote_pgid = int(pgid) if pgid else None
            for tok, rs in list(waiting.items()):
                p = self._procs.get(rs.pid or -1)
                if p is not None and p.poll() is not None:
                    del waiting[tok]
                    failed.append(f"ssh to {rs.host} exited with status {p.returncode} before the remote command "
                                  f"started; command: {shlex.join(self.ssh_argv(rs.host, rs.ssh_args))} ...")
            if waiting and time.monotonic() > deadline:
                failed.append(f"no word from {', '.join(rs.host for rs in waiting.values())} within "
                              f"{self.start_timeout:g} s of starting ssh")
                break
            if waiting:
                time.sleep(0.03)
        if failed:
            raise SSHLaunchError("\n".join(failed) + f"\noutput ({log_path}):\n{_tail(text)}")

    # -- state ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.sets[0].pid if self.sets else None

    def _returncode(self, rs: RemoteSet) -> int | None:
        p = self._procs.get(rs.pid or -1)
        if p is not None:
            rs.returncode = p.poll()
        return rs.returncode

    @property
    def running(self) -> bool:
        """Any local ssh alive (it lives as long as its remote command)."""
        for rs in self.sets:
            p = self._procs.get(rs.pid or -1)
            if p is not None:
                if p.poll() is None:
                    return True
            elif rs.pid is not None and pid_alive(rs.pid):
                return True
        return False

    @property
    def exit_code(self) -> int | None:
        """The first failure as soon as one set failed; 0 once all ended well; None while running."""
        codes = [self._returncode(rs) for rs in self.sets]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            return bad[0]
        if codes and all(c == 0 for c in codes):
            return 0
        return None

    # -- stop ----------------------------------------------------------------------------------
    def _kill_remote(self, rs: RemoteSet, grace: float) -> None:
        if rs.remote_pid is None:
            return
        # the whole group when the remote shell led it (sshd makes it a session leader), else the process
        target = f"-{rs.remote_pgid}" if rs.remote_pgid == rs.remote_pid else str(rs.remote_pid)
        steps = max(1, int(grace * 10))
        # no `--`: dash's kill takes `-TERM -<pgid>` but not `-- -<pgid>`
        script = (f"kill -TERM {target} 2>/dev/null || exit 0; i=0; "
                  f"while kill -0 {target} 2>/dev/null && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done; "
                  f"kill -KILL {target} 2>/dev/null; exit 0")
        try:
            r = self.run_remote(rs.host, script, rs.ssh_args, timeout=grace + 30)
            if r.returncode != 0:
                self.log.warning("could not stop the engines on %s (pgid %s): %s", rs.host, rs.remote_pgid,
                                 r.stderr.strip())
        except subprocess.TimeoutExpired:
            self.log.warning("stopping the engines on %s timed out", rs.host)

    def stop(self, grace: float = 5.0) -> None:
        """Kill every remote group (all hosts at once), then the local ssh processes."""
        # a set whose ssh ended with the remote command's own status is gone; 255 (ssh failed) or a
        # signal (ssh killed) says nothing about the remote engines, so they are killed too
        live = [rs for rs in self.sets if rs.remote_pid is not None
                and not (self._returncode(rs) is not None and 0 <= rs.returncode < 255)]
        if live:
            with ThreadPoolExecutor(min(16, len(live))) as pool:
                list(pool.map(lambda rs: self._kill_remote(rs, grace), live))
        pids = [rs.pid for rs in self.sets if rs.pid is not None]
        procs = list(self._procs.values())
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            for p in procs:
                p.poll()
            time.sleep(0.03)
        terminate_groups(pids, 2.0, procs)
        for rs in self.sets:
            self._returncode(rs)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "role": self.role, "n": self.n, "cmd": self.cmd, "log_path": self.log_path,
                "sets": [rs.to_dict() for rs in self.sets],
                "ssh": {"ssh_cmd": list(self.ssh_cmd), "ssh_args": list(self.ssh_args), "user": self.user,
                        "sshkey": self.sshkey}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SSHLauncherBase":
        self = cls(d["role"], d.get("n", 1), **d.get("ssh", {}))
        self.cmd = d.get("cmd", [])
        self.log_path = d.get("log_path", "")
        self.sets = [RemoteSet(**s) for s in d.get("sets", [])]
        return self


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + x for x in text.strip().splitlines()[-lines:]) or "    (nothing)"


class SSHEngineSetLauncher(SSHLauncherBase):
    """Engines on the hosts of `engines`: per host one ssh running `ipphpc engine -n k` there."""

    kind = "ssh"

    engines = Dict(config=True, help="host -> n | (n, engine_args) | {'n', 'engine_args', 'engine_cmd', "
                   "'ssh_args'}; hosts may be written user@host:port.")
    engine_args = List(Unicode(), [], config=True, help="`ipphpc engine` arguments for hosts that give none.")
    engine_cmd = List(Unicode(), [], config=True, help="Remote command for one engine (e.g. ['python3', '-m', "
                      "'ipphpc', 'engine']); default: this interpreter's, right on a shared filesystem.")

    def __init__(self, role: str = "engines", n: int = 1, config: Config | None = None, parent: Any = None,
                 **kwargs: Any):
        super().__init__(role, n, config=config, parent=parent, **kwargs)
        if self.engines:
            self.n = sum(h["n"] for h in self.host_specs().values())

    def host_specs(self) -> dict[str, dict[str, Any]]:
        """Every form of `engines` as {host: {'n', 'engine_args', 'engine_cmd', 'ssh_args'}}."""
        out: dict[str, dict[str, Any]] = {}
        for host, spec in self.engines.items():
            d: dict[str, Any] = {"engine_args": None, "engine_cmd": None, "ssh_args": []}
            if isinstance(spec, int):
                d["n"] = spec
            elif isinstance(spec, (tuple, list)) and len(spec) == 2:
                d["n"], d["engine_args"] = int(spec[0]), list(spec[1])
            elif isinstance(spec, dict):
                unknown = set(spec) - {"n", "engine_args", "engine_cmd", "ssh_args"}
                if unknown:
                    raise ValueError(f"engines[{host!r}]: unknown keys {sorted(unknown)}; "
                                     f"use n, engine_args, engine_cmd, ssh_args")
                d.update({k: v for k, v in spec.items() if v is not None})
                d["n"] = int(spec.get("n", 1))
            else:
                raise ValueError(f"engines[{host!r}] = {spec!r}: write n, (n, engine_args) or a dict with 'n'")
            if d["n"] < 1:
                raise ValueError(f"engines[{host!r}]: n must be at least 1")
            out[host] = d
        return out

    def _argv(self, cmd: Sequence[str], spec: dict[str, Any]) -> list[str]:
        prog, args = split_command(cmd, "engine")
        prog = list(spec["engine_cmd"] or self.engine_cmd or prog)
        extra = self.engine_args if spec["engine_args"] is None else spec["engine_args"]
        return [*prog, *args, *extra, *(["-n", str(spec["n"])] if spec["n"] > 1 else [])]

    def start(self, cmd: list[str], log_path: Path) -> None:
        """`cmd` starts one local engine; each host runs its program part and arguments with `-n k`."""
        specs = self.host_specs()
        if not specs:
            raise SSHLaunchError("no hosts to start engines on: set SSHEngineSetLauncher.engines, e.g. "
                                 "{'node1': 4, 'node2': 4}")
        self.cmd = list(cmd)
        self.sets = [RemoteSet(host, s["n"], self._argv(cmd, s), list(s["ssh_args"])) for host, s in specs.items()]
        sends = self._pairs(self.to_send)
        if not sends and not self.shared_fs:
            sends = self._pairs(self._connection_files(split_command(cmd, "engine")[1], ["engine"]))
        if sends:
            with ThreadPoolExecutor(min(16, len(self.sets))) as pool:
                list(pool.map(lambda rs: self.send_files(rs.host, sends, rs.ssh_args), self.sets))
        self._spawn_sets(Path(log_path))


class SSHProxyEngineSetLauncher(SSHEngineSetLauncher):
    """All `n` engines on one host (`hostname`): one ssh starting `ipphpc engine -n n` there."""

    kind = "sshproxy"

    hostname = Unicode("", config=True, help="[user@]host[:port] to start the engines on.")

    def host_specs(self) -> dict[str, dict[str, Any]]:
        if not self.hostname:
            raise SSHLaunchError("no host to start engines on: set SSHProxyEngineSetLauncher.hostname")
        return {self.hostname: {"n": self.n, "engine_args": None, "engine_cmd": None, "ssh_args": []}}


class SSHControllerLauncher(SSHLauncherBase):
    """The controller on `hostname`; its connection files are fetched back when `to_fetch` says so."""

    kind = "ssh"

    hostname = Unicode("", config=True, help="[user@]host[:port] to run the controller on.")
    controller_cmd = List(Unicode(), [], config=True, help="Remote `ipphpc controller` command; default: this "
                          "interpreter's, right on a shared filesystem.")
    controller_args = List(Unicode(), [], config=True, help="Extra `ipphpc controller` arguments on that host "
                           "(e.g. --ip='*' so engines elsewhere can reach it).")

    def __init__(self, role: str = "controller", n: int = 1, config: Config | None = None, parent: Any = None,
                 **kwargs: Any):
        super().__init__(role, 1, config=config, parent=parent, **kwargs)

    def start(self, cmd: list[str], log_path: Path) -> None:
        if not self.hostname:
            raise SSHLaunchError("no host to run the controller on: set SSHControllerLauncher.hostname")
        self.cmd = list(cmd)
        prog, args = split_command(cmd, "controller")
        argv = [*(self.controller_cmd or prog), *args, *self.controller_args]
        self.sets = [RemoteSet(self.hostname, 1, argv)]
        self._spawn_sets(Path(log_path))
        fetch = self._pairs(self.to_fetch)
        if not fetch and not self.shared_fs:
            fetch = self._pairs(self._connection_files(args, ["engine", "client"]))
        if fetch:
            try:
                self.fetch_files(self.hostname, fetch)
            except BaseException:
                self.stop(grace=2.0)
                raise


class SSHLauncher:
    """The name 'ssh': the controller launcher for role 'controller', the engine-set launcher otherwise."""

    kind = "ssh"
    configurable = True

    def __new__(cls, role: str = "engines", n: int = 1, **kwargs: Any) -> Any:  # type: ignore[misc]
        target = SSHControllerLauncher if role == "controller" else SSHEngineSetLauncher
        return target(role, n, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSHLauncherBase:
        target = SSHControllerLauncher if d.get("role") == "controller" else SSHEngineSetLauncher
        return target.from_dict(d)
