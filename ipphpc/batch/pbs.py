"""PBS in its two living flavours: PBS Professional / OpenPBS, and Torque.

Both submit with ``qsub`` (which prints ``1234.server``, or ``1234[].server``
for an array) and cancel with ``qdel``; they differ where it matters here:

===================  ==============================  ================================
                     PBS Pro / OpenPBS               Torque
===================  ==============================  ================================
array directive      ``-J 0-9`` (at least 2 indices) ``-t 0-9``
index variable       ``PBS_ARRAY_INDEX``             ``PBS_ARRAYID``
subjob id            ``1234[3].server``              ``1234[3].server`` (old: ``1234-3``)
status               ``qstat -f -F json -t <ids>``   ``qstat -f -1 -t <ids>`` (text)
finished jobs        ``qstat -x`` (job history)      state ``C`` for ``keep_completed`` s
exit attribute       ``Exit_status``                 ``exit_status``
``qstat -x`` means   include finished jobs           XML output
===================  ==============================  ================================

Exit status conventions (PBS Pro Reference Guide, "Job Exit Status"; Torque
Administrator Guide, "Job Exit Status"): 0 and positive values are the job
script's own code; values above 256 mean the job shell was killed by signal
``value - 256`` (``271`` = SIGTERM, what ``qdel`` sends first); negative values
are PBS's own ``JOB_EXEC_*`` codes. Walltime kills are ``-29``
(``JOB_EXEC_KILL_WALLTIME``) on PBS Pro and ``-11`` (``JOB_EXEC_OVERLIMIT_WT``)
on Torque. Older PBS Pro versions report a walltime kill as a plain ``271``,
which is then indistinguishable from ``qdel`` unless the job comment mentions
the walltime.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any

from .backend import (
    Backend,
    BatchOutputError,
    expand_index_list,
    int_or_none,
    nonblank_lines,
    signal_exit_code,
)
from .states import JobRecord, State

ACTIVE_STATES: dict[str, State] = {
    "Q": State.PENDING,
    "W": State.PENDING,  # waiting for its start time
    "T": State.PENDING,  # being moved between servers
    "H": State.HELD,
    "R": State.RUNNING,
    "E": State.RUNNING,  # exiting: still holds its nodes
    "B": State.RUNNING,  # an array with at least one subjob started
    "S": State.RUNNING,  # suspended: resumes by itself
    "U": State.RUNNING,  # suspended by workstation activity
    "M": State.LOST,  # moved to another server: no longer ours to follow
}
#: states that mean "ended"; the exit status decides how
FINISHED_STATES = frozenset({"F", "X", "C"})

#: the JOB_EXEC_* codes worth naming (PBS Pro)
PBSPRO_EXEC_CODES: dict[int, tuple[State, str]] = {
    -29: (State.TIMEOUT, "killed for exceeding its walltime (JOB_EXEC_KILL_WALLTIME)"),
    -28: (State.FAILED, "killed for exceeding its cput (JOB_EXEC_KILL_CPUT)"),
    -27: (State.FAILED, "killed for exceeding its memory (JOB_EXEC_KILL_MEM)"),
    -26: (State.FAILED, "killed for exceeding its vmem (JOB_EXEC_KILL_VMEM)"),
    -25: (State.FAILED, "killed for using more CPUs than requested (JOB_EXEC_KILL_NCPUS_SUM)"),
    -24: (State.FAILED, "killed for a CPU burst (JOB_EXEC_KILL_NCPUS_BURST)"),
}
TORQUE_EXEC_CODES: dict[int, tuple[State, str]] = {
    -10: (State.FAILED, "exceeded a memory limit (JOB_EXEC_OVERLIMIT_MEM)"),
    -11: (State.TIMEOUT, "exceeded its walltime (JOB_EXEC_OVERLIMIT_WT)"),
    -12: (State.FAILED, "exceeded a cpu time limit (JOB_EXEC_OVERLIMIT_CPUT)"),
}
#: signals that end a job because someone (qdel, an admin) asked for it
_CANCEL_SIGNALS = frozenset({1, 2, 9, 15})
_WALLTIME_COMMENT = re.compile(r"walltime.*(exceed|limit)|exceed.*walltime", re.IGNORECASE)
_SUBJOB = re.compile(r"^(?P<num>\d+)\[(?P<index>\d*)\](?P<rest>.*)$")
_OLD_TORQUE_SUBJOB = re.compile(r"^(?P<num>\d+)-(?P<index>\d+)(?P<rest>(\..*)?)$")


def split_job_id(job_id: str) -> tuple[str, int | None, bool]:
    """``1234[3].srv`` -> (``1234[].srv``, 3, True); ``1234[].srv`` -> (.., None, True)."""
    match = _SUBJOB.match(job_id) or _OLD_TORQUE_SUBJOB.match(job_id)
    if not match:
        return job_id, None, False
    parent = f"{match['num']}[]{match['rest']}"
    return parent, (int(match["index"]) if match["index"] else None), True


def first_host(exec_host: str | None) -> str | None:
    """``node1/0*2+node2/0*2`` -> ``node1``."""
    if not exec_host:
        return None
    return re.split(r"[/+:]", exec_host.strip(), maxsplit=1)[0] or None


def finished_outcome(
    exit_status: int | None, comment: str, exec_codes: Mapping[int, tuple[State, str]]
) -> tuple[State, str, int | None, int | None]:
    """(state, reason, exit code, signal) of a job that has ended.

    Negative statuses are PBS's own codes, not the job's: they are named in the
    reason and the exit code is left unknown.
    """
    comment = comment.strip()
    if exit_status is None:
        reason = f"ended without running: {comment}" if comment else "ended without running"
        return State.CANCELLED, reason, None, None
    if _WALLTIME_COMMENT.search(comment):
        return State.TIMEOUT, comment, exit_status if exit_status >= 0 else None, None
    if exit_status in exec_codes:
        state, reason = exec_codes[exit_status]
        return state, f"{reason}, exit status {exit_status}", None, None
    if exit_status > 256:
        signal = exit_status - 256
        state = State.CANCELLED if signal in _CANCEL_SIGNALS else State.FAILED
        return state, f"killed by signal {signal}", signal_exit_code(signal), signal
    if exit_status == 0:
        return State.COMPLETED, "", 0, None
    if exit_status < 0:
        return State.FAILED, f"PBS could not run the job (exit status {exit_status})", None, None
    return State.FAILED, f"exit status {exit_status}", exit_status, None


def _attr(attrs: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in attrs:
            return attrs[name]
    return None


def records_from_jobs(
    jobs: Mapping[str, Mapping[str, Any]], exec_codes: Mapping[int, tuple[State, str]]
) -> list[JobRecord]:
    """Turn ``{job id: attributes}`` (from JSON, text or XML) into records.

    An array parent is reported through its subjobs when they are listed
    (``qstat -t``); otherwise it stands for every index it was submitted with.
    """
    parents_with_subjobs = set()
    for job_id in jobs:
        parent, index, _ = split_job_id(job_id)
        if index is not None:
            parents_with_subjobs.add(parent)
    records: list[JobRecord] = []
    for job_id, attrs in jobs.items():
        parent, index, is_array = split_job_id(job_id)
        if is_array and index is None and parent in parents_with_subjobs:
            continue
        native = str(_attr(attrs, "job_state") or "")
        comment = str(_attr(attrs, "comment") or "")
        host = first_host(_attr(attrs, "exec_host"))
        exit_status = int_or_none(_attr(attrs, "Exit_status", "exit_status"))
        if native in FINISHED_STATES:
            state, reason, exit_code, signal = finished_outcome(exit_status, comment, exec_codes)
        else:
            state, reason = ACTIVE_STATES.get(native, State.LOST), comment.strip()
            exit_code = signal = None
        if index is None and is_array:
            submitted = _attr(attrs, "array_indices_submitted", "job_array_request")
            indices: list[int | None] = list(expand_index_list(str(submitted))) if submitted else [None]
        else:
            indices = [index]
        for idx in indices:
            native_id = job_id if idx == index else None
            records.append(
                JobRecord(parent, idx, state, native, reason, exit_code, host, native_id, signal)
            )
    return records


_ESCAPE = re.compile(r'\\(["\\/bfnrtu])|\\')
_LEADING_ZEROS = re.compile(r'(:\s*)(-?0\d+)(\s*[,}\n])')


def loads_lenient(text: str) -> Any:
    """``json.loads`` that survives the escaping faults of some PBS Pro versions.

    Reported against OpenPBS 19/20: ``\\,`` and ``\\'`` left in environment
    values, and all-digit values printed as numbers with leading zeros.
    """
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        pass
    fixed = _ESCAPE.sub(lambda m: m.group(0) if m.group(1) else "\\\\", text)
    fixed = _LEADING_ZEROS.sub(r'\1"\2"\3', fixed)
    return json.loads(fixed, strict=False)


_JOB_HEADER = re.compile(r'^\s*"(\d+(?:\[\d*\])?(?:\.[^"]*)?)"\s*:\s*\{\s*$')
_KEPT = ("job_state", "Exit_status", "comment", "exec_host", "array_indices_submitted")
_ATTRIBUTE_LINE = re.compile(r'^\s*"(' + "|".join(_KEPT) + r')"\s*:\s*(.*?)\s*,?\s*$')


def salvage_jobs(text: str) -> dict[str, dict[str, Any]]:
    """Pick the attributes ipphpc needs out of JSON too broken to load.

    qstat prints one attribute per line, so the lines naming a job and the few
    attributes read here survive even when an exported shell function with
    unescaped quotes breaks the document as a whole.
    """
    jobs: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        header = _JOB_HEADER.match(line)
        if header:
            current = jobs.setdefault(header.group(1), {})
            continue
        match = _ATTRIBUTE_LINE.match(line) if current is not None else None
        if match and match.group(1) not in current:  # type: ignore[operator]
            try:
                value = json.loads(match.group(2))
            except json.JSONDecodeError:
                value = match.group(2).strip('"')
            current[match.group(1)] = value  # type: ignore[index]
    return jobs


def parse_qstat_json(
    text: str, exec_codes: Mapping[int, tuple[State, str]] = PBSPRO_EXEC_CODES
) -> list[JobRecord]:
    """Parse PBS Pro ``qstat -f -F json [-x] [-t]``; no matching job means no ``Jobs`` key."""
    if not text.strip():
        return []
    try:
        jobs = loads_lenient(text).get("Jobs") or {}
    except json.JSONDecodeError as exc:
        jobs = salvage_jobs(text)
        if not jobs:
            raise BatchOutputError(f"qstat printed invalid JSON ({exc})", text) from exc
    return records_from_jobs(jobs, exec_codes)


def parse_qstat_full_text(text: str) -> dict[str, dict[str, str]]:
    """Split ``qstat -f`` text into ``{job id: {attribute: value}}``.

    Blocks start with ``Job Id: <id>``; attributes are indented ``name = value``
    lines; a value folded onto the next line continues after a leading tab.
    """
    jobs: dict[str, dict[str, str]] = {}
    attrs: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last = ""
        elif attrs is None or not line.strip():
            continue
        elif line.startswith("\t") and last:
            attrs[last] += line.strip()
        elif " = " in line:
            name, value = line.strip().split(" = ", 1)
            attrs[name] = value
            last = name
    return jobs


def parse_qstat_xml(text: str) -> dict[str, dict[str, str]]:
    """Split Torque ``qstat -x`` XML (``<Data><Job><Job_Id>...``) into attributes."""
    text = text.strip()
    if not text:
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise BatchOutputError(f"qstat printed invalid XML ({exc})", text) from exc
    jobs: dict[str, dict[str, str]] = {}
    for job in root.iter("Job"):
        attrs = {child.tag: (child.text or "").strip() for child in job if len(child) == 0}
        if "Job_Id" in attrs:
            jobs[attrs["Job_Id"]] = attrs
    return jobs


def parse_torque_status(text: str) -> list[JobRecord]:
    """Parse Torque ``qstat -f`` text or ``qstat -x`` XML, whichever it is."""
    stripped = text.lstrip()
    jobs = parse_qstat_xml(stripped) if stripped.startswith("<") else parse_qstat_full_text(text)
    return records_from_jobs(jobs, TORQUE_EXEC_CODES)


def parse_submit(text: str) -> str:
    """The job id ``qsub`` printed: ``1234.server`` or ``1234[].server``."""
    for line in reversed(nonblank_lines(text)):
        line = line.strip()
        if re.fullmatch(r"\d+(\[\])?(\.[\w.-]+)?", line):
            return line
    raise BatchOutputError("no job id in qsub output", text)


def submit_command(script_path: str, extra_args: Sequence[str] = ()) -> list[str]:
    return ["qsub", *extra_args, str(script_path)]


def cancel_command(job_ids: Sequence[str]) -> list[str]:
    return ["qdel", *job_ids]


def release_command(job_ids: Sequence[str]) -> list[str]:
    return ["qrls", *job_ids]


def pbspro_status_command(job_ids: Sequence[str]) -> list[str]:
    return ["qstat", "-f", "-F", "json", "-t", *job_ids]


def pbspro_accounting_command(job_ids: Sequence[str], **_: object) -> list[str]:
    return ["qstat", "-x", "-f", "-F", "json", "-t", *job_ids]


def torque_status_command(job_ids: Sequence[str]) -> list[str]:
    return ["qstat", "-f", "-1", "-t", *job_ids]


def pbspro_array_directive(size: int, job_name: str = "") -> str:
    # PBS Pro refuses a one-index range ("illegal -J value"): submit a plain job
    return f"#PBS -J 0-{size - 1}" if size > 1 else ""


def torque_array_directive(size: int, job_name: str = "") -> str:
    return f"#PBS -t 0-{size - 1}"


_COMMON: dict[str, Any] = dict(
    directive_prefix="#PBS",
    job_id_var="PBS_JOBID",
    array_job_id_var="PBS_JOBID",
    array_index_base=0,
    template_dir="pbs",
    templates={"engines": "engines.pbs.j2", "controller": "controller.pbs.j2"},
    submit_command=submit_command,
    cancel_command=cancel_command,
    release_command=release_command,
    parse_submit=parse_submit,
    unknown_job_markers=("Unknown Job Id", "Job has finished"),
)

PBSPRO = Backend(
    name="pbspro",
    aliases=("pbs", "openpbs"),
    array_index_var="PBS_ARRAY_INDEX",
    # PBS Pro's server attribute max_array_size defaults to 10000
    max_array_size=10000,
    state_map={**ACTIVE_STATES, "F": State.COMPLETED, "X": State.COMPLETED},
    array_directive_pattern=r"^#PBS\s+-J\s",
    status_command=pbspro_status_command,
    accounting_command=pbspro_accounting_command,
    parse_status=parse_qstat_json,
    parse_accounting=parse_qstat_json,
    array_directive=pbspro_array_directive,
    # PBS Pro substitutes the subjob index in -o but not the job id
    output_patterns={"engines": "engines-{array_start}-^array_index^.out", "controller": "controller.out"},
    unsupported={
        "qos": "PBS Pro has no QoS: use queue",
        "reservation": "a PBS Pro reservation is a queue: use queue=<reservation id> (R123 or S123)",
    },
    description="PBS Professional / OpenPBS (qsub -J, qstat -F json, qstat -x for history)",
    **_COMMON,
)

TORQUE = Backend(
    name="torque",
    aliases=(),
    array_index_var="PBS_ARRAYID",
    # Torque has no array limit unless the server sets max_job_array_size
    max_array_size=10000,
    state_map={**ACTIVE_STATES, "C": State.COMPLETED},
    array_directive_pattern=r"^#PBS\s+-t\s",
    status_command=torque_status_command,
    parse_status=parse_torque_status,
    array_directive=torque_array_directive,
    # Torque substitutes no pattern in -o, but given a directory it writes
    # <job name>.o<job number>[-<index>] there, its own notices included
    output_patterns={"engines": "{job_name}.o$JOB_ID-$TASK_ID", "controller": "{job_name}.o$JOB_ID"},
    unsupported={
        "project": "Torque's -P is a proxy user, not a project: use account (-A)",
        "qos": "Torque has no QoS of its own (Moab reads one): add '-l qos=NAME' with extra_directives",
        "reservation": "Torque has no reservations of its own (Moab reads one): add '-l advres=NAME' with "
                       "extra_directives",
    },
    description="Torque (qsub -t, qstat -f; finished jobs stay as C for keep_completed)",
    **_COMMON,
)
