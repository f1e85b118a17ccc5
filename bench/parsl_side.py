"""Parsl's HighThroughputExecutor with its CurveZMQ encryption on: the peer to compare encrypted
ipphpc with (`pip install parsl`; the system is reported unavailable without it).

Workers run on this host (LocalProvider, one block of `n` workers), tasks are `python_app`s with
caching off. Parsl has no push to every worker and no separate process to read idle memory the same
way, so only the figures below are measured.
"""

from __future__ import annotations

import inspect
import tempfile
import time

from adapters import System
from workload import echo, inc, noop


class ParslEncrypted(System):
    name = "parsl-enc"
    supported = frozenset({"coldstart", "apply", "map", "latency", "array", "array_new", "array_far"})

    def __init__(self):
        import parsl

        self.parsl = parsl
        self.dfk = None
        self._tmp = None

    def version(self):
        return self.parsl.__version__

    def _config(self, n, run_dir):
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        params = inspect.signature(HighThroughputExecutor).parameters
        workers = "max_workers_per_node" if "max_workers_per_node" in params else "max_workers"
        htex = HighThroughputExecutor(
            label="htex", encrypted=True, cores_per_worker=1, **{workers: n},
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
        return Config(executors=[htex], run_dir=run_dir, strategy="none")  # caching is off per app below

    def _load(self, n):
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-parsl-")
        self.dfk = self.parsl.load(self._config(n, self._tmp.name))
        app = self.parsl.python_app
        self.noop_app = app(noop, executors=["htex"], cache=False)
        self.inc_app = app(inc, executors=["htex"], cache=False)
        self.apps = {}
        htex = self.dfk.executors["htex"]
        deadline = time.monotonic() + 120
        while getattr(htex, "connected_workers", n) < n:  # all workers up, as the other systems wait for theirs
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {htex.connected_workers} of {n} Parsl workers connected")
            time.sleep(0.05)

    def _unload(self):
        dfk, tmp = self.dfk, self._tmp
        self.dfk = self._tmp = None
        try:
            if dfk is not None:
                dfk.cleanup()
        finally:
            self.parsl.clear()
            if tmp is not None:
                tmp.cleanup()

    def cold_start(self, n):
        t0 = time.perf_counter()
        try:
            self._load(n)
            self.noop_app().result()
            return time.perf_counter() - t0
        finally:
            self._unload()

    def start(self, n):
        self._load(n)

    def stop(self):
        self._unload()

    def warmup(self):
        [f.result() for f in [self.noop_app() for _ in range(50)]]
        self.echo(b"x" * 1_000_000)

    def apply_burst(self, n, fn=None):
        if fn is not None:  # its apps are this module's functions, made apps at start
            raise NotImplementedError("Parsl runs only the benchmark's module no-op here")
        futures = [self.noop_app() for _ in range(n)]
        return [f.result() for f in futures]

    def map_burst(self, n):
        # Parsl has no map: one app call per item is how it is used
        futures = [self.inc_app(i) for i in range(n)]
        return [f.result() for f in futures]

    def one_call(self):
        app = self.noop_app
        return lambda: app().result()

    def echo(self, value, fn=echo):
        app = self.apps.get(fn)
        if app is None:
            app = self.apps[fn] = self.parsl.python_app(fn, executors=["htex"], cache=False)
        return app(value).result()
