"""The PBS Pro, Torque and LSF emulators (tests/emulators) as a sandbox for one test.

`Emulator` puts the emulator's commands first on PATH with a private state directory, reads
the job records the emulator keeps (which process group runs which array element), and at
the end kills whatever the emulator still runs, so a failing test leaves nothing behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from ..core.helpers import procs_matching  # noqa: F401 - used here and by importers
from ..core.helpers import wait_until as _wait_until

REPO = Path(__file__).resolve().parents[2]
EMULATORS = REPO / "tests" / "emulators"

#: (bin directory, extra environment) of each flavour
FLAVORS = {
    "pbspro": ("pbs", {"IPPHPC_EMU_FLAVOR": "pbspro", "IPPHPC_EMU_SERVER": "pbsserver"}),
    "torque": ("pbs", {"IPPHPC_EMU_FLAVOR": "torque", "IPPHPC_EMU_SERVER": "torqueserver"}),
    "lsf": ("lsf", {}),
}


def wait_until(pred: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll `pred` until it returns something true; fail after `timeout` seconds."""
    return _wait_until(pred, timeout, interval, what)



def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Emulator:
    """One emulator flavour with its own state directory, on PATH for this process and its children."""

    def __init__(self, flavor: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        kind, extra = FLAVORS[flavor]
        self.flavor = flavor
        self.kind = kind
        self.bin = EMULATORS / kind / "bin"
        self.state = root / "emu-state"
        for name in list(os.environ):
            if name.startswith("IPPHPC_EMU_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("IPPHPC_EMU_STATE", str(self.state))
        monkeypatch.setenv("IPPHPC_EMU_KILL_DELAY", "1")
        for name, value in extra.items():
            monkeypatch.setenv(name, value)
        self.server = extra.get("IPPHPC_EMU_SERVER", "")

    def command(self, name: str) -> str:
        """Full path of an emulator command (both SGE and the PBS emulator have a `qsub`)."""
        return str(self.bin / name)

    def run(self, *argv: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.command(argv[0]), *argv[1:]], input=input, capture_output=True, text=True,
                              timeout=60, cwd=cwd)

    def jobs(self) -> dict[int, dict]:
        """Job number -> the emulator's record of it (one entry per array element)."""
        out = {}
        for path in (self.state / "jobs").glob("*.json"):
            try:
                out[int(path.stem)] = json.loads(path.read_text())
            except ValueError:
                continue
        return out

    def elements(self) -> dict[int, tuple[int, int | None, dict]]:
        """Process group of each started element -> (job number, array index, element record)."""
        out = {}
        for seq, job in self.jobs().items():
            for element in job.get("elements", {}).values():
                if element.get("pid"):
                    index = element.get("index")
                    out[element["pid"]] = (seq, None if index is None else int(index), element)
        return out

    def exit_codes(self) -> dict[tuple[int, int | None], int | None]:
        """(job number, array index) -> the exit status the emulator recorded (None while running)."""
        key = "exit_code" if self.kind == "lsf" else "exit_status"
        return {(seq, None if e.get("index") is None else int(e["index"])): e.get(key)
                for seq, job in self.jobs().items() for e in job.get("elements", {}).values()}

    def submissions(self) -> int:
        """How many times qsub/bsub was called."""
        path = self.state / "invocations.log"
        if not path.exists():
            return 0
        submit = "bsub" if self.kind == "lsf" else "qsub"
        return sum(json.loads(line)["command"] == submit for line in path.read_text().splitlines() if line.strip())

    def expected_job_id(self, seq: int, index: int | None) -> str:
        """The job id an engine in element `index` of job `seq` reads from its environment.

        PBS Pro sets PBS_ARRAY_ID to the array's id; Torque has no such variable, so PBS_JOBID
        names the element; LSF's LSB_JOBID is the bare number.
        """
        if self.flavor == "pbspro":
            return f"{seq}[].{self.server}"
        if self.flavor == "torque":
            return f"{seq}[{index}].{self.server}"
        return str(seq)

    def unfinished(self) -> list[str]:
        """Rows of jobs the scheduler still has queued, held or running (empty when all ended)."""
        if self.kind == "lsf":
            out = self.run("bjobs", "-noheader")
            return [line for line in out.stdout.splitlines() if line.strip()]
        out = self.run("qstat", "-t")
        rows = [line for line in out.stdout.splitlines()[2:] if line.strip()]
        # Torque keeps completed jobs in `qstat` (state C) for keep_completed seconds
        return [r for r in rows if r.split()[-2] not in ("C", "F", "X")]

    def cleanup(self) -> None:
        """Kill the emulator daemon and every element still running (their process groups)."""
        if not self.state.exists():
            return
        with open(self.state / "state.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                os.kill(int((self.state / "daemon.pid").read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            for job in self.jobs().values():
                for element in job.get("elements", {}).values():
                    if element.get("status") == "running" and element.get("pid"):
                        try:
                            os.killpg(element["pid"], signal.SIGKILL)
                        except OSError:
                            pass


def emulator_fixture(flavor: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Body of a fixture: an `Emulator` for one test, cleaned up afterwards."""
    emu = Emulator(flavor, tmp_path, monkeypatch)
    try:
        yield emu
    finally:
        emu.cleanup()
