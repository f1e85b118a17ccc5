"""The flags of the %px magics, and how their values (targets, signals) are read.

Kept apart from the magics so that the flags, their help (shown by `%%px?`) and the one-line
list shown for a misspelt flag come from one place.
"""
from __future__ import annotations

import ast
import signal
from typing import Any, Callable

from IPython.core import magic_arguments
from IPython.core.error import UsageError

_arg = magic_arguments.argument

#: how the engines' execution is started and waited for (%%px and %pxconfig)
EXECUTION = [
    _arg("-b", "--block", action="store_const", const=True, dest="block",
         help="wait for the engines and show their output (the view's default unless --noblock)"),
    _arg("-a", "--noblock", action="store_const", const=False, dest="block",
         help="return an AsyncResult at once; %%pxresult shows its output later"),
    _arg("--stream", action="store_const", const=True, dest="stream",
         help="print the engines' output while they run (blocking execution only; the default)"),
    _arg("--no-stream", action="store_const", const=False, dest="stream",
         help="print the engines' output once they have all finished, grouped by --group-outputs"),
    _arg("-t", "--targets", type=str,
         help="engines to run on: 'all', an id, a list (1,3) or a slice of the engine ids (::2)"),
    _arg("--verbose", action="store_const", const=True, dest="set_verbose",
         help="say on which engines each execution runs"),
    _arg("--no-verbose", action="store_const", const=False, dest="set_verbose",
         help="print nothing but the engines' output"),
    _arg("--progress-after", dest="progress_after_seconds", type=float, default=None, metavar="SECONDS",
         help="seconds to wait before a progress bar appears (-1: never, 0: at once)"),
    _arg("--signal-on-interrupt", dest="signal_on_interrupt", type=str, default=None, metavar="SIGNAL",
         help="signal sent to the engines when a blocking execution is interrupted with Ctrl-C "
              "(SIGINT by default; a name such as SIGKILL, or a number; 0 sends nothing that matters)"),
]

#: how results are shown or kept (%%px and %pxresult)
OUTPUT = [
    _arg("-r", action="store_const", dest="groupby", const="order",
         help="show outputs in order (--group-outputs=order)"),
    _arg("-e", action="store_const", dest="groupby", const="engine",
         help="show all output of one engine before the next (--group-outputs=engine)"),
    _arg("--group-outputs", dest="groupby", type=str, choices=["engine", "order", "type"], default="type",
         help="type: every engine's stdout, then every stderr, then results; engine: engine by engine; "
              "order: like type, with rich outputs interleaved across engines"),
    _arg("-o", "--out", "--save-name", dest="save_name", type=str, metavar="NAME",
         help="also store the AsyncResult in the user namespace under this name"),
]

LOCAL = _arg("--local", action="store_const", const=True, dest="local",
             help="run the cell here as well, after sending it to the engines")


def with_args(name: str, *groups: Any) -> Callable:
    """Decorate a magic with IPython's argument parser and the given groups of flags (`name` heads its usage)."""
    def decorate(f: Callable) -> Callable:
        for group in reversed(groups):
            for a in reversed(group if isinstance(group, list) else [group]):
                f = a(f)
        return magic_arguments.magic_arguments(name=name)(f)
    return decorate


def parse(magic: Callable, line: str, name: str) -> Any:
    """Parse a magic's line; a wrong flag names every valid one, on one line."""
    try:
        return magic_arguments.parse_argstring(magic, line)
    except UsageError as e:
        if "unrecognized arguments" not in str(e) and "ambiguous option" not in str(e):
            raise UsageError(f"{name}: {e}") from None
        raise UsageError(f"{name}: {e}; valid flags: {valid_flags(magic)}") from None


def valid_flags(magic: Callable) -> str:
    """The flags a magic accepts, as `-t/--targets TARGETS, -b/--block, ...`."""
    shown = []
    for action in magic.parser._actions:
        if not action.option_strings:
            continue
        names = "/".join(action.option_strings)
        if action.nargs != 0:  # takes a value
            names += "=" + ("{" + ",".join(action.choices) + "}" if action.choices
                            else action.metavar or action.dest.upper())
        shown.append(names)
    return ", ".join(shown)


def targets(text: str, ids: list[int]) -> Any:
    """What `--targets` means: 'all', a slice of the engine ids, one id or a list of ids."""
    text = text.strip()
    if text in ("all", "'all'", '"all"'):
        return "all"
    body = text[1:-1] if text.startswith("[") and text.endswith("]") and ":" in text else text
    if ":" in body:
        parts = body.split(":")
        if len(parts) > 3:
            raise UsageError(f"--targets {text!r}: a slice has at most three parts")
        try:
            bounds = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise UsageError(f"--targets {text!r}: slice bounds must be integers") from None
        return list(ids[slice(*bounds)])
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UsageError(f"--targets {text!r}: use 'all', an engine id, a list of ids or a slice") from None
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool) or not (isinstance(value, int)
                                       or (isinstance(value, list) and all(isinstance(v, int) for v in value))):
        raise UsageError(f"--targets {text!r}: use 'all', an engine id, a list of ids or a slice")
    return value


def signal_number(text: str | int) -> int:
    """A signal given by number (`9`) or name (`SIGKILL`, `KILL`)."""
    if isinstance(text, int):
        return text
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"--signal-on-interrupt: unknown signal {text!r}") from None


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)
