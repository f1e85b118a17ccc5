"""Runs one task in the engine's namespace and captures what it printed."""
from __future__ import annotations

import ast
import re
import signal
import sys
import threading
import time
import traceback
import types
from typing import Any

from .. import serialize
from ..remote_types import EngineNamespace, Reference
from .control import Control, Output

#: a line that only IPython reads: a magic, a shell escape, or help (`x?`)
_IPYTHON_SYNTAX = re.compile(r"^\s*[%!]|\?\s*$", re.MULTILINE)


def _user_traceback(e: BaseException) -> str:
    """The traceback as the user's code sees it: the engine's own frames (this file) left out."""
    te = traceback.TracebackException.from_exception(e)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
    return "".join(te.format())


class _MainModule:
    """Stands for `__main__` in sys.modules, its attributes the engine namespace: pickle finds
    classes and functions defined by tasks (`%px class A: ...`) where it looks for them."""

    # as for `python -c`: multiprocessing's spawn (dask's Nanny, spawn pools) reads it
    __spec__ = None


#: the executor whose namespace is this process's `__main__` (set on engines): task code that needs the
#: engine namespace, or to run a function in it as `apply` does, finds it here
current: Executor | None = None


class Executor:
    """The engine's user namespace and the kinds of task: apply, execute, push, pull, clear."""

    def __init__(self, user_ns: dict | None = None, control: Control | None = None):
        self.user_ns: dict[str, Any] = user_ns if user_ns is not None else {"__name__": "__main__"}
        self.user_ns.setdefault("__builtins__", __builtins__)
        self.control = control
        self.running = False
        self.execution_count = 0
        # values put into the namespace from a function's captured globals; refreshed by a later
        # function only while the namespace still holds that very object
        self._captured: dict[str, Any] = {}

    def install_main(self) -> None:
        """Make the namespace `__main__`, and '' (the working directory) importable, as in a shell."""
        main = _MainModule()
        main.__dict__ = self.user_ns
        sys.modules["__main__"] = main  # type: ignore[assignment]
        global current
        current = self
        if "" not in sys.path:
            sys.path.insert(0, "")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Inside a task, an interrupt is the task's KeyboardInterrupt; between tasks, one from a terminal
        stops the engine and one the controller sent (late: its task just ended) does nothing."""
        requested = self.control is not None and self.control.take_interrupt()
        if self.running:
            raise KeyboardInterrupt
        if not requested:
            self.on_idle_interrupt()

    def on_idle_interrupt(self) -> None:
        raise KeyboardInterrupt

    def run(self, kind: str, payload: list, msg_id: str = "") -> tuple[bool, list, dict]:
        """(ok, value frames, metadata)."""
        control = self.control
        out, err = Output("stdout", control), Output("stderr", control)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        meta: dict[str, Any] = {"started": time.time()}
        if control is not None:
            control.begin(msg_id, (out, err))
        self.running = True
        try:
            value = getattr(self, "_" + kind)(payload)
            if kind == "execute":
                value, meta["execute_result"] = None, value
                meta["execution_count"] = self.execution_count
            frames = serialize.dumps(value) if value is not None else []
            ok = True
        except BaseException as e:  # noqa: BLE001 - every failure, sys.exit() included, goes back to the client
            ok, frames = False, []
            meta["error"] = {"ename": type(e).__name__, "evalue": str(e), "tb": _user_traceback(e)}
        finally:
            self.running = False
            sys.stdout, sys.stderr = saved
            if control is not None:
                control.end()
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
        f = self._resolve(f)  # apply(Reference('name')) calls what the engine holds under that name
        args = tuple(self._resolve(a) for a in args)
        kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
        return self._interactive(f)(*args, **kwargs)

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, types.FunctionType):
            return self._interactive(arg)  # a function passed along (to map, say) sees the namespace too
        if isinstance(arg, Reference):
            return self._lookup(arg.name)
        if isinstance(arg, EngineNamespace):
            return self.user_ns
        return arg

    def _execute(self, payload: list) -> dict | None:
        """Run code as an interactive shell does: the value of a last bare expression is the result,
        as {"data": {mime: text}} (None when there is none)."""
        code = bytes(payload[0]).decode()
        if _IPYTHON_SYNTAX.search(code):
            code = self._from_ipython(code)
        self.execution_count += 1
        name = f"<execute-{self.execution_count}>"
        tree = ast.parse(code, name)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, name, "exec"), self.user_ns)
        if last is None:
            return None
        value = eval(compile(ast.Expression(last.value), name, "eval"), self.user_ns)  # noqa: S307 - user code
        if value is None:
            return None
        self.user_ns["_"] = value
        data = {"text/plain": repr(value)}
        html = getattr(value, "_repr_html_", None)
        if callable(html) and not isinstance(value, type):
            try:
                text = html()
                if text:
                    data["text/html"] = text
            except Exception:  # noqa: BLE001 - a broken rich display leaves the plain one
                pass
        return {"data": data, "execution_count": self.execution_count}

    def _from_ipython(self, code: str) -> str:
        """Code with IPython syntax (`%whos`, `%%timeit`, `!ls`) as plain Python, run by an IPython shell
        on this namespace; the shell is made the first time it is needed, so engines stay light otherwise."""
        try:
            from IPython.core.inputtransformer2 import TransformerManager
            from IPython.core.interactiveshell import InteractiveShell
        except ImportError:
            raise SyntaxError("this code uses IPython syntax (%magics, !commands), and IPython is not installed "
                              "on the engine: pip install ipython where the engines run") from None
        if not InteractiveShell.initialized():
            from traitlets.config import Config
            cfg = Config()
            cfg.HistoryManager.enabled = False  # no history database on a shared filesystem
            InteractiveShell.instance(config=cfg, user_ns=self.user_ns)
        return TransformerManager().transform_cell(code)

    def _clear(self, payload: list) -> None:
        """Empty the namespace, keeping what the engine itself put there (MPI names, builtins)."""
        keep = {k: self.user_ns[k] for k in ("__name__", "__builtins__", "MPI", "comm", "mpi_rank", "mpi_size")
                if k in self.user_ns}
        self.user_ns.clear()
        self.user_ns.update(keep)
        self._captured.clear()
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
