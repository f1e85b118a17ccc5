"""Exceptions a user of ipphpc can meet, with IPython Parallel's names and hierarchy.

Code written for IPython Parallel catches `ipp.error.RemoteError`, `ipp.error.TimeoutError`,
`KernelError` and the dependency errors by these names; they keep their meaning here.
"""
from __future__ import annotations

import builtins
from typing import Any, Iterator

# `ar.get(timeout)` raises the built-in TimeoutError; IPython Parallel code imports it from here
TimeoutError = builtins.TimeoutError  # noqa: A001 - the same object, under the name ipp.error exports


class IPythonError(Exception):
    """Base of every ipphpc error (IPython Parallel's name for it)."""


IpphpcError = IPythonError


class KernelError(IPythonError):
    """An error about running tasks: engines, dependencies, remote exceptions."""


class EngineError(KernelError):
    """The engine running a task died or was unregistered before it answered."""


class NoEnginesRegistered(KernelError):
    """Work was sent to a view that has no engine to run it."""


class UnknownEngine(NoEnginesRegistered, IndexError):
    """Targets name an engine that is not registered (an IndexError, as IPython Parallel raises)."""


class TaskAborted(KernelError):
    """A task was dropped before it ran (abort, or the controller shut down)."""


class TaskTimeout(KernelError):
    """A load-balanced task did not start within its `timeout`."""


class UnmetDependency(KernelError):
    """Raised on an engine by a task whose dependency it cannot meet: the task goes to another engine."""


class ImpossibleDependency(UnmetDependency):
    """A task's dependencies can never be met (a failed or unknown task, or no engine that can run it)."""


class DependencyTimeout(ImpossibleDependency):
    """A task's dependencies were not met within its `timeout`."""


class InvalidDependency(ImpossibleDependency):
    """A dependency that names no task, or is malformed."""


class TaskRejectError(KernelError):
    """Raised by a task to refuse an engine; with `retries`, it runs again on another one."""


class RemoteError(KernelError):
    """An exception raised by user code on an engine, carrying the remote traceback.

    It also reads as IPython Parallel's `(ename, evalue, traceback, engine_info)` tuple, which is how
    code written for it walks `CompositeError.elist`.
    """

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_info: dict | None = None):
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}

    @staticmethod
    def _engine_str(info: dict) -> str:
        where = info.get("engine_id")
        return f"[engine {where}] " if where is not None else ""

    def __str__(self) -> str:
        text = f"{self._engine_str(self.engine_info)}{self.ename}: {self.evalue}"
        if self.traceback:
            text += "\n" + self.traceback.rstrip()
        return text

    def __repr__(self) -> str:
        return f"<RemoteError[{self.engine_info.get('engine_id')}]:{self.ename}({self.evalue})>"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.ename, self.evalue, self.traceback, self.engine_info))

    def __getitem__(self, i: int) -> Any:
        return (self.ename, self.evalue, self.traceback, self.engine_info)[i]

    def __len__(self) -> int:
        return 4

    def __reduce__(self) -> tuple:
        return type(self), (self.ename, self.evalue, self.traceback, self.engine_info)

    def render_traceback(self) -> list[str]:
        """IPython calls this to show the remote traceback instead of the local one."""
        return str(self).splitlines()

    _render_traceback_ = render_traceback

    def print_traceback(self, excid: int | None = None) -> None:
        print("\n".join(self.render_traceback()))


class CompositeError(RemoteError):
    """Several engines raised: one RemoteError per failed task, in `elist`."""

    tb_limit = 4  # tracebacks drawn in full; the rest are counted

    def __init__(self, message: str, elist: list[RemoteError]):
        first = elist[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_info)
        self.message = self.msg = message
        self.elist = elist

    def __reduce__(self) -> tuple:
        return type(self), (self.message, self.elist)

    def __str__(self) -> str:
        parts = [self.message]
        parts += [f"{self._engine_str(e.engine_info)}{e.ename}: {e.evalue}" for e in self.elist[:self.tb_limit]]
        if len(self.elist) > self.tb_limit:
            parts.append(f".... {len(self.elist) - self.tb_limit} more exceptions ...")
        return "\n".join(parts)

    def __repr__(self) -> str:
        return f"CompositeError({len(self.elist)})"

    def render_traceback(self, excid: int | None = None) -> list[str]:
        """Every engine's traceback (up to `tb_limit`), or the one at index `excid`."""
        chosen = self.elist[:self.tb_limit] if excid is None else [self._at(excid)]
        lines: list[str] = [self.message] if excid is None else []
        for e in chosen:
            lines.append(f"{self._engine_str(e.engine_info)}{e.ename}: {e.evalue}")
            lines.extend((e.traceback or "No traceback available").splitlines())
            lines.append("")
        if excid is None and len(self.elist) > self.tb_limit:
            lines.append(f"... {len(self.elist) - self.tb_limit} more exceptions ...")
        return lines

    _render_traceback_ = render_traceback

    def print_traceback(self, excid: int | None = None) -> None:
        print("\n".join(self.render_traceback(excid)))

    def _at(self, excid: int) -> RemoteError:
        try:
            return self.elist[excid]
        except IndexError:
            raise IndexError(f"an exception with index {excid} does not exist") from None

    def raise_exception(self, excid: int = 0) -> None:
        raise self._at(excid)


class ControllerUnreachable(IPythonError, ConnectionError):
    """The controller did not answer: the message names the addresses tried and the likely fix."""


class ControllerLost(EngineError, ConnectionError):
    """The controller went away (its connection closed or fell silent) and did not come back in time:
    tasks in flight fail with it, and new calls raise it, instead of waiting without end."""


class ConnectionFileError(IPythonError, FileNotFoundError):
    """A connection file is missing, unreadable or malformed."""


class ProtocolMismatch(IPythonError):
    """The peer speaks an incompatible wire protocol version."""


def collect_exceptions(results: list | dict, method: str = "unspecified") -> list | dict:
    """Raise a CompositeError for the RemoteErrors among `results`, else return them unchanged."""
    values = list(results.values()) if isinstance(results, dict) else list(results)
    elist = [r for r in values if isinstance(r, RemoteError)]
    if elist:
        raise CompositeError(f"one or more exceptions from call to method: {method}", elist)
    return results


__all__ = ["IPythonError", "KernelError", "EngineError", "NoEnginesRegistered", "UnknownEngine", "TaskAborted",
           "TaskTimeout", "TimeoutError", "UnmetDependency", "ImpossibleDependency", "DependencyTimeout",
           "InvalidDependency", "TaskRejectError", "RemoteError", "CompositeError", "ControllerUnreachable",
           "ConnectionFileError", "ProtocolMismatch", "collect_exceptions"]
