"""What the controller records of a result: the engine's metadata frame is read only when a signed
digest matched it, and a large result is recorded without being hashed by the controller."""
from __future__ import annotations

import json

from ipphpc.controller.taskdb import fields
from ipphpc.wire import Session, fan_part, head_parts, payload_digest

META = {"started": 1000.0, "completed": 1001.5, "stdout": "hi"}


def _result(session: Session, meta: dict, bufs: list[bytes], with_dm: bool) -> tuple[dict, list]:
    body = [json.dumps(meta).encode(), *bufs]
    extra = {"p": "c-1", "ok": True, "eid": 0}
    if with_dm:
        extra["dm"] = payload_digest(body[:1])
    frames = [b"engine-ident", *session.pack("result", extra, body)]
    return session.split(frames)[1], frames


def test_metadata_is_read_after_its_own_digest_matched(monkeypatch):
    s = Session("k" * 64)
    big = b"x" * (8 * 2**20)
    h, frames = _result(s, META, [big], with_dm=True)
    hashed = []
    monkeypatch.setattr(fields, "payload_digest",
                        lambda fr: hashed.append(sum(len(f) for f in fr)) or payload_digest(fr))
    rec = fields.from_result(h, frames, 5.0)
    assert (rec["stdout"], rec["completed"]) == ("hi", 1001.5)
    assert rec["result_buffers"][1] is big or bytes(rec["result_buffers"][1]) == big
    assert hashed and max(hashed) < 2**20  # only the metadata frame was hashed, not the 8 MiB


def test_damaged_metadata_is_stored_but_never_parsed():
    s = Session("k" * 64)
    for with_dm in (True, False):
        h, frames = _result(s, META, [b"y" * 100_000], with_dm)
        frames[2] = json.dumps({**META, "stdout": "forged"}).encode()  # after signing: the digests no longer match
        rec = fields.from_result(h, frames, 5.0)
        assert "stdout" not in rec and "completed" not in rec, with_dm
        assert rec["result_header"] == head_parts(frames[1])[1].decode()  # kept: the client says why it cannot read it


def test_results_without_a_metadata_digest_are_checked_whole():
    s = Session("k" * 64)
    h, frames = _result(s, META, [b"z" * 1000], with_dm=False)
    assert fields.from_result(h, frames, 5.0)["stdout"] == "hi"
    frames[3] = b"Z" * 1000  # a changed buffer fails the whole-payload digest: metadata not trusted
    assert "stdout" not in fields.from_result(h, frames, 5.0)


def test_times_come_from_the_signed_header_and_the_metadata_is_read_only_when_it_holds_more():
    s = Session("k" * 64)
    quiet = {"p": "c-2", "ok": True, "eid": 0, "st": 1000.0000004, "cp": 1001.25}
    body = [b"not json: never parsed", b"result"]
    frames = [b"engine-ident", *s.pack("result", quiet, body)]
    rec = fields.from_result(s.split(frames)[1], frames, 5.0)
    assert (rec["started"], rec["completed"], rec["stdout"], rec["error"]) == (1000.0, 1001.25, "", None)
    loud = {**quiet, "mo": 1}
    body = [json.dumps(META).encode(), b"result"]
    frames = [b"engine-ident", *s.pack("result", loud, body)]
    rec = fields.from_result(s.split(frames)[1], frames, 5.0)
    assert (rec["stdout"], rec["completed"]) == ("hi", 1001.5)  # from the metadata frame


def test_a_message_for_many_engines_is_a_record_per_engine():
    s = Session("k" * 64)
    payload = [b"f" * 10, b"a" * 1000]
    frames = [b"client-ident", *s.pack("task", {"k": "apply", "c": "cl", "to": [3, 5], "ids": ["m3", "m5"]}, payload)]
    h = s.split(frames)[1]
    recs = fields.from_fan(h, frames, 7.0)
    assert [(r["msg_id"], r["engine_id"], r["queue"]) for r in recs] == [("m3", 3, "mux"), ("m5", 5, "mux")]
    for r in recs:  # the header that engine got: the message's fields, its own id and msg_id, no list of all
        part = json.loads(r["header"])
        assert part["to"] == r["engine_id"] and part["id"] == r["msg_id"] and "ids" not in part
        assert {k: v for k, v in part.items() if k not in ("to", "id")} == {
            k: v for k, v in h.items() if k not in ("to", "id", "ids")}
    assert all([bytes(b) for b in r["buffers"]] == payload for r in recs)


def test_a_fan_record_holds_the_header_text_its_engine_was_sent():
    """The text, not only its meaning: a label in any script is written as the controller signed it."""
    s = Session("k" * 64)
    frames = [b"client-ident", *s.pack("task", {"k": "apply", "lbl": "Ωmega ✓", "to": [3], "ids": ["m3"]})]
    h = s.split(frames)[1]
    (rec,) = fields.from_fan(h, frames, 7.0)
    sent = head_parts(s.signed(fan_part(h, 3, "m3")))[1]  # what the hub sends engine 3
    assert rec["header"] == bytes(sent).decode()
