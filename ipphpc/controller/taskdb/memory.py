"""`dict`: records in the controller's memory, bounded by a record count and a byte budget.

When either limit is passed, the oldest finished records are culled (pending ones never are);
the ids of culled records are remembered (a bounded number of them) so that asking for one
says it was culled and which limit to raise, instead of "unknown".
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator

from .base import Store
from .fields import BLOBS, FIELDS, blob_bytes


def _own(rec: dict) -> dict:
    """Copy the payload frames: a received zmq frame may share its receive buffer with its neighbours,
    so keeping a view of a small frame would keep kilobytes of other messages alive."""
    for k in BLOBS:
        v = rec.get(k)
        if v is not None:
            rec[k] = [bytes(f) for f in v]
    return rec


RECORD_OVERHEAD = 3072  # bytes a record costs beyond its payloads (dicts, header texts, frame objects)


class DictStore(Store):
    name = "dict"

    def __init__(self, record_limit: int = 100_000, size_limit: int = 64 * 2**20, cull_fraction: float = 0.1,
                 remember_culled: int = 1_000_000):
        self.records: OrderedDict[str, dict] = OrderedDict()
        self.record_limit, self.size_limit, self.cull_fraction = record_limit, size_limit, cull_fraction
        self.nbytes = 0
        self._culled: OrderedDict[str, str] = OrderedDict()
        self._remember = remember_culled

    def _size(self, rec: dict) -> int:
        return blob_bytes(rec) + RECORD_OVERHEAD + len(rec.get("header") or "") + len(rec.get("stdout") or "")

    def insert(self, recs: list[dict]) -> None:
        for r in recs:
            _own(r)
            old = self.records.pop(r["msg_id"], None)
            if old is not None:
                self.nbytes -= old["_size"]
            r["_size"] = self._size(r)
            self.records[r["msg_id"]] = r
            self.nbytes += r["_size"]
        self._cull()

    def update(self, items: list[tuple[str, dict]]) -> None:
        for mid, fields in items:
            r = self.records.get(mid)
            if r is None:
                continue
            r.update(_own(dict(fields)))
            size = self._size(r)
            self.nbytes += size - r["_size"]
            r["_size"] = size
        self._cull()

    def _cull(self) -> None:
        over_n = len(self.records) > self.record_limit
        over_b = self.nbytes > self.size_limit
        if not (over_n or over_b):
            return
        keep_n = int(self.record_limit * (1 - self.cull_fraction))
        keep_b = int(self.size_limit * (1 - self.cull_fraction))
        why = (f"culled from the controller's in-memory task database (DictDB.record_limit={self.record_limit})"
               if over_n else f"culled from the controller's in-memory task database "
                              f"(DictDB.size_limit={self.size_limit} bytes)")
        why += "; raise the limit, or use --db=sqlite or --db=hdf5 to keep every result"
        for mid in [m for m, r in self.records.items() if r["completed"] is not None]:
            if len(self.records) <= keep_n and self.nbytes <= keep_b:
                break
            self.nbytes -= self.records.pop(mid)["_size"]
            self._culled[mid] = why
        while len(self._culled) > self._remember:
            self._culled.popitem(last=False)

    def culled(self, msg_id: str) -> str | None:
        return self._culled.get(msg_id)

    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        keys = list(keys)
        recs = self.records
        return {m: {k: recs[m].get(k) for k in keys} for m in ids if m in recs}

    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        keys = list(keys)
        for r in list(self.records.values()):
            yield {k: r.get(k) for k in keys}

    def delete(self, ids: list[str]) -> int:
        n = 0
        for m in ids:
            r = self.records.pop(m, None)
            if r is not None:
                self.nbytes -= r["_size"]
                n += 1
        return n
