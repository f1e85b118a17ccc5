"""Message framing and authentication.

A message on the wire is ``[routing ids..., head, payload...]``, the head frame being
``DELIM + signature + header``: one frame, because every frame costs a call into libzmq on each
side of each hop (two frames fewer per message saved a quarter of pyzmq's cost per message).

* ``header`` is compact JSON: message type ``t``, sender session ``s``, sequence ``q``,
  send time ``ts``, protocol version ``v`` and routing fields. Routers read only this.
* ``signature`` is BLAKE3 in keyed mode (a MAC) of the header, under a key derived from the
  connection file's key, 64 hex digits. Not HMAC-SHA256: hashlib loads OpenSSL's libcrypto,
  3.4 MiB resident in every engine that never needs it, and keyed BLAKE3 is also faster
  (0.9 µs against 1.3 for a header).
* When there is a payload, the header carries ``d``, a BLAKE3 digest over the payload
  frames. The header is authenticated, so a receiver that checks ``d`` before it
  deserializes anything has an authenticated payload, while a router that never
  deserializes can check the header alone and forward large buffers untouched.

The controller sends the messages one peer gets in one turn of its loop as one *envelope*
(see `envelope`): one call into libzmq and one wake-up of each side's I/O thread instead of one
per message. The envelope itself is not signed; every message in it is, as on its own.

Replays are refused where messages enter a bound socket (the controller): a sender is heard only
after it proved it is alive now, by signing the controller's one-time nonce into its hello or
register, and from then on its sequence numbers must grow (see `Freshness`).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from _operator import _compare_digest as compare_digest  # hmac.compare_digest, without loading hmac's OpenSSL
from typing import Any, Callable, Iterable, Sequence

import orjson
from blake3 import blake3

from ._version import PROTOCOL_VERSION

DELIM = b"<IPH>"
ENVELOPE = b"<IPE>"
#: what connection files say the messages of their controller are signed with
SIGNATURE_SCHEME = "blake3-keyed"
_SIGNING_CONTEXT = "ipphpc 2026-12-07 wire message signature"
_SIG_LEN = 64  # 32 bytes in hex
_HEADER_AT = len(DELIM) + _SIG_LEN
#: where the payload starts in a message a ROUTER socket received from a peer connected to it
PAYLOAD_AT = 2


def json_bytes(obj: Any) -> bytes:
    """Compact JSON as bytes: headers and metadata, one or two per message (orjson: 0.3 µs for a header
    that the standard library takes 5.6 µs to write, and 0.9 µs instead of 4.6 to read)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


json_value: Callable[[Any], Any] = orjson.loads  # bytes, memoryview or str
log = logging.getLogger("ipphpc.wire")


class AuthError(ValueError):
    """A message failed authentication; it is dropped without being deserialized."""


def new_key() -> str:
    return os.urandom(32).hex()


_PLAIN = (bytes, bytearray, memoryview)


def raw(frame: Any) -> Any:
    """A frame's bytes-like object: a zmq.Frame's buffer (asked for once: each access makes a new view, and
    `hasattr` is one access), anything else as it is."""
    return frame if isinstance(frame, _PLAIN) else getattr(frame, "buffer", frame)


_raw = raw


# from this size on a frame is hashed on every core: BLAKE3 splits it into chunks hashed in parallel
_THREADED = 4 * 2**20


def payload_digest(frames: Iterable[Any]) -> str:
    """BLAKE3 over every frame, each prefixed by its length: a cryptographic hash that runs at several
    times SHA-256's speed (and on several cores for large frames), which is most of the cost of moving
    a large array otherwise."""
    views = [memoryview(_raw(f)) for f in frames]
    h = blake3(max_threads=blake3.AUTO) if sum(b.nbytes for b in views) >= _THREADED else blake3()
    for b in views:
        h.update(b.nbytes.to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def envelope(messages: Sequence[Sequence[Any]], skip: int = 0) -> list[Any]:
    """Several messages as one: a frame of ``ENVELOPE`` and each message's frame count (4 bytes, little
    endian), then their frames; `skip` leading frames of each (a routing id) are left out."""
    counts = b"".join((len(m) - skip).to_bytes(4, "little") for m in messages)
    out = [ENVELOPE + counts]
    for m in messages:
        out += m[skip:] if skip else m
    return out


def one_message(messages: Sequence[list[Any]]) -> list[Any]:
    """The message to send for several: the only one as it is, or an envelope of them."""
    return messages[0] if len(messages) == 1 else envelope(messages)


def unwrap(frames: list[Any]) -> list[list[Any]] | None:
    """The messages of an envelope (a peer's reader that sees `frames` first), or None for one message.
    Raises AuthError for an envelope whose counts do not add up."""
    first = frame_bytes(frames[0])
    if not first.startswith(ENVELOPE):
        return None
    counts = first[len(ENVELOPE):]
    if len(counts) % 4:
        raise AuthError("malformed envelope")
    out, at = [], 1
    for i in range(0, len(counts), 4):
        n = int.from_bytes(counts[i:i + 4], "little")
        if n < 1 or at + n > len(frames):
            raise AuthError("malformed envelope")
        out.append(frames[at:at + n])
        at += n
    if at != len(frames) or not out:
        raise AuthError("malformed envelope")
    return out


def fan_part(h: dict, eid: int, mid: str) -> dict:
    """The header one engine gets of a task sent to many (`to` and `ids` lists): its own engine id and
    msg_id, not every engine's, so that a call on thousands of engines does not send each of them a
    header listing all the others."""
    part = {k: v for k, v in h.items() if k != "ids"}
    part["id"], part["to"] = mid, eid
    return part


class Session:
    """Signs outgoing messages and verifies incoming ones for one sender."""

    def __init__(self, key: str | bytes, session_id: str | None = None):
        kb = key.encode() if isinstance(key, str) else key
        self._raw_key = kb
        self._mac = blake3(kb, derive_key_context=_SIGNING_CONTEXT).digest()
        self.id = session_id or os.urandom(8).hex()
        self._seq = itertools.count(1)
        self.version = list(PROTOCOL_VERSION)

    def member(self, name: str) -> "Session":
        """A session of the same family (id `<this id>/<name>`) that numbers its messages from this one's
        sequence, so one hello admits them all and nothing sent before it can pass afterwards."""
        other = Session.__new__(Session)
        other._raw_key, other._mac, other._seq, other.version = self._raw_key, self._mac, self._seq, self.version
        other.id = f"{self.id}/{name}"
        return other

    def sign(self, header: bytes) -> bytes:
        return blake3(header, key=self._mac).hexdigest().encode()

    def signed(self, header: dict) -> bytes:
        """The head frame of `header`: delimiter, signature, header."""
        hb = json_bytes(header)
        return DELIM + self.sign(hb) + hb

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
        return [self.signed(header), *payload]

    def split(self, frames: list[Any]) -> tuple[list[Any], dict, list[Any]]:
        """Verify the header signature and return (routing ids, header, payload frames).

        The payload is not checked here: call `check_payload` before deserializing it.
        """
        for i, f in enumerate(frames):  # noqa: B007 - i is read after the loop
            b = frame_bytes(f)
            if b.startswith(DELIM):
                break
            if b.startswith(ENVELOPE):
                raise AuthError("an envelope of several messages: open it with unwrap() and split each")
        else:
            raise AuthError("no header frame")
        if len(b) == len(DELIM):
            raise AuthError("a message in the wire format of an older ipphpc (protocol 3 or before): install the "
                            "same ipphpc version on both sides")
        sig, hb = head_parts(b)
        if not compare_digest(self.sign(hb), sig):
            raise AuthError(_bad_signature(self._raw_key, hb, sig))
        header = json_value(hb)
        return frames[:i], header, frames[i + 1:]

    @staticmethod
    def check_payload(header: dict, payload: Sequence[Any]) -> None:
        want = header.get("d")
        if payload or want:
            if want is None or payload_digest(payload) != want:
                raise AuthError("payload does not match the signed digest")


def _bad_signature(key: bytes, header: bytes, sig: bytes) -> str:
    """Why a signature failed: the message of a peer of ipphpc 0.1 before wire protocol 6, which signed with
    HMAC-SHA256, gets a line that says what to do instead of a bare refusal."""
    import hashlib
    import hmac
    if hmac.compare_digest(hmac.new(key, header, hashlib.sha256).hexdigest().encode(), sig):
        return ("bad signature: signed with HMAC-SHA256, as ipphpc before wire protocol 6 did; install the same ipphpc "
                "version on both sides")
    return "bad signature"


def head_parts(head: Any) -> tuple[bytes, bytes]:
    """(signature, header JSON) of a head frame."""
    b = frame_bytes(head)
    return b[len(DELIM):_HEADER_AT], b[_HEADER_AT:]


def head(signature: bytes, header: bytes) -> bytes:
    """A head frame from a stored signature and header (a result sent again as the engine sent it)."""
    return DELIM + signature + header


def beat(session: Session, n: int) -> bytes:
    """Heartbeat ping `n` of the controller whose session this is: the number and a MAC that binds it to that
    session, so a reader without the key learns only a counter (no session id, nothing to replay elsewhere)."""
    return b"%d:" % n + session.sign(b"beat:%s:%d" % (session.id.encode(), n))[:32]


def read_beat(session: Session, controller: str, frame: Any) -> int | None:
    """The number of a ping sent by the controller session `controller`; None for any other frame (including a
    ping of another controller session: a restarted controller)."""
    try:
        num, mac = frame_bytes(frame).split(b":", 1)
        n = int(num)
    except ValueError:
        return None
    want = session.sign(b"beat:%s:%d" % (controller.encode(), n))[:32]
    return n if compare_digest(want, mac) else None


def frame_bytes(frame: Any) -> bytes:
    """A frame's contents as bytes: a zmq.Frame keeps the bytes it was asked for once, so they are not copied again."""
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


class NotAdmitted(AuthError):
    """A message of a session family that has not proven freshness to this controller: held, not run."""


def family(session_id: str) -> str:
    return session_id.split("/", 1)[0]


class Freshness:
    """Which senders a controller hears, so that no captured message ever works again.

    A family of sessions (a client's or an engine's: ids `<root>` and `<root>/<name>`, numbered from
    one sequence) is admitted by a hello or register that carries a nonce this controller issued:
    one use, for `nonce_life` seconds. From then on a message is taken only if its number is above
    the admitting one and above its session's last. A controller restarted with --reuse starts with
    no families, so frames captured before come from no admitted family (or are numbered below the
    new hello), and a dead engine's family is forgotten, so its old register needs a new nonce.
    """

    def __init__(self, nonce_life: float = 60.0, max_nonces: int = 10_000):
        self.nonce_life = nonce_life
        self.max_nonces = max_nonces
        self.floor: dict[str, int] = {}  # family -> number of its admitting hello, minus one
        self.last: dict[str, dict[str, int]] = {}  # family -> session -> its last number
        self.nonces: dict[str, float] = {}  # nonce -> when it expires

    def issue(self) -> str:
        now = time.monotonic()
        if len(self.nonces) >= self.max_nonces:  # the oldest go first (a flood of hellos cannot grow this)
            self.nonces = {n: t for n, t in self.nonces.items() if t > now}
            while len(self.nonces) >= self.max_nonces:
                self.nonces.pop(next(iter(self.nonces)))
        nonce = os.urandom(16).hex()
        self.nonces[nonce] = now + self.nonce_life
        return nonce

    def admitted(self, session_id: str) -> bool:
        return family(session_id) in self.floor

    def admit(self, header: dict) -> bool:
        """Admit the family of a hello/register that signed a live nonce of ours; False otherwise."""
        nonce, s, q = header.get("nonce"), header.get("s"), header.get("q")
        if not isinstance(nonce, str) or not isinstance(s, str) or not isinstance(q, int):
            return False
        expires = self.nonces.pop(nonce, None)
        if expires is None or expires < time.monotonic():
            return False
        fam = family(s)
        self.floor[fam] = max(self.floor.get(fam, 0), q - 1)
        return True

    def check(self, header: dict) -> None:
        s, q = header.get("s"), header.get("q")
        if not isinstance(s, str) or not isinstance(q, int):
            raise AuthError("header lacks session or sequence")
        fam = family(s)
        floor = self.floor.get(fam)
        if floor is None:
            raise NotAdmitted(f"session {s} has not said hello to this controller")
        seen = self.last.setdefault(fam, {})
        last = max(floor, seen.get(s, 0))
        if q <= last:
            raise AuthError(f"replayed or stale message (seq {q} <= {last})")
        seen[s] = q

    def forget(self, session_id: str) -> None:
        fam = family(session_id)
        self.floor.pop(fam, None)
        self.last.pop(fam, None)


def check_version(header: dict, who: str) -> str | None:
    """None when compatible, else a message that says what to do."""
    v = header.get("v")
    if not v or v[0] != PROTOCOL_VERSION[0]:
        from ._version import __version__
        return (f"{who} speaks ipphpc wire protocol {v}, this side speaks {list(PROTOCOL_VERSION)} "
                f"(ipphpc {__version__}); install the same ipphpc version on both sides")
    return None
