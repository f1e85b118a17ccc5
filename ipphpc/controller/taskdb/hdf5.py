"""`hdf5`: an append-only HDF5 file on the shared filesystem, readable offline with h5py alone.

Layout (format ``ipphpc-taskdb`` version 1; README "Task database" shows how to read it)::

    /blob                     uint8, every payload frame, one after another
    /tasks/<field>            one row per submitted task: msg_id (S64), client_uuid, engine_id (-1: none),
                              label, queue, kind, submitted (NaN: none), header (signed JSON text),
                              buffers_at (offset in /blob, -1: none), buffers_len (frame lengths, "3,2")
    /results/<field>          one row per result: msg_id, engine_id, engine_uuid, received, started,
                              completed, result_header, result_sig, stdout, stderr, error and
                              execute_result (JSON text, "" for none), result_buffers_at, result_buffers_len
    /resubmitted/{msg_id,new_id}
    /purged/msg_id            records forgotten by purge_results

Rows are only ever appended (one resize per column per batch), so a crash loses at most the
batch being written; a later results row of a msg_id replaces an earlier one. The first result
frame is the engine's JSON metadata; the value is ``pickle.loads(frames[1], buffers=frames[2:])``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .base import Store
from .fields import FIELDS, JSON_VALUES

FORMAT, VERSION = "ipphpc-taskdb", 1
_ID = "S64"
TASK_COLS = {"msg_id": _ID, "client_uuid": "str", "engine_id": "i8", "label": "str", "queue": "str", "kind": "str",
             "submitted": "f8", "header": "str", "buffers_at": "i8", "buffers_len": "lens"}
RESULT_COLS = {"msg_id": _ID, "engine_id": "i8", "engine_uuid": "str", "received": "f8", "started": "f8",
               "completed": "f8", "result_header": "str", "result_sig": "str", "stdout": "str", "stderr": "str",
               "error": "str", "execute_result": "str", "result_buffers_at": "i8", "result_buffers_len": "lens"}


def _dtype(kind: str) -> Any:
    import h5py
    return h5py.string_dtype() if kind in ("str", "lens") else kind


def _column(vals: list, kind: str) -> np.ndarray:
    """One column of a batch as the array its dataset takes (a loop per column, not a call per cell)."""
    if kind == "f8":
        return np.array([np.nan if v is None else v for v in vals], np.float64)
    if kind == "i8":
        return np.array([-1 if v is None else v for v in vals], np.int64)
    if kind == _ID:
        return np.array(vals, _ID)
    if kind == "lens":
        return np.array([",".join(map(str, v)) for v in vals], object)
    return np.array(["" if v is None else v if type(v) is str else json.dumps(v) for v in vals], object)


_TEXT = frozenset({"stdout", "stderr"})  # "" until there is output, as in IPython Parallel's TaskRecord


def _dec(name: str, kind: str, v: Any) -> Any:
    if kind == "f8":
        return None if np.isnan(v) else float(v)
    if kind == "i8":
        return None if v < 0 else int(v)
    if kind == _ID:
        return v.decode()
    if kind == "str":
        v = v.decode() if isinstance(v, bytes) else v
        if v == "":
            return "" if name in _TEXT else None
        return json.loads(v) if name in JSON_VALUES else v
    return v


class HDF5Store(Store):
    name = "hdf5"
    persistent = True
    whole_records = False  # tasks and results are separate tables
    window = 0.25  # each batch resizes and flushes ~30 datasets: a few large batches, not many small ones

    def __init__(self, path: str | os.PathLike):
        import h5py
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the default (oldest) file format has no open-for-write flag: the file of a killed controller reopens
        self.f = h5py.File(self.path, "a", rdcc_nbytes=256 * 1024)  # a small chunk cache per dataset
        self.f.attrs.setdefault("format", FORMAT)
        self.f.attrs.setdefault("version", VERSION)
        if "blob" not in self.f:
            self.f.create_dataset("blob", (0,), "u1", maxshape=(None,), chunks=(1 << 20,))
        for group, cols in (("tasks", TASK_COLS), ("results", RESULT_COLS),
                            ("resubmitted", {"msg_id": _ID, "new_id": _ID}), ("purged", {"msg_id": _ID})):
            g = self.f.require_group(group)
            for name, kind in cols.items():
                if name not in g:
                    g.create_dataset(name, (0,), _dtype(kind), maxshape=(None,), chunks=(4096,))
        # opening a dataset by path costs ~0.1 ms in h5py: the writer keeps its handles
        self.ds = {f"{g}/{n}": self.f[g][n] for g in ("tasks", "results", "resubmitted", "purged") for n in self.f[g]}
        self.ds["blob"] = self.f["blob"]
        self.f.flush()

    # -- writing -----------------------------------------------------------------------------
    def _blobs(self, rows: list[dict], name: str) -> None:
        """Append the frames of every row to /blob in one write; set each row's `<name>_at`/`_len`."""
        parts: list = []
        at = self.ds["blob"].shape[0]
        start = at
        for r in rows:
            frames = r.get(name)
            if frames is None:
                r[f"{name}_at"], r[f"{name}_len"] = -1, []
                continue
            views = [memoryview(f).cast("B") for f in frames]
            r[f"{name}_at"], r[f"{name}_len"] = at, [v.nbytes for v in views]
            parts += views
            at += sum(v.nbytes for v in views)
        if at > start:
            ds = self.ds["blob"]
            ds.resize((at,))
            ds[start:at] = np.frombuffer(b"".join(parts), np.uint8)

    def _append(self, group: str, cols: dict, rows: list[dict]) -> None:
        if not rows:
            return
        n = self.ds[f"{group}/msg_id"].shape[0]
        for name, kind in cols.items():
            ds = self.ds[f"{group}/{name}"]
            ds.resize((n + len(rows),))
            ds[n:] = _column([r.get(name) for r in rows], kind)

    def insert(self, recs: list[dict]) -> None:
        rows = [dict(r) for r in recs]
        self._blobs(rows, "buffers")
        self._append("tasks", TASK_COLS, rows)

    def update(self, items: list[tuple[str, dict]]) -> None:
        results, resub = [], []
        for mid, fields in items:
            if "resubmitted" in fields:
                resub.append({"msg_id": mid, "new_id": fields["resubmitted"]})
            if "received" in fields:
                results.append({**fields, "msg_id": mid})
        self._blobs(results, "result_buffers")
        self._append("results", RESULT_COLS, results)
        self._append("resubmitted", {"msg_id": _ID, "new_id": _ID}, resub)

    def delete(self, ids: list[str]) -> int:
        known = self.get(ids, ["msg_id"])
        self._append("purged", {"msg_id": _ID}, [{"msg_id": m} for m in known])
        return len(known)

    def commit(self) -> None:
        self.f.flush()

    def recover(self) -> None:
        """A batch failed half-way (a full disk): cut every table back to its shortest column."""
        for group in ("tasks", "results", "resubmitted", "purged"):
            g = self.f[group]
            n = min(ds.shape[0] for ds in g.values())
            for ds in g.values():
                if ds.shape[0] != n:
                    ds.resize((n,))

    def close(self) -> None:
        self.f.close()

    # -- reading -----------------------------------------------------------------------------
    def _rows(self, wanted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(task rows, result row of each or -1, msg_ids) of live records, in submission order."""
        tid = self.f["tasks/msg_id"][()]
        keep = ~np.isin(tid, self.f["purged/msg_id"][()]) if self.f["purged/msg_id"].shape[0] else None
        if wanted is not None:
            m = np.isin(tid, wanted)
            keep = m if keep is None else keep & m
        rows = np.arange(len(tid)) if keep is None else np.flatnonzero(keep)
        rid = self.f["results/msg_id"][()]
        res = np.full(len(rows), -1, np.int64)
        if len(rid) and len(rows):
            u, first = np.unique(rid[::-1], return_index=True)
            last = len(rid) - 1 - first
            pos = np.searchsorted(u, tid[rows]).clip(max=len(u) - 1)
            hit = u[pos] == tid[rows]
            res[hit] = last[pos[hit]]
        return rows, res, tid[rows]

    @staticmethod
    def _read(ds: Any, rows: np.ndarray) -> list:
        if len(rows) == 0:
            return []
        src = ds.asstr() if ds.dtype.kind == "O" and ds.dtype.metadata.get("vlen") is str else ds
        if len(rows) * 4 > ds.shape[0] or len(rows) > 1000:
            return list(src[()][rows])
        order = np.argsort(rows)
        got = src[rows[order]]
        out: list = [None] * len(rows)
        for i, v in zip(order, got):
            out[i] = v
        return out

    def _column(self, name: str, rows: np.ndarray, res: np.ndarray) -> list:
        if name == "engine_id":  # where it ran (the result says) or, until then, where it was sent
            ran = self._result_column(name, rows, res)
            sent = [_dec(name, "i8", v) for v in self._read(self.f["tasks"][name], rows)]
            return [r if r is not None else s for r, s in zip(ran, sent)]
        if name in TASK_COLS:
            return [_dec(name, TASK_COLS[name], v) for v in self._read(self.f["tasks"][name], rows)]
        if name == "buffers":
            return self._frames("tasks", "buffers", rows)
        if name == "resubmitted":
            g = self.f["resubmitted"]
            pairs = dict(zip(g["msg_id"][()], g["new_id"][()]))
            return [pairs[m].decode() if m in pairs else None for m in self.f["tasks/msg_id"][()][rows]]
        return self._result_column(name, rows, res)

    def _result_column(self, name: str, rows: np.ndarray, res: np.ndarray) -> list:
        hit = np.flatnonzero(res >= 0)
        out: list = ["" if name in _TEXT else None] * len(rows)
        if name == "result_buffers":
            vals = self._frames("results", "result_buffers", res[hit])
        elif name in RESULT_COLS:
            vals = [_dec(name, RESULT_COLS[name], v) for v in self._read(self.f["results"][name], res[hit])]
        else:
            return out
        for i, v in zip(hit, vals):
            out[i] = v
        return out

    def _frames(self, group: str, name: str, rows: np.ndarray) -> list:
        ats = self._read(self.f[group][f"{name}_at"], rows)
        lens = [[int(n) for n in s.split(",") if n] for s in self._read(self.f[group][f"{name}_len"], rows)]
        blob = self.f["blob"]
        out = []
        for at, ln in zip(ats, lens):
            if at < 0:
                out.append(None)
                continue
            data = blob[at:at + int(np.sum(ln))].tobytes() if np.sum(ln) else b""
            offs = np.concatenate([[0], np.cumsum(ln)])
            out.append([data[offs[i]:offs[i + 1]] for i in range(len(ln))])
        return out

    def _records(self, wanted: np.ndarray | None, keys: Iterable[str]) -> list[dict]:
        rows, res, tid = self._rows(wanted)
        keys = [k for k in dict.fromkeys(["msg_id", *keys]) if k in FIELDS]
        cols = {k: self._column(k, rows, res) for k in keys if k != "msg_id"}
        ids = [m.decode() for m in tid]
        return [{"msg_id": ids[i], **{k: c[i] for k, c in cols.items()}} for i in range(len(ids))]

    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        wanted = np.array([m.encode() for m in ids], _ID)
        if not len(wanted):
            return {}
        return {r["msg_id"]: r for r in self._records(wanted, keys)}

    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        yield from self._records(None, keys)
