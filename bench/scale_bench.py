"""Many engines: N simulated engines register at once with a real controller, then a trivial call goes
to all of them through a real client.

    python bench/scale_bench.py                  # 1,000 and 5,000 engines
    python bench/scale_bench.py --engines 200    # any counts, comma separated

The engines are simulated in this process, speaking the real protocol: each is its own DEALER
connection with its own session, sends the register an engine sends, answers the controller's
challenge as an engine does, and answers each task with a signed result (no Python runs the task:
what is measured is the controller and the client). The controller runs as `ipphpc controller` with
a long heartbeat period, since the simulated engines do not answer pings.

Figures: seconds from the first register sent to the last `registered` received; then the seconds
for the client to see every engine; then `rc[:].apply_sync(noop)` on all N, median and best of 5
(the first call is a warm-up and not counted). Printed, never checked.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from ipphpc import Client, connection, paths
from ipphpc.wire import Session, unwrap


def noop():
    return None


class Crowd:
    """N simulated engines on one zmq context, served by one thread."""

    def __init__(self, info: dict, n: int):
        self.info, self.n = info, n
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, n + 64)
        url = connection.urls(info, "engine")[0]
        self.socks, self.sessions, self.eids = [], [], {}
        for _ in range(n):
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.rcvtimeo = 200  # so that the serving thread sees the stop
            s.connect(url)
            self.socks.append(s)
            self.sessions.append(Session(info["key"]))
        self.index = {s: i for i, s in enumerate(self.socks)}
        self.stop = threading.Event()

    def _register(self, i: int, nonce: str | None = None) -> None:
        heart = f"sim{i:06d}"
        fields = {"info": {"host": "sim", "pid": 10_000_000 + i, "python": sys.version.split()[0]},
                  "hb": heart, "ctl": f"{heart}-ctl"}
        if nonce is not None:
            fields["nonce"] = nonce
        self.socks[i].send_multipart(self.sessions[i].pack("register", fields))

    def register_all(self, timeout: float = 300.0) -> float:
        check = Session(self.info["key"])
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        t0 = time.perf_counter()
        for i in range(self.n):
            self._register(i)
        deadline = time.monotonic() + timeout
        while len(self.eids) < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.eids)} of {self.n} engines registered in {timeout:g} s")
            for s, _ in poller.poll(500):
                i = self.index[s]
                frames = s.recv_multipart()
                for m in unwrap(frames) or [frames]:
                    _, h, _ = check.split(m)
                    if h["t"] == "challenge":
                        self._register(i, h["nonce"])
                    elif h["t"] == "registered":
                        self.eids[i] = h["eid"]
        return time.perf_counter() - t0

    def serve(self) -> None:
        """Answer every task with a signed result, as an engine does, until stopped. A call on all engines
        brings one task to each connection, so they are read in turn (a blocking read each: a poll over
        thousands of sockets would cost this process more than the controller spends)."""
        while not self.stop.is_set():
            for i, s in enumerate(self.socks):
                while not self.stop.is_set():
                    try:
                        frames = s.recv_multipart()
                    except zmq.Again:
                        continue
                    if sum([self._answer(i, s, m) for m in unwrap(frames) or [frames]]):
                        break

    def _answer(self, i: int, s: zmq.Socket, frames: list) -> bool:
        sess = self.sessions[i]
        _, h, _ = sess.split(frames)
        if h["t"] != "task":
            return False
        eid = self.eids[i]
        mid = h["id"] if "ids" not in h else h["ids"][h["to"].index(eid)]
        now = time.time()
        meta = json.dumps({"engine_id": eid, "started": now, "completed": now, "stdout": "", "stderr": ""}).encode()
        s.send_multipart(sess.pack("result", {"p": mid, "ok": True, "eid": eid, "dur": 0.0}, [meta]))
        return True

    def close(self, server: threading.Thread | None = None) -> None:
        self.stop.set()
        if server is not None:
            server.join(5)
        for s in self.socks:
            s.close(0)
        self.ctx.term()


def run(n: int, calls: int = 5) -> dict:
    with tempfile.TemporaryDirectory(prefix="ipphpc-scale-") as tmp:
        pdir = paths.profile_dir(profile_dir=str(Path(tmp) / "profile"))
        cid = "scale"
        ctl = subprocess.Popen([sys.executable, "-m", "ipphpc", "controller", "--profile-dir", str(pdir),
                                "--cluster-id", cid, "--nodb", "--Controller.heartbeat_period=10",
                                "--Controller.heartbeat_misses=100"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        crowd = server = None
        try:
            info = connection.wait_for(paths.connection_file(pdir, "engine", cid), timeout=30)
            crowd = Crowd(info, n)
            reg = crowd.register_all()
            server = threading.Thread(target=crowd.serve, daemon=True)
            server.start()
            t0 = time.perf_counter()
            with Client(paths.connection_file(pdir, "client", cid)) as rc:
                rc.wait_for_engines(n, timeout=120)
                seen = time.perf_counter() - t0
                view = rc[:]
                view.apply_sync(noop)  # warm-up
                times = []
                for _ in range(calls):
                    t1 = time.perf_counter()
                    out = view.apply_sync(noop)
                    times.append(time.perf_counter() - t1)
                    assert out == [None] * n, "not every engine answered"
            return {"engines": n, "register_s": reg, "client_sees_all_s": seen,
                    "call_median_s": statistics.median(times), "call_best_s": min(times)}
        finally:
            if crowd is not None:
                crowd.close(server)
            ctl.terminate()
            try:
                ctl.wait(20)
            except subprocess.TimeoutExpired:
                ctl.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="1000,5000", help="engine counts, comma separated")
    ap.add_argument("--calls", type=int, default=5, help="timed calls on all engines per count")
    args = ap.parse_args()
    rows = [run(int(x), args.calls) for x in args.engines.split(",")]
    print(f"{'engines':>8}  {'register all':>13}  {'client sees all':>16}  {'call on all, median':>20}  {'best':>8}")
    for r in rows:
        print(f"{r['engines']:>8,}  {r['register_s']:>11.2f} s  {r['client_sees_all_s']:>14.2f} s  "
              f"{r['call_median_s']:>18.3f} s  {r['call_best_s']:>6.3f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
