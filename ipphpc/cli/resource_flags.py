"""The batch option flags of `ipphpc submit`, made from :class:`~ipphpc.batch.resources.Resources`.

Each field becomes ``--<name>`` (plus the extra flags its metadata lists) and
an entry of the CLI's flag -> trait table, so the options are written once.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..batch.resources import option_default, option_fields


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value


def add_resource_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per batch option; list options repeat (``--prologue A --prologue B``)."""
    group = parser.add_argument_group("batch options (per engine; see README 'Batch schedulers')")
    for f in option_fields():
        info = f.metadata["option"]
        default = option_default(f.name)
        flags = [f"--{f.name.replace('_', '-')}", *info.flags]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": info.help}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif isinstance(default, int):
            kwargs["type"] = int
        elif isinstance(default, (list, dict)):
            kwargs.update(action="append", type=_key_value if isinstance(default, dict) else str,
                          help=info.help + " (repeat the flag for more)")
        if info.metavar and kwargs.get("action") != "store_true":
            kwargs["metavar"] = info.metavar
        group.add_argument(*flags, **kwargs)


def resource_flag_traits() -> dict[str, list[tuple[str, str, Callable[[Any], Any]]]]:
    """flag dest -> [(class, trait, converter)] for every batch option."""
    table: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {}
    for f in option_fields():
        default = option_default(f.name)
        convert: Callable[[Any], Any] = type(default)
        if isinstance(default, dict):
            convert = dict  # a list of (name, value) pairs
        table[f.name] = [("HPCCluster", f.name, convert)]
    return table
