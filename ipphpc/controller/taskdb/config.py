"""Choosing and opening a backend: `--db=NAME`, `--db-file=PATH`, `c.DictDB.*`, `c.MongoDB.*`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from traitlets import Float, Integer, Unicode
from traitlets.config import Configurable

from .base import Store

BACKENDS = ("dict", "sqlite", "hdf5", "mongodb", "none")
# IPython Parallel's class names are accepted too, so its configuration files keep working
_ALIASES = {"dictdb": "dict", "sqlitedb": "sqlite", "mongodb": "mongodb", "nodb": "none", "h5": "hdf5",
            "hdf5db": "hdf5", "sqlite3": "sqlite", "mongo": "mongodb", "memory": "dict"}
_SUFFIX = {"sqlite": ".sqlite", "hdf5": ".h5"}


class DictDB(Configurable):
    """Limits of the in-memory task database (`--db=dict`)."""

    record_limit = Integer(100_000, config=True, help="Most records kept; the oldest finished ones are culled "
                           "beyond it.")
    size_limit = Integer(64 * 2**20, config=True, help="Most bytes of requests and results kept (default 64 MiB, "
                         "so a login node's memory stays bounded); the oldest finished records are culled beyond it.")
    cull_fraction = Float(0.1, config=True, help="Fraction below a limit that culling goes down to.")


class MongoDB(Configurable):
    """Where the MongoDB task database lives (`--db=mongodb`)."""

    url = Unicode("mongodb://localhost:27017", config=True, help="MongoDB connection string.")
    database = Unicode("ipphpc", config=True, help="Database name.")
    collection = Unicode("", config=True, help="Collection; default tasks-<cluster id>.")


def backend_name(name: str) -> str:
    """The canonical backend name of `name`, or a ValueError listing the valid ones."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BACKENDS:
        raise ValueError(f"unknown task database {name!r}; choose one of {', '.join(BACKENDS)}")
    return key


def default_path(pdir: Path, cluster_id: str, kind: str) -> Path:
    """`<profile>/db/tasks-<cluster id>.sqlite` (or `.h5`): beside the cluster's other files."""
    return Path(pdir) / "db" / f"tasks-{cluster_id or 'default'}{_SUFFIX.get(kind, '')}"


def open_store(kind: str, path: Path | None, cluster_id: str = "", parent: Any = None) -> Store | None:
    """The backend `kind` (None for 'none'); errors from opening the file or server propagate."""
    kind = backend_name(kind)
    if kind == "none":
        return None
    if kind == "dict":
        from .memory import DictStore
        cfg = DictDB(parent=parent)
        return DictStore(cfg.record_limit, cfg.size_limit, cfg.cull_fraction)
    if kind == "sqlite":
        from .sqlite import SQLiteStore
        return SQLiteStore(path)
    if kind == "hdf5":
        from .hdf5 import HDF5Store
        return HDF5Store(path)
    from .mongo import MongoStore
    cfg = MongoDB(parent=parent)
    return MongoStore(cfg.url, cfg.database, cfg.collection or f"tasks-{cluster_id or 'default'}")
