"""The shape every scheduler backend has: data plus pure functions.

A :class:`Backend` knows how to *spell* commands for one scheduler and how to
*read* what those commands print. It never runs anything itself, which keeps
every piece testable against captured output. The code that actually calls
``sbatch``/``qstat``/... lives elsewhere and only talks to this interface.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .states import JobRecord, State


class BatchOutputError(ValueError):
    """A scheduler command printed something its parser cannot understand."""

    def __init__(self, message: str, output: str = "") -> None:
        if output:
            message = f"{message}; output was: {output.strip()[:500]!r}"
        super().__init__(message)
        self.output = output


def _no_accounting(job_ids: Sequence[str], **_: object) -> list[str] | None:
    return None


def _no_records(text: str) -> list[JobRecord]:
    return []


def _no_release(job_ids: Sequence[str]) -> list[str]:
    return []


@dataclass(frozen=True, eq=False)
class Backend:
    """Everything ipphpc needs to know about one batch scheduler.

    Callable fields are plain functions (not methods): ``backend.parse_status(text)``.
    """

    name: str
    #: other names :func:`ipphpc.batch.registry.get_backend` accepts
    aliases: tuple[str, ...]
    #: what starts a directive line in the batch script (``#SBATCH``; for
    #: HTCondor the submit file has no prefix, so this is empty)
    directive_prefix: str
    #: the environment variable holding the array index inside an element
    array_index_var: str
    #: the environment variable holding the job id inside a job
    job_id_var: str
    #: the environment variable holding the *array's* id inside an element
    array_job_id_var: str
    #: the first array index the scheduler hands out (SGE and LSF start at 1)
    array_index_base: int
    #: the largest array this scheduler accepts by default
    max_array_size: int
    #: the sub-directory of ``templates/`` holding this scheduler's templates
    template_dir: str
    #: role (``engines``, ``controller``, ``engines-wrapper``...) -> template file name
    templates: Mapping[str, str]
    #: native state word -> State, before the per-scheduler refinements
    state_map: Mapping[str, State]
    #: regex matching a directive that turns a job into an array
    array_directive_pattern: str

    submit_command: Callable[..., list[str]]
    status_command: Callable[[Sequence[str]], list[str]]
    cancel_command: Callable[[Sequence[str]], list[str]]
    parse_submit: Callable[[str], str]
    parse_status: Callable[[str], list[JobRecord]]
    #: (size, job_name) -> the directive line(s) making the job an array of ``size``
    array_directive: Callable[[int, str], str]
    accounting_command: Callable[..., list[str] | None] = _no_accounting
    parse_accounting: Callable[[str], list[JobRecord]] = _no_records
    #: the command that releases held jobs (shown to users whose engines are held; empty: none known)
    release_command: Callable[[Sequence[str]], list[str]] = _no_release
    #: True when the submit command reads the script on standard input (LSF ``bsub < script``)
    submit_via_stdin: bool = False
    #: substrings of stderr meaning "this job id is unknown (finished long ago)"
    unknown_job_markers: tuple[str, ...] = ()
    #: role -> default output file name (inside the log directory), in the
    #: scheduler's own pattern syntax
    output_patterns: Mapping[str, str] = field(default_factory=dict)
    #: option name -> why this scheduler cannot express it and what to use instead;
    #: setting such an option to anything but its default is an error
    unsupported: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        # frozen dataclasses still hand out mutable dicts; make the data read-only
        for name in ("templates", "state_map", "output_patterns", "unsupported"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def element_index(self, array_index: int | None) -> int:
        """The 0-based element number of a scheduler array index (None -> 0)."""
        if array_index is None:
            return 0
        return array_index - self.array_index_base

    def map_state(self, native: str) -> State:
        """The state for a native word, :attr:`State.LOST` when it is not known."""
        return self.state_map.get(native, State.LOST)

    def is_unknown_job_error(self, stderr: str) -> bool:
        """True when a failed query only means the scheduler has forgotten the job(s)."""
        return any(marker in stderr for marker in self.unknown_job_markers)

    def has_array_directive(self, script: str) -> bool:
        """True when ``script`` contains a directive that makes it an array job."""
        return re.search(self.array_directive_pattern, script, re.MULTILINE) is not None


def split_array(total: int, max_size: int) -> list[tuple[int, int]]:
    """Cut ``total`` array elements into ``(start, size)`` submissions of at most ``max_size``.

    Each submission is its own array numbered from the scheduler's first index;
    ``start`` tells the batch script which global element its index 0 stands for.
    """
    if total < 0:
        raise ValueError(f"cannot split a negative number of elements: {total}")
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, not {max_size}")
    return [(start, min(max_size, total - start)) for start in range(0, total, max_size)]


def expand_index_list(expr: str) -> list[int]:
    """Expand ``0-2,5,7-11:2`` (and Slurm's ``%limit`` suffix) into indices.

    Both ``:step`` (SGE, PBS Pro) and Slurm's ``%max_running`` are understood;
    surrounding brackets are ignored.
    """
    expr = expr.strip().strip("[]")
    if "%" in expr:
        expr = expr.split("%", 1)[0]
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in expr.split(","))):
        rng, _, step_text = part.partition(":")
        step = int(step_text) if step_text else 1
        first, sep, last = rng.partition("-")
        if not sep:
            indices.append(int(first))
            continue
        if step < 1:
            raise ValueError(f"bad step in index range {part!r}")
        indices.extend(range(int(first), int(last) + 1, step))
    return indices


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def int_or_none(text: str | int | None) -> int | None:
    """Parse an integer field that may be empty, ``-``, ``N/A`` or ``undefined``."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    match = re.match(r"\s*(-?\d+)", text)
    return int(match.group(1)) if match else None


def signal_exit_code(signal: int) -> int:
    """The shell's exit code for a process ended by ``signal``."""
    return 128 + signal
