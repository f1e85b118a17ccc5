"""The controller's task database: every task's request and result, kept off the routing path.

`open_store` makes the backend chosen by `Controller.db_class`; `Recorder` writes to it from a
thread fed by a queue; `TaskDBService` is what the hub calls (record, answer clients' lookups).
"""
from __future__ import annotations

from .base import Store, TaskDBError
from .config import BACKENDS, DictDB, MongoDB, backend_name, default_path, open_store
from .query import OPERATORS, QueryError

__all__ = ["BACKENDS", "DictDB", "MongoDB", "OPERATORS", "QueryError", "Store", "TaskDBError", "backend_name",
           "default_path", "open_store"]
