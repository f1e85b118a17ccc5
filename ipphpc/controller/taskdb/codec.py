"""Flat row encoding shared by the file backends: JSON text for dicts, frames joined with their lengths."""
from __future__ import annotations

import json
from typing import Any

from .fields import JSON_VALUES


def join_frames(frames: list | None) -> tuple[bytes | None, str | None]:
    """One blob and a JSON list of frame lengths, or (None, None) when there are no frames."""
    if frames is None:
        return None, None
    views = [memoryview(f).cast("B") for f in frames]
    # the lengths as a JSON list, written directly (json.dumps costs more than the rest of a small record)
    return b"".join(views), "[" + ",".join([str(v.nbytes) for v in views]) + "]"


def split_frames(blob: Any, lens: Any) -> list[bytes] | None:
    if lens is None:
        return None
    if isinstance(lens, str):
        lens = json.loads(lens)
    out, at, mv = [], 0, memoryview(blob or b"")
    for n in lens:
        out.append(bytes(mv[at:at + int(n)]))
        at += int(n)
    return out


def dump_value(key: str, v: Any) -> Any:
    if key in JSON_VALUES and v is not None:
        return json.dumps(v)
    return v


def load_value(key: str, v: Any) -> Any:
    if key in JSON_VALUES and isinstance(v, str):
        return json.loads(v)
    return v
