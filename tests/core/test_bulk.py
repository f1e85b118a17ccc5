"""The direct-transfer layer on real TCP connections: frames arrive equal, anything not sealed with the
cluster key is refused, and a message waiting for frames learns why they will not come."""
from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from ipphpc import bulk

KEY = os.urandom(32).hex()


@pytest.fixture
def pair():
    """A listener and a client channel connected to it through a real hello."""
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-7")
    token = bulk.new_id()
    ch = bulk.connect(lst.address, keys, token, "engine-7")
    deadline = time.monotonic() + 5
    while lst.channel(token.hex()) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    yield ch, lst.channel(token.hex()), lst
    ch.close()
    lst.close()


def test_frames_arrive_equal_both_ways(pair):
    client, engine, _ = pair
    frames = [os.urandom(bulk.BULK_MIN), os.urandom(3 * bulk.CHUNK + 12345), b"small", bytearray(os.urandom(2))]
    sent = client.export(frames, bulk.large(frames))
    assert [len(f) for f in sent[:2]] == [32, 32] and sent[2:] == frames[2:]
    got = engine.resolve([0, 1], sent, stall=10)
    assert [bytes(f) for f in got] == [bytes(f) for f in frames]
    back = engine.export(got, [1])
    assert bytes(client.resolve([1], back, stall=10)[1]) == frames[1]
    assert engine.unclaimed() == client.unclaimed() == 0


def test_non_contiguous_and_typed_frames(pair):
    np = pytest.importorskip("numpy")
    client, engine, _ = pair
    a = np.arange(600_000, dtype=np.float64).reshape(1000, 600)[:, ::2]  # not contiguous
    sent = client.export([memoryview(a)], [0])
    got = engine.resolve([0], sent, stall=10)[0]
    assert np.array_equal(np.frombuffer(got, dtype=np.float64).reshape(1000, 300), a)


def test_one_transfer_to_two_engines_in_any_order(pair):
    client, engine, _ = pair
    a, b = os.urandom(bulk.BULK_MIN + 1), os.urandom(bulk.BULK_MIN + 2)
    ta, tb = bulk.new_id(), bulk.new_id()
    client.send(ta, a)
    client.send(tb, b)
    assert [bytes(f) for f in engine.take([tb, ta], stall=10)] == [b, a]


def test_a_hello_without_the_key_is_refused():
    lst = bulk.Listener(bulk.Keys(KEY), "127.0.0.1", "engine-1")
    try:
        with pytest.raises(bulk.BulkError, match="no direct connection"):
            bulk.connect(lst.address, bulk.Keys(os.urandom(32).hex()), bulk.new_id(), "engine-1", timeout=5)
        assert not lst.channels
    finally:
        lst.close()


def test_the_wrong_engine_at_an_address_is_refused():
    lst = bulk.Listener(bulk.Keys(KEY), "127.0.0.1", "engine-1")
    try:
        with pytest.raises(bulk.BulkError, match="another engine"):
            bulk.connect(lst.address, bulk.Keys(KEY), bulk.new_id(), "engine-2", timeout=5)
    finally:
        lst.close()


def test_a_flipped_bit_closes_the_connection_and_the_waiter_learns_why(pair):
    client, engine, _ = pair
    tid = bulk.new_id()
    data = bytearray(os.urandom(bulk.BULK_MIN))
    calls = []

    class Tampering:  # flips one bit of the first chunk on its way out
        def __init__(self, sock):
            self.sock = sock

        def sendall(self, buf):
            calls.append(1)
            if len(calls) == 2:
                buf = bytearray(buf)
                buf[100] ^= 1
            return self.sock.sendall(buf)

        def __getattr__(self, name):
            return getattr(self.sock, name)
    client.sock = Tampering(client.sock)
    client.send(tid, data)
    with pytest.raises(bulk.BulkError, match="not sealed"):
        engine.take([tid], stall=10)
    assert engine.closed and "not sealed" in engine.closed


def test_a_keyless_stranger_cannot_feed_a_channel():
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-1")
    try:
        host, port = lst.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(bulk.HDR.pack(b"H", bulk.new_id(), 0) + os.urandom(16))
            s.settimeout(5)
            assert s.recv(100) == b""  # closed without an answer
        assert not lst.channels
    finally:
        lst.close()


def test_a_stalled_transfer_fails_within_its_bound(pair):
    _, engine, _ = pair
    t0 = time.monotonic()
    with pytest.raises(bulk.BulkError, match="without a byte"):
        engine.take([bulk.new_id()], stall=0.5)
    assert time.monotonic() - t0 < 5


def test_the_waiter_learns_when_the_sender_goes_away(pair):
    client, engine, _ = pair
    threading.Timer(0.2, client.close).start()
    with pytest.raises(bulk.BulkError, match="closed before"):
        engine.take([bulk.new_id()], stall=30)


def test_huge_lengths_are_refused_before_allocation(pair):
    client, engine, _ = pair
    with client._wlock:
        client.sock.sendall(bulk.HDR.pack(b"D", bulk.new_id(), 1 << 50))
    with pytest.raises(bulk.BulkError, match="claims"):
        engine.take([bulk.new_id()], stall=10)
