"""Task dependencies, with IPython Parallel's names.

Two kinds: a `Dependency` is a set of tasks (msg_ids) that must finish first, read by the
load-balancing scheduler; `depend`/`require`/`dependent` wrap a function so that, on the engine
it lands on, a check runs first and raises `UnmetDependency` when that engine cannot run it.

This module is imported on engines (to unpickle `dependent`): it must not import client code.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Iterable

from .error import UnmetDependency
from .util import engine_function, engine_namespace


def _msg_ids(obj: Any) -> list[str]:
    """The msg_ids named by a msg_id, an AsyncResult, a Dependency, or an iterable of those."""
    if isinstance(obj, str):
        return [obj]
    ids = getattr(obj, "msg_ids", None)  # an AsyncResult: duck-typed, the client is not imported here
    if ids is not None:
        return [i for i in ids if i]
    if isinstance(obj, (bytes, dict)) or not isinstance(obj, Iterable):
        raise TypeError(f"a dependency is a msg_id (str), an AsyncResult, a Dependency or a list of them, "
                        f"not {type(obj).__name__}")
    out: list[str] = []
    for item in obj:
        out.extend(_msg_ids(item))
    return out


class Dependency(set):
    """The msg_ids of tasks another task waits for, and what counts as their being done.

    `all`: every task must be done (else any one). `success` / `failure`: whether a task that
    succeeded / failed counts as done. With the defaults (all, success only), a failure of any
    of them makes the dependency unreachable. An empty Dependency is always met.
    """

    def __init__(self, dependencies: Any = (), all: bool = True, success: bool = True, failure: bool = False):
        if isinstance(dependencies, dict):  # the form as_dict() makes
            all = dependencies.get("all", all)  # noqa: A001 - IPython Parallel's keyword
            success = dependencies.get("success", success)
            failure = dependencies.get("failure", failure)
            dependencies = dependencies.get("dependencies", ())
        if not (success or failure):
            raise ValueError("a Dependency with success=False and failure=False can never be met; "
                             "set success=True, failure=True or both")
        super().__init__(_msg_ids(dependencies))
        self.all = bool(all)
        self.success = bool(success)
        self.failure = bool(failure)

    def _counting(self, completed: set[str], failed: set[str] | None, success: bool, failure: bool) -> set[str]:
        against: set[str] = set()
        if success:
            against |= set(completed)
        if failure and failed is not None:
            against |= set(failed)
        return against

    def check(self, completed: set[str], failed: set[str] | None = None) -> bool:
        """Whether the dependency is met, given the tasks that succeeded and those that failed."""
        if not self:
            return True
        done = self._counting(completed, failed, self.success, self.failure)
        return self <= done if self.all else not self.isdisjoint(done)

    def unreachable(self, completed: set[str], failed: set[str] | None = None) -> bool:
        """Whether the dependency can never be met: the outcomes it needed went the other way."""
        if not self:
            return False
        wrong = self._counting(completed, failed, not self.success, not self.failure)
        return not self.isdisjoint(wrong) if self.all else self <= wrong

    def as_dict(self) -> dict:
        """A JSON-able form; `Dependency.from_dict` (or `Dependency(d)`) reads it back."""
        return {"dependencies": sorted(self), "all": self.all, "success": self.success, "failure": self.failure}

    @classmethod
    def from_dict(cls, d: dict) -> "Dependency":
        return cls(d)

    def __repr__(self) -> str:
        return (f"Dependency({sorted(self)!r}, all={self.all}, success={self.success}, "
                f"failure={self.failure})")


class dependent:
    """`f` guarded by a check: calling it first calls `df(*dargs, **dkwargs)`, and raises
    UnmetDependency if that returns False (anything else lets `f` run).

    A class rather than a closure, so that it pickles, and the engine finds `f` and `df` in it.
    """

    def __init__(self, _wrapped_f: Callable, _wrapped_df: Callable, *dargs: Any, **dkwargs: Any):
        if not callable(_wrapped_f) or not callable(_wrapped_df):
            raise TypeError("dependent(f, df, *args, **kwargs) needs two callables: the task and its check")
        self.f = _wrapped_f
        self.df = _wrapped_df
        self.dargs = dargs
        self.dkwargs = dkwargs
        self.__name__ = getattr(_wrapped_f, "__name__", "f")
        self.__doc__ = getattr(_wrapped_f, "__doc__", None)

    def check_dependency(self) -> None:
        if engine_function(self.df)(*self.dargs, **self.dkwargs) is False:
            raise UnmetDependency(f"{getattr(self.df, '__name__', 'the dependency check')} returned False "
                                  f"for {self.__name__}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.check_dependency()
        return engine_function(self.f)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<dependent {self.__name__} on {getattr(self.df, '__name__', self.df)!r}>"


class depend:
    """Decorator: `@depend(df, *args, **kwargs)` makes the task run only where `df(*args, **kwargs)`
    is not False; elsewhere it raises UnmetDependency and the task is tried on another engine."""

    def __init__(self, _wrapped_f: Callable, *args: Any, **kwargs: Any):
        if not callable(_wrapped_f):
            raise TypeError(f"depend(f, *args, **kwargs) needs a callable check first, got {type(_wrapped_f).__name__}")
        self.f = _wrapped_f
        self.args = args
        self.kwargs = kwargs

    def __call__(self, f: Callable) -> dependent:
        return dependent(f, self.f, *self.args, **self.kwargs)


def _require(*modules: str, **mapping: Any) -> bool:
    """Runs on the engine: import `modules` and set `mapping` in its namespace."""
    ns = engine_namespace()
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UnmetDependency(f"cannot import {name} on this engine: {e}") from None
        top = name.partition(".")[0]  # as `import a.b` does: the name bound is `a`
        ns[top] = sys.modules[top]
    for name, obj in mapping.items():
        ns[name] = engine_function(obj)
    return True


def require(*objects: Any, **mapping: Any) -> depend:
    """Decorator: the task runs only on engines that can import the given modules; there they are
    imported into the engine namespace before it runs, as are the given functions (under their
    `__name__`) and keyword objects (under their keyword), so the task can use them by name."""
    names: list[str] = []
    for obj in objects:
        if isinstance(obj, types.ModuleType):
            obj = obj.__name__
        if isinstance(obj, str):
            names.append(obj)
        elif hasattr(obj, "__name__"):
            mapping[obj.__name__] = obj
        else:
            raise TypeError(f"require() takes module names, modules and functions positionally; pass a "
                            f"{type(obj).__name__} by keyword: require(name=value)")
    return depend(_require, *names, **mapping)


__all__ = ["Dependency", "depend", "dependent", "require"]
