"""HTCondor: condor_submit / condor_q / condor_history / condor_rm.

Facts this module relies on (HTCondor 23.x behaviour):

* There is no batch *script*: a submit description file names an executable
  (here a small shell wrapper) and ``queue N`` makes N jobs ``<cluster>.0`` ..
  ``<cluster>.N-1`` in one cluster. The submit file passes ``$(Cluster)`` and
  ``$(Process)`` to the wrapper as ``IPPHPC_CONDOR_CLUSTER`` and
  ``IPPHPC_CONDOR_PROCESS``.
* ``condor_submit -terse`` prints ``2.0 - 2.3``; without it
  ``4 job(s) submitted to cluster 3.``
* ``condor_q``/``condor_history -json`` print a JSON list, or *nothing* when
  no job matches; absent attributes are left out. ``-af:j`` prints
  ``<cluster>.<proc>`` then the attributes separated by spaces, ``undefined``
  for absent ones (so only one attribute may contain spaces).
* Completed jobs leave the queue at once: their outcome is in
  ``condor_history``.
* JobStatus: 1 Idle, 2 Running, 3 Removed, 4 Completed, 5 Held,
  6 Transferring output, 7 Suspended.

HTCondor has no walltime. The templates set ``+IpphpcWalltime`` (seconds) and
``periodic_remove`` on it; a removed job whose ``RemoveReason`` names the
``PeriodicRemove`` expression and which carries ``IpphpcWalltime`` is
reported as TIMEOUT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .backend import Backend, BatchOutputError, int_or_none, nonblank_lines, signal_exit_code
from .states import JobRecord, State

ATTRIBUTES: tuple[str, ...] = (
    "ClusterId", "ProcId", "JobStatus", "ExitCode", "ExitBySignal", "ExitSignal",
    "RemoteHost", "LastRemoteHost", "IpphpcWalltime", "HoldReason", "RemoveReason",
)

STATUS_NAMES: dict[int, str] = {
    1: "Idle", 2: "Running", 3: "Removed", 4: "Completed",
    5: "Held", 6: "Transferring Output", 7: "Suspended",
}
STATE_MAP: dict[str, State] = {
    "Idle": State.PENDING,
    "Running": State.RUNNING,
    "Removed": State.CANCELLED,
    "Completed": State.COMPLETED,
    "Held": State.HELD,
    "Transferring Output": State.RUNNING,
    # a suspended job keeps its slot and resumes by itself
    "Suspended": State.RUNNING,
}


def _value(text: str) -> Any:
    """An ``-af`` value as JSON would have it: numbers, booleans, None for undefined."""
    if text == "undefined":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def parse_autoformat_rows(
    text: str, attributes: Sequence[str], free_text: str | None = None
) -> list[dict[str, Any]]:
    """Split ``-af:j <attributes>`` lines into ads with ClusterId/ProcId filled in.

    ``free_text`` names the one attribute that may contain spaces (by default
    the last one); the others are single words.
    """
    n_left = attributes.index(free_text) if free_text else len(attributes) - 1
    n_right = len(attributes) - n_left - 1
    ads = []
    for line in nonblank_lines(text):
        job, _, rest = line.strip().partition(" ")
        cluster, dot, proc = job.partition(".")
        if not (dot and cluster.isdigit() and proc.isdigit()):
            continue
        head = rest.split(None, n_left) if n_left else [rest]
        if len(head) != n_left + 1:
            continue
        tail = head[n_left].rsplit(None, n_right) if n_right else [head[n_left]]
        if len(tail) != n_right + 1:
            continue
        ad: dict[str, Any] = {"ClusterId": int(cluster), "ProcId": int(proc)}
        for name, word in zip(attributes, head[:n_left] + tail, strict=True):
            ad[name] = _value(word.strip())
        ads.append(ad)
    return ads


def _host(ad: Mapping[str, Any]) -> str | None:
    slot = ad.get("RemoteHost") or ad.get("LastRemoteHost")
    if not isinstance(slot, str) or not slot:
        return None
    return slot.rsplit("@", 1)[-1]


def record_from_ad(ad: Mapping[str, Any]) -> JobRecord | None:
    """One record from a job ad (a dict of attributes); None without JobStatus."""
    status = int_or_none(ad.get("JobStatus"))
    cluster, proc = ad.get("ClusterId"), ad.get("ProcId")
    if status is None or cluster is None:
        return None
    native = STATUS_NAMES.get(status, str(status))
    state = STATE_MAP.get(native, State.LOST)
    reason = ""
    exit_code = signal = None
    if status == 4:
        if ad.get("ExitBySignal") is True:
            signal = int_or_none(ad.get("ExitSignal"))
            state = State.FAILED
            exit_code = signal_exit_code(signal) if signal is not None else None
            reason = f"killed by signal {signal}"
        else:
            exit_code = int_or_none(ad.get("ExitCode"))
            state = State.COMPLETED if exit_code == 0 else State.FAILED
    elif status == 3:
        reason = str(ad.get("RemoveReason") or "")
        if "PeriodicRemove" in reason and ad.get("IpphpcWalltime") is not None:
            state = State.TIMEOUT
    elif status == 5:
        reason = str(ad.get("HoldReason") or "")
    index = int_or_none(proc)
    return JobRecord(
        str(cluster), index, state, native, reason, exit_code, _host(ad),
        f"{cluster}.{proc}", signal,
    )


def records_from_ads(ads: Iterable[Mapping[str, Any]]) -> list[JobRecord]:
    return [r for r in (record_from_ad(ad) for ad in ads) if r is not None]


def parse_json(text: str) -> list[JobRecord]:
    """Parse ``condor_q -json`` / ``condor_history -json``; empty output is no jobs."""
    if not text.strip():
        return []
    try:
        ads = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchOutputError(f"HTCondor printed invalid JSON ({exc})", text) from exc
    return records_from_ads(ads)


def parse_autoformat(
    text: str, attributes: Sequence[str], free_text: str | None = None
) -> list[JobRecord]:
    """Parse ``condor_q``/``condor_history -af:j <attributes>`` output."""
    return records_from_ads(parse_autoformat_rows(text, attributes, free_text))


def parse_submit(text: str) -> str:
    """The cluster id from ``condor_submit -terse`` or its plain output."""
    for line in reversed(nonblank_lines(text)):
        line = line.strip()
        match = re.fullmatch(r"(\d+)\.\d+\s*-\s*\d+\.\d+", line) or re.search(
            r"submitted to cluster (\d+)", line
        )
        if match:
            return match.group(1)
    raise BatchOutputError("no cluster id in condor_submit output", text)


def submit_command(script_path: str, extra_args: Sequence[str] = ()) -> list[str]:
    return ["condor_submit", "-terse", *extra_args, str(script_path)]


def status_command(job_ids: Sequence[str]) -> list[str]:
    return ["condor_q", "-json", "-attributes", ",".join(ATTRIBUTES), *job_ids]


def accounting_command(job_ids: Sequence[str], **_: object) -> list[str]:
    return ["condor_history", "-json", "-attributes", ",".join(ATTRIBUTES), *job_ids]


def cancel_command(job_ids: Sequence[str]) -> list[str]:
    return ["condor_rm", *job_ids]


def release_command(job_ids: Sequence[str]) -> list[str]:
    return ["condor_release", *job_ids]


def array_directive(size: int, job_name: str = "") -> str:
    return f"queue {size}"


BACKEND = Backend(
    name="htcondor",
    aliases=("condor",),
    directive_prefix="",
    array_index_var="IPPHPC_CONDOR_PROCESS",
    job_id_var="IPPHPC_CONDOR_CLUSTER",
    array_job_id_var="IPPHPC_CONDOR_CLUSTER",
    array_index_base=0,
    # HTCondor has no array limit of its own; this keeps one submission's
    # load on the schedd moderate
    max_array_size=10000,
    template_dir="htcondor",
    templates={
        "engines": "engines.sub.j2",
        "engines-wrapper": "engines.sh.j2",
        "controller": "controller.sub.j2",
        "controller-wrapper": "controller.sh.j2",
    },
    state_map=STATE_MAP,
    array_directive_pattern=r"^\s*queue\s+(\d+|\$\(\w+\))",
    submit_command=submit_command,
    status_command=status_command,
    accounting_command=accounting_command,
    cancel_command=cancel_command,
    release_command=release_command,
    parse_submit=parse_submit,
    parse_status=parse_json,
    parse_accounting=parse_json,
    array_directive=array_directive,
    output_patterns={
        "engines": "engines-$(Cluster).$(Process).out",
        "controller": "controller-$(Cluster).out",
    },
    unsupported={
        "queue": "HTCondor has no queues: use constraint (requirements = ...) to choose machines, "
                 "or account (accounting_group)",
        "project": "HTCondor has no projects: use account (accounting_group)",
        "qos": "HTCondor has no QoS: use account (accounting_group) or extra_directives (priority = N)",
        "nodes": "an HTCondor vanilla job runs on one machine: use cores",
        "exclusive": "HTCondor has no exclusive nodes: ask for all of a machine's cores, or use constraint",
        "reservation": "HTCondor has no reservations: use constraint (requirements = ...)",
    },
    description="HTCondor (condor_submit queue N, condor_q/condor_history -json)",
)
