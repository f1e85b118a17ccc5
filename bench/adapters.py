"""The interface every benchmarked system implements, plus the shared
implementation for systems with the IPython Parallel client API.

A system object drives one kind of cluster from inside the per-system runner
process (side.py).  All timing is done by the runner; the methods here only
perform the operations being timed.
"""

from __future__ import annotations

import contextlib
import os
import time

from common import children, cmdline, tcp_bytes_sent
from workload import checksum, echo, inc, noop


class System:
    """One benchmarked system.  Subclasses fill in every method."""

    name = "?"
    supported = None  # the figures it can run, when not all of them

    def version(self) -> str:
        raise NotImplementedError

    # -- figure 8 ----------------------------------------------------------
    def wide_calls(self, n: int, calls: int) -> list[float]:
        """Start a cluster of ``n`` engines, call a no-op on all of them ``calls`` times one after another
        (after a few unrecorded calls), stop it; the seconds of each call."""
        raise NotImplementedError

    # -- figure 4 ----------------------------------------------------------
    def cold_start(self, n: int) -> float:
        """Start a controller and ``n`` engines from nothing, wait until all are
        registered, get one result back; return the seconds that took.  Must
        stop everything it started (the stop is not timed)."""
        raise NotImplementedError

    # -- the long-lived cluster used by figures 1, 2, 3, 5 (and 6) ----------
    def start(self, n: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def warmup(self) -> None:
        raise NotImplementedError

    def apply_burst(self, n: int, fn=None) -> list:
        """Submit ``n`` no-op tasks one by one (``fn``, default `workload.noop`), then wait for all; return
        results."""
        raise NotImplementedError

    def map_burst(self, n: int) -> list:
        """Map ``inc`` over ``range(n)``; return the results."""
        raise NotImplementedError

    def one_call(self):
        """Return a zero-argument callable doing one no-op round trip to one engine."""
        raise NotImplementedError

    def echo(self, value, fn=echo):
        """Send ``value`` to one engine, run ``fn`` on it there and return what comes back."""
        raise NotImplementedError

    @contextlib.contextmanager
    def far_echo(self):
        """An `echo` to an engine that shares no memory with this process, as on another host. Systems
        without a shared-memory path use their main cluster, whose path is that already."""
        yield self.echo

    @contextlib.contextmanager
    def far_balanced(self):
        """(an `echo` through load balancing to an engine that shares no memory with this process, the pid of
        the controller it passes, or None when that is this process)."""
        yield self.echo, None

    def push_all(self, value) -> list:
        """Put ``value`` on every engine, wait until it is there; return each engine's `checksum` of it."""
        raise NotImplementedError

    def drop_pushed(self) -> None:
        """Forget what `push_all` put on the engines."""

    def push_wide(self, n: int, value, warm, runs: int) -> tuple[list[float], list, int | None]:
        """Start a cluster of `n` engines that share no memory with this process (as on other hosts), push
        `warm` to them, then `value` `runs` times; (seconds of each push, each engine's `checksum` after the
        last, bytes this process sent on TCP per push). Stops the cluster."""
        raise NotImplementedError

    def main_controller_pid(self):
        """The pid of the process that routes data on the long-lived cluster, or None if it is this one."""
        return None

    # -- figure 6 -----------------------------------------------------------
    rss_on_main_cluster = True

    @contextlib.contextmanager
    def idle_processes(self, n: int):
        """Yield ``{"engines": [{"engine": pid, "nanny": pid or None}, ...],
        "controller": pid}`` for a cluster that is idle right now."""
        raise NotImplementedError
        yield  # pragma: no cover


class IPStyle(System):
    """Systems whose client follows the ipyparallel API (ipyparallel, ipphpc)."""

    cluster = None
    rc = None
    lview = None

    def make_cluster(self, n: int):
        raise NotImplementedError

    def controller_pid(self, cluster) -> int:
        raise NotImplementedError

    def nanny_pid(self, engine_pid: int):
        return None

    def _stop(self, cluster, rc):
        errors = []
        if cluster is not None:
            try:
                cluster.stop_cluster_sync()
            except Exception as e:  # noqa: BLE001 - keep going: the client must be closed too
                errors.append(e)
        if rc is not None:
            try:
                rc.close()
            except Exception as e:  # noqa: BLE001 - raised together below
                errors.append(e)
        if errors:
            raise errors[0]

    def cold_start(self, n):
        cluster = rc = None
        t0 = time.perf_counter()
        try:
            cluster = self.make_cluster(n)
            rc = cluster.start_and_connect_sync()
            rc[0].apply_sync(noop)
            elapsed = time.perf_counter() - t0
            if len(rc.ids) < n:
                raise RuntimeError(f"only {len(rc.ids)} of {n} engines registered")
        finally:
            self._stop(cluster, rc)
        return elapsed

    def wide_calls(self, n, calls):
        cluster = rc = None
        try:
            cluster = self.make_cluster(n)
            rc = cluster.start_and_connect_sync()
            rc.wait_for_engines(n, timeout=120)
            view = rc[:]
            return timed_calls(lambda: view.apply_sync(noop), calls, [None] * n)
        finally:
            self._stop(cluster, rc)

    def start_far(self, n):
        """(cluster, client) of `n` engines sharing no memory with this process: the main kind, for systems
        without a shared-memory path."""
        cluster = self.make_cluster(n)
        try:
            return cluster, cluster.start_and_connect_sync()
        except BaseException:
            self._stop(cluster, None)
            raise

    def push_wide(self, n, value, warm, runs):
        cluster = rc = None
        try:
            cluster, rc = self.start_far(n)
            rc.wait_for_engines(n, timeout=120)
            view = rc[:]
            view.push({"bench_pushed": warm}, block=True)
            return timed_pushes(lambda: view.push({"bench_pushed": value}, block=True), runs,
                                lambda: view.apply_sync(checksum, self.ipp_module().Reference("bench_pushed")))
        finally:
            self._stop(cluster, rc)

    def start(self, n):
        self.cluster = self.make_cluster(n)
        self.rc = self.cluster.start_and_connect_sync()
        if len(self.rc.ids) < n:
            raise RuntimeError(f"only {len(self.rc.ids)} of {n} engines registered")
        self.lview = self.rc.load_balanced_view()

    def stop(self):
        cluster, rc = self.cluster, self.rc
        self.cluster = self.rc = self.lview = None
        self._stop(cluster, rc)

    def warmup(self):
        for _ in range(3):
            self.rc[:].apply_sync(noop)
        ars = [self.lview.apply_async(noop) for _ in range(50)]
        for ar in ars:
            ar.get()
        self.lview.map_sync(inc, range(20))
        self.rc[0].apply_sync(echo, b"x" * 1_000_000)

    def apply_burst(self, n, fn=None):
        lv, fn = self.lview, fn or noop
        ars = [lv.apply_async(fn) for _ in range(n)]
        return [ar.get() for ar in ars]

    def map_burst(self, n):
        return self.lview.map_sync(inc, range(n))

    def one_call(self):
        view = self.rc[0]
        return lambda: view.apply_sync(noop)

    def echo(self, value, fn=echo):
        return self.rc[0].apply_sync(fn, value)

    @contextlib.contextmanager
    def far_balanced(self):
        lview = self.lview
        yield (lambda value: lview.apply_sync(echo, value)), self.main_controller_pid()

    def push_all(self, value):
        self.rc[:].push({"bench_pushed": value}, block=True)
        return self.rc[:].apply_sync(checksum, self.ipp_module().Reference("bench_pushed"))

    def drop_pushed(self):
        self.rc[:].execute("del bench_pushed", block=True)

    def main_controller_pid(self):
        return self.controller_pid(self.cluster)

    def ipp_module(self):
        raise NotImplementedError

    @contextlib.contextmanager
    def idle_processes(self, n):
        pids = self.rc[:].apply_sync(os.getpid)
        yield {
            "engines": [{"engine": p, "nanny": self.nanny_pid(p)} for p in pids],
            "controller": self.controller_pid(self.cluster),
        }


def timed_pushes(push, runs: int, sums) -> tuple[list[float], list, float | None]:
    """(seconds of each of `runs` pushes, `sums()` after the last, TCP bytes this process sent per push)."""
    before = tcp_bytes_sent(os.getpid())
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        push()
        times.append(time.perf_counter() - t0)
    after = tcp_bytes_sent(os.getpid())
    return times, sums(), None if before is None or after is None else (after - before) / runs


def timed_calls(call, calls: int, expect) -> list[float]:
    """Seconds of each of `calls` calls, after 10 unrecorded ones; every answer must equal `expect`."""
    for _ in range(10):
        if call() != expect:
            raise RuntimeError(f"wrong answer: {call()!r}")
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        if out != expect:
            raise RuntimeError(f"wrong answer: {out!r}")
    return times


def nanny_child(engine_pid, marker):
    """The child of ``engine_pid`` whose command line contains ``marker``."""
    for child in children(engine_pid):
        if marker in cmdline(child):
            return child
    return None
