"""ipphpc: parallel Python on HPC clusters, with IPython Parallel's client API."""
from ._version import __version__
from .error import (CompositeError, ControllerUnreachable, EngineError, NoEnginesRegistered, RemoteError,
                     TaskAborted, TaskTimeout)

__all__ = ["__version__", "Client", "HPCCluster", "RemoteError", "CompositeError", "EngineError", "TaskTimeout",
           "TaskAborted", "NoEnginesRegistered", "ControllerUnreachable", "AsyncResult", "Reference"]


def __getattr__(name: str):
    # the engine imports this package too: keep its start-up free of client and cluster code
    if name == "Client":
        from .client.client import Client
        return Client
    if name == "HPCCluster":
        from .cluster.cluster import HPCCluster
        return HPCCluster
    if name == "AsyncResult":
        from .client.asyncresult import AsyncResult
        return AsyncResult
    if name == "Reference":
        from .client.remote import Reference
        return Reference
    if name in ("DirectView", "LoadBalancedView"):
        from .client import view
        return getattr(view, name)
    raise AttributeError(f"module 'ipphpc' has no attribute {name!r}")
