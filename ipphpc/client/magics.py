"""IPython magics that run code on the engines: %px, %%px, %pxresult, %pxconfig, %autopx.

`%load_ext ipphpc` registers them on a blocking view of every engine of the most recently made
client; `view.activate(suffix)` or `rc.activate(targets, suffix)` registers a set on a chosen
view, named with the suffix (`%px_a`, `%%px_a`, ...) so that several sets can coexist.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, no_var_expand

from ..error import RemoteError
from . import pxargs

#: the magics registered per suffix, for %autopx's transformed cells
_ACTIVE: dict[str, "ParallelMagics"] = {}

NO_RESULT = "%pxresult{0} shows the last %px{0} execution's output, and there has been none yet"


class AlreadyDisplayedError(RemoteError):
    """The engines' errors of a streamed %%px, whose tracebacks were printed as each engine failed.

    Raised so that the cell still fails (a notebook run stops there); IPython shows one line for it.
    `original_error` is the CompositeError (or RemoteError) that the result holds.
    """

    def __init__(self, original: RemoteError):
        super().__init__(original.ename, original.evalue, original.traceback, original.engine_info)
        self.original_error = original
        self.elist = list(getattr(original, "elist", [original]))
        self.n = len(self.elist)

    def __reduce__(self) -> tuple:
        return type(self), (self.original_error,)

    def __str__(self) -> str:
        return f"{self.n} error{'s' if self.n != 1 else ''}"

    def render_traceback(self) -> list[str]:
        return [f"{self} on the engines (tracebacks above)"]

    _render_traceback_ = render_traceback


class ParallelMagics(Magics):
    """One set of parallel magics bound to one DirectView (or, when `view` is None, to the latest client)."""

    registered = True  # its magics are named per instance (the suffix), not by decorators

    def __init__(self, shell: Any, view: Any = None, suffix: str = ""):
        self._view = view
        self._follow_latest = view is None
        self.suffix = suffix
        self.last_result: Any = None
        self.verbose = False
        # IPython Parallel's switch for scripted runs: its output then arrives whole, after the end
        self.stream_output = os.environ.get("IPP_NONINTERACTIVE", "") in ("", "0")
        self.progress_after_seconds = 2.0
        self.signal_on_interrupt: int | None = pxargs.signal_number("SIGINT")
        self.interrupt_wait = 5.0  # seconds to wait for interrupted engines to report
        self._autopx = False
        line = {"px" + suffix: self.px, "pxresult" + suffix: self.result, "pxconfig" + suffix: self.pxconfig,
                "autopx" + suffix: self.autopx}
        if not suffix:
            line["result"] = self.result  # the older name of %pxresult
        self.magics = {"line": line, "cell": {"px" + suffix: self.cell_px}}
        super().__init__(shell=shell)

    # -- the view ---------------------------------------------------------------------------------
    @property
    def view(self) -> Any:
        """The view the magics run on; without one of their own, a view of the latest client's engines."""
        if not self._follow_latest:
            return self._view
        from .client import Client
        latest = getattr(Client, "_latest", None)
        if latest is None or getattr(latest, "_closed", False):
            raise UsageError("no ipphpc client to run %px on: make one first, e.g. "
                             "rc = ipphpc.Client() or rc = ipphpc.Cluster(n=4).start_and_connect_sync()")
        if self._view is None or self._view.client is not latest:
            old = self._view
            self._view = latest.direct_view("all" if old is None else old.targets)
            self._view.block = True if old is None else old.block
        return self._view

    def _name(self, magic: str) -> str:
        return f"%{magic}{self.suffix}"

    # -- %pxconfig ---------------------------------------------------------------------------------
    @pxargs.with_args("pxconfig", pxargs.EXECUTION)
    def pxconfig(self, line: str = "") -> None:
        """Set the defaults of this set's %px, %%px and %autopx: targets, blocking, streaming, ..."""
        args = pxargs.parse(self.pxconfig, line, self._name("pxconfig"))
        view = self.view
        if args.targets:
            view.targets = pxargs.targets(args.targets, view.client.ids)
        if args.block is not None:
            view.block = args.block
        if args.set_verbose is not None:
            self.verbose = args.set_verbose
        if args.stream is not None:
            self.stream_output = args.stream
        if args.signal_on_interrupt is not None:
            self.signal_on_interrupt = pxargs.signal_number(args.signal_on_interrupt)
        if args.progress_after_seconds is not None:
            self.progress_after_seconds = args.progress_after_seconds

    # -- %pxresult ---------------------------------------------------------------------------------
    @pxargs.with_args("pxresult", pxargs.OUTPUT)
    def result(self, line: str = "") -> None:
        """Wait for the last %px execution (often a --noblock one) and show its output and results."""
        args = pxargs.parse(self.result, line, self._name("pxresult"))
        ar = self.last_result
        if ar is None:
            raise UsageError(NO_RESULT.format(self.suffix))
        if args.save_name:
            self.shell.user_ns[args.save_name] = ar
            return
        _wait(ar, -1)
        ar.display_outputs(groupby=args.groupby or "type")
        ar.get()  # the engines' errors, rendered by IPython as their tracebacks

    # -- %px and %%px -----------------------------------------------------------------------------
    @no_var_expand
    def px(self, line: str = "") -> Any:
        """Run one line of Python on the engines (no $name expansion: f-strings stay as written)."""
        return self.execute(line)

    @pxargs.with_args("%px", pxargs.EXECUTION, pxargs.OUTPUT, pxargs.LOCAL)
    def cell_px(self, line: str = "", cell: str | None = None) -> Any:
        """Run the cell on the engines; the flags change this one run, not the defaults (see %pxconfig)."""
        args = pxargs.parse(self.cell_px, line, self._name("%px"))
        view = self.view
        if args.targets:
            targets = pxargs.targets(args.targets, view.client.ids)
            view = view.client.direct_view(targets)
        sig = self.signal_on_interrupt if args.signal_on_interrupt is None else \
            pxargs.signal_number(args.signal_on_interrupt)
        block = self.view.block if args.block is None else args.block
        options = dict(groupby=args.groupby or "type", save_name=args.save_name, stream=args.stream,
                       progress_after=args.progress_after_seconds, sig=sig)
        if not args.local:
            return self.execute(cell or "", view=view, block=block, **options)
        # remote first, so the engines work while the cell runs here
        ar = self.execute(cell or "", view=view, block=False, **options)
        self.shell.run_cell(cell)
        if not block:
            return ar
        self._finish(ar, **options)
        return None

    def execute(self, code: str, view: Any = None, block: bool | None = None, groupby: str = "type",
                save_name: str | None = None, stream: bool | None = None, progress_after: float | None = None,
                sig: int | None | str = "default") -> Any:
        """Send `code` to the view's engines; when blocking, wait and show what they printed and returned."""
        view = self.view if view is None else view
        block = view.block if block is None else block
        if self.verbose:
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): {_short(view.targets)}")
        ar = view.execute(code, silent=False, block=False)
        ar.fname = "%px"
        self.last_result = ar
        if save_name:
            self.shell.user_ns[save_name] = ar
        if not block:
            return ar
        self._finish(ar, groupby=groupby, stream=stream, progress_after=progress_after, sig=sig)
        return None

    def _finish(self, ar: Any, groupby: str = "type", stream: bool | None = None,
                progress_after: float | None = None, sig: int | None | str = "default", **_: Any) -> None:
        """Wait for a blocking execution, showing its output; Ctrl-C interrupts the engines too."""
        stream = self.stream_output if stream is None else stream
        progress_after = self.progress_after_seconds if progress_after is None else progress_after
        sig = self.signal_on_interrupt if sig == "default" else sig
        interrupted = False
        with ar.stream_output() if stream else contextlib.nullcontext():
            try:
                _wait(ar, progress_after)
            except KeyboardInterrupt:
                if sig is None:
                    raise
                interrupted = True
                self._interrupt(ar, sig)
        if ar.done():
            ar.display_outputs(groupby=groupby, result_only=stream)
        if interrupted:
            _report_interrupt(ar, errors_shown=stream)
            return
        try:
            ar.get()  # the engines' errors, rendered by IPython as their tracebacks
        except RemoteError as e:
            if stream:  # already printed as each engine failed
                raise AlreadyDisplayedError(e) from None
            raise

    def _interrupt(self, ar: Any, sig: int) -> None:
        """Signal the engines running `ar` and give them a moment to report how their task ended."""
        engines = _engines_of(ar)
        print(f"Interrupted: sending {pxargs.signal_name(sig)} to engine(s) {_short(engines)} and waiting "
              f"up to {self.interrupt_wait:g} s for them to stop", file=sys.stderr, flush=True)
        client = self.view.client
        client.send_signal(sig, targets=engines, block=True)
        deadline = time.monotonic() + self.interrupt_wait
        try:
            while not ar.done() and time.monotonic() < deadline:
                ar.wait(0.05)
        except KeyboardInterrupt:
            print("Stopped waiting for the engines", file=sys.stderr)

    # -- %autopx -----------------------------------------------------------------------------------
    def autopx(self, line: str = "") -> None:
        """Toggle sending every following cell to the engines, as if each began with %%px."""
        if self._autopx:
            self._disable_autopx()
        else:
            self._enable_autopx()

    def _enable_autopx(self) -> None:
        transforms = self.shell.input_transformers_cleanup
        if self._autopx_transform not in transforms:
            transforms.append(self._autopx_transform)
        self._autopx = True
        print(f"%autopx{self.suffix} enabled")

    def _disable_autopx(self) -> None:
        transforms = self.shell.input_transformers_cleanup
        if self._autopx_transform in transforms:
            transforms.remove(self._autopx_transform)
        self._autopx = False
        print(f"%autopx{self.suffix} disabled")

    def _autopx_transform(self, lines: list[str]) -> list[str]:
        """Rewrite a cell into a call that runs it on the engines; `%autopx` (any suffix) still runs here."""
        cell = "".join(lines)
        if not cell.strip() or re.match(r"\s*%autopx\w*(\s|$)", cell) or cell.startswith(_AUTOPX_CALL):
            return lines
        return [f"{_AUTOPX_CALL}{self.suffix!r}, {cell!r})\n"]

    # check_complete must not see a finished call where the user is still typing a block
    _autopx_transform.has_side_effects = True  # type: ignore[attr-defined]


#: what %autopx turns a cell into (another set's %autopx leaves it alone)
_AUTOPX_CALL = "__import__('ipphpc.client.magics', fromlist=['run_autopx']).run_autopx("


def run_autopx(suffix: str, cell: str) -> None:
    """Run a cell rewritten by %autopx on its magics' view (returns nothing, so no Out[] here)."""
    magics = _ACTIVE.get(suffix)
    if magics is None:
        raise UsageError(f"%autopx{suffix} is not active")
    magics.execute(cell)


def _wait(ar: Any, progress_after: float) -> None:
    """Wait in short slices, so that Ctrl-C is seen at once; a progress bar after `progress_after` s."""
    start = time.monotonic()
    while not ar.done():
        if 0 <= progress_after <= time.monotonic() - start:
            ar.wait_interactive()
            continue
        ar.wait(0.05)


def _engines_of(ar: Any) -> list[int]:
    ids = ar.engine_id
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in ids if i is not None]


def _report_interrupt(ar: Any, errors_shown: bool) -> None:
    """How the engines' tasks ended after the interrupt (not raised: the user asked to stop)."""
    metas = ar.metadata if isinstance(ar.metadata, list) else [ar.metadata]
    if not ar.done():
        running = [m.get("engine_id") for m in metas if not m.get("completed")]
        print(f"engine(s) {_short(running)} still running; %pxresult waits for them", file=sys.stderr)
        return
    if errors_shown:  # streamed as each task ended
        return
    values = ar.get(return_exceptions=True)
    values = values if isinstance(values, list) else [values]
    for m, v in zip(metas, values):
        if isinstance(v, BaseException):
            print(f"[engine {m.get('engine_id')}] {getattr(v, 'ename', type(v).__name__)}", file=sys.stderr)


def _short(targets: Any) -> str:
    if isinstance(targets, list) and len(targets) > 10:
        return f"{str(targets[:4])[:-1]}, ..., {str(targets[-4:])[1:]}"
    return str(targets)


def activate(view: Any, suffix: str = "") -> ParallelMagics | None:
    """Register %px{suffix}, %%px{suffix}, %pxresult{suffix}, %pxconfig{suffix}, %autopx{suffix} on `view`."""
    from IPython import get_ipython
    shell = get_ipython()
    if shell is None:
        warnings.warn("the parallel magics (%px and friends) work only inside IPython", stacklevel=3)
        return None
    return _register(shell, ParallelMagics(shell, view, suffix))


def _register(shell: Any, magics: ParallelMagics) -> ParallelMagics:
    old = _ACTIVE.get(magics.suffix)
    if old is not None and old._autopx:
        old._disable_autopx()
    shell.register_magics(magics)
    _ACTIVE[magics.suffix] = magics
    return magics


def load_ipython_extension(ip: Any) -> None:
    """`%load_ext ipphpc`: the magics on all engines of the most recently made client, found when used."""
    current = _ACTIVE.get("")
    if current is not None and current.shell is ip:
        return  # already there (from an activate(), or loaded before)
    _register(ip, ParallelMagics(ip, None, ""))


def register_for_client(client: Any) -> None:
    """Called when a client is made: inside IPython, the first client brings %px, as in IPython Parallel."""
    if "IPython" not in sys.modules:  # scripts and engines never load IPython for this
        return
    from IPython import get_ipython
    ip = get_ipython()
    if ip is not None and "px" not in ip.magics_manager.magics["line"]:
        load_ipython_extension(ip)
