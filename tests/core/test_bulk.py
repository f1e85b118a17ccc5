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


def _recv_all(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        if not more:
            break
        got += more
    return got


def test_a_keyless_stranger_cannot_feed_a_channel():
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-1")
    try:
        host, port = lst.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            assert _recv_all(s, 32).startswith(bulk.MAGIC)  # the challenge
            s.sendall(bulk.HDR.pack(b"H", bulk.new_id(), 16) + os.urandom(32))
            assert s.recv(100) == b""  # closed without an answer
        assert not lst.channels and lst.refused == 1
    finally:
        lst.close()


def test_a_recorded_hello_is_worth_nothing_on_another_connection():
    """What a reader of the network saw of a real hello, sent again: refused (the engine's nonce differs)."""
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-1")
    try:
        sent: list[bytes] = []

        class Recording:
            def __init__(self, sock):
                self.sock = sock

            def sendall(self, buf):
                sent.append(bytes(buf))
                return self.sock.sendall(buf)

            def __getattr__(self, name):
                return getattr(self.sock, name)
        real = socket.create_connection
        token = bulk.new_id()
        try:
            socket.create_connection = lambda *a, **k: Recording(real(*a, **k))
            ch = bulk.connect(lst.address, keys, token, "engine-1")
        finally:
            socket.create_connection = real
        ch.close()
        deadline = time.monotonic() + 5
        while lst.channel(token.hex()).closed is None and time.monotonic() < deadline:
            time.sleep(0.01)
        host, port = lst.address.split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:
            _recv_all(s, 32)
            s.sendall(b"".join(sent))
            assert s.recv(100) == b""
        assert lst.refused == 1 and lst.channel(token.hex()).closed  # the old channel, not a new one
    finally:
        lst.close()


def test_junk_on_the_port_is_refused_and_the_port_still_serves():
    import random
    rnd = random.Random(20261207)
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-1")
    host, port = lst.address.split(":")
    good = bulk.HDR.pack(b"H", bulk.new_id(), 16) + os.urandom(32)
    try:
        for i in range(200):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.settimeout(5)
                _recv_all(s, 32)
                kind = i % 4
                if kind == 0:
                    junk = rnd.randbytes(rnd.randrange(1, 3000))
                elif kind == 1:  # a header claiming a huge hello or data transfer
                    junk = bulk.HDR.pack(rnd.choice([b"H", b"D", b"h", b"x"]), rnd.randbytes(16), rnd.getrandbits(64))
                elif kind == 2:  # a well-formed hello with one bit flipped
                    b = bytearray(good)
                    b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
                    junk = bytes(b)
                else:  # cut short, then closed
                    junk = good[:rnd.randrange(len(good))]
                try:
                    s.sendall(junk)
                    s.shutdown(socket.SHUT_WR)
                    answer = s.recv(100)
                except ConnectionError:
                    answer = b""  # closed while we were still writing
                except OSError as e:
                    assert e.errno == 107, e  # not connected any more: closed by the engine
                    answer = b""
                assert answer == b""
        assert not lst.channels and lst.refused == 200
        ch = bulk.connect(lst.address, keys, bulk.new_id(), "engine-1", timeout=5)
        ch.close()
    finally:
        lst.close()


def test_too_many_silent_connections_are_turned_away_at_once():
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-1")
    host, port = lst.address.split(":")
    silent = [socket.create_connection((host, int(port)), timeout=5) for _ in range(bulk.MAX_GREETING)]
    try:
        for s in silent:
            _recv_all(s, 32)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(100) == b""  # no challenge: closed at once
    finally:
        for s in silent:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the silent ones' threads end with their connections; then a client gets in
        try:
            bulk.connect(lst.address, keys, bulk.new_id(), "engine-1", timeout=5).close()
            break
        except bulk.BulkError:
            assert time.monotonic() < deadline, "the port did not serve again after the silent connections went"
            time.sleep(0.1)
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


def test_a_client_that_connects_again_takes_over_with_what_had_arrived(pair):
    client, engine, lst = pair
    tid = bulk.new_id()
    data = os.urandom(bulk.BULK_MIN)
    client.send(tid, data)
    deadline = time.monotonic() + 5
    while engine.unclaimed() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    token = next(t for t, ch in lst.channels.items() if ch is engine)
    again = bulk.connect(lst.address, bulk.Keys(KEY), token, "engine-7")
    try:
        deadline = time.monotonic() + 5
        while lst.channel(token.hex()) is engine and time.monotonic() < deadline:
            time.sleep(0.01)
        new = lst.channel(token.hex())
        assert new is not engine and engine.closed == "the client connected again"
        assert bytes(new.take([tid], stall=5)[0]) == data
    finally:
        again.close()


@pytest.fixture
def two():
    """Two listeners, and a client's channel to each (one token): (listeners, channels, token)."""
    keys = bulk.Keys(KEY)
    lsts = [bulk.Listener(keys, "127.0.0.1", f"e{i}") for i in range(2)]
    token = bulk.new_id()
    chans = [bulk.connect(lst.address, keys, token, f"e{i}") for i, lst in enumerate(lsts)]
    yield lsts, chans, token
    for ch in chans:
        ch.close()
    for lst in lsts:
        lst.close()


def test_one_transfer_sealed_once_reaches_every_channel_and_a_cancel_forgets_it(two):
    lsts, chans, token = two
    data = os.urandom(3 * bulk.CHUNK + 5)
    tid = bulk.new_id()
    assert bulk.send_all(chans, tid, data) == []
    engines = [lst.channel(token.hex()) for lst in lsts]
    assert [bytes(e.take([tid], stall=10)[0]) for e in engines] == [data, data]
    other = bulk.new_id()
    bulk.send_all(chans, other, data)
    for ch in chans:
        ch.cancel(other)
    deadline = time.monotonic() + 5
    while any(e.unclaimed() for e in engines) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.unclaimed() for e in engines] == [0, 0] and all(e.closed is None for e in engines)


def test_a_channel_failing_in_the_middle_leaves_the_others_whole(two):
    lsts, chans, token = two

    class Breaking:  # fails on its third write: the header and one chunk went
        def __init__(self, sock):
            self.sock, self.n = sock, 0

        def sendall(self, buf):
            self.n += 1
            if self.n == 3:
                raise BrokenPipeError(32, "Broken pipe")
            return self.sock.sendall(buf)

        def __getattr__(self, name):
            return getattr(self.sock, name)
    chans[1].sock = Breaking(chans[1].sock)
    data = os.urandom(3 * bulk.CHUNK)
    tid = bulk.new_id()
    assert bulk.send_all(chans, tid, data) == [chans[1]]
    assert chans[1].closed and "Broken pipe" in chans[1].closed
    assert bytes(lsts[0].channel(token.hex()).take([tid], stall=10)[0]) == data


def test_a_frame_asked_for_comes_from_its_holder_and_one_it_no_longer_holds_fails_clearly():
    keys = bulk.Keys(KEY)
    lst = bulk.Listener(keys, "127.0.0.1", "engine-3")
    held = {}

    def serve(ch, tid):
        frame = held.get(tid)
        ch.none(tid) if frame is None else ch.send(tid, frame)
    token = bulk.new_id()
    client = bulk.connect(lst.address, keys, token, "engine-3", server=serve)
    try:
        deadline = time.monotonic() + 5
        while lst.channel(token.hex()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        engine = lst.channel(token.hex())
        data, tid = os.urandom(2 * bulk.CHUNK + 5), bulk.new_id()
        held[tid] = data
        assert bytes(engine.resolve([0], [bulk.descriptor(tid), b"small"], stall=10, ask=True)[0]) == data
        with pytest.raises(bulk.BulkError, match="no longer holds 1 of the message's large frames"):
            engine.resolve([0], [bulk.descriptor(bulk.new_id())], stall=10, ask=True)
        held[tid] = data  # the connection still works after a miss
        assert bytes(engine.resolve([0], [bulk.descriptor(tid)], stall=10, ask=True)[0]) == data
    finally:
        client.close()
        lst.close()


def test_a_request_to_a_side_that_holds_nothing_closes_the_connection(pair):
    client, engine, _ = pair  # this client serves nothing
    engine.send(bulk.new_id(), b"", bulk.GET)
    deadline = time.monotonic() + 10
    while client.closed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.closed is not None and "unknown kind" in client.closed
