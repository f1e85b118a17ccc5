"""What a client reads of a result message: the metadata frame is parsed only when it holds more than the
times the signed header already carries."""
from __future__ import annotations

import json

from ipphpc import serialize
from ipphpc.client.client import Client
from ipphpc.wire import AuthError, Session


def _result(s: Session, fields: dict, body: list) -> tuple[dict, list]:
    _, h, payload = s.split(s.pack("result", fields, body))
    return h, payload


def test_a_quiet_result_takes_its_times_from_the_header():
    s = Session("k" * 64)
    quiet = {"p": "c-1", "ok": True, "eid": 3, "dur": 0.25, "st": 1000.0000004, "cp": 1000.2500004}
    h, payload = _result(s, quiet, [b"not json: never parsed", *serialize.dumps(42)])
    value, error, meta = Client._decode(h, payload)
    assert (value, error) == (42, None)
    assert meta == {"started": 1000.0000004, "completed": 1000.2500004, "stdout": "", "stderr": "", "engine_id": 3}


def test_a_result_with_more_is_read_from_its_metadata_frame():
    s = Session("k" * 64)
    meta = {"started": 1.0, "completed": 2.0, "stdout": "hi\n", "stderr": "", "engine_id": 3}
    h, payload = _result(s, {"p": "c-2", "ok": True, "eid": 3, "st": 1.0, "cp": 2.0, "mo": 1},
                         [json.dumps(meta).encode(), *serialize.dumps("v")])
    assert Client._decode(h, payload) == ("v", None, meta)
    failed = {**meta, "stdout": "", "error": {"ename": "ValueError", "evalue": "bad", "tb": "tb"}}
    h, payload = _result(s, {"p": "c-3", "ok": False, "eid": 3, "st": 1.0, "cp": 2.0, "mo": 1},
                         [json.dumps(failed).encode()])
    value, error, got = Client._decode(h, payload)
    assert value is None and error.ename == "ValueError" and got == failed


def test_a_damaged_quiet_result_still_fails_its_digest():
    s = Session("k" * 64)
    h, payload = _result(s, {"p": "c-4", "ok": True, "eid": 0, "st": 1.0, "cp": 2.0}, [b"{}", *serialize.dumps(1)])
    body = bytearray(payload[1])
    body[-2] ^= 0x01
    payload = [payload[0], bytes(body)]
    value, error, meta = Client._decode(h, payload)
    assert value is None and isinstance(error, AuthError) and meta is None
