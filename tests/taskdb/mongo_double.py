"""An in-process stand-in for a MongoDB server, for the calls the mongodb backend makes.

No MongoDB server can be installed on the test machines, so unless IPPHPC_TEST_MONGODB_URL names a
real one, the backend's contract tests run against this: documents are copied in and out and
must hold only BSON types (as a server would refuse anything else), filters understand exactly the
forms the backend sends (`{}` and `{"msg_id": {"$in": [...]}}` or `{"msg_id": x}`), and bulk
writes take pymongo's own ReplaceOne/UpdateOne objects.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

_BSON = (type(None), bool, int, float, str, bytes)


def _check_bson(v: Any, where: str = "document") -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, not {type(k).__name__}")
            _check_bson(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _check_bson(x, f"{where}[{i}]")
    elif not isinstance(v, _BSON):
        raise TypeError(f"cannot encode object of type {type(v).__name__} at {where} (not a BSON type)")


def _matches(doc: dict, flt: dict) -> bool:
    for k, cond in flt.items():
        if isinstance(cond, dict):
            if set(cond) != {"$in"}:
                raise NotImplementedError(f"the double supports $in only, got {cond}")
            if doc.get(k) not in cond["$in"]:
                return False
        elif doc.get(k) != cond:
            return False
    return True


class _Result:
    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


class _Cursor:
    """Sorts on whole documents, then projects, as a server does."""

    def __init__(self, docs: list[dict], projection: dict | None):
        self.docs, self.projection = docs, projection

    def sort(self, key: str, direction: int) -> "_Cursor":
        self.docs.sort(key=lambda d: d[key], reverse=direction < 0)
        return self

    def limit(self, n: int) -> "_Cursor":
        self.docs = self.docs[:n]
        return self

    def __iter__(self):
        p = self.projection
        return iter([copy.deepcopy(d if not p else {k: v for k, v in d.items() if k in p or k == "_id"})
                     for d in self.docs])


class Collection:
    def __init__(self) -> None:
        self.docs: list[dict] = []
        self.unique: set[str] = set()
        self._ids = itertools.count(1)

    def create_index(self, key: str, unique: bool = False) -> str:
        if unique:
            self.unique.add(key)
        return f"{key}_1"

    def _insert(self, doc: dict) -> None:
        _check_bson(doc)
        for k in self.unique:
            if any(d.get(k) == doc.get(k) for d in self.docs):
                raise ValueError(f"E11000 duplicate key error: {k}={doc.get(k)!r}")
        self.docs.append({**copy.deepcopy(doc), "_id": next(self._ids)})

    def bulk_write(self, ops: list, ordered: bool = True) -> _Result:
        from pymongo import ReplaceOne, UpdateOne
        for op in ops:
            flt = op._filter
            found = [d for d in self.docs if _matches(d, flt)][:1]
            if isinstance(op, ReplaceOne):
                if found:
                    self.docs.remove(found[0])
                if found or op._upsert:
                    self._insert(op._doc)
            elif isinstance(op, UpdateOne):
                sets = op._doc["$set"]
                _check_bson(sets)
                if found:
                    found[0].update(copy.deepcopy(sets))
            else:
                raise NotImplementedError(type(op).__name__)
        return _Result(acknowledged=True)

    def find(self, flt: dict | None = None, projection: dict | None = None) -> _Cursor:
        return _Cursor([d for d in self.docs if _matches(d, flt or {})], projection)

    def delete_many(self, flt: dict) -> _Result:
        gone = [d for d in self.docs if _matches(d, flt)]
        self.docs = [d for d in self.docs if not _matches(d, flt)]
        return _Result(deleted_count=len(gone))


class Client:
    """`client[database][collection]`, as pymongo.MongoClient."""

    def __init__(self) -> None:
        self.dbs: dict[str, dict[str, Collection]] = {}

    def __getitem__(self, name: str) -> dict:
        db = self.dbs.setdefault(name, {})
        return _Database(db)

    def close(self) -> None:
        pass


class _Database:
    def __init__(self, colls: dict[str, Collection]):
        self.colls = colls

    def __getitem__(self, name: str) -> Collection:
        return self.colls.setdefault(name, Collection())
