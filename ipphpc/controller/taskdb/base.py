"""What every task-database backend provides, and the query logic they share.

Backends implement storage only (insert, update, get, scan, delete, commit); `find` is written
once here on top of them, so every backend gives the same answer to the same query.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator

from .fields import DEFAULT_KEYS, FIELDS
from .query import check, id_candidates, matches


class TaskDBError(RuntimeError):
    """The task database cannot answer (no database, a culled record); the message says why."""


class Store(ABC):
    """A task database. Called from the controller's writer thread only, never from its event loop."""

    name = "store"
    persistent = False  # whether records outlive the controller process
    #: seconds the writer lets a batch gather: a store with a high cost per batch (HDF5) asks for more
    window = 0.02
    #: whether a record may be inserted whole (task and result together, when both came in one batch):
    #: one row written instead of a row and an update; a store that keeps results apart (HDF5) says no
    whole_records = True

    @abstractmethod
    def insert(self, recs: list[dict]) -> None:
        """Add records of tasks just submitted."""

    @abstractmethod
    def update(self, items: list[tuple[str, dict]]) -> None:
        """Set fields of existing records (a result arrived, a task was resubmitted); unknown ids are ignored."""

    @abstractmethod
    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        """msg_id -> record (with `keys`) for the ids that are stored."""

    @abstractmethod
    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        """Every record with `keys` (and msg_id), in submission order."""

    @abstractmethod
    def delete(self, ids: list[str]) -> int:
        """Forget records; returns how many were stored."""

    def commit(self) -> None:  # noqa: B027 - optional: stores without transactions have nothing to do
        """Make what was written durable (called once per batch)."""

    def recover(self) -> None:  # noqa: B027 - optional, as commit
        """Get ready for the next batch after one failed to be written (a full disk)."""

    def compact(self) -> None:  # noqa: B027 - optional, as commit
        """Called when the controller went idle after a burst: stores that keep records in memory move them
        together, so that the heap pages the burst used can be given back."""

    def close(self) -> None:  # noqa: B027 - optional, as commit
        """Release files and connections."""

    def culled(self, msg_id: str) -> str | None:
        """Why a record is gone when the backend dropped it by itself (bounded memory), else None."""
        return None

    def find(self, query: dict, keys: Iterable[str] | None = None) -> list[dict]:
        """Records matching `query`, with `keys` (default: all but the payloads), in submission order."""
        keys = list(DEFAULT_KEYS if keys is None else keys)
        check(query, keys)
        if "msg_id" not in keys:
            keys.insert(0, "msg_id")
        cands = id_candidates(query)
        if cands is not None:
            got = self.get(cands, set(keys) | set(query))
            found = [got[m] for m in dict.fromkeys(cands) if m in got and matches(got[m], query)]
            return [{k: r.get(k) for k in keys} for r in found]
        need = set(query) | {"msg_id"}
        if set(keys) <= need | {"msg_id"}:
            return [{k: r.get(k) for k in keys} for r in self.scan(need) if matches(r, query)]
        ids = [r["msg_id"] for r in self.scan(need) if matches(r, query)]
        got = self.get(ids, keys)
        return [{k: got[m].get(k) for k in keys} for m in ids if m in got]
