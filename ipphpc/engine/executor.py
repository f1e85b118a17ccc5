"""Runs one task in the engine's namespace and captures what it printed."""
from __future__ import annotations

import io
import sys
import time
import traceback
import types
from typing import Any

from .. import serialize
from ..client.remote import EngineNamespace, Reference


class Executor:
    """The engine's user namespace and the four kinds of task: apply, execute, push, pull."""

    def __init__(self, user_ns: dict | None = None):
        self.user_ns: dict[str, Any] = user_ns if user_ns is not None else {"__name__": "__main__"}
        self.user_ns.setdefault("__builtins__", __builtins__)
        # values put into the namespace from a function's captured globals; refreshed by a later
        # function only while the namespace still holds that very object
        self._captured: dict[str, Any] = {}

    def run(self, kind: str, payload: list) -> tuple[bool, list, dict]:
        """(ok, value frames, metadata)."""
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        meta: dict[str, Any] = {"started": time.time()}
        try:
            value = getattr(self, "_" + kind)(payload)
            frames = serialize.dumps(value) if value is not None else []
            ok = True
        except BaseException as e:  # noqa: BLE001 - every failure, sys.exit() included, goes back to the client
            ok, frames = False, []
            meta["error"] = {"ename": type(e).__name__, "evalue": str(e),
                             "tb": "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))}
        finally:
            sys.stdout, sys.stderr = saved
        meta["completed"] = time.time()
        meta["stdout"], meta["stderr"] = out.getvalue(), err.getvalue()
        return ok, frames, meta

    def _interactive(self, f: Any) -> Any:
        """Functions defined in the client's __main__ (or sent by value) run in the engine namespace, as in
        IPython Parallel, with the globals they captured filling names the namespace lacks."""
        if not isinstance(f, types.FunctionType) or f.__globals__ is self.user_ns:
            return f
        # defined interactively, or sent by value from a module this engine does not have
        if f.__module__ != "__main__" and f.__module__ in sys.modules:
            return f
        ns, captured = self.user_ns, self._captured
        for k, v in f.__globals__.items():
            if k.startswith("__"):
                continue
            if k not in ns or (k in captured and ns[k] is captured[k]):
                ns[k] = captured[k] = v
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__kwdefaults__ = f.__kwdefaults__
        g.__dict__.update(f.__dict__)
        return g

    def _apply(self, payload: list) -> Any:
        f, args, kwargs = serialize.loads(payload)
        args = tuple(self._resolve(a) for a in args)
        kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
        return self._interactive(f)(*args, **kwargs)

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, Reference):
            return self._lookup(arg.name)
        if isinstance(arg, EngineNamespace):
            return self.user_ns
        return arg

    def _execute(self, payload: list) -> None:
        code = bytes(payload[0]).decode()
        exec(compile(code, "<execute>", "exec"), self.user_ns)
        return None

    def _push(self, payload: list) -> None:
        ns = serialize.loads(payload)
        self.user_ns.update(ns)
        return None

    def _pull(self, payload: list) -> Any:
        names = serialize.loads(payload)
        if isinstance(names, str):
            return self._lookup(names)
        return [self._lookup(n) for n in names]

    def _lookup(self, name: str) -> Any:
        try:
            return self.user_ns[name]
        except KeyError:
            raise NameError(f"name {name!r} is not defined on this engine") from None
