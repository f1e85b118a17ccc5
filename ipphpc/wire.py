"""Message framing and authentication.

A message on the wire is ``[routing ids..., DELIM, signature, header, payload...]``.

* ``header`` is compact JSON: message type ``t``, sender session ``s``, sequence ``q``,
  send time ``ts``, protocol version ``v`` and routing fields. Routers read only this.
* ``signature`` is HMAC-SHA256 of the header under the connection file's key.
* When there is a payload, the header carries ``d``, a BLAKE3 digest over the payload
  frames. The header is authenticated, so a receiver that checks ``d`` before it
  deserializes anything has an authenticated payload, while a router that never
  deserializes can check the header alone and forward large buffers untouched.

Replays are refused where messages enter a bound socket (the controller): each session's
sequence numbers must grow, and a session never seen before must be recent.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import os
import time
from typing import Any, Iterable, Sequence

from blake3 import blake3

from ._version import PROTOCOL_VERSION

DELIM = b"<IPH>"
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads
log = logging.getLogger("ipphpc.wire")


class AuthError(ValueError):
    """A message failed authentication; it is dropped without being deserialized."""


def new_key() -> str:
    return os.urandom(32).hex()


def _raw(frame: Any) -> Any:
    return frame.buffer if hasattr(frame, "buffer") else frame


def payload_digest(frames: Iterable[Any]) -> str:
    """BLAKE3 over every frame, each prefixed by its length: a cryptographic hash that runs at several
    times SHA-256's speed, which is most of the cost of moving a large array otherwise."""
    h = blake3()
    for f in frames:
        b = memoryview(_raw(f))
        h.update(b.nbytes.to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class Session:
    """Signs outgoing messages and verifies incoming ones for one sender."""

    def __init__(self, key: str | bytes, session_id: str | None = None):
        kb = key.encode() if isinstance(key, str) else key
        self._mac = hmac.new(kb, digestmod=hashlib.sha256)
        self.id = session_id or os.urandom(8).hex()
        self._seq = itertools.count(1)
        self.version = list(PROTOCOL_VERSION)

    def sign(self, header: bytes) -> bytes:
        m = self._mac.copy()
        m.update(header)
        return m.hexdigest().encode()

    def next_id(self) -> tuple[int, str]:
        q = next(self._seq)
        return q, f"{self.id}-{q}"

    def pack(self, msg_type: str, fields: dict | None = None, payload: Sequence[Any] = (),
             seq: tuple[int, str] | None = None, digest: str | None = None) -> list[Any]:
        """Frames for one message; `digest` may be passed when the same payload goes to many peers."""
        q, mid = seq or self.next_id()
        header = {"t": msg_type, "s": self.id, "q": q, "id": mid, "ts": time.time(), "v": self.version}
        if fields:
            header.update(fields)
        if payload:
            header["d"] = digest or payload_digest(payload)
        hb = _dumps(header).encode()
        return [DELIM, self.sign(hb), hb, *payload]

    def split(self, frames: list[Any]) -> tuple[list[Any], dict, list[Any]]:
        """Verify the header signature and return (routing ids, header, payload frames).

        The payload is not checked here: call `check_payload` before deserializing it.
        """
        for i, f in enumerate(frames):  # noqa: B007 - i is read after the loop
            if _bytes(f) == DELIM:
                break
        else:
            raise AuthError("no delimiter frame")
        if len(frames) < i + 3:
            raise AuthError("truncated message")
        sig, hb = _bytes(frames[i + 1]), _bytes(frames[i + 2])
        if not hmac.compare_digest(self.sign(hb), sig):
            raise AuthError("bad signature")
        header = _loads(hb)
        return frames[:i], header, frames[i + 3:]

    @staticmethod
    def check_payload(header: dict, payload: Sequence[Any]) -> None:
        want = header.get("d")
        if payload or want:
            if want is None or payload_digest(payload) != want:
                raise AuthError("payload does not match the signed digest")


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


class ReplayGuard:
    """Refuse a message whose session sequence did not grow, or an unknown session's stale message."""

    def __init__(self, window: float = 600.0):
        self.window = window
        self._last: dict[str, int] = {}

    def check(self, header: dict) -> None:
        s, q = header.get("s"), header.get("q")
        if not isinstance(s, str) or not isinstance(q, int):
            raise AuthError("header lacks session or sequence")
        last = self._last.get(s)
        if last is None:
            if abs(time.time() - float(header.get("ts", 0))) > self.window:
                raise AuthError("stale message from an unknown session (replay?)")
        elif q <= last:
            raise AuthError(f"replayed or reordered message (seq {q} <= {last})")
        self._last[s] = q

    def forget(self, session: str) -> None:
        self._last.pop(session, None)


def check_version(header: dict, who: str) -> str | None:
    """None when compatible, else a message that says what to do."""
    v = header.get("v")
    if not v or v[0] != PROTOCOL_VERSION[0]:
        from ._version import __version__
        return (f"{who} speaks ipphpc wire protocol {v}, this side speaks {list(PROTOCOL_VERSION)} "
                f"(ipphpc {__version__}); install the same ipphpc version on both sides")
    return None
