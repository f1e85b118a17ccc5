"""A client's direct connections to engines, for large frames (see `ipphpc.bulk`).

A connection to an engine is opened the first time a task for it carries a frame of `bulk.BULK_MIN` bytes
or more, or in the background after a large result from it came through the controller; tasks then say
which connection is theirs (`bc`), so the engine answers large results on it. An engine that cannot be
reached directly (behind an SSH tunnel, a firewall, a container's own network) is tried again five
minutes later; until then its frames go through the controller, as they always can. A task for several
engines sends its large frames straight to each only when every one of them has a connection (one
failure anywhere, and the message keeps its frames).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Sequence

from .. import bulk, relay
from ..netutil import is_loopback

log = logging.getLogger("ipphpc.client")
RETRY_AFTER = 300.0
#: on a site's network a connection is made or refused within milliseconds; silence means a firewall
CONNECT_TIMEOUT = 1.0


class DirectLinks:
    def __init__(self, key: str):
        self.keys = bulk.Keys(key)
        self.token = bulk.new_id()
        self.token_hex = self.token.hex()
        self.links: dict[int, bulk.Channel] = {}
        self._failed: dict[tuple[int, str], float] = {}  # (engine, address) -> when to try again
        self._opening: set[int] = set()
        self._lock = threading.Lock()
        self._host = socket.gethostname()
        self.relay = not os.environ.get("IPPHPC_NO_RELAY")  # large frames for many engines passed among them
        self._closed = False
        self._gave_up_until = 0.0  # after a failure, tasks for many engines use only connections already open
        # transfers an engine got whole on a connection that then failed, for a message sent the long way: it
        # keeps them for the next connection of this client (its messages may still need them) until told
        self._abandoned: dict[int, list[bytes]] = {}
        # the large frames of load-balanced tasks, until their engine asks for them (`bulk.Channel.resolve`): kept
        # until the task's result arrives, for the engine it may be sent to again
        self._held: dict[bytes, Any] = {}
        self._held_by: dict[str, list[bytes]] = {}

    def reachable(self, info: dict | None) -> bool:
        """Whether an engine listens for direct connections this host can make (a loopback address only
        from its own host)."""
        d = (info or {}).get("direct")
        if not d or not isinstance(d, dict):
            return False
        host = str(d.get("at", "")).rpartition(":")[0]
        return not is_loopback(host) or (info or {}).get("host") == self._host

    @staticmethod
    def _key(eid: int, info: dict | None) -> tuple[int, str]:
        """Failures are remembered per address: an engine restarted in place listens somewhere new."""
        return eid, str(((info or {}).get("direct") or {}).get("at"))

    def link(self, eid: int, info: dict | None) -> bulk.Channel | None:
        """The open connection to engine `eid`, opened now if need be; None when it cannot be."""
        ch = self.links.get(eid)
        if ch is not None and ch.closed is None:
            return ch
        if self._closed or not self.reachable(info) or time.monotonic() < self._failed.get(self._key(eid, info), 0):
            return None
        with self._lock:
            ch = self.links.get(eid)
            if ch is not None and ch.closed is None:
                return ch
            d = info["direct"]  # type: ignore[index]
            try:
                ch = bulk.connect(str(d["at"]), self.keys, self.token, str(d["id"]), CONNECT_TIMEOUT, self._serve)
            except (bulk.BulkError, OSError, ValueError) as e:
                log.info("engine %s: %s; its large frames go through the controller", eid, e)
                self._failed[self._key(eid, info)] = self._gave_up_until = time.monotonic() + RETRY_AFTER
                return None
            if self._closed:
                ch.close()
                return None
            self.links[eid] = ch
            for tid in self._abandoned.pop(eid, ()):
                ch.cancel(tid)
            return ch

    def open_later(self, eid: int, info: dict | None) -> None:
        """Open a connection to `eid` in the background (a large result came from it the long way)."""
        if eid in self.links or eid in self._opening or not self.reachable(info):
            return
        if time.monotonic() < self._failed.get(self._key(eid, info), 0.0):
            return
        self._opening.add(eid)

        def run() -> None:
            try:
                self.link(eid, info)
            finally:
                self._opening.discard(eid)
        threading.Thread(target=run, name=f"ipphpc-direct-open-{eid}", daemon=True).start()

    def out(self, fields: dict, payload: Sequence[Any], eid: int, info: dict | None) -> Sequence[Any]:
        """The payload to send to engine `eid`: its large frames sent straight there (then `fields` says
        which, `bk`), or as it was when there is no connection. `bc` names this client's connection, so
        that large results come back on it."""
        idx = bulk.large(payload)
        ch = self.link(eid, info) if idx else self.links.get(eid)
        if ch is None or ch.closed is not None:
            return payload
        fields["bc"] = self.token_hex
        if not idx:
            return payload
        out = self._send(payload, idx, [(eid, ch)])
        if out is not None:
            fields["bk"] = idx
        return out if out is not None else payload

    def _send(self, payload: Sequence[Any], idx: list[int], to: list[tuple[int, bulk.Channel]],
              routes: Sequence[bytes] = ()) -> list | None:
        """`payload` with frames `idx` sent to every channel of `to`, as descriptors; None when a channel failed
        (then the engines that got frames whole are told to forget them). `routes`: each channel's part of a
        relay tree, sent before every frame."""
        out, sent = list(payload), []
        chans = [ch for _, ch in to]
        for i in idx:
            tid = bulk.new_id()
            failed = []
            for ch, route in zip(chans, routes):
                try:
                    ch.send(tid, route, bulk.ROUTE)
                except bulk.BulkError:
                    failed.append(ch)
            failed = failed or bulk.send_all(chans, tid, payload[i])
            sent.append(tid)
            if failed:
                log.info("%s; the frames go through the controller", failed[0].closed)
                for eid, ch in to:
                    if ch in failed:  # what arrived whole before it failed is forgotten when it connects again
                        self._abandoned.setdefault(eid, []).extend(sent[:-1])
                    else:
                        for tid in sent:
                            ch.cancel(tid)
                return None
            out[i] = bulk.descriptor(tid)
        return out

    def out_many(self, fields: dict, payload: Sequence[Any], targets: Sequence[int],
                 engines: dict[int, dict]) -> Sequence[Any]:
        """The same for one message to several engines: each large frame goes to every one of them under one
        transfer id (the message names it once for all). To more than `relay.FANOUT` engines that can reach
        each other, it goes to the roots of a tree of them, which pass it on (`br` says so)."""
        idx = bulk.large(payload)
        if self.links:
            fields["bc"] = self.token_hex
        if not idx:
            return payload
        late = time.monotonic() < self._gave_up_until
        roots, routes = None, []
        if self.relay and relay.relayable(targets, engines):
            tree = relay.plan(targets, engines)
            roots, routes = [node[0] for node in tree], [relay.route_bytes(node[3]) for node in tree]
        chans = []
        for t in roots or targets:
            ch = self.links.get(t)
            if ch is None or ch.closed is not None:
                ch = None if late else self.link(t, engines.get(t))
            if ch is None:
                return payload
            chans.append(ch)
        out = self._send(payload, idx, list(zip(roots or targets, chans)), routes)
        if out is None:
            return payload
        fields["bk"], fields["bc"] = idx, self.token_hex
        if roots:
            fields["br"] = 1
        return out

    # -- load-balanced tasks: the engine that runs one asks for its large frames --------------------------
    def pull_ready(self, among: Any, engines: dict[int, dict]) -> bool:
        """Whether every engine a load-balanced task may go to has a connection from here (opened now if
        need be): only then can its large frames wait here for the engine that gets it."""
        ids = list(engines) if among is None else list(among)
        if not ids or time.monotonic() < self._gave_up_until:
            return False
        return all(self.link(eid, engines.get(eid)) is not None for eid in ids)

    def hold(self, payload: Sequence[Any], idx: list[int]) -> list:
        """`payload` with frames `idx` kept here and replaced by descriptors an engine asks for."""
        out = list(payload)
        with self._lock:
            for i in idx:
                tid = bulk.new_id()
                self._held[tid] = payload[i]
                out[i] = bulk.descriptor(tid)
        return out

    def held_for(self, mid: str, tids: list[bytes]) -> None:
        with self._lock:
            self._held_by[mid] = tids

    def release(self, mid: str) -> bool:
        """Let go of the frames task `mid` held (its result came); whether it had any."""
        if not self._held_by:  # every result asks: most clients hold nothing
            return False
        with self._lock:
            tids = self._held_by.pop(mid, None)
            for tid in tids or ():
                self._held.pop(tid, None)
        return tids is not None

    def release_frames(self, payload: Sequence[Any], idx: Sequence[int]) -> None:
        """Let go of frames held for a task that was never sent."""
        with self._lock:
            for i in idx:
                try:
                    self._held.pop(bulk.descriptor_id(payload[i]), None)
                except bulk.BulkError:
                    pass

    def _serve(self, ch: bulk.Channel, tid: bytes) -> None:
        """An engine asks for a held frame (in the connection's reader thread)."""
        with self._lock:
            frame = self._held.get(tid)
        if frame is None:
            ch.none(tid)
            return
        try:
            ch.send(tid, frame)
        except bulk.BulkError as e:
            log.info("%s", e)

    def resolve(self, h: dict, payload: list) -> list:
        """A result's payload with its direct frames in place (waits for them to arrive)."""
        ch = self.links.get(h.get("eid"))  # type: ignore[arg-type]
        if ch is None:
            raise bulk.BulkError(f"a result's large frames were sent on a direct connection from engine "
                                 f"{h.get('eid')} that this client does not have")
        return ch.resolve(h["bk"], payload)

    def drop(self, h: dict, payload: list) -> None:
        """Forget the frames of a result nobody here waits for."""
        ch = self.links.get(h.get("eid"))  # type: ignore[arg-type]
        if ch is not None:
            ch.drop(h["bk"], payload)

    def forget(self, eid: int) -> None:
        """An engine left: its connection goes, with any frames it sent that nobody claimed."""
        ch = self.links.pop(eid, None)
        if ch is not None:
            ch.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for ch in self.links.values():
                ch.close()
            self.links.clear()
