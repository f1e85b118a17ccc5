"""The relay tree in one process, on real TCP connections: the plan covers every engine once, transfers pass
down the tree equal, an engine that cannot be reached is passed over, and a route that never comes fails
the wait clearly."""
from __future__ import annotations

import os

import pytest

from ipphpc import bulk, relay

KEY = os.urandom(32).hex()


def infos(hosts):
    return {eid: {"host": h, "direct": {"at": f"10.0.0.{eid}:9", "id": f"id{eid}"}} for eid, h in enumerate(hosts)}


def walk(nodes, parent=None, out=None):
    out = [] if out is None else out
    for n in nodes:
        out.append((parent, n[0], len(n[3])))
        walk(n[3], n[0], out)
    return out


@pytest.mark.parametrize("n", [3, 4, 7, 16, 100, 1000])
def test_the_plan_covers_every_engine_once_with_a_bounded_fanout(n):
    engines = infos([f"node{i % 5}" for i in range(n)])
    tree = relay.plan(list(engines), engines)
    edges = walk(tree)
    assert sorted(e[1] for e in edges) == sorted(engines)
    assert len(tree) == relay.FANOUT and all(e[2] <= relay.FANOUT for e in edges)
    order = sorted(engines, key=lambda t: (engines[t]["host"], t))
    assert all(order.index(p) < order.index(c) for p, c, _ in edges if p is not None)  # no two trees wait on each other

    def depth(nodes):
        return 1 + max((depth(x[3]) for x in nodes), default=0) if nodes else 0
    assert depth(tree) <= n.bit_length() + 1


def test_the_plan_keeps_a_host_in_one_subtree():
    engines = infos(["b"] * 8 + ["a"] * 8)
    tree = relay.plan(list(engines), engines)
    for root in tree:
        members = [e[1] for e in walk([root])]
        assert len({engines[m]["host"] for m in members}) == 1


def test_relayable_needs_reachable_ports():
    engines = infos(["x", "y", "z"])
    assert relay.relayable([0, 1, 2], engines)
    assert not relay.relayable([0, 1], engines)  # no more than the fanout: the client sends each its copy
    engines[2]["direct"] = None
    assert not relay.relayable([0, 1, 2], engines)
    loop = {e: {"host": h, "direct": {"at": f"127.0.0.1:{e + 1}", "id": "i"}} for e, h in enumerate("xyz")}
    assert not relay.relayable([0, 1, 2], loop)  # loopback ports of different hosts
    same = {e: dict(v, host="x") for e, v in loop.items()}
    assert relay.relayable([0, 1, 2], same)


class Engines:
    """n listeners with relays, as n engines would have."""

    def __init__(self, n):
        self.keys = bulk.Keys(KEY)
        self.lst = []
        for i in range(n):
            lst = bulk.Listener(self.keys, "127.0.0.1", f"engine-{i}")
            lst.relay = relay.Relay(self.keys, connect_timeout=2.0)
            self.lst.append(lst)
        self.info = {i: {"host": "h", "direct": {"at": lst.address, "id": lst.ident}} for i, lst in enumerate(self.lst)}

    def send(self, frames, skip=()):
        """Send `frames` down a tree of every engine as a client would; returns (descriptors, client channels)."""
        tree = relay.plan(list(self.info), self.info)
        chans = [bulk.connect(self.info[root[0]]["direct"]["at"], self.keys, bulk.new_id(),
                              self.info[root[0]]["direct"]["id"]) for root in tree]
        out = []
        for f in frames:
            tid = bulk.new_id()
            for ch, root in zip(chans, tree):
                ch.send(tid, relay.route_bytes(root[3]), bulk.ROUTE)
            assert not bulk.send_all(chans, tid, f)
            out.append(bulk.descriptor(tid))
        return out, chans, tree

    def close(self):
        for lst in self.lst:
            lst.close()


@pytest.fixture
def engines7():
    e = Engines(7)
    yield e
    e.close()


def test_transfers_pass_down_the_tree_equal(engines7):
    frames = [os.urandom(3 * bulk.CHUNK + 17), os.urandom(bulk.BULK_MIN)]
    desc, chans, _ = engines7.send(frames)
    for lst in engines7.lst:
        got = lst.relay.resolve([0, 1], desc, stall=20)
        assert [bytes(g) for g in got] == frames
    assert sum(ch.sent for ch in chans) < (relay.FANOUT + 0.1) * sum(map(len, frames))
    for ch in chans:
        ch.close()


def test_an_engine_that_cannot_be_reached_is_passed_over(engines7):
    tree = relay.plan(list(engines7.info), engines7.info)
    inner = next(n for root in tree for n in root[3] if n[3])  # has a parent and children
    engines7.lst[inner[0]].close()  # its port is gone
    data = os.urandom(2 * bulk.CHUNK)
    desc, chans, _ = engines7.send([data])
    for i, lst in enumerate(engines7.lst):
        if i != inner[0]:
            assert bytes(lst.relay.resolve([0], desc, stall=20)[0]) == data
    for ch in chans:
        ch.close()


def test_a_route_that_never_comes_fails_the_wait_clearly():
    e = Engines(1)
    try:
        with pytest.raises(bulk.BulkError, match="did not reach this one through the other engines"):
            e.lst[0].relay.resolve([0], [bulk.descriptor(bulk.new_id())], stall=1.0)
    finally:
        e.close()


def test_a_route_not_sealed_with_the_cluster_key_is_refused(engines7):
    d = engines7.info[0]["direct"]
    ch = bulk.connect(d["at"], engines7.keys, bulk.new_id(), d["id"])
    other = bulk.Channel(ch.sock, bulk.Keys(os.urandom(32).hex()), "forger")
    other.send(bulk.new_id(), b"[]", bulk.ROUTE)  # sealed with another key, on a connection that said hello
    lst = engines7.lst[0]

    def closed():
        return any(c.closed and "not sealed" in c.closed for c in lst.channels.values())
    import time
    deadline = time.monotonic() + 10
    while not closed() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert closed()
    assert not lst.relay._where
    ch.close()
