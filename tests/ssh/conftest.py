"""Fixtures for the ssh tests: the test sshd, the network-namespace hosts, and process bookkeeping.

The tests need the services of .ci/services (`sshd`, `netns`). When IPPHPC_CI_SERVICES lists a
service, a test that needs it must fail, not skip, if it does not work; when the variable does
not list it, the test is skipped with the reason. Every test runs under a private IPPHPC_DIR and
checks at the end that no process it started (anywhere: the namespaces share /proc) is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..core.helpers import procs_matching

PY = sys.executable
HERE = Path(__file__).resolve().parent
FAKE_SSH = HERE / "fake_ssh.sh"
SERVICES = set(os.environ.get("IPPHPC_CI_SERVICES", "").split())
NODES = {"ctl": "ipp-ctl", "login": "ipp-login", "compute": "ipp-compute"}
CTL_ADDR = "10.201.1.1"


def require(*names: str) -> None:
    missing = [n for n in names if n not in SERVICES]
    if missing:
        pytest.skip(f"test services {' '.join(missing)} not listed in IPPHPC_CI_SERVICES: start them with "
                    f"`sudo .ci/services/all.sh` and source .ci/services/env.sh")


def _env_var(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is not set although IPPHPC_CI_SERVICES lists the service; source .ci/services/env.sh"
    return value


@dataclass
class SSHEnv:
    """Where the test sshd's client configuration, shim and key are."""

    config: str
    bin: str
    key: str
    host: str

    def path(self) -> str:
        return f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"



def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.03):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def netns_inode(node: str) -> int:
    return os.stat(f"/run/netns/{NODES[node]}").st_ino


def proc_netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


@pytest.fixture
def sshenv() -> SSHEnv:
    require("sshd")
    return SSHEnv(_env_var("IPPHPC_SSH_CONFIG"), _env_var("IPPHPC_SSH_BIN"), _env_var("IPPHPC_SSH_KEY"),
                  _env_var("IPPHPC_SSH_HOST"))


@pytest.fixture
def shim_path(sshenv: SSHEnv, monkeypatch: pytest.MonkeyPatch) -> SSHEnv:
    """`ssh` on PATH is the shim with the test configuration."""
    monkeypatch.setenv("PATH", sshenv.path())
    monkeypatch.delenv("IPPHPC_SSH", raising=False)
    monkeypatch.delenv("IPPHPC_SSH_PASSWORD", raising=False)
    return sshenv


class Hosts:
    """Processes on the namespace hosts, each in its own process group, all killed at the end."""

    def __init__(self, root: Path, ssh: SSHEnv):
        self.root = root
        self.ssh = ssh
        self.ipphpc_dir = root / "ipphpc"
        self.pdir = root / "profile"
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("IPPHPC_SSH", None)
        env.pop("IPPHPC_SSH_PASSWORD", None)
        env.update(IPPHPC_DIR=str(self.ipphpc_dir), PATH=self.ssh.path(), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def popen(self, node: str, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        self._n += 1
        base = self.root / f"{name}-{self._n}"
        with open(f"{base}.out", "wb") as out, open(f"{base}.err", "wb") as err:
            p = subprocess.Popen(["ip", "netns", "exec", NODES[node], *argv], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, start_new_session=True, env=env or self.env())
        p.out_path, p.err_path = Path(f"{base}.out"), Path(f"{base}.err")  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def run(self, node: str, argv: list[str], timeout: float = 60.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", NODES[node], *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, env=env or self.env())

    def python(self, node: str, code: str, timeout: float = 60.0, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess:
        script = self.root / f"script-{self._n}-{time.monotonic_ns()}.py"
        script.write_text(code)
        return self.run(node, [PY, str(script), str(self.root)], timeout, env)

    def ipphpc(self, node: str, *args: str, name: str = "proc", env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.popen(node, [PY, "-m", "ipphpc", *args], name, env)

    @staticmethod
    def output(p: subprocess.Popen) -> str:
        return p.out_path.read_text(errors="replace") + p.err_path.read_text(errors="replace")  # type: ignore

    def controller(self, cluster_id: str, *args: str) -> tuple[subprocess.Popen, dict, dict]:
        """`ipphpc controller` on ctl, listening on every interface, advertised as 10.201.1.1."""
        from ipphpc import connection, paths
        p = self.ipphpc("ctl", "controller", "--profile-dir", str(self.pdir), "--cluster-id", cluster_id,
                        "--ip=*", f"--location={CTL_ADDR}", "--log-to-stderr", *args, name="controller")
        efile = paths.connection_file(self.pdir, "engine", cluster_id)
        cfile = paths.connection_file(self.pdir, "client", cluster_id)

        def ready():
            if p.poll() is not None:
                raise AssertionError(f"controller exited with {p.returncode}:\n{self.output(p)}")
            return efile.exists() and cfile.exists()
        wait_until(ready, 20, "the controller's connection files")
        return p, connection.read(efile), connection.read(cfile)

    def stop(self, p: subprocess.Popen, timeout: float = 10.0) -> int:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            return p.wait(5)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.stop(p, 5)


@pytest.fixture
def hosts(tmp_path: Path, shim_path: SSHEnv):
    """The namespace hosts ctl, login, compute; nothing started for the test may outlive it."""
    require("sshd", "netns")
    for ns in NODES.values():
        assert Path(f"/run/netns/{ns}").exists(), f"network namespace {ns} is missing although IPPHPC_CI_SERVICES " \
                                                  f"lists netns; run `sudo .ci/services/netns.sh start`"
    root = tmp_path.resolve()
    h = Hosts(root, shim_path)
    h.pdir.mkdir()
    yield h
    h.cleanup()
    deadline = time.monotonic() + 5
    while procs_matching(str(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = procs_matching(str(root))
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes survived their test: {left}"
