"""Argument parsing that never guesses: no abbreviated flags, a close name for a misspelt one, one-line errors."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, NoReturn, Sequence

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# `--Class.trait=value` sets any configurable trait and passes through argparse untouched
_TRAIT_ARG = re.compile(r"--[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=.*", re.DOTALL)


def _hint(word: str, valid: Sequence[str]) -> str:
    import difflib  # the error path only
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that takes flags only as spelt in full and says what was probably meant."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["allow_abbrev"] = False  # `--queu` must not quietly mean `--queue`
        super().__init__(*args, **kwargs)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(action, f"invalid choice {value!r}{_hint(str(value), choices)}; "
                                                 f"choose from {', '.join(choices)}")

    def error(self, message: str) -> NoReturn:
        """One line naming the problem, instead of the usage block followed by it."""
        self.exit(2, f"{self.prog}: {message}; `{self.prog} --help` lists the options\n")

    def option_strings(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]

    def subparser(self, name: str) -> "Parser":
        for a in self._actions:
            if isinstance(a, argparse._SubParsersAction):
                return a.choices[name]
        raise KeyError(name)


def check_extra(parser: Parser, extra: list[str]) -> list[str]:
    """The `--Class.trait=value` arguments among those argparse did not know; anything else is an error."""
    for arg in extra:
        if _TRAIT_ARG.fullmatch(arg):
            continue
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            parser.error(f"unrecognized option {name!r}{_hint(name, parser.option_strings())}; "
                         f"settings without a flag are written --Class.trait=value (for example --Controller.ip='*')")
        parser.error(f"unexpected argument {arg!r}")
    return extra


def log_level(value: str) -> str | int:
    """A logging level name in any case, or a number."""
    if value.isdigit():
        return int(value)
    if value.upper() in LOG_LEVELS:
        return value.upper()
    raise argparse.ArgumentTypeError(f"{value!r} is not a log level{_hint(value.upper(), LOG_LEVELS)}; "
                                     f"use {', '.join(LOG_LEVELS)}")


def ports(value: str) -> str:
    """Up to four comma-separated port numbers (0 or a missing one: a free port)."""
    parts = value.split(",")
    if len(parts) <= 4 and all(p.strip().isdigit() and int(p) < 65536 for p in parts):
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a list of ports; give up to four numbers for the client, "
                                     f"engine, hb_ping and hb_pong ports, e.g. --ports 5001,5002,5003,5004 "
                                     f"(leave it out for free ports)")


def positive(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")


def fail(prog: str, message: str, status: int = 2) -> int:
    """Print a user error as one line and give the exit status to return."""
    print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)
    return status
