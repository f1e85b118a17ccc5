"""IBM Spectrum LSF: bsub / bjobs / bkill.

Facts this module relies on (LSF 10.1 command reference):

* ``bsub < script`` reads ``#BSUB`` lines only when the script comes on
  standard input, hence :attr:`Backend.submit_via_stdin`. It prints
  ``Job <1234> is submitted to default queue <normal>.``
* Arrays are part of the job name: ``-J "name[1-10]"``. Indices start at 1;
  ``LSB_JOBINDEX`` holds the index (0 outside arrays) and ``LSB_JOBID`` the
  array's id, the same for every element.
* ``bjobs -o "<fields> delimiter='|'" -noheader`` prints one line per element
  with ``-`` for empty fields; ``-json -o ...`` prints
  ``{"COMMAND":"bjobs","JOBS":n,"RECORDS":[{"JOBID":...}]}``. ``-a`` adds
  jobs finished within ``CLEAN_PERIOD`` (one hour by default), ``-d`` shows
  only those. An unknown id prints ``Job <123> is not found``.
* States: PEND, PROV, WAIT, PSUSP (suspended while pending: held), RUN,
  USUSP/SSUSP (suspended while running), DONE, EXIT, UNKWN, ZOMBI. Why an EXIT
  happened is in ``exit_reason`` (``TERM_RUNLIMIT: job killed after reaching
  LSF run time limit``, ``TERM_OWNER: job killed by owner``...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from .backend import Backend, BatchOutputError, int_or_none, nonblank_lines
from .states import JobRecord, State

BJOBS_FIELDS: tuple[str, ...] = (
    "jobid", "jobindex", "stat", "exit_code", "exec_host", "exit_reason", "pend_reason",
)

STATE_MAP: dict[str, State] = {
    "PEND": State.PENDING,
    "PROV": State.PENDING,
    "WAIT": State.PENDING,
    "PSUSP": State.HELD,
    "RUN": State.RUNNING,
    # suspended jobs keep their slots and resume by themselves
    "USUSP": State.RUNNING,
    "SSUSP": State.RUNNING,
    "DONE": State.COMPLETED,
    "EXIT": State.FAILED,
    "UNKWN": State.LOST,
    # killed while its host was unreachable
    "ZOMBI": State.CANCELLED,
}

_TIMEOUT_TERMS = ("TERM_RUNLIMIT", "TERM_DEADLINE")
_CANCEL_TERMS = (
    "TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN",
    "TERM_PREEMPT", "TERM_REQUEUE_OWNER", "TERM_REQUEUE_ADMIN",
)


def map_state(native: str, exit_reason: str = "") -> State:
    """LSF status word (plus the exit reason of an EXIT) -> State."""
    state = STATE_MAP.get(native, State.LOST)
    if native == "EXIT":
        if exit_reason.startswith(_TIMEOUT_TERMS):
            return State.TIMEOUT
        if exit_reason.startswith(_CANCEL_TERMS):
            return State.CANCELLED
    return state


def first_host(exec_host: str) -> str | None:
    """``4*hostA:2*hostB`` -> ``hostA``."""
    if not exec_host:
        return None
    first = exec_host.split(":", 1)[0]
    return first.split("*", 1)[-1] or None


def _clean(value: object) -> str:
    text = str(value if value is not None else "").strip()
    return "" if text == "-" else text


def record_from_row(row: Mapping[str, object]) -> JobRecord | None:
    """One record from lower-case field names (``jobid``, ``stat``...)."""
    job_id = _clean(row.get("jobid"))
    native = _clean(row.get("stat"))
    if not job_id or not native:
        return None
    index = int_or_none(_clean(row.get("jobindex")))
    exit_reason = _clean(row.get("exit_reason"))
    state = map_state(native, exit_reason)
    exit_code = int_or_none(_clean(row.get("exit_code")))
    if native == "DONE" and exit_code is None:
        exit_code = 0
    reason = exit_reason or _clean(row.get("pend_reason")).rstrip(";")
    return JobRecord(
        job_id, index or None, state, native, reason, exit_code,
        first_host(_clean(row.get("exec_host"))),
        f"{job_id}[{index}]" if index else job_id,
    )


def parse_bjobs_text(text: str, fields: Sequence[str] = BJOBS_FIELDS, sep: str = "|") -> list[JobRecord]:
    """Parse ``bjobs -o "<fields> delimiter='|'" -noheader``; other lines are skipped."""
    records = []
    for line in nonblank_lines(text):
        parts = line.split(sep)
        if len(parts) != len(fields):
            continue
        record = record_from_row(dict(zip(fields, parts, strict=True)))
        if record is not None:
            records.append(record)
    return records


def parse_bjobs_json(text: str) -> list[JobRecord]:
    """Parse ``bjobs -json -o ...``; records carrying an ``ERROR`` are unknown ids."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchOutputError(f"bjobs printed invalid JSON ({exc})", text) from exc
    records = []
    for raw in data.get("RECORDS", []):
        if raw.get("ERROR"):
            continue
        record = record_from_row({key.lower(): value for key, value in raw.items()})
        if record is not None:
            records.append(record)
    return records


def parse_bjobs(text: str) -> list[JobRecord]:
    """Parse either bjobs output form."""
    return parse_bjobs_json(text) if text.lstrip().startswith("{") else parse_bjobs_text(text)


def parse_submit(text: str) -> str:
    match = re.search(r"Job <(\d+)> is submitted", text)
    if not match:
        raise BatchOutputError("no job id in bsub output", text)
    return match.group(1)


def submit_command(script_path: str = "", extra_args: Sequence[str] = ()) -> list[str]:
    """``bsub``; the caller feeds the script on standard input (``bsub < script``)."""
    return ["bsub", *extra_args]


def _bjobs(flag: str, job_ids: Sequence[str]) -> list[str]:
    return ["bjobs", flag, "-noheader", "-o", " ".join(BJOBS_FIELDS) + " delimiter='|'", *job_ids]


def status_command(job_ids: Sequence[str]) -> list[str]:
    return _bjobs("-a", job_ids)


def accounting_command(job_ids: Sequence[str], **_: object) -> list[str]:
    return _bjobs("-d", job_ids)


def cancel_command(job_ids: Sequence[str]) -> list[str]:
    return ["bkill", *job_ids]


def release_command(job_ids: Sequence[str]) -> list[str]:
    return ["bresume", *job_ids]


def array_directive(size: int, job_name: str = "ipphpc-engines") -> str:
    return f'#BSUB -J "{job_name}[1-{size}]"'


BACKEND = Backend(
    name="lsf",
    aliases=("spectrum-lsf", "openlava"),
    directive_prefix="#BSUB",
    array_index_var="LSB_JOBINDEX",
    job_id_var="LSB_JOBID",
    array_job_id_var="LSB_JOBID",
    array_index_base=1,
    # lsb.params MAX_JOB_ARRAY_SIZE defaults to 1000
    max_array_size=1000,
    template_dir="lsf",
    templates={"engines": "engines.lsf.j2", "controller": "controller.lsf.j2"},
    state_map=STATE_MAP,
    array_directive_pattern=r"^#BSUB\s+-J\s+\S*\[",
    submit_command=submit_command,
    status_command=status_command,
    accounting_command=accounting_command,
    cancel_command=cancel_command,
    release_command=release_command,
    parse_submit=parse_submit,
    parse_status=parse_bjobs,
    parse_accounting=parse_bjobs,
    array_directive=array_directive,
    submit_via_stdin=True,
    unknown_job_markers=("is not found",),
    output_patterns={"engines": "engines-%J_%I.out", "controller": "controller-%J.out"},
    unsupported={
        "account": "LSF charges projects: use project (-P)",
        "qos": "LSF has no QoS: use queue, or '-sla SERVICE_CLASS' with extra_directives",
    },
    description="IBM Spectrum LSF (bsub < script, bjobs -o, bkill)",
)
