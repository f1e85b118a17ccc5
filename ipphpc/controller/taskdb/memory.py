"""`dict`: records in the controller's memory, bounded by a record count and a byte budget.

When either limit is passed, the oldest finished records are culled (pending ones never are);
the ids of culled records are remembered (a bounded number of them) so that asking for one
says it was culled and which limit to raise, instead of "unknown".
"""
from __future__ import annotations

import bisect
import marshal
from collections import OrderedDict
from typing import Iterable, Iterator

from .base import Store
from .fields import BLOBS, FIELDS, blob_bytes

# frames at least this large are kept as received: zmq gives each its own buffer, and copying one would
# double what the controller holds and stall routing meanwhile
_SHARED_BELOW = 64 * 1024


def _own(rec: dict) -> dict:
    """Copy the small payload frames: a small received zmq frame may share its receive buffer with its
    neighbours, so keeping a view of it would keep kilobytes of other messages alive."""
    for k in BLOBS:
        v = rec.get(k)
        if v is not None:
            rec[k] = [f if memoryview(f).nbytes >= _SHARED_BELOW else bytes(f) for f in v]
    return rec


class CulledIds:
    """The ids of culled records and why, in little memory. A task id is `<session>-<n>` and culling takes
    the oldest first, so a session's culled ids are kept as a few runs of n; other ids one by one. At most
    `limit` runs and ids are kept, the oldest sessions forgotten first."""

    def __init__(self, limit: int):
        self.limit = limit
        self.reasons: list[str] = []
        self.runs: OrderedDict[str, list[list[int]]] = OrderedDict()  # session -> sorted [first, last, reason]
        self.other: OrderedDict[str, int] = OrderedDict()
        self.count = 0  # runs + other ids

    def add(self, msg_id: str, why: str) -> None:
        if why not in self.reasons:  # a handful: which limit, with its value
            self.reasons.append(why)
        r = self.reasons.index(why)
        session, _, num = msg_id.rpartition("-")
        if not (session and num.isdigit()):
            if msg_id not in self.other:
                self.count += 1
            self.other[msg_id] = r
        else:
            self._add_run(session, int(num), r)
        while self.count > self.limit:
            self._forget_oldest()

    def _add_run(self, session: str, n: int, r: int) -> None:
        runs = self.runs.setdefault(session, [])
        i = bisect.bisect_right(runs, [n, float("inf")])  # runs[i-1] starts at or before n
        if i and runs[i - 1][1] >= n:
            return  # already there
        if i and runs[i - 1][1] == n - 1 and runs[i - 1][2] == r:
            runs[i - 1][1] = n
            if i < len(runs) and runs[i][0] == n + 1 and runs[i][2] == r:  # closes a gap: join the two runs
                runs[i - 1][1] = runs.pop(i)[1]
                self.count -= 1
        elif i < len(runs) and runs[i][0] == n + 1 and runs[i][2] == r:
            runs[i][0] = n
        else:
            runs.insert(i, [n, n, r])
            self.count += 1

    def _forget_oldest(self) -> None:
        if self.other and (not self.runs or len(self.other) >= self.count // 2):
            self.other.popitem(last=False)
            self.count -= 1
            return
        session, runs = next(iter(self.runs.items()))
        runs.pop(0)
        self.count -= 1
        if not runs:
            del self.runs[session]

    def renew(self) -> None:
        """Remake every run and id in fresh memory. Runs are made and extended all through a burst, each
        small object landing in whatever hole the burst left; a few dozen of them would each keep a 1 MiB
        arena of Python's allocator alive once the burst's other objects are gone (40-70 MiB after a
        200,000-task map)."""
        blob = marshal.dumps((list(self.runs.items()), list(self.other.items())))
        self.runs, self.other = OrderedDict(), OrderedDict()
        runs, other = marshal.loads(blob)
        self.runs, self.other = OrderedDict(runs), OrderedDict(other)

    def get(self, msg_id: str) -> str | None:
        r = self.other.get(msg_id)
        if r is None:
            session, _, num = msg_id.rpartition("-")
            runs = self.runs.get(session) if num.isdigit() else None
            if runs:
                n = int(num)
                i = bisect.bisect_right(runs, [n, float("inf")])
                if i and runs[i - 1][1] >= n:
                    r = runs[i - 1][2]
        return None if r is None else self.reasons[r]


RECORD_OVERHEAD = 3072  # bytes a record costs beyond its payloads (dicts, header texts, frame objects)
PACKED_OVERHEAD = 200  # bytes a packed record costs beyond its length (its key, its place in the index)


_PACK = tuple(k for k in FIELDS if k != "msg_id")  # the order of a packed record's values


def _packable(rec: dict) -> bool:
    """Finished, and no frame kept as received (those are zmq's buffers, not bytes to marshal)."""
    if rec["completed"] is None:
        return False
    return all(type(f) is bytes for k in BLOBS for f in rec.get(k) or ())


def _pack(rec: dict) -> bytes:
    """`msg_id`, a newline, then the other values marshalled: the key can be read back without the rest."""
    return rec["msg_id"].encode() + b"\n" + marshal.dumps(tuple(rec.get(k) for k in _PACK))


def _key(packed: bytes) -> str:
    return packed[:packed.index(b"\n")].decode()


def _unpack(mid: str, packed: bytes) -> dict:
    rec = dict(zip(_PACK, marshal.loads(memoryview(packed)[len(mid) + 1:])))
    rec["msg_id"] = mid
    rec["_size"] = len(packed) + PACKED_OVERHEAD
    return rec


class DictStore(Store):
    name = "dict"

    def __init__(self, record_limit: int = 100_000, size_limit: int = 64 * 2**20, cull_fraction: float = 0.1,
                 remember_culled: int = 100_000):
        # msg_id -> record: a dict, or (finished records, once the controller went idle) marshalled bytes
        self.records: OrderedDict[str, dict | bytes] = OrderedDict()
        self.record_limit, self.size_limit, self.cull_fraction = record_limit, size_limit, cull_fraction
        self.nbytes = 0
        self._culled = CulledIds(remember_culled)

    def _size(self, rec: dict) -> int:
        return blob_bytes(rec) + RECORD_OVERHEAD + len(rec.get("header") or "") + len(rec.get("stdout") or "")

    def _record(self, mid: str) -> dict | None:
        r = self.records.get(mid)
        return _unpack(mid, r) if type(r) is bytes else r

    @staticmethod
    def _sized(r: dict | bytes) -> int:
        return len(r) + PACKED_OVERHEAD if type(r) is bytes else r["_size"]

    def insert(self, recs: list[dict]) -> None:
        for r in recs:
            _own(r)
            old = self.records.pop(r["msg_id"], None)
            if old is not None:
                self.nbytes -= self._sized(old)
            r["_size"] = self._size(r)
            self.records[r["msg_id"]] = r
            self.nbytes += r["_size"]
        self._cull()

    def update(self, items: list[tuple[str, dict]]) -> None:
        for mid, fields in items:
            r = self.records.get(mid)
            if r is None:
                continue
            if type(r) is bytes:
                self.nbytes -= len(r) + PACKED_OVERHEAD
                r = self.records[mid] = _unpack(mid, r)
                self.nbytes += r["_size"]
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
        # the oldest finished first, found by walking from the oldest only as far as needed: the store is full
        # through a long burst, and this runs once per batch
        victims, n, nbytes = [], len(self.records), self.nbytes
        for mid, r in self.records.items():
            if n <= keep_n and nbytes <= keep_b:
                break
            if type(r) is bytes or r["completed"] is not None:
                victims.append(mid)
                n -= 1
                nbytes -= self._sized(r)
        for mid in victims:
            del self.records[mid]
            self._culled.add(mid, why)
        self.nbytes = nbytes  # what the walk counted off for exactly these

    def compact(self) -> None:
        """Pack finished records into one bytes object each. During a burst, the records that survive
        culling end up scattered among the headers and frames of tasks long gone, a few in each 1 MiB
        arena of Python's allocator, and keep all those arenas from being freed: ~70 MiB for 16 MiB of
        records after a 200,000-task map. Packed (bytes this large come from malloc, whose free pages are
        given back), they leave the arenas empty; they are unpacked when read or updated. The new index, and
        the culled ids remade, are made once the old records are gone: side by side, not in their holes."""
        values = [_pack(r) if type(r) is dict and _packable(r) else r for r in self.records.values()]
        self.records = OrderedDict()  # the old records and their keys go, before the new index is made
        self._culled.renew()  # and the culled ids, made all through the burst, are remade with it
        self.nbytes = sum(self._sized(r) for r in values)
        self.records = OrderedDict((_key(r) if type(r) is bytes else r["msg_id"], r) for r in values)

    def culled(self, msg_id: str) -> str | None:
        return self._culled.get(msg_id)

    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        keys = list(keys)
        out = {}
        for m in ids:
            r = self._record(m)
            if r is not None:
                out[m] = {k: r.get(k) for k in keys}
        return out

    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        keys = list(keys)
        if keys == ["msg_id"]:  # the history: read from the index, without unpacking a record
            yield from ({"msg_id": m} for m in list(self.records))
            return
        for m, r in list(self.records.items()):
            if type(r) is bytes:
                r = _unpack(m, r)
            yield {k: r.get(k) for k in keys}

    def delete(self, ids: list[str]) -> int:
        n = 0
        for m in ids:
            r = self.records.pop(m, None)
            if r is not None:
                self.nbytes -= self._sized(r)
                n += 1
        return n
