"""Message signing, payload digests, replay refusal and version checks."""
from __future__ import annotations

import json
import pathlib
import time

import pytest

from ipphpc import serialize
from ipphpc._version import PROTOCOL_VERSION
from ipphpc.wire import (
    DELIM,
    AuthError,
    Freshness,
    NotAdmitted,
    Session,
    check_version,
    head_parts,
    new_key,
    payload_digest,
)

KEY = new_key()


class _TouchOnLoad:
    """Unpickling this creates a file: proof of whether a payload was deserialized."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _receive(session: Session, frames: list) -> object:
    """What every receiver does: verify the header, then the payload digest, then deserialize."""
    _, header, payload = session.split(frames)
    Session.check_payload(header, payload)
    return serialize.loads(payload)


def test_sign_verify_roundtrip():
    """A packed message verifies under the same key and returns routing ids, header and payload intact."""
    a, b = Session(KEY), Session(KEY)
    payload = serialize.dumps({"x": [1, 2, 3]})
    frames = [b"route-1", b"route-2", *a.pack("task", {"k": "apply", "to": 3}, payload)]
    idents, h, body = b.split(frames)
    assert idents == [b"route-1", b"route-2"]
    assert (h["t"], h["k"], h["to"], h["s"], h["q"]) == ("task", "apply", 3, a.id, 1)
    assert h["v"] == list(PROTOCOL_VERSION)
    assert h["d"] == payload_digest(payload)
    Session.check_payload(h, body)
    assert serialize.loads(body) == {"x": [1, 2, 3]}
    # sequence numbers grow per session
    assert b.split(a.pack("status"))[1]["q"] == 2


def test_wrong_key_rejected():
    """A message signed with another key fails verification."""
    frames = Session(new_key()).pack("status", {"c": "x"})
    with pytest.raises(AuthError, match="bad signature"):
        Session(KEY).split(frames)


def test_tampered_header_rejected_before_parsing():
    """A changed header byte fails the signature check; the header is not even parsed as JSON."""
    s = Session(KEY)
    frames = s.pack("task", {"k": "apply"}, serialize.dumps(1))
    assert frames[0].startswith(DELIM) and b'"apply"' in frames[0]  # one head frame: delimiter, signature, header
    frames[0] = frames[0].replace(b'"apply"', b'"apply2"')
    with pytest.raises(AuthError, match="bad signature"):
        s.split(frames)
    # not JSON at all: still an AuthError, so nothing was parsed before the signature check
    sig, _ = head_parts(frames[0])
    with pytest.raises(AuthError):
        s.split([DELIM + sig + b"\x80not json", *frames[1:]])


def test_signature_is_keyed_blake3_of_the_header():
    """The signature is BLAKE3 keyed with a key derived from the connection key: anyone with the key can check it
    independently, and a message signed the way ipphpc before protocol 6 did (HMAC-SHA256) is refused with a line
    that says what to do."""
    import hashlib
    import hmac

    from blake3 import blake3
    s = Session(KEY)
    sig, hb = head_parts(s.pack("status")[0])
    derived = blake3(KEY.encode(), derive_key_context="ipphpc 2026-12-07 wire message signature").digest()
    assert sig == blake3(hb, key=derived).hexdigest().encode()
    old = hmac.new(KEY.encode(), hb, hashlib.sha256).hexdigest().encode()
    with pytest.raises(AuthError, match="HMAC-SHA256, as ipphpc before wire protocol 6 did; install the same"):
        s.split([DELIM + old + hb])
    with pytest.raises(AuthError, match="^bad signature$"):
        s.split([DELIM + b"0" * 64 + hb])


def test_connection_file_of_another_signature_scheme_refused(tmp_path):
    from ipphpc import connection
    from ipphpc.error import ConnectionFileError
    path = tmp_path / "ipcontroller-engine.json"
    info = {"key": KEY, "addresses": ["127.0.0.1"], "ports": {"engine": 1}, "signature_scheme": "hmac-sha256"}
    connection.write(path, info)
    with pytest.raises(ConnectionFileError, match="signs its messages with hmac-sha256, and this ipphpc signs them "
                                                  "with blake3-keyed: install the same ipphpc version on both sides"):
        connection.read(path)
    info["signature_scheme"] = "blake3-keyed"
    connection.write(path, info)
    assert connection.read(path)["key"] == KEY


def test_head_frame_and_older_layout():
    """Routing ids, then one head frame, then the payload; a message laid out as before protocol 4 (delimiter,
    signature and header in three frames) is refused saying so."""
    s = Session(KEY)
    frames = s.pack("task", {"k": "apply"}, serialize.dumps(1))
    ids, h, payload = s.split([b"\x00abcd", *frames])
    assert ids == [b"\x00abcd"] and h["k"] == "apply" and payload == frames[1:]
    sig, hb = head_parts(frames[0])
    assert len(sig) == 64 and json.loads(hb) == h
    with pytest.raises(AuthError, match="older ipphpc"):
        s.split([b"\x00abcd", DELIM, sig, hb, *payload])


def test_tampered_payload_rejected_before_deserializing(tmp_path):
    """A payload swapped under a valid header fails the digest check and is never unpickled."""
    marker = tmp_path / "unpickled"
    s = Session(KEY)
    evil = serialize.dumps(_TouchOnLoad(marker))
    # sanity: deserializing the evil payload does create the marker
    serialize.loads(evil)
    assert marker.exists()
    marker.unlink()

    frames = s.pack("task", {"k": "apply"}, serialize.dumps("harmless"))
    swapped = frames[:1] + evil
    with pytest.raises(AuthError, match="digest"):
        _receive(s, swapped)
    assert not marker.exists()

    # one flipped byte in a payload frame
    frames = s.pack("task", {"k": "apply"}, serialize.dumps(b"x" * 100))
    body = bytearray(frames[1])
    body[-5] ^= 0x01
    with pytest.raises(AuthError, match="digest"):
        _receive(s, frames[:1] + [bytes(body)])
    # an extra frame appended, or a frame dropped
    frames = s.pack("task", {}, [b"a", b"b"])
    with pytest.raises(AuthError):
        _receive(s, frames + [b"c"])
    with pytest.raises(AuthError):
        _receive(s, frames[:-1])
    # payload frames attached to a header that declares none
    frames = s.pack("status")
    with pytest.raises(AuthError):
        _receive(s, frames + evil)
    assert not marker.exists()


def test_missing_signature_rejected():
    """No signature, an empty one, a cut one, or no delimiter at all: AuthError."""
    s = Session(KEY)
    (head,) = s.pack("status")
    sig, header = head_parts(head)
    for bad in ([DELIM + header], [DELIM + b"" + header], [sig + header], [header], [b"ident", DELIM],
                [DELIM + sig[:-1] + header], [head[:len(DELIM) + 64]], [b"ident"]):
        with pytest.raises(AuthError):
            s.split(bad)
    assert s.split([head])[1]["t"] == "status"


def _admitted(fresh: Freshness, s: Session) -> dict:
    """Admit `s`'s family the way a controller does: a hello carrying a nonce it issued."""
    h = s.split(s.pack("hello", {"nonce": fresh.issue()}))[1]
    assert fresh.admit(h)
    fresh.check(h)
    return h


def test_freshness_refuses_repeat_and_lower_sequence():
    """Within a session the sequence must grow: a repeat or an older number is refused."""
    s = Session(KEY)
    fresh = Freshness()
    _admitted(fresh, s)
    headers = [s.split(s.pack("status"))[1] for _ in range(3)]
    fresh.check(headers[0])
    fresh.check(headers[2])
    with pytest.raises(AuthError, match="replayed"):
        fresh.check(headers[2])
    with pytest.raises(AuthError, match="replayed"):
        fresh.check(headers[1])
    other = Session(KEY)
    with pytest.raises(NotAdmitted):  # other families are not heard before their own hello
        fresh.check(other.split(other.pack("status"))[1])
    with pytest.raises(AuthError):
        fresh.check({"q": 1})
    with pytest.raises(AuthError):
        fresh.check({"s": s.id, "q": "1"})


def test_freshness_nonce_is_one_use_and_admits_the_family_from_its_hello_on():
    s = Session(KEY)
    member = s.member("r")
    before = member.split(member.pack("task"))[1]  # sent before the hello (a capture, or queued in a restart)
    fresh = Freshness()
    nonce = fresh.issue()
    hello = s.split(s.pack("hello", {"nonce": nonce}))[1]
    replay = dict(hello, q=hello["q"] + 100)  # another message carrying the same nonce
    assert not fresh.admit({**hello, "nonce": "0" * 32})  # a nonce never issued
    assert fresh.admit(hello)
    assert not fresh.admit(replay)  # used up
    with pytest.raises(AuthError, match="stale"):
        fresh.check(before)
    fresh.check(member.split(member.pack("task"))[1])  # numbered after the hello: taken
    fresh.forget(member.id)  # forgetting any member forgets the family
    with pytest.raises(NotAdmitted):
        fresh.check(s.split(s.pack("task"))[1])


def test_freshness_nonces_expire_and_are_bounded():
    fresh = Freshness(nonce_life=0.0, max_nonces=3)
    s = Session(KEY)
    late = s.split(s.pack("hello", {"nonce": fresh.issue()}))[1]
    time.sleep(0.01)
    assert not fresh.admit(late)
    fresh = Freshness(max_nonces=3)
    first = fresh.issue()
    for _ in range(5):
        fresh.issue()
    assert len(fresh.nonces) == 3 and first not in fresh.nonces


def test_check_version_message():
    """Same major version passes; another major (or none) gets a message naming both versions and the fix."""
    major, minor = PROTOCOL_VERSION
    assert check_version({"v": [major, minor]}, "this client") is None
    assert check_version({"v": [major, minor + 7]}, "this client") is None
    msg = check_version({"v": [major + 1, 0]}, "this engine")
    assert msg is not None
    assert "this engine" in msg and str([major + 1, 0]) in msg and str(list(PROTOCOL_VERSION)) in msg
    assert "same ipphpc version" in msg
    assert check_version({}, "this client") is not None


def test_header_is_compact_json():
    """Routers read only the header: it is plain JSON carrying type, session, sequence, time and version."""
    s = Session(KEY)
    (head,) = s.pack("ping", {"n": 4})
    _, hb = head_parts(head)
    h = json.loads(hb)
    assert set(h) >= {"t", "s", "q", "id", "ts", "v", "n"}
    assert b" " not in hb


def test_header_values_round_trip_as_the_standard_library_writes_them():
    """Labels in any script, numbered maps and nested values come back as json would give them."""
    s = Session(KEY)
    fields = {"lbl": "Ωmega 測試 ✓", "m": {3: "three", "x": [1.5, None, True]}, "big": 2**62}
    _, h, _ = s.split(s.pack("task", fields))
    assert {k: h[k] for k in fields} == json.loads(json.dumps(fields))
