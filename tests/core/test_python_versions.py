"""Bytecode does not travel between Python versions: the client refuses before an engine crashes on it."""
from __future__ import annotations

import os
import platform
import types

import pytest
import zmq

from ipphpc import Client, connection, paths
from ipphpc.engine.engine import Engine
from ipphpc.engine.origin import engine_origin
from ipphpc.wire import Session

from .helpers import clean_env

OTHER = "3.99.0"


def test_by_value_code_refused_for_engines_on_another_python(spawner, pdir):
    """A real engine on this Python and one registering as Python 3.99: lambdas go only to the first,
    functions sent by reference go to both, and a refused task reaches no engine at all."""
    cid = "pyver"
    spawner.controller(pdir, cid, "--Controller.heartbeat_period=3", "--Controller.heartbeat_misses=20")
    real = spawner.engine(pdir, cid, env=clean_env())
    info = connection.read(paths.connection_file(pdir, "engine", cid))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(connection.urls(info, "engine")[0])
    session = Session(info["key"])
    # the engine's own registration code, claiming another Python
    other = types.SimpleNamespace(origin={**engine_origin(), "pid": 99_999_999, "python": OTHER}, engine_id=-1,
                                  heart_id=os.urandom(8).hex(),
                                  _send=lambda t, f: sock.send_multipart(session.pack(t, f)))
    Engine._send_register(other)
    assert sock.poll(10_000), "the controller did not answer the registration"
    _, h, _ = session.split(sock.recv_multipart())
    assert h["t"] == "challenge", h
    Engine._send_register(other, h["nonce"])
    assert sock.poll(10_000), "the controller did not answer the registration"
    _, h, _ = session.split(sock.recv_multipart())
    other_id = h["eid"]
    try:
        with Client(paths.connection_file(pdir, "client", cid)) as rc:
            rc.wait_for_engines(2, timeout=30)
            (real_id,) = [i for i, e in rc.engines.items() if e["pid"] == real.pid]
            assert rc.engines[real_id]["python"] == platform.python_version()
            assert rc.engines[other_id]["python"] == OTHER

            assert rc[real_id].apply_sync(lambda: 6 * 7) == 42
            sent = rc.controller_status()["stats"]["tasks"]
            for send in (lambda: rc[other_id].apply_async(lambda: 1),
                         lambda: rc[:].apply_async(lambda: 1),
                         lambda: rc.load_balanced_view().apply_async(lambda: 1),
                         lambda: rc[other_id].push({"f": lambda: 1})):
                with pytest.raises(RuntimeError, match=rf"engine {other_id}: Python {OTHER}.*engine_cmd"):
                    send()
            assert rc.controller_status()["stats"]["tasks"] == sent, "a refused task reached the controller"
            assert not sock.poll(200), "a refused task reached the engine"

            # by reference: no bytecode, so it is sent (this engine never answers; the task stays pending)
            rc[other_id].apply_async(os.getpid)
            assert sock.poll(10_000)
            _, h, _ = session.split(sock.recv_multipart())
            assert (h["t"], h["k"]) == ("task", "apply")
    finally:
        sock.close(0)
        ctx.term()
