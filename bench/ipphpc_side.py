"""ipphpc, driven through its ipyparallel-style client API.

The profile and all runtime files go under ``$IPPHPC_DIR``, which run.py
points at a temporary directory.
"""

from __future__ import annotations

import contextlib
import os

from adapters import IPStyle
from workload import echo, noop


class Ipphpc(IPStyle):
    name = "ipphpc"

    def __init__(self):
        import ipphpc

        if not hasattr(ipphpc, "HPCCluster"):
            raise ImportError("ipphpc has no HPCCluster yet")
        self.ipphpc = ipphpc

    def version(self):
        v = getattr(self.ipphpc, "__version__", None)
        if v is None:
            from ipphpc._version import __version__ as v
        return v

    def make_cluster(self, n):
        return self.ipphpc.HPCCluster(n=n)

    def controller_pid(self, cluster):
        return cluster.controller_pid

    def start_far(self, n):
        # a cluster whose controller and engines start without /dev/shm: large frames then take the path they
        # take between hosts (straight to the engines, or through the controller)
        old = os.environ.get("IPPHPC_NO_SHM")
        os.environ["IPPHPC_NO_SHM"] = "1"
        try:
            return super().start_far(n)
        finally:
            if old is None:
                os.environ.pop("IPPHPC_NO_SHM", None)
            else:
                os.environ["IPPHPC_NO_SHM"] = old

    @contextlib.contextmanager
    def far_echo(self):
        cluster, rc = self.start_far(1)
        try:
            view = rc[rc.ids[0]]
            view.apply_sync(noop)
            view.apply_sync(echo, b"x" * 1_000_000)  # the warm-up the main cluster gets
            yield lambda value: view.apply_sync(echo, value)
        finally:
            self._stop(cluster, rc)

    @contextlib.contextmanager
    def far_balanced(self):
        cluster, rc = self.start_far(2)
        try:
            rc.wait_for_engines(2, timeout=60)
            lview = rc.load_balanced_view()
            lview.apply_sync(noop)
            lview.apply_sync(echo, b"x" * 2_000_000)  # the warm-up: connections to the engines open
            yield (lambda value: lview.apply_sync(echo, value)), self.controller_pid(cluster)
        finally:
            self._stop(cluster, rc)

    def ipp_module(self):
        return self.ipphpc

    # ipphpc engines have no nanny process: nanny_pid() stays None


class IpphpcCurve(Ipphpc):
    """The same, with CurveZMQ encryption on (the default for clusters whose engines are on other hosts)."""

    name = "ipphpc-curve"

    def make_cluster(self, n):
        return self.ipphpc.HPCCluster(n=n, curve=True)
