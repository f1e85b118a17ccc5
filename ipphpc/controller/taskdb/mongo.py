"""`mongodb`: records as documents of one collection (pymongo), one bulk write per batch.

Configured with `c.MongoDB.url` and `c.MongoDB.database`. Queries are answered like every other
backend's (`base.Store.find`), so `$glob` and `$regex` mean the same everywhere; lookups by
msg_id go to the server's unique index.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from .base import Store
from .fields import FIELDS


def _plain(frames: Any) -> Any:
    return None if frames is None else [bytes(memoryview(f)) for f in frames]


class MongoStore(Store):
    name = "mongodb"
    persistent = True

    def __init__(self, url: str = "mongodb://localhost:27017", database: str = "ipphpc", collection: str = "tasks",
                 client: Any = None):
        if client is None:
            import pymongo
            client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
        self.client = client
        self.coll = client[database][collection]
        self.coll.create_index("msg_id", unique=True)
        self._seq = self._last_seq()

    def _last_seq(self) -> int:
        last = list(self.coll.find({}, {"_seq": 1}).sort("_seq", -1).limit(1))
        return int(last[0]["_seq"]) if last else 0

    def _doc(self, r: dict) -> dict:
        self._seq += 1
        doc = {k: r.get(k) for k in FIELDS}
        doc["buffers"], doc["result_buffers"] = _plain(r.get("buffers")), _plain(r.get("result_buffers"))
        doc["_seq"] = self._seq  # submission order, independent of the server's clock
        return doc

    def insert(self, recs: list[dict]) -> None:
        from pymongo import ReplaceOne
        self.coll.bulk_write([ReplaceOne({"msg_id": r["msg_id"]}, self._doc(r), upsert=True) for r in recs],
                             ordered=True)

    def update(self, items: list[tuple[str, dict]]) -> None:
        from pymongo import UpdateOne
        ops = []
        for mid, fields in items:
            f = dict(fields)
            if "result_buffers" in f:
                f["result_buffers"] = _plain(f["result_buffers"])
            ops.append(UpdateOne({"msg_id": mid}, {"$set": f}))
        if ops:
            self.coll.bulk_write(ops, ordered=True)

    @staticmethod
    def _out(doc: dict, keys: list[str]) -> dict:
        return {k: doc.get(k) for k in keys}

    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        keys = ["msg_id", *(k for k in keys if k != "msg_id")]
        ids = list(ids)
        out = {}
        for at in range(0, len(ids), 1000):
            for d in self.coll.find({"msg_id": {"$in": ids[at:at + 1000]}}, {k: 1 for k in keys}):
                out[d["msg_id"]] = self._out(d, keys)
        return out

    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        keys = ["msg_id", *(k for k in keys if k != "msg_id")]
        for d in self.coll.find({}, {k: 1 for k in keys}).sort("_seq", 1):
            yield self._out(d, keys)

    def delete(self, ids: list[str]) -> int:
        return self.coll.delete_many({"msg_id": {"$in": list(ids)}}).deleted_count

    def close(self) -> None:
        self.client.close()
