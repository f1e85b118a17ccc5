"""ipphpc: parallel Python on HPC clusters, with IPython Parallel's client API.

`import ipphpc as ipp` gives the names code written for IPython Parallel uses. Only the engine's
needs are imported eagerly: the client, cluster and IPython parts load on first use.
"""
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION  # noqa: F401

from . import error
from ._lazy import lazy_getattr
from ._version import __version__, version_info
from .error import (
    CompositeError,
    ControllerLost,
    ControllerUnreachable,
    DependencyTimeout,
    EngineError,
    ImpossibleDependency,
    InvalidDependency,
    KernelError,
    NoEnginesRegistered,
    RemoteError,
    TaskAborted,
    TaskTimeout,
    UnmetDependency,
)

# name -> module that defines it, imported when the name is first used
_LAZY = {
    "Client": ".client.client",
    "HPCCluster": ".cluster.cluster",
    "Cluster": ".cluster.cluster",
    "ClusterManager": ".cluster.manager",
    "AsyncResult": ".client.asyncresult",
    "AsyncMapResult": ".client.asyncresult",
    "AsyncHubResult": ".client.asyncresult",
    "Reference": ".remote_types",
    "DirectView": ".client.view",
    "LoadBalancedView": ".client.view",
    "BroadcastView": ".client.view",
    "View": ".client.view",
    "ViewExecutor": ".client.view",
    "RemoteFunction": ".client.remotefunction",
    "ParallelFunction": ".client.remotefunction",
    "remote": ".client.remotefunction",
    "parallel": ".client.remotefunction",
    "Dependency": ".dependency",
    "depend": ".dependency",
    "require": ".dependency",
    "dependent": ".dependency",
    "interactive": ".util",
}

__all__ = ["__version__", "version_info", "error", "RemoteError", "CompositeError", "EngineError", "TaskTimeout",
           "TaskAborted", "NoEnginesRegistered", "ControllerUnreachable", "ControllerLost", "KernelError",
           "UnmetDependency",
           "ImpossibleDependency", "DependencyTimeout", "InvalidDependency", "register_joblib_backend",
           "load_ipython_extension", *_LAZY]


# the engine imports this package too: keep its start-up free of client and cluster code
__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def register_joblib_backend(name: str = "ipyparallel", make_default: bool = False) -> None:
    """Make joblib's `Parallel(backend=name)` run on the default client's engines."""
    from .client._joblib import register
    register(name=name, make_default=make_default)


def load_ipython_extension(ip) -> None:
    """`%load_ext ipphpc`: the %px magics, on the most recently made client's views."""
    from .client.magics import load_ipython_extension as load
    load(ip)
