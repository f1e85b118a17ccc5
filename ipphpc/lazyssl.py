"""asyncio without `ssl` until something asks for it.

asyncio imports `ssl` at start, which maps OpenSSL's libssl and libcrypto: 4 MiB resident in
every engine and controller, for TLS streams they never open (their traffic is ZeroMQ, encrypted
with CurveZMQ in libzmq). `import_asyncio` imports asyncio with `ssl` held back, and the moment
anything else in the process imports `ssl` (user code in an engine, say), hands asyncio the real
module, so TLS through asyncio works as it always does.
"""
from __future__ import annotations

import importlib.machinery
import sys
from types import ModuleType
from typing import Any

# the asyncio modules that keep `ssl` as a module global (None when it could not be imported)
_USERS = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def import_asyncio() -> ModuleType:
    """asyncio, imported without `ssl` when this process has imported neither yet."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        import asyncio
        return asyncio
    sys.modules["ssl"] = None  # type: ignore[assignment]  # what `import ssl` sees as "not installed"
    try:
        import asyncio
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _SslWatch())
    return asyncio


def give_asyncio(ssl: ModuleType) -> None:
    """Set asyncio's `ssl` globals to the real module, as if it had been there from the start."""
    for name in _USERS:
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "ssl", None) is None:
            mod.ssl = ssl
    proto = sys.modules.get("asyncio.sslproto")
    if proto is not None and not hasattr(proto, "SSLAgainErrors"):
        proto.SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)


class _SslWatch:
    """A meta path finder that finds nothing itself: it wraps the loader of `ssl`, once."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "ssl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenGive(spec.loader)
        return spec


class _ThenGive:
    """The loader of `ssl`, which gives asyncio the module once it is executed."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        give_asyncio(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code...: the real loader's
        return getattr(self._loader, name)
