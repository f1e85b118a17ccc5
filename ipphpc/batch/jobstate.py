"""What is known about submitted batch jobs and their elements, and how new word changes it.

Pure: an element's status (:class:`ElementStatus`), a tracked job (:class:`TrackedJob`), and the
functions that fold a scheduler's record, an exit code or a cancel into a status. The poller of
:mod:`ipphpc.launch.poller` asks the scheduler and applies these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from .states import JobRecord, State, short_job_id, state_from_exit_code

Key = tuple[str, "int | None"]


# -- what is known about one element --------------------------------------------------------
@dataclass(frozen=True)
class ElementStatus:
    """The latest word on one array element (or single job).

    ``source`` says where it came from: ``submitted`` (nothing seen yet),
    ``status``, ``accounting``, ``exit-file``, ``lost`` or ``cancel``.
    """

    job_id: str
    array_index: int | None
    state: State
    native_state: str = ""
    reason: str = ""
    exit_code: int | None = None
    host: str | None = None
    #: when the element entered ``state`` (seconds since the epoch)
    since: float = 0.0
    native_id: str | None = None
    signal: int | None = None
    source: str = "submitted"
    #: when a poll last said anything about the element
    updated: float = 0.0
    #: since when the element is absent from the status output (None: it is listed)
    missing_since: float | None = None
    #: a finished element whose outcome needs no further lookup
    resolved: bool = False

    @property
    def key(self) -> Key:
        return (self.job_id, self.array_index)

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def active(self) -> bool:
        return self.state.active

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ElementStatus:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["state"] = State(known["state"])
        return cls(**known)


@dataclass
class TrackedJob:
    """A submitted job and the elements it should have.

    ``elements`` maps the scheduler's index of each element (None for a job
    that is not an array) to the index its exit file carries (None: no index).
    """

    job_id: str
    elements: dict[int | None, int | None]
    cluster_id: str = ""
    role: str = "engines"
    submitted_at: float = 0.0
    cancel_requested_at: float | None = None
    wanted_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "elements": [[i, e] for i, e in self.elements.items()],
            "cluster_id": self.cluster_id,
            "role": self.role,
            "submitted_at": self.submitted_at,
            "cancel_requested_at": self.cancel_requested_at,
            "wanted_at": self.wanted_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrackedJob:
        return cls(
            job_id=str(d["job_id"]),
            elements={i: e for i, e in d.get("elements", [[None, None]])},
            cluster_id=d.get("cluster_id", ""),
            role=d.get("role", "engines"),
            submitted_at=d.get("submitted_at", 0.0),
            cancel_requested_at=d.get("cancel_requested_at"),
            wanted_at=d.get("wanted_at", 0.0),
        )


def index_key(index: int | None) -> str:
    return "-" if index is None else str(index)


def index_from_key(text: str) -> int | None:
    return None if text == "-" else int(text)


# -- how new word changes an element ------------------------------------------------------
def match_records(records: Iterable[JobRecord], jobs: Mapping[str, TrackedJob]) -> dict[Key, JobRecord]:
    """Records keyed by tracked element; a single job takes its one record whatever its index."""
    by_short: dict[str, str] = {}
    for job_id in jobs:
        by_short.setdefault(short_job_id(job_id), job_id)
    grouped: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        job_id = record.job_id if record.job_id in jobs else by_short.get(short_job_id(record.job_id))
        if job_id is not None:
            grouped[job_id].append(record)
    matched: dict[Key, JobRecord] = {}
    for job_id, found in grouped.items():
        elements = jobs[job_id].elements
        if len(elements) == 1:
            (index,) = elements
            exact = [r for r in found if r.array_index == index]
            matched[(job_id, index)] = (exact or found)[-1]
            continue
        for record in found:
            if record.array_index in elements:
                matched[(job_id, record.array_index)] = record
    return matched


def merge_record(current: ElementStatus, record: JobRecord, source: str, now: float,
                 resolved: bool | None = None) -> ElementStatus:
    exit_code = record.exit_code
    if exit_code is None and record.state == current.state:
        exit_code = current.exit_code
    return ElementStatus(
        job_id=current.job_id,
        array_index=current.array_index,
        state=record.state,
        native_state=record.native_state,
        reason=record.reason,
        exit_code=exit_code,
        host=record.host or current.host,
        since=current.since if record.state == current.state else now,
        native_id=record.native_id or current.native_id,
        signal=record.signal if record.signal is not None else current.signal,
        source=source,
        updated=now,
        missing_since=None,
        resolved=(record.finished and exit_code is not None) if resolved is None else resolved,
    )


def cancel_aware(job: TrackedJob, status: ElementStatus) -> ElementStatus:
    """A job script that traps the cancel's SIGTERM exits 143 by itself: still a cancel."""
    if (job.cancel_requested_at is None or status.state is not State.FAILED
            or not ((status.exit_code or 0) > 128 or status.signal)):
        return status
    detail = status.reason or f"exit code {status.exit_code}"
    return replace(status, state=State.CANCELLED, reason=f"cancelled ({detail})")


def ended(current: ElementStatus, state: State, reason: str, source: str, now: float) -> ElementStatus:
    return replace(current, state=state, native_state="", reason=reason, source=source, updated=now,
                   since=current.since if state == current.state else now, resolved=True)


def from_exit_code(current: ElementStatus, job: TrackedJob, code: int, now: float) -> ElementStatus:
    """What an exit file's code says about an element the scheduler no longer lists."""
    if current.finished:  # the scheduler said how; the file adds the code
        return replace(current, exit_code=code, updated=now, resolved=True)
    state = state_from_exit_code(code)
    reason = f"exit code {code} from its exit file; the scheduler no longer lists it"
    if code != 0 and job.cancel_requested_at is not None:
        state, reason = State.CANCELLED, f"cancelled; its exit file says {code}"
    return replace(current, state=state, native_state="", reason=reason, exit_code=code,
                   since=current.since if state == current.state else now, source="exit-file",
                   updated=now, resolved=True,
                   signal=code - 128 if code > 128 else current.signal)
