"""Slurm: sbatch / squeue / sacct / scancel.

Facts this module relies on (Slurm 22.05 behaviour):

* ``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``.
* Each array task has its own job id (``%A``, ``JobIDRaw``); the array's id is
  ``%F`` and the task index ``%K``. ``%a`` is the *account*, not the index.
* ``squeue`` folds pending tasks into ``60_[0-2]`` unless ``--array`` is given
  and forgets finished jobs unless ``--states=all`` is given; even then they
  vanish ``MinJobAge`` seconds after the end, and asking for such an id fails
  with ``Invalid job id specified``. ``sacct`` keeps the history.
* ``sacct -P`` prints ``CANCELLED by <uid>``; ``ExitCode`` is ``<rc>:<signal>``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .backend import (
    Backend,
    BatchOutputError,
    expand_index_list,
    int_or_none,
    nonblank_lines,
    signal_exit_code,
)
from .states import JobRecord, State

#: squeue fields, in order: array job id, task id, raw job id, state, reason, nodes
SQUEUE_FIELDS: tuple[str, ...] = ("%F", "%K", "%A", "%T", "%r", "%N")
SACCT_FIELDS: tuple[str, ...] = ("JobID", "JobIDRaw", "State", "ExitCode", "NodeList")

STATE_MAP: dict[str, State] = {
    "PENDING": State.PENDING,
    "CONFIGURING": State.PENDING,
    "REQUEUED": State.PENDING,
    "REQUEUE_FED": State.PENDING,
    "RESIZING": State.RUNNING,
    "RUNNING": State.RUNNING,
    "COMPLETING": State.RUNNING,
    "SIGNALING": State.RUNNING,
    "STAGE_OUT": State.RUNNING,
    # a suspended job keeps its allocation and resumes by itself
    "SUSPENDED": State.RUNNING,
    "STOPPED": State.RUNNING,
    "COMPLETED": State.COMPLETED,
    "FAILED": State.FAILED,
    "NODE_FAIL": State.FAILED,
    "BOOT_FAIL": State.FAILED,
    "OUT_OF_MEMORY": State.FAILED,
    "SPECIAL_EXIT": State.FAILED,
    "CANCELLED": State.CANCELLED,
    "PREEMPTED": State.CANCELLED,
    "REVOKED": State.CANCELLED,
    "TIMEOUT": State.TIMEOUT,
    "DEADLINE": State.TIMEOUT,
    "REQUEUE_HOLD": State.HELD,
    "RESV_DEL_HOLD": State.HELD,
}

#: squeue's compact codes (%t), for output produced with them
COMPACT_STATES: dict[str, str] = {
    "PD": "PENDING", "CF": "CONFIGURING", "R": "RUNNING", "CG": "COMPLETING",
    "CD": "COMPLETED", "F": "FAILED", "CA": "CANCELLED", "TO": "TIMEOUT",
    "NF": "NODE_FAIL", "BF": "BOOT_FAIL", "OOM": "OUT_OF_MEMORY", "PR": "PREEMPTED",
    "S": "SUSPENDED", "ST": "STOPPED", "DL": "DEADLINE", "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD", "RD": "RESV_DEL_HOLD", "SE": "SPECIAL_EXIT",
}

_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin")
_EMPTY = {"", "N/A", "None", "(null)", "None assigned"}


def _field(value: str | None) -> str:
    value = (value or "").strip()
    return "" if value in _EMPTY else value


def map_state(native: str, reason: str = "") -> State:
    """Slurm state word (plus pending reason) -> State."""
    native = COMPACT_STATES.get(native, native)
    if native == "PENDING" and reason.startswith(_HELD_REASONS):
        return State.HELD
    return STATE_MAP.get(native, State.LOST)


def split_job_id(text: str) -> tuple[str, list[int | None]]:
    """``57_3`` -> (57, [3]); ``60_[0-2]`` -> (60, [0, 1, 2]); ``58`` -> (58, [None])."""
    job, sep, task = text.partition("_")
    if not sep:
        return job, [None]
    return job, list(expand_index_list(task))


def parse_squeue(
    text: str, fields: Sequence[str] = SQUEUE_FIELDS, sep: str | None = "|"
) -> list[JobRecord]:
    """Parse ``squeue --noheader --format=...`` output written with ``fields``.

    ``sep=None`` splits on whitespace (the last field then keeps its spaces).
    Folded task ranges are expanded into one record per task.
    """
    records: list[JobRecord] = []
    for line in nonblank_lines(text):
        parts = line.strip().split(sep, len(fields) - 1)
        if len(parts) != len(fields):
            continue
        row = dict(zip(fields, (p.strip() for p in parts), strict=True))
        job_id, tasks = split_job_id(row.get("%i", ""))
        job_id = _field(row.get("%F")) or job_id
        task_text = _field(row.get("%K"))
        if task_text:
            tasks = list(expand_index_list(task_text))
        native = row.get("%T") or row.get("%t", "")
        native = COMPACT_STATES.get(native, native)
        reason = _field(row.get("%r"))
        raw_id = _field(row.get("%A")) or None
        host = _field(row.get("%N")) or None
        state = map_state(native, reason)
        for task in tasks:
            records.append(JobRecord(job_id, task, state, native, reason, None, host, raw_id))
    return records


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """``3:0`` -> (3, None); ``0:15`` -> (143, 15): the shell's view of a signal."""
    rc_text, _, sig_text = text.partition(":")
    rc, sig = int_or_none(rc_text), int_or_none(sig_text)
    if sig:
        return (rc if rc else signal_exit_code(sig)), sig
    return rc, None


def parse_sacct(text: str, fields: Sequence[str] = SACCT_FIELDS) -> list[JobRecord]:
    """Parse ``sacct --noheader --parsable2 --format=...`` output written with ``fields``."""
    records: list[JobRecord] = []
    for line in nonblank_lines(text):
        parts = line.split("|")
        if len(parts) < len(fields):
            continue
        row = dict(zip(fields, (p.strip() for p in parts), strict=False))
        job_text = row.get("JobID", "")
        if "." in job_text:  # a step (58.batch), not the allocation
            continue
        job_id, tasks = split_job_id(job_text)
        words = row.get("State", "").split()
        native = words[0].rstrip("+") if words else ""
        reason = _field(row.get("Reason"))
        exit_code, signal = parse_exit_code(row.get("ExitCode", ""))
        state = map_state(native, reason)
        if not reason and len(words) > 1:
            reason = row["State"]  # "CANCELLED by 0"
        host = _field(row.get("NodeList")) or None
        raw_id = _field(row.get("JobIDRaw")) or None
        if not state.finished:  # sacct prints 0:0 for jobs that have not ended
            exit_code, signal = None, None
        for task in tasks:
            records.append(
                JobRecord(job_id, task, state, native, reason, exit_code, host, raw_id, signal)
            )
    return records


def parse_submit(text: str) -> str:
    """The job id in ``sbatch --parsable`` (or plain ``sbatch``) output."""
    for line in reversed(nonblank_lines(text)):
        line = line.strip()
        head = line.split(";", 1)[0]
        if head.isdigit():
            return head
        if line.startswith("Submitted batch job "):
            return line.rsplit(" ", 1)[1]
    raise BatchOutputError("no job id in sbatch output", text)


def submit_command(script_path: str, extra_args: Sequence[str] = ()) -> list[str]:
    return ["sbatch", "--parsable", *extra_args, str(script_path)]


def status_command(job_ids: Sequence[str]) -> list[str]:
    return [
        "squeue", "--noheader", "--array", "--states=all",
        "--jobs=" + ",".join(job_ids), "--format=" + "|".join(SQUEUE_FIELDS),
    ]


def accounting_command(job_ids: Sequence[str], **_: object) -> list[str]:
    return [
        "sacct", "--noheader", "--parsable2", "--allocations",
        "--jobs=" + ",".join(job_ids), "--format=" + ",".join(SACCT_FIELDS),
    ]


def cancel_command(job_ids: Sequence[str]) -> list[str]:
    return ["scancel", *job_ids]


def release_command(job_ids: Sequence[str]) -> list[str]:
    return ["scontrol", "release", *job_ids]


def array_directive(size: int, job_name: str = "") -> str:
    return f"#SBATCH --array=0-{size - 1}"


BACKEND = Backend(
    name="slurm",
    aliases=(),
    directive_prefix="#SBATCH",
    array_index_var="SLURM_ARRAY_TASK_ID",
    job_id_var="SLURM_JOB_ID",
    array_job_id_var="SLURM_ARRAY_JOB_ID",
    array_index_base=0,
    # Slurm's MaxArraySize defaults to 1001 (indices 0..1000)
    max_array_size=1001,
    template_dir="slurm",
    templates={"engines": "engines.sbatch.j2", "controller": "controller.sbatch.j2"},
    state_map=STATE_MAP,
    array_directive_pattern=r"^#SBATCH\s+(--array[=\s]|-a\s*\S)",
    submit_command=submit_command,
    status_command=status_command,
    accounting_command=accounting_command,
    cancel_command=cancel_command,
    release_command=release_command,
    parse_submit=parse_submit,
    parse_status=parse_squeue,
    parse_accounting=parse_sacct,
    array_directive=array_directive,
    unknown_job_markers=("Invalid job id specified",),
    output_patterns={"engines": "engines-%A_%a.out", "controller": "controller-%j.out"},
    unsupported={"project": "Slurm charges accounts: use account (--account)"},
    description="Slurm (sbatch, squeue, sacct, scancel)",
)
