"""Son of Grid Engine / Univa / Altair Grid Engine: qsub / qstat / qacct / qdel.

Facts this module relies on (SGE 8.1.9 behaviour):

* Array indices start at 1 (``-t 1-n``); ``SGE_TASK_ID`` holds the index and
  ``JOB_ID`` is the same for every task. The engines template turns the index
  into a 0-based element number by subtracting 1.
* ``qsub -terse`` prints ``123`` or, for an array, ``123.1-4:1``.
* ``qstat`` cannot select job ids in list form; it lists the caller's jobs.
  ``-xml`` lists running tasks one by one and pending tasks folded as
  ``<tasks>1-3:1</tasks>``. Finished jobs vanish from ``qstat``.
* ``qacct -j`` prints one ``====``-separated block per finished task. Jobs
  deleted before they started never reach accounting.
* The state letters combine: ``qw`` queued, ``hqw`` held (including
  ``-hold_jid`` dependencies), ``r`` running, ``t`` being dispatched, ``Eqw``
  error, ``d`` being deleted, ``s``/``S``/``T`` suspended, ``R`` restarted,
  ``z`` finished (only with ``qstat -s z``).

Decision on ``d``: a task marked for deletion that still *runs* (``dr``,
``dt``) is reported RUNNING with the reason "being deleted", because its
process still exists until the execution daemon kills it; it becomes CANCELLED
through accounting (``failed 100``, ``exit_status 137``). A task deleted
before it started (``dqw``, ``dhqw``) is CANCELLED at once, because it will
leave no accounting record at all.
"""

from __future__ import annotations

import getpass
import re
import xml.etree.ElementTree as ET
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

#: the plain words; combined ones are decided letter by letter in map_state
STATE_MAP: dict[str, State] = {
    "qw": State.PENDING,
    "hqw": State.HELD,
    "hRwq": State.HELD,
    "r": State.RUNNING,
    "t": State.RUNNING,
    "Rr": State.RUNNING,
    "Rt": State.RUNNING,
    "s": State.RUNNING,
    "S": State.RUNNING,
    "T": State.RUNNING,
    "Eqw": State.FAILED,
    "dr": State.RUNNING,
    "dt": State.RUNNING,
    "dqw": State.CANCELLED,
    "dhqw": State.CANCELLED,
    "z": State.LOST,
}

#: qacct ``failed`` codes with a meaning of their own
FAILED_TIMEOUT = 37  # "qmaster enforced h_rt, h_cpu, or h_vmem limit"
FAILED_AFTER_JOB = 100  # "assumedly after job": the job was killed (qdel, signal)
_KILL_EXIT_STATUSES = frozenset({signal_exit_code(9), signal_exit_code(15)})


def map_state(native: str) -> tuple[State, str]:
    """(state, reason) for a qstat state word such as ``hqw`` or ``Eqw``."""
    if native in STATE_MAP:
        state = STATE_MAP[native]
    elif "E" in native:
        state = State.FAILED
    elif "d" in native:
        state = State.RUNNING if ("r" in native or "t" in native) else State.CANCELLED
    elif "h" in native:
        state = State.HELD
    elif native and set(native) <= set("rtRsST"):
        state = State.RUNNING
    elif native and set(native) <= set("qw"):
        state = State.PENDING
    else:
        state = State.LOST
    reason = ""
    if "E" in native:
        reason = "error state (qstat -j <id> shows the error reason)"
    elif "d" in native:
        reason = "being deleted"
    elif "h" in native:
        reason = "on hold"
    elif native == "z":
        reason = "finished; its exit status is only in accounting"
    return state, reason


def _text(element: ET.Element, tag: str) -> str:
    found = element.find(tag)
    return (found.text or "").strip() if found is not None else ""


def parse_qstat_xml(text: str) -> list[JobRecord]:
    """Parse ``qstat -xml``: running tasks one by one, pending ranges expanded."""
    text = text.strip()
    if not text:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BatchOutputError(f"qstat printed invalid XML ({exc})", text) from exc
    records: list[JobRecord] = []
    for job in root.iter("job_list"):
        job_id = _text(job, "JB_job_number")
        native = _text(job, "state")
        state, reason = map_state(native)
        queue = _text(job, "queue_name")
        host = queue.split("@", 1)[1] if "@" in queue else None
        tasks = _text(job, "tasks")
        indices: list[int | None] = list(expand_index_list(tasks)) if tasks else [None]
        for index in indices:
            records.append(JobRecord(job_id, index, state, native, reason, None, host))
    return records


def _qacct_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("===="):
            current = {}
            blocks.append(current)
            continue
        if current is None or not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        current[key] = " ".join(value.split())
    return blocks


def outcome(failed_text: str, exit_text: str) -> tuple[State, str, int | None, int | None]:
    """(state, reason, exit code, signal) from qacct's ``failed`` and ``exit_status``."""
    failed = int_or_none(failed_text) or 0
    failed_reason = failed_text.partition(":")[2].strip()
    exit_status = int_or_none(exit_text)
    signal = exit_status - 128 if exit_status is not None and exit_status > 128 else None
    if failed == 0:
        if exit_status == 0:
            return State.COMPLETED, "", 0, None
        return State.FAILED, "", exit_status, signal
    if failed == FAILED_TIMEOUT:
        return State.TIMEOUT, failed_reason, exit_status, signal
    if failed == FAILED_AFTER_JOB and exit_status in _KILL_EXIT_STATUSES:
        return State.CANCELLED, f"killed by signal {signal}", exit_status, signal
    return State.FAILED, f"failed {failed}: {failed_reason}".rstrip(": "), exit_status, signal


def parse_qacct(text: str) -> list[JobRecord]:
    """Parse ``qacct -j`` blocks. A task accounted twice (a failed start, then
    the real run) is reported once, by its last record."""
    by_key: dict[tuple[str, int | None], JobRecord] = {}
    for block in _qacct_blocks(text):
        job_id = block.get("jobnumber", "")
        if not job_id:
            continue
        index = int_or_none(block.get("taskid"))
        failed_text = block.get("failed", "0")
        state, reason, exit_code, signal = outcome(failed_text, block.get("exit_status", ""))
        native = f"failed {failed_text}; exit_status {block.get('exit_status', '')}"
        host = block.get("hostname")
        record = JobRecord(job_id, index, state, native, reason, exit_code, host, None, signal)
        by_key[record.key] = record
    return list(by_key.values())


def parse_submit(text: str) -> str:
    """The job id from ``qsub -terse`` (``123`` / ``123.1-4:1``) or plain ``qsub``."""
    for line in reversed(nonblank_lines(text)):
        line = line.strip()
        match = re.fullmatch(r"(\d+)(\.\d+-\d+:\d+)?", line) or re.match(
            r"Your job(?:-array)? (\d+)", line
        )
        if match:
            return match.group(1)
    raise BatchOutputError("no job id in qsub output", text)


def submit_command(script_path: str, extra_args: Sequence[str] = ()) -> list[str]:
    return ["qsub", "-terse", *extra_args, str(script_path)]


def status_command(job_ids: Sequence[str]) -> list[str]:
    # qstat cannot filter by id in list mode: ask for the caller's jobs, filter after
    return ["qstat", "-xml"]


def accounting_command(job_ids: Sequence[str], owner: str | None = None, **_: object) -> list[str]:
    """``qacct -j <id>`` for one job; for several, every job of ``owner`` (qacct takes one id)."""
    if len(job_ids) == 1:
        return ["qacct", "-j", str(job_ids[0])]
    return ["qacct", "-o", owner or getpass.getuser(), "-j"]


def cancel_command(job_ids: Sequence[str]) -> list[str]:
    return ["qdel", *job_ids]


def release_command(job_ids: Sequence[str]) -> list[str]:
    return ["qrls", *job_ids]


def array_directive(size: int, job_name: str = "") -> str:
    return f"#$ -t 1-{size}"


BACKEND = Backend(
    name="sge",
    aliases=("gridengine", "grid_engine", "uge", "oge"),
    directive_prefix="#$",
    array_index_var="SGE_TASK_ID",
    job_id_var="JOB_ID",
    array_job_id_var="JOB_ID",
    array_index_base=1,
    # the max_aj_tasks default of sge_conf(5)
    max_array_size=75000,
    template_dir="sge",
    templates={"engines": "engines.sge.j2", "controller": "controller.sge.j2"},
    state_map=STATE_MAP,
    array_directive_pattern=r"^#\$\s+-t\s",
    submit_command=submit_command,
    status_command=status_command,
    accounting_command=accounting_command,
    cancel_command=cancel_command,
    release_command=release_command,
    parse_submit=parse_submit,
    parse_status=parse_qstat_xml,
    parse_accounting=parse_qacct,
    array_directive=array_directive,
    unknown_job_markers=("do not exist", "does not exist", "not found"),
    output_patterns={
        "engines": "engines-$JOB_ID.$TASK_ID.out",
        "controller": "controller-$JOB_ID.out",
    },
    unsupported={
        "qos": "Grid Engine has no QoS: use queue or project",
        "nodes": "Grid Engine places slots, not nodes: set cores (a parallel environment, options['pe'])",
    },
    description="Son of Grid Engine and relatives (qsub -t, qstat -xml, qacct)",
)
