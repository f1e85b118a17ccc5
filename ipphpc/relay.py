"""Large frames to many engines through a tree of engines: the client sends fewer copies than there are engines.

A client pushing one array to N engines elsewhere would otherwise write it N times on its own link. With
more than `FANOUT` engines it writes it `FANOUT` times instead: to the roots of a tree of the engines (built
by `plan`), and each engine passes every sealed chunk on to its children as it arrives, before opening it
itself, so the copies travel down the tree at once and the last engine has the array shortly after the
first. Engines are ordered by host, so a subtree keeps to one host where it can and crosses each link a
few times at most; a parent always comes before its children in that order, so two trees never wait on
each other.

Before the data, each engine gets a *route* on the same connection (kind R, sealed like any transfer): the
part of the tree below it, as [[address, engine id, [children...]], ...]. An engine that cannot connect to
a child connects to that child's children instead (and logs the address it could not reach). Chunks are
passed on as they were sealed: the key depends only on the transfer's kind and id, so no engine seals
them again, and a child accepts only what a holder of the cluster key wrote.

The message itself still goes through the controller to every engine, saying `br` (its descriptors name
relayed transfers): an engine then finds the transfer on whichever connection its route came on.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from . import bulk
from .netutil import is_loopback

#: how many engines each sender (the client, then every engine in the tree) passes a transfer on to
FANOUT = 2
#: transfers whose recipients are remembered, for a cancel that comes after the data went on
_REMEMBERED = 1024


def relayable(targets: Sequence[int], engines: dict[int, dict]) -> bool:
    """Whether these engines can pass a transfer among themselves: more of them than `FANOUT`, each listening
    for direct connections, and on addresses the others can reach (loopback only when all share a host)."""
    if len(targets) <= FANOUT:
        return False
    infos = [engines.get(t) or {} for t in targets]
    ats = [str((i.get("direct") or {}).get("at", "")) for i in infos]
    if not all(ats) or not all(isinstance(i.get("direct"), dict) and i["direct"].get("id") for i in infos):
        return False
    return not any(is_loopback(a.rpartition(":")[0]) for a in ats) or len({i.get("host") for i in infos}) == 1


def plan(targets: Sequence[int], engines: dict[int, dict], fanout: int = FANOUT) -> list[list]:
    """The roots of a tree over `targets`: each node is [engine id, address, ident, [children]]. Engines are
    ordered by host then id; a node's subtree is a contiguous run of that order, split evenly among its
    children, so that same-host engines share subtrees and the depth is about log_fanout(N)."""
    order = sorted(targets, key=lambda t: (str((engines.get(t) or {}).get("host", "")), t))

    def grow(run: list[int]) -> list[list]:
        parts = _split(run, fanout)
        out = []
        for part in parts:
            d = engines[part[0]]["direct"]
            out.append([part[0], str(d["at"]), str(d["id"]), grow(part[1:])])
        return out

    return grow(order)


def _split(run: list, k: int) -> list[list]:
    """`run` cut into at most k contiguous, nearly equal, non-empty parts."""
    k = min(k, len(run))
    size, extra = divmod(len(run), k) if k else (0, 0)
    parts, at = [], 0
    for i in range(k):
        n = size + (1 if i < extra else 0)
        parts.append(run[at:at + n])
        at += n
    return parts


def route_bytes(children: list[list]) -> bytes:
    """A route as sent: the children's [address, ident, children] (engine ids are the client's business)."""
    def strip(node: list) -> list:
        return [node[1], node[2], [strip(c) for c in node[3]]]
    return _route_of([strip(c) for c in children])


class Relay:
    """An engine's side: routes that came, the connections it passes transfers on to, and where each
    relayed transfer arrives. Runs in the readers' threads; `resolve` in the engine's."""

    def __init__(self, keys: bulk.Keys, log: logging.Logger | None = None, connect_timeout: float = 3.0):
        self.keys = keys
        self.log = log or logging.getLogger("ipphpc.relay")
        self.token = bulk.new_id()  # this engine's token on the ports of the engines it passes on to
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._where: dict[bytes, bulk.Channel] = {}  # transfer -> the connection its route (then data) came on
        self._next: dict[bytes, list[bulk.Channel]] = {}  # transfer -> where to pass its data on
        self._passed: OrderedDict[bytes, list[bulk.Channel]] = OrderedDict()
        self._links: dict[str, bulk.Channel] = {}  # address -> connection to that engine
        self._linking = threading.Lock()  # two routes arriving at once open one connection per engine
        self._heard = time.monotonic()
        self._closed = False

    # -- in a reader's thread -------------------------------------------------------------------------
    def route(self, ch: bulk.Channel, tid: bytes, data: memoryview) -> None:
        """A route for transfer `tid` came on `ch`: connect to the children, pass each its own part."""
        try:
            children = json.loads(bytes(data))
        except ValueError:
            children = None
        if not isinstance(children, list):
            self.log.warning("a relay route that is not a list of engines; nothing is passed on")
            children = []
        outs: list[bulk.Channel] = []
        todo = list(children)
        while todo:
            node = todo.pop(0)
            try:
                at, ident, below = str(node[0]), str(node[1]), list(node[2])
            except (TypeError, IndexError, ValueError):
                continue
            link = self._link(at, ident)
            if link is None:  # its children are this engine's to reach now
                todo.extend(below)
                continue
            try:
                link.send(tid, _route_of(below), bulk.ROUTE)
            except bulk.BulkError as e:
                self.log.warning("relay: %s; its part of the tree is passed on from here", e)
                todo.extend(below)
                continue
            outs.append(link)
        with self._cond:
            self._where[tid] = ch
            self._next[tid] = outs
            self._heard = time.monotonic()
            self._cond.notify_all()

    def children(self, tid: bytes) -> list[bulk.Channel]:
        """The connections to pass transfer `tid` on to (once: its data is starting)."""
        with self._cond:
            outs = self._next.pop(tid, [])
            if outs:
                self._passed[tid] = outs
                while len(self._passed) > _REMEMBERED:
                    self._passed.popitem(last=False)
        return outs

    def cancel(self, tid: bytes) -> None:
        """The sender forgot transfer `tid`: so do this engine and those it passed (or would pass) it on to."""
        with self._cond:
            outs = self._next.pop(tid, None) or self._passed.pop(tid, None) or []
            self._where.pop(tid, None)
        for link in outs:
            link.cancel(tid)

    def _link(self, at: str, ident: str) -> bulk.Channel | None:
        with self._linking:
            link = self._links.get(at)
            if link is not None and link.closed is None:
                return link
            if self._closed:
                return None
            try:
                link = bulk.connect(at, self.keys, self.token, ident, self.connect_timeout)
            except (bulk.BulkError, OSError, ValueError) as e:
                self.log.warning("relay: %s; its part of the tree is passed on from here", e)
                return None
            self._links[at] = link
            return link

    # -- in the engine's thread ----------------------------------------------------------------------
    def resolve(self, idx: Sequence[Any], payload: Sequence[Any], stall: float = 60.0) -> list[Any]:
        """`payload` with the relayed transfers its descriptors at `idx` name in place: each is taken from
        the connection its route came on, once that route has come. BulkError when no route comes for
        `stall` seconds (while no other route came either), or the transfer itself fails."""
        out = list(payload)
        for i, tid in zip(idx, bulk.descriptor_ids(idx, out)):
            out[i] = self._where_of(tid, stall).take([tid], stall)[0]
            with self._cond:
                self._where.pop(tid, None)
        return out

    def _where_of(self, tid: bytes, stall: float) -> bulk.Channel:
        with self._cond:
            while tid not in self._where:
                quiet = time.monotonic() - self._heard
                if quiet >= stall:
                    raise bulk.BulkError(f"the large frames of a message sent to many engines did not reach this "
                                         f"one through the other engines ({quiet:.0f} s without word of them); the "
                                         f"engines that should have passed them on say why in their logs")
                self._cond.wait(min(1.0, stall - quiet))
            return self._where[tid]

    def drop(self, idx: Sequence[Any], payload: Sequence[Any]) -> None:
        """Forget relayed transfers nobody will claim (a task aborted before it started)."""
        for i in idx:
            try:
                tid = bulk.descriptor_id(payload[i])
            except (bulk.BulkError, TypeError, IndexError):
                continue
            with self._cond:
                ch = self._where.pop(tid, None)
            if ch is not None:
                ch.drop([i], payload)

    def close(self) -> None:
        with self._linking:
            self._closed = True
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()


def _route_of(children: list) -> bytes:
    """A route as received, passed on: the children's part, already without engine ids."""
    return json.dumps(children, separators=(",", ":")).encode()
