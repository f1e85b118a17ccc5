"""The client's picture of the engines follows the controller's messages in the order they come: registry
notes sent after the welcome (an engine's job end, reported by the engine once its scheduler answered)
are not undone by the welcome's older picture. A controller played by the test makes the timing exact."""
from __future__ import annotations

import threading
import time

import zmq

import ipphpc
from ipphpc import connection
from ipphpc.wire import Session


def test_notes_after_the_welcome_are_kept(tmp_path):
    key = "k" * 64
    ctl = Session(key)
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    path = tmp_path / "client.json"
    connection.write(path, {"key": key, "addresses": ["127.0.0.1"], "ports": {"client": port}})
    seen = []

    def serve(deadline: float) -> None:
        """Answer the hello with a welcome, and send a note right behind it, both at once."""
        while time.monotonic() < deadline:
            if not router.poll(100):
                continue
            frames = router.recv_multipart()
            ident, (_, h, _) = frames[0], ctl.split(frames[1:])
            seen.append(h["t"])
            if h["t"] == "hello":
                router.send_multipart([ident, *ctl.pack("welcome", {"p": h["id"], "engines": {"0": {"host": "n1"}}})])
                router.send_multipart([ident, *ctl.pack("engines", {"add": {"0": {"host": "n1", "ends": 123.0}},
                                                                     "rm": []})])
                return

    server = threading.Thread(target=serve, args=(time.monotonic() + 20,), daemon=True)
    server.start()
    try:
        rc = ipphpc.Client(url_file=str(path), timeout=10)
        try:
            server.join(20)
            assert "hello" in seen
            deadline = time.monotonic() + 5
            while rc.engines.get(0, {}).get("ends") != 123.0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rc.engines == {0: {"host": "n1", "ends": 123.0}}
        finally:
            rc.close()
    finally:
        router.close(0)
        ctx.term()
