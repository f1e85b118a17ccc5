"""MongoDB-style queries over TaskRecords, evaluated the same way by every backend.

Every backend answers through `matches`, so a query gives the same records whatever stores
them; a backend may narrow the candidates first (by msg_id), never widen them.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable

from .fields import FIELDS, JSON_TEXT


def _cmp(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def test(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False  # as in MongoDB: a missing value is neither less nor greater than anything
        try:
            return op(a, b)
        except TypeError:
            return False
    return test


def _glob(a: Any, b: Any) -> bool:
    return isinstance(a, str) and fnmatch.fnmatchcase(a, b)


def _regex(a: Any, b: Any) -> bool:
    return isinstance(a, str) and re.search(b, a) is not None


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": _cmp(lambda a, b: a < b), "$gt": _cmp(lambda a, b: a > b),
    "$lte": _cmp(lambda a, b: a <= b), "$gte": _cmp(lambda a, b: a >= b),
    "$eq": lambda a, b: a == b, "$ne": lambda a, b: a != b,
    "$in": lambda a, b: a in b, "$nin": lambda a, b: a not in b,
    "$glob": _glob, "$regex": _regex,
}
_SEQ_OPS = ("$in", "$nin")


class QueryError(ValueError):
    """A query the task database cannot answer; the message says what to change."""


def check(query: Any, keys: Any = None) -> None:
    """Refuse a malformed query before it reaches a backend, naming the bad part."""
    if not isinstance(query, dict):
        raise QueryError(f"a query is a dict of field -> value or {{operator: value}}, not {type(query).__name__}")
    for field, cond in query.items():
        if field not in FIELDS:
            raise QueryError(f"unknown TaskRecord field {field!r}; fields: {', '.join(FIELDS)}")
        if isinstance(cond, dict):
            for op, arg in cond.items():
                if op not in OPERATORS:
                    raise QueryError(f"unknown query operator {op!r} (on {field!r}); valid operators: "
                                     f"{', '.join(OPERATORS)}")
                if op in _SEQ_OPS and not isinstance(arg, (list, tuple)):
                    raise QueryError(f"{op} on {field!r} takes a list, not {type(arg).__name__}")
                if op == "$regex":
                    try:
                        re.compile(arg)
                    except (re.error, TypeError) as e:
                        raise QueryError(f"$regex on {field!r}: {arg!r} is not a regular expression: {e}") from None
    if keys is not None:
        bad = [k for k in keys if k not in FIELDS]
        if bad:
            raise QueryError(f"unknown TaskRecord key(s) {bad}; keys: {', '.join(FIELDS)}")


def _value(rec: dict, field: str) -> Any:
    v = rec.get(field)
    if field in JSON_TEXT and isinstance(v, str):
        import json
        return json.loads(v)
    return v


def matches(rec: dict, query: dict) -> bool:
    """True when the record satisfies every condition of the (checked) query."""
    for field, cond in query.items():
        v = _value(rec, field)
        if isinstance(cond, dict):
            for op, arg in cond.items():
                if op in _SEQ_OPS:
                    arg = list(arg)
                if not OPERATORS[op](v, arg):
                    return False
        elif v != cond:
            return False
    return True


def id_candidates(query: dict) -> list[str] | None:
    """The msg_ids a query is limited to, when it says (lets backends look records up by key)."""
    cond = query.get("msg_id")
    if isinstance(cond, str):
        return [cond]
    if isinstance(cond, dict) and set(cond) == {"$in"}:
        return [m for m in cond["$in"] if isinstance(m, str)]
    return None
