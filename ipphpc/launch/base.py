"""The launcher contract: what a cluster asks of whatever starts its controller or an engine set.

A launcher starts one process group (local, mpiexec, srun, ssh) or one set of batch jobs for a
``role`` (``"controller"`` or ``"engines"``) of ``n`` engines, and can be written to the cluster
file and read back in another process (``ipphpc stop`` from a new shell):

* ``cls(role, n, **kwargs)`` builds it; a class with ``configurable = True`` also takes
  ``parent=`` (the HPCCluster), whose configuration it reads (``c.SlurmEngineSetLauncher...``),
  and a class whose ``kind`` is ``"batch"`` takes the cluster's batch options as keywords.
* ``start(cmd, log_path)`` starts ``cmd`` (one engine's or the controller's command line; the
  launcher adds how many and how) and returns once it is started or submitted, not finished.
* ``running`` is true while anything it started may still run; ``exit_code`` is None until it
  knows how the whole ended (a batch launcher: the worst exit code of its elements).
* ``stop(grace)`` ends everything it started and returns once it is gone (signals after
  ``grace`` seconds, or the scheduler's cancel and a check that the jobs left the queue).
* ``to_dict()`` is JSON with ``"kind"``, ``"role"`` and ``"n"``; ``from_dict(d)`` rebuilds a
  launcher that can report on and stop what the first one started.

Launchers are found by name in :mod:`ipphpc.launch.launchers`. Batch launchers also answer the
questions of :class:`BatchJobs`; a launcher that can show what it would run implements
:class:`DryRun`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable


class Launcher(Protocol):
    """What every launcher offers (see the module's docstring for the meaning of each part)."""

    #: the name it is found by and written under in the cluster file ("local", "ssh", "batch", ...)
    kind: ClassVar[str]
    role: str
    n: int

    def start(self, cmd: list[str], log_path: Path) -> None: ...

    def stop(self, grace: float = 5.0) -> Any: ...

    @property
    def pid(self) -> int | None:
        """The local process (group) it started, if there is one."""
        ...

    @property
    def running(self) -> bool: ...

    @property
    def exit_code(self) -> int | None: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Launcher: ...


@runtime_checkable
class DryRun(Protocol):
    """A launcher that can show the scripts and exact commands ``start`` would run."""

    def dry_run(self, cmd: list[str]) -> str: ...


@runtime_checkable
class BatchJobs(DryRun, Protocol):
    """A launcher whose processes are batch jobs: their script, their elements' states, why they failed."""

    def job_script(self, cmd: list[str]) -> str: ...

    def states(self) -> list[Any]:
        """One :class:`~ipphpc.batch.jobstate.ElementStatus` per element of every job it submitted."""
        ...

    def failure_report(self) -> str:
        """Why elements did not complete (the scheduler's reason and their output's tail), or ``""``."""
        ...


__all__ = ["BatchJobs", "DryRun", "Launcher"]
