"""A thousand engines registering at once."""
from __future__ import annotations

import os
import time
import types

import zmq

from ipphpc import Client, connection, paths
from ipphpc.engine.engine import Engine
from ipphpc.engine.origin import engine_origin
from ipphpc.wire import Session

from .helpers import clean_env

N_FAKE = 1000


def test_thousand_registrations_at_once(spawner, pdir):
    """1,000 DEALER connections each send a signed `register` exactly as an engine does (and answer the
    controller's challenge as an engine does); every one gets
    `registered` with a distinct id, and a client then sees them all plus a real engine."""
    cid = "many"
    # heartbeats are not answered by the simulated engines: keep them registered for the test's duration
    spawner.controller(pdir, cid, "--Controller.heartbeat_period=3", "--Controller.heartbeat_misses=20")
    real = spawner.engine(pdir, cid, env=clean_env())
    info = connection.read(paths.connection_file(pdir, "engine", cid))
    url = connection.urls(info, "engine")[0]

    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, N_FAKE + 64)
    socks: list[zmq.Socket] = []
    try:
        fakes = []
        for i in range(N_FAKE):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(url)
            socks.append(s)
            session = Session(info["key"])
            # the engine's own registration code, sending through this socket
            fake = types.SimpleNamespace(origin={**engine_origin(), "pid": 10_000_000 + i}, engine_id=-1,
                                         heart_id=os.urandom(8).hex(),
                                         _send=lambda t, f, _s=s, _ss=session: _s.send_multipart(_ss.pack(t, f)))
            fakes.append(fake)
        t0 = time.monotonic()
        for fake in fakes:
            Engine._send_register(fake)

        poller = zmq.Poller()
        index = {s: i for i, s in enumerate(socks)}
        for s in socks:
            poller.register(s, zmq.POLLIN)
        check = Session(info["key"])
        eids: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(eids) < N_FAKE and time.monotonic() < deadline:
            for s, _ in poller.poll(500):
                _, h, _ = check.split(s.recv_multipart())
                if h["t"] == "challenge":  # as an engine does: the same register, with the nonce signed in
                    Engine._send_register(fakes[index[s]], h["nonce"])
                    continue
                assert h["t"] == "registered", h
                eids[index[s]] = h["eid"]
                poller.unregister(s)
        took = time.monotonic() - t0
        assert len(eids) == N_FAKE, f"only {len(eids)} of {N_FAKE} registered after {took:.1f} s"
        assert len(set(eids.values())) == N_FAKE

        with Client(paths.connection_file(pdir, "client", cid)) as rc:
            rc.wait_for_engines(N_FAKE + 1, timeout=30)
            assert len(rc.ids) == N_FAKE + 1
            assert set(eids.values()) < set(rc.ids)
            (real_id,) = [i for i, e in rc.engines.items() if e["pid"] == real.pid]
            assert real_id not in eids.values()
            # the real engine still answers while a thousand others are registered
            assert rc[real_id].apply_sync(os.getpid) == real.pid
            assert len(rc.controller_status()["engines"]) == N_FAKE + 1
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
