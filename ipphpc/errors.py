"""Exceptions a user of ipphpc can meet, named as IPython Parallel names them."""
from __future__ import annotations


class IpphpcError(Exception):
    """Base of every ipphpc error."""


class RemoteError(IpphpcError):
    """An exception raised by user code on an engine, carrying the remote traceback."""

    def __init__(self, ename: str, evalue: str, traceback: str = "", engine_info: dict | None = None):
        super().__init__(ename, evalue)
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback
        self.engine_info = engine_info or {}

    def __str__(self) -> str:
        where = self.engine_info.get("engine_id")
        head = f"[engine {where}] " if where is not None else ""
        text = f"{head}{self.ename}: {self.evalue}"
        if self.traceback:
            text += "\n" + self.traceback.rstrip()
        return text

    def render_traceback(self) -> list[str]:
        """IPython calls this to show the remote traceback instead of the local one."""
        return str(self).splitlines()


class CompositeError(RemoteError):
    """Several engines raised: one RemoteError per failed engine, in `elist`."""

    def __init__(self, message: str, elist: list[RemoteError]):
        first = elist[0]
        super().__init__(first.ename, first.evalue, first.traceback, first.engine_info)
        self.message = message
        self.elist = elist

    def __str__(self) -> str:
        parts = [self.message]
        parts += [str(e) for e in self.elist]
        return "\n".join(parts)

    def raise_exception(self, index: int = 0) -> None:
        raise self.elist[index]


class EngineError(IpphpcError):
    """The engine running a task died or was unregistered before it answered."""


class TaskTimeout(IpphpcError):
    """A load-balanced task did not start within its `timeout`."""


class TaskAborted(IpphpcError):
    """A task was dropped before it ran (abort, or the controller shut down)."""


class NoEnginesRegistered(IpphpcError):
    """Work was sent to a view that has no engine to run it."""


class ControllerUnreachable(IpphpcError, ConnectionError):
    """The controller did not answer: the message names the addresses tried and the likely fix."""


class ConnectionFileError(IpphpcError, FileNotFoundError):
    """A connection file is missing, unreadable or malformed."""


class ProtocolMismatch(IpphpcError):
    """The peer speaks an incompatible wire protocol version."""
