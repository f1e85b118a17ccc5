"""`sqlite`: one file, written in WAL mode with one transaction per batch, so it outlives the controller.

The standard library's sqlite3 only. WAL lets a reader (another process, a notebook) look at
the file while the controller writes; payload frames are stored as one blob per field plus
their lengths, exactly as they travelled.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

from .base import Store
from .codec import dump_value, join_frames, load_value, split_frames
from .fields import BLOBS, FIELDS, JSON_VALUES, SCALARS

_TYPES = {"engine_id": "INTEGER", "submitted": "REAL", "started": "REAL", "completed": "REAL", "received": "REAL"}
_COLS = [*SCALARS, *(c for b in BLOBS for c in (b, f"{b}_lens"))]
_JSON_AT = [(i, k) for i, k in enumerate(SCALARS) if k in JSON_VALUES]


def _columns(keys: Iterable[str]) -> list[str]:
    cols = []
    for k in keys:
        cols += [k, f"{k}_lens"] if k in BLOBS else [k]
    return cols


class SQLiteStore(Store):
    name = "sqlite"
    persistent = True

    def __init__(self, path: str | os.PathLike, table: str = "tasks"):
        self.path = Path(path)
        self.table = table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-8192")  # 8 MiB of page cache: memory stays flat however many tasks
        defs = ", ".join(f"{c} {_TYPES.get(c, 'BLOB' if c in BLOBS else 'TEXT')}" for c in _COLS if c != "msg_id")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (msg_id TEXT PRIMARY KEY, {defs})")
        # one cursor for every write: a cursor per statement leaves the connection a weak reference to each,
        # dropped only now and then, and the last few of a burst pin as many 1 MiB blocks of the heap
        self.cur = self.db.cursor()
        self.cur.execute("BEGIN")

    def _row(self, r: dict) -> list:
        get = r.get
        row = [get(k) for k in SCALARS]
        for i, k in _JSON_AT:
            row[i] = dump_value(k, row[i])
        for b in BLOBS:
            row += join_frames(r.get(b))
        return row

    def insert(self, recs: list[dict]) -> None:
        marks = ",".join("?" * len(_COLS))
        self.cur.executemany(f"INSERT OR REPLACE INTO {self.table} ({','.join(_COLS)}) VALUES ({marks})",
                             [self._row(r) for r in recs])

    def update(self, items: list[tuple[str, dict]]) -> None:
        groups: dict[tuple, list] = {}
        for mid, fields in items:
            keys = tuple(fields)
            vals = []
            for k in keys:
                vals += join_frames(fields[k]) if k in BLOBS else [dump_value(k, fields[k])]
            groups.setdefault(keys, []).append([*vals, mid])
        for keys, rows in groups.items():
            sets = ",".join(f"{c}=?" for c in _columns(keys))
            self.cur.executemany(f"UPDATE {self.table} SET {sets} WHERE msg_id=?", rows)

    def _decode(self, keys: list[str], row: tuple) -> dict:
        out, i = {}, 0
        for k in keys:
            if k in BLOBS:
                out[k] = split_frames(row[i], row[i + 1])
                i += 2
            else:
                out[k] = load_value(k, row[i])
                i += 1
        return out

    def get(self, ids: Iterable[str], keys: Iterable[str] = FIELDS) -> dict[str, dict]:
        keys = ["msg_id", *(k for k in keys if k != "msg_id")]
        cols = ",".join(_columns(keys))
        ids = list(ids)
        out = {}
        for at in range(0, len(ids), 500):
            part = ids[at:at + 500]
            q = f"SELECT {cols} FROM {self.table} WHERE msg_id IN ({','.join('?' * len(part))})"
            for row in self.cur.execute(q, part):
                rec = self._decode(keys, row)
                out[rec["msg_id"]] = rec
        return out

    def scan(self, keys: Iterable[str]) -> Iterator[dict]:
        keys = ["msg_id", *(k for k in keys if k != "msg_id")]
        cur = self.db.execute(f"SELECT {','.join(_columns(keys))} FROM {self.table} ORDER BY rowid")
        for row in cur:
            yield self._decode(keys, row)

    def delete(self, ids: list[str]) -> int:
        self.cur.executemany(f"DELETE FROM {self.table} WHERE msg_id=?", [(m,) for m in ids])
        return self.cur.rowcount

    def commit(self) -> None:
        self.cur.execute("COMMIT")
        self.cur.execute("BEGIN")

    def recover(self) -> None:
        """After a failed batch (a full disk): drop the half-written transaction and start a new one."""
        try:
            self.cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.cur.execute("BEGIN")

    def close(self) -> None:
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            pass
        self.db.close()
