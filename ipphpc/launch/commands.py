"""Running scheduler commands: one place that starts them, times them out and counts them.

Every call to ``sbatch``/``squeue``/``qstat``... goes through :func:`run_command`,
so a login node's scheduler load can be measured: each call is recorded in a :class:`CommandCounter` (the module-wide
:data:`COUNTER` by default) and, when the counter has a ``log_path``, appended
to that file as one JSON line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

#: how long a scheduler command may take before it counts as failed
DEFAULT_TIMEOUT = 60.0

#: backend name -> how users know the scheduler
SCHEDULER_LABELS: dict[str, str] = {
    "slurm": "Slurm",
    "pbspro": "PBS Pro",
    "torque": "Torque",
    "sge": "Grid Engine",
    "lsf": "LSF",
    "htcondor": "HTCondor",
}
#: an executable that only this scheduler's client installs, to suggest the right one
_SIGNATURE_COMMANDS: tuple[tuple[str, str], ...] = (
    ("slurm", "sbatch"),
    ("sge", "qconf"),
    ("pbspro", "pbsnodes"),
    ("lsf", "bsub"),
    ("htcondor", "condor_submit"),
)


class CommandResult(NamedTuple):
    """What a finished command left: exit code, standard output, standard error."""

    rc: int
    stdout: str
    stderr: str


class SchedulerCommandError(RuntimeError):
    """A scheduler command could not be run, timed out, or failed.

    ``kind`` is ``"missing"`` (executable not on PATH), ``"timeout"`` or
    ``"failed"`` (non-zero exit code).
    """

    def __init__(
        self,
        message: str,
        argv: Sequence[str],
        kind: str = "failed",
        rc: int | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.kind = kind
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def tail(text: str, lines: int = 5, chars: int = 600) -> str:
    """The end of ``text``: enough to show an error, not a whole log."""
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept if len(kept) <= chars else "..." + kept[-chars:]


def installed_schedulers() -> list[str]:
    """Schedulers whose client commands are on PATH here (a hint, not a guarantee)."""
    return [name for name, exe in _SIGNATURE_COMMANDS if shutil.which(exe)]


def missing_command_message(executable: str, scheduler: str = "") -> str:
    """``sbatch not found on PATH: is Slurm's client installed here, or did you mean ...?``"""
    label = SCHEDULER_LABELS.get(scheduler, scheduler or "the scheduler")
    message = f"{executable} not found on PATH: is {label}'s client installed here"
    others = [name for name in installed_schedulers() if name != scheduler]
    if others:
        message += f", or did you mean --scheduler {' or '.join(others)}"
    return message + "?"


def failed_command_message(argv: Sequence[str], rc: int, stderr: str, stdout: str = "") -> str:
    detail = tail(stderr) or tail(stdout) or "no output"
    return f"`{shlex.join(argv)}` failed with exit code {rc}: {detail}"


@dataclass
class _Call:
    time: float
    command: str
    rc: int | None
    seconds: float


class CommandCounter:
    """Counts scheduler calls, by command name; optionally logs each as a JSON line.

    A counter may have a ``parent`` (the module-wide :data:`COUNTER`) that sees
    every call recorded here too, so a poller can count its own calls while a
    benchmark reads the total.
    """

    def __init__(self, parent: CommandCounter | None = None, log_path: str | Path | None = None) -> None:
        self.parent = parent
        self.log_path = Path(log_path) if log_path else None
        self.by_command: Counter[str] = Counter()
        self.errors = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.by_command.values())

    def record(self, argv: Sequence[str], rc: int | None, seconds: float = 0.0) -> None:
        """Count one call of ``argv`` that ended with ``rc`` (None: it did not run to an end)."""
        name = os.path.basename(argv[0]) if argv else "?"
        with self._lock:
            self.by_command[name] += 1
            self.seconds += seconds
            if rc != 0:
                self.errors += 1
        if self.log_path is not None:
            line = json.dumps({"time": time.time(), "argv": list(argv), "rc": rc, "seconds": round(seconds, 4)})
            try:
                with open(self.log_path, "a") as fh:
                    fh.write(line + "\n")
            except OSError:
                pass  # the log is a convenience; never fail a command because of it
        if self.parent is not None:
            self.parent.record(argv, rc, seconds)

    def count(self, command: str | None = None) -> int:
        """Calls of ``command`` (``"squeue"``), or of all commands."""
        return self.total if command is None else self.by_command.get(command, 0)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"total": self.total, "by_command": dict(self.by_command), "errors": self.errors,
                    "seconds": round(self.seconds, 4)}

    def reset(self) -> None:
        with self._lock:
            self.by_command.clear()
            self.errors = 0
            self.seconds = 0.0


#: every scheduler call made through this module, in this process
COUNTER = CommandCounter()


def _check(argv: Sequence[str], result: CommandResult, check: bool) -> CommandResult:
    if check and result.rc != 0:
        raise SchedulerCommandError(
            failed_command_message(argv, result.rc, result.stderr, result.stdout),
            argv, "failed", result.rc, result.stdout, result.stderr,
        )
    return result


def run_command(
    argv: Sequence[str],
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    scheduler: str = "",
    counter: CommandCounter | None = COUNTER,
) -> CommandResult:
    """Run ``argv`` (feeding ``input`` on stdin) and return (rc, stdout, stderr).

    A missing executable or a timeout always raises
    :class:`SchedulerCommandError`; a non-zero exit code raises only with
    ``check=True``, because "unknown job" answers are normal for queries.
    """
    argv = [str(a) for a in argv]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout,
            cwd=cwd, env=dict(env) if env is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        if counter is not None:
            counter.record(argv, None, time.monotonic() - start)
        if cwd is not None and not Path(cwd).is_dir():
            message = f"cannot run {argv[0]}: directory {cwd} does not exist"
            raise SchedulerCommandError(message, argv, "missing") from exc
        raise SchedulerCommandError(missing_command_message(argv[0], scheduler), argv, "missing") from exc
    except subprocess.TimeoutExpired as exc:
        if counter is not None:
            counter.record(argv, None, time.monotonic() - start)
        raise SchedulerCommandError(
            f"`{shlex.join(argv)}` did not finish within {timeout:g} s", argv, "timeout"
        ) from exc
    if counter is not None:
        counter.record(argv, proc.returncode, time.monotonic() - start)
    return _check(argv, CommandResult(proc.returncode, proc.stdout, proc.stderr), check)
