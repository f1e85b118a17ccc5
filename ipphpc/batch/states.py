"""One job-state vocabulary for every scheduler, and the exit-file convention.

Each scheduler speaks its own dialect (``PD``/``qw``/``PEND``/``1``...). The
parsers in the scheduler modules translate it into :class:`State` and keep the
original word in :attr:`JobRecord.native_state`, so nothing is lost when a
caller wants to show the scheduler's own explanation.

The exit file is how a finished array element reports its exit code once the
scheduler has forgotten about it: the batch script writes the code into
``<profile_dir>/log/<cluster_id>/exit-<job number>-<index>`` (array elements)
or ``.../exit-<job number>`` (single jobs such as the controller) just before it
ends. ``<job number>`` is the scheduler's job id cut at the first ``.``,
``[`` or ``-`` (see :func:`short_job_id`), ``<index>`` the scheduler's own array
index (1-based on SGE and LSF). Engine jobs always name an index: a
one-element PBS Pro submission, which cannot be an array, writes index 0. The
file is written to ``<name>.tmp`` first and renamed, so a reader never sees a
half-written code.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path


class State(str, enum.Enum):
    """Where a job (or one array element) is in its life."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    HELD = "HELD"
    #: the scheduler no longer knows the job and nothing says how it ended,
    #: or it reports a state that cannot be interpreted
    LOST = "LOST"

    @property
    def finished(self) -> bool:
        """True once the job will never run (again) by itself."""
        return self in _FINISHED

    @property
    def active(self) -> bool:
        """True while the job is queued, held or running."""
        return self in _ACTIVE

    @property
    def succeeded(self) -> bool:
        return self is State.COMPLETED

    def __str__(self) -> str:
        return self.value


def ended_by_scheduler(state: State, native: str, reason: str = "") -> str:
    """Why the scheduler ended a finished element, in words (node failure, walltime, preemption, a cancel),
    or '' when it ended by itself (its engines exited, or failed). The words of every scheduler are mapped
    to State by their parsers; node failures are FAILED there, and told apart here by the native word."""
    word = native.upper()
    if word in ("NODE_FAIL", "BOOT_FAIL") or state is State.LOST:
        return "its node failed, or the scheduler lost its job"
    if state is State.TIMEOUT:
        return "its job reached its walltime"
    if word in ("PREEMPTED", "TERM_PREEMPT") or "preempt" in reason.lower():
        return "its job was preempted"
    if state is State.CANCELLED:
        return "its job was cancelled"
    return ""


_FINISHED = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT, State.LOST})
_ACTIVE = frozenset({State.PENDING, State.RUNNING, State.HELD})


@dataclass(frozen=True)
class JobRecord:
    """What a status or accounting query says about one job or array element.

    ``job_id`` is the id the submit command printed (for arrays: the array's
    id), so records can be matched with what was submitted. ``array_index`` is
    the scheduler's own index of the element, ``None`` for a job that is not an
    array element.
    """

    job_id: str
    array_index: int | None
    state: State
    native_state: str
    reason: str = ""
    exit_code: int | None = None
    host: str | None = None
    #: the scheduler's own id for this element: Slurm's per-task job id
    #: (``%A``/``JobIDRaw``), PBS's ``1234[3].server``, HTCondor's ``3.1``
    native_id: str | None = None
    #: the signal that ended the job, when the scheduler says so
    signal: int | None = None

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.job_id, self.array_index)

    @property
    def finished(self) -> bool:
        return self.state.finished


_SHORT_ID = re.compile(r"[-.\[;]")


def short_job_id(job_id: str) -> str:
    """The job number alone: ``1234[].server`` -> ``1234``, ``57;clusterA`` -> ``57``.

    Batch scripts compute the same thing in shell (``${id%%[-.[]*}``), which is
    why exit files can be found from the id the submit command printed.
    """
    return _SHORT_ID.split(job_id.strip(), maxsplit=1)[0]


def exit_dir(profile_dir: str | Path, cluster_id: str) -> Path:
    """The directory batch scripts write their exit files into."""
    return Path(profile_dir) / "log" / (cluster_id or "default")


def exit_file_path(
    profile_dir: str | Path, cluster_id: str, job_id: str, array_index: int | None = None
) -> Path:
    """Where the element ``array_index`` of ``job_id`` leaves its exit code."""
    name = f"exit-{short_job_id(job_id)}"
    if array_index is not None:
        name += f"-{array_index}"
    return exit_dir(profile_dir, cluster_id) / name


def parse_exit_text(text: str) -> int | None:
    """The exit code written in an exit file; ``None`` when the file is torn or empty."""
    text = text.strip()
    if not re.fullmatch(r"-?\d+", text):
        return None
    return int(text)


def read_exit_file(path: str | Path) -> int | None:
    """The exit code stored at ``path``, or ``None`` when there is none (yet)."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    return parse_exit_text(text)


def state_from_exit_code(exit_code: int) -> State:
    """How an exit code found in an exit file translates into a final state."""
    return State.COMPLETED if exit_code == 0 else State.FAILED
