"""ipphpc, driven through its ipyparallel-style client API.

The profile and all runtime files go under ``$IPPHPC_DIR``, which run.py
points at a temporary directory.
"""

from __future__ import annotations

from adapters import IPStyle


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

    def ipp_module(self):
        return self.ipphpc

    # ipphpc engines have no nanny process: nanny_pid() stays None


class IpphpcCurve(Ipphpc):
    """The same, with CurveZMQ encryption on (the default for clusters whose engines are on other hosts)."""

    name = "ipphpc-curve"

    def make_cluster(self, n):
        return self.ipphpc.HPCCluster(n=n, curve=True)
