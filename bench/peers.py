"""The two peers: IPython Parallel and dask.distributed."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import warnings

from adapters import IPStyle, System, nanny_child, timed_calls, timed_pushes
from common import ppid_of
from workload import checksum, echo, inc, noop


class IPyParallel(IPStyle):
    name = "ipyparallel"

    def __init__(self):
        import ipyparallel

        self.ipp = ipyparallel

    def version(self):
        return self.ipp.__version__

    def make_cluster(self, n):
        # default profile inside $IPYTHONDIR (a temporary directory), random cluster id
        return self.ipp.Cluster(n=n)

    def controller_pid(self, cluster):
        return cluster.controller.process.pid

    def ipp_module(self):
        return self.ipp

    def nanny_pid(self, engine_pid):
        # ipyparallel >= 7 runs a nanny as a child of each engine
        return nanny_child(engine_pid, "ipyparallel.engine.nanny")


class Dask(System):
    """dask.distributed with a LocalCluster of single-threaded worker processes.

    LocalCluster keeps the scheduler and the nannies inside the client's own
    process, so for the memory figure a SubprocessCluster is used instead:
    there the scheduler and each nanny are processes of their own.
    """

    name = "dask"
    rss_on_main_cluster = False

    def __init__(self):
        import dask
        import distributed

        self.dask = dask
        self.distributed = distributed
        self.client = self.cluster = None
        self._counter = itertools.count()
        # Submitting a 100 MB array as a task argument is what figure 5 measures;
        # dask warns about it every time.
        warnings.filterwarnings("ignore", message=".*Large object of size.*")
        warnings.filterwarnings("ignore", message=".*Sending large graph.*")

    def version(self):
        return f"{self.distributed.__version__} (dask {self.dask.__version__})"

    def _local_cluster(self, n):
        # no dashboard: the other systems start no web UI either
        return self.distributed.LocalCluster(
            n_workers=n, processes=True, threads_per_worker=1, dashboard_address=None
        )

    @staticmethod
    def _close(cluster, client):
        errors = []
        for obj in (client, cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception as e:  # noqa: BLE001 - every object is closed; raised together below
                    errors.append(e)
        if errors:
            raise errors[0]

    def cold_start(self, n):
        cluster = client = None
        t0 = time.perf_counter()
        try:
            cluster = self._local_cluster(n)
            client = self.distributed.Client(cluster)
            client.wait_for_workers(n)
            client.submit(noop, 0, pure=False).result()
            elapsed = time.perf_counter() - t0
        finally:
            self._close(cluster, client)
        return elapsed

    def wide_calls(self, n, calls):
        # client.run: a function on every worker, outside the task graph (what a direct view on all engines is)
        cluster = client = None
        try:
            cluster = self._local_cluster(n)
            client = self.distributed.Client(cluster)
            client.wait_for_workers(n)
            return timed_calls(lambda: sorted(client.run(noop).values(), key=repr), calls, [None] * n)
        finally:
            self._close(cluster, client)

    def start(self, n):
        self.cluster = self._local_cluster(n)
        self.client = self.distributed.Client(self.cluster)
        self.client.wait_for_workers(n)

    def stop(self):
        cluster, client = self.cluster, self.client
        self.cluster = self.client = None
        self._close(cluster, client)

    @staticmethod
    def _warmup(client):
        for _ in range(3):
            client.run(noop)
        client.gather([client.submit(noop, i, pure=False) for i in range(50)])
        client.gather(client.map(noop, range(20), pure=False))
        client.submit(echo, b"x" * 1_000_000, pure=False).result()

    def warmup(self):
        self._warmup(self.client)

    def apply_burst(self, n, fn=None):
        client, fn = self.client, fn or noop
        futures = [client.submit(fn, i, pure=False) for i in range(n)]
        return client.gather(futures)

    def map_burst(self, n):
        client = self.client
        return client.gather(client.map(inc, range(n)))

    def one_call(self):
        client, counter = self.client, self._counter
        return lambda: client.submit(noop, next(counter), pure=False).result()

    def echo(self, value, fn=echo):
        # pure=False: no hashing of the 100 MB argument, and no chance of a
        # repeated run being answered from a result that is still in memory
        return self.client.submit(fn, value, pure=False).result()

    def push_all(self, value):
        # the documented way to put one value on every worker; the data goes from the client to the workers
        # (the scheduler runs in this process here: no separate peak to read)
        self._pushed = self.client.scatter(value, broadcast=True)
        workers = list(self.client.scheduler_info()["workers"])
        return self.client.gather([self.client.submit(checksum, self._pushed, workers=[w], pure=False)
                                   for w in workers])

    def drop_pushed(self):
        self._pushed = None

    def push_wide(self, n, value, warm, runs):
        cluster = client = None
        try:
            cluster = self._local_cluster(n)
            client = self.distributed.Client(cluster)
            client.wait_for_workers(n)
            client.scatter(warm, broadcast=True)
            pushed = []

            def push():
                pushed[:] = [client.scatter(value, broadcast=True)]

            def sums():
                workers = list(client.scheduler_info()["workers"])
                return client.gather([client.submit(checksum, pushed[0], workers=[w], pure=False) for w in workers])
            return timed_pushes(push, runs, sums)
        finally:
            self._close(cluster, client)

    @contextlib.contextmanager
    def idle_processes(self, n):
        from distributed.deploy.subprocess import SubprocessCluster

        cluster = client = None
        try:
            cluster = SubprocessCluster(n_workers=n, threads_per_worker=1, dashboard_address=None)
            client = self.distributed.Client(cluster)
            client.wait_for_workers(n)
            self._warmup(client)
            workers = client.run(os.getpid)
            yield {
                "engines": [{"engine": pid, "nanny": ppid_of(pid)} for pid in workers.values()],
                "controller": cluster.scheduler.process.pid,
            }
        finally:
            self._close(cluster, client)
