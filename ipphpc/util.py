"""Small helpers with IPython Parallel's names that user code imports from `ipp.util`."""
from __future__ import annotations

import sys
import types
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def interactive(f: F) -> F:
    """Make `f` behave as if it were defined in `__main__`.

    Functions of `__main__` travel by value and, on an engine, read and write the engine's
    namespace as their globals: names set with `push` or `execute` are visible to them. A
    function from an importable module would otherwise run with that module's globals.
    """
    if not isinstance(f, types.FunctionType):
        f.__module__ = "__main__"
        return f
    main = sys.modules["__main__"].__dict__
    g = types.FunctionType(f.__code__, main, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__ = f.__kwdefaults__
    g.__dict__.update(f.__dict__)
    g.__qualname__, g.__doc__ = f.__qualname__, f.__doc__
    g.__module__ = "__main__"
    return g  # type: ignore[return-value]


def engine_function(f: F) -> F:
    """`f` as an engine runs an applied function: one defined in `__main__` (or sent by value) gets
    the engine namespace as its globals. Off an engine, `f` itself.

    For helpers that call a user's function inside a task (map chunks, dependency checks): the
    engine gives the namespace only to the function it was sent, not to those passed along with it.
    """
    from .engine import executor
    ex = executor.current
    return ex._interactive(f) if ex is not None else f


def engine_namespace() -> dict:
    """The engine's namespace inside a task; `__main__`'s elsewhere."""
    from .engine import executor
    ex = executor.current
    return ex.user_ns if ex is not None else sys.modules["__main__"].__dict__


def disambiguate_url(url: str, location: str | None = None) -> str:
    """A url a peer can connect to: a wildcard address ('*', 0.0.0.0) becomes `location` (default
    127.0.0.1), as code that wires engines to each other expects."""
    proto, sep, rest = url.partition("://")
    if not sep:
        return url
    host, colon, port = rest.rpartition(":")
    if host in ("*", "0.0.0.0", ""):
        host = location or "127.0.0.1"
    return f"{proto}://{host}{colon}{port}"


__all__ = ["interactive", "disambiguate_url"]
