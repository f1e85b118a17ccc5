"""What the hub calls: record what it routes, and answer clients' task-database requests.

Recording costs the hub one queue put per task and per result. Lookups run on the writer thread
(after the writes queued before them) and are answered from the event loop; stored results go
back to the asking client as the very signed messages the engines sent, so the client decodes
them as it decodes any result.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ...wire import PAYLOAD_AT, head, head_parts
from .base import Store
from .query import QueryError, check

NO_DB = ("the controller keeps no task records (it runs with --db=none); start it with --db=dict, sqlite "
         "or hdf5 to look up, query or resubmit tasks")
# header fields of a task that a resubmission keeps (routing and flags); the rest is made anew
_KEEP = ("k", "to", "tmo", "among", "lbl")
# header fields Session.pack makes, or that name frames no longer in the message
_MADE_BY_PACK = ("t", "s", "q", "id", "ts", "v", "d", "dm", "sh")


class TaskDBService:
    def __init__(self, hub: Any, store: Store | None, recorder: Any):
        self.hub, self.store, self.rec = hub, store, recorder
        self.put = recorder.put if recorder is not None else None
        self.live: set[str] = set()  # msg_ids routed in this life and not finished
        self.watchers: dict[str, set[bytes]] = {}  # msg_id -> result sockets waiting for it (get_result)

    # -- recording (hot path) ----------------------------------------------------------------
    def task(self, h: dict, frames: list) -> None:
        if "ids" in h:  # one message for many engines: a record per engine
            self.live.update(h["ids"])
        else:
            self.live.add(h["id"])
        self.put(("task", h, frames))

    def result(self, h: dict, frames: list) -> None:
        mid = h["p"]
        self.live.discard(mid)
        self.put(("result", h, frames, time.time()))
        if self.watchers:
            idents = self.watchers.pop(mid, ())
            if idents:
                # frames in shared memory are the owner's to read (it removes their files): send their pages
                out = self._inline(h, frames[PAYLOAD_AT:]) if "sh" in h else frames[1:]
                for ident in idents:
                    self.hub._out(self.hub.client_sock, [ident, *out])

    def _inline(self, h: dict, payload: list) -> list:
        """A result whose shared-memory frames are given as the pages the controller mapped, signed anew."""
        fields = {k: v for k, v in h.items() if k not in _MADE_BY_PACK}
        return self.hub.session.pack(h["t"], fields, payload)

    def tidy(self) -> None:
        """Once a burst is over: the set of tasks in flight held all of them, and keeps that size when emptied."""
        self.live = set(self.live)

    def idle(self) -> bool:
        """Nothing left for the writer thread (its queue holds frames until written)."""
        return self.rec is None or self.rec.idle()

    def stats(self) -> dict:
        """What `rc.controller_status()['taskdb']` shows: backend, records written, queued, lost."""
        if self.rec is None:
            return {"backend": "none"}
        return {"backend": self.store.name, "written": self.rec.written, "queued": self.rec.q.qsize(),
                "lost": self.rec.lost, "failing": self.rec.failing}

    # -- requests ----------------------------------------------------------------------------
    def request(self, ident: bytes, h: dict) -> None:
        reply: dict[str, Any] = {"p": h["id"]}
        if self.rec is None:
            reply["error"] = NO_DB
            return self._reply(ident, reply)
        t = h["t"]
        handler = getattr(self, "_" + t, None)
        if handler is None:
            reply["error"] = f"unknown request {t!r}"
            return self._reply(ident, reply)
        try:
            handler(ident, h, reply)
        except (QueryError, ValueError, TypeError, KeyError) as e:
            reply.update(error=str(e), etype="ValueError")
            self._reply(ident, reply)

    def _reply(self, ident: bytes, reply: dict, payload: list = ()) -> None:
        self.hub._send(self.hub.client_sock, ident, "reply", reply, payload)

    def _ask(self, fn, then) -> None:
        self.rec.ask(fn, then, asyncio.get_running_loop())

    def _failed(self, ident: bytes, reply: dict, answer: Any) -> bool:
        if isinstance(answer, Exception):
            reply.update(error=f"the task database ({self.store.name}) failed: {answer}")
            self._reply(ident, reply)
            return True
        return False

    def _db_get(self, ident: bytes, h: dict, reply: dict) -> None:
        ids = [str(m) for m in h["ids"]]
        keys = ("msg_id", "submitted", "completed", "result_header", "result_sig", "result_buffers")

        def lookup(store: Store) -> tuple[dict, dict]:
            got = store.get(ids, keys)
            return got, {m: store.culled(m) for m in ids if m not in got}

        def send(got: dict, only: list[str]) -> list[str]:
            """Send the stored results among `only`; the ids finished meanwhile, to look up again."""
            again = []
            for m in only:
                rec = got.get(m)
                if rec is None:
                    continue
                if rec.get("submitted") is not None:
                    reply.setdefault("submitted", {})[m] = rec["submitted"]
                if rec["result_header"] is not None:
                    if '"sh":' in rec["result_header"]:  # stored as pages: the files' names are gone
                        out = self._inline(json.loads(rec["result_header"]), rec["result_buffers"])
                    else:
                        out = [head(rec["result_sig"].encode(), rec["result_header"].encode()),
                               *rec["result_buffers"]]
                    self.hub._out(self.hub.client_sock, [ident, *out])
                elif m in self.live:
                    self.watchers.setdefault(m, set()).add(ident)
                    reply["pending"].append(m)
                else:
                    again.append(m)  # finished while the lookup ran: its result was queued behind the lookup
            return again

        def second(result: Any) -> None:
            if not self._failed(ident, reply, result):
                for m in send(result[0], list(result[0])):
                    reply["missing"][m] = "its result was not recorded (the task database could not write it)"
                self._reply(ident, reply)

        def answer(result: Any) -> None:
            if self._failed(ident, reply, result):
                return
            got, missing = result
            reply.update(pending=[], missing=missing)
            again = send(got, ids)
            if again:
                self._ask(lambda s: (s.get(again, keys), {}), second)
            else:
                self._reply(ident, reply)
        self._ask(lookup, answer)

    def _db_query(self, ident: bytes, h: dict, reply: dict) -> None:
        query, keys = h.get("query") or {}, h.get("keys")
        check(query, keys)

        def answer(recs: Any) -> None:
            if self._failed(ident, reply, recs):
                return
            frames: list = []
            for r in recs:
                for k, v in r.items():
                    if isinstance(v, list) and k.endswith("buffers"):
                        r[k] = list(range(len(frames), len(frames) + len(v)))
                        frames.extend(v)
                    elif k in ("header", "result_header") and isinstance(v, str):
                        r[k] = json.loads(v)
            reply["records"] = recs
            self._reply(ident, reply, frames)
        self._ask(lambda s: s.find(query, keys), answer)

    def _db_history(self, ident: bytes, h: dict, reply: dict) -> None:
        def answer(recs: Any) -> None:
            if not self._failed(ident, reply, recs):
                reply["history"] = [r["msg_id"] for r in recs]
                self._reply(ident, reply)
        self._ask(lambda s: s.find({}, ["msg_id"]), answer)

    def _db_status(self, ident: bytes, h: dict, reply: dict) -> None:
        ids = [str(m) for m in h["ids"]]

        def lookup(store: Store) -> tuple[dict, dict]:
            got = store.get(ids, ("msg_id", "completed", "result_header"))
            return got, {m: store.culled(m) for m in ids if m not in got}

        def answer(result: Any) -> None:
            if self._failed(ident, reply, result):
                return
            got, missing = result
            done = [m for m in ids if m in got and got[m]["result_header"] is not None]
            reply.update(completed=done, pending=[m for m in ids if m in got and m not in done], missing=missing)
            self._reply(ident, reply)
        self._ask(lookup, answer)

    def _db_purge(self, ident: bytes, h: dict, reply: dict) -> None:
        ids, targets, everything = h.get("ids") or [], h.get("targets"), bool(h.get("all"))
        busy = [m for m in ids if m in self.live]
        if busy:
            raise ValueError(f"can't purge {len(busy)} outstanding task(s), e.g. {busy[:3]}; wait or abort them first")

        def purge(store: Store) -> int:
            if everything or targets is not None:
                q: dict = {"completed": {"$ne": None}}
                if targets is not None:
                    q["engine_id"] = {"$in": list(targets)}
                found = [r["msg_id"] for r in store.find(q, ["msg_id"])]
            else:
                found = list(ids)
            n = store.delete([m for m in found if m not in self.live])
            store.commit()
            return n

        def answer(n: Any) -> None:
            if not self._failed(ident, reply, n):
                reply["purged"] = n
                self._reply(ident, reply)
        self._ask(purge, answer)

    def _db_resubmit(self, ident: bytes, h: dict, reply: dict) -> None:
        ids, new_ids, cid = [str(m) for m in h["ids"]], [str(m) for m in h["new_ids"]], h["c"]
        if len(ids) != len(new_ids):
            raise ValueError("resubmit: as many new msg_ids as tasks are needed")

        def answer(got: Any) -> None:
            if self._failed(ident, reply, got):
                return
            missing = [m for m in ids if m not in got]
            busy = [m for m in ids if m in got and got[m]["result_header"] is None and m in self.live]
            if missing or busy:
                reply["error"] = (f"unknown task(s) {missing[:3]}: the controller has no record of them" if missing
                                  else f"can't resubmit outstanding task(s) {busy[:3]}; wait for them first")
                reply["etype"] = "KeyError" if missing else "ValueError"
                return self._reply(ident, reply)
            direct = [m for m in ids if '"bk":' in (got[m]["header"] or "") or '"bp":' in (got[m]["header"] or "")]
            if direct:
                reply["error"] = (f"can't resubmit task(s) {direct[:3]}: their large frames went straight from the "
                                  f"client to the engine and the controller never had them; send them again from "
                                  f"the client")
                reply["etype"] = "ValueError"
                return self._reply(ident, reply)
            for old, new in zip(ids, new_ids):
                self._resend(ident, cid, got[old], new)
                self.put(("set", old, {"resubmitted": new}))
            reply["ids"] = new_ids
            self._reply(ident, reply)
        self._ask(lambda s: s.get(ids, ("msg_id", "header", "buffers", "result_header")), answer)

    def _resend(self, ident: bytes, cid: str, rec: dict, new_id: str) -> None:
        """A new task with the payload of `rec`, sent for client `cid` as if it had sent it."""
        old = json.loads(rec["header"])
        fields = {k: old[k] for k in _KEEP if k in old}
        if isinstance(fields.get("to"), list):  # a part of a message for many, recorded by an older ipphpc
            fields["to"] = old["to"][old["ids"].index(rec["msg_id"])]
        fields["c"] = cid
        hub = self.hub
        q, _ = hub.session.next_id()
        # (a task that sent frames in shared memory is stored with their pages: sent inline now)
        digest = None if "sh" in old else old.get("d")
        packed = hub.session.pack("task", fields, rec["buffers"], seq=(q, new_id), digest=digest)
        hub.on_task(ident, json.loads(head_parts(packed[0])[1]), [ident, *packed])
