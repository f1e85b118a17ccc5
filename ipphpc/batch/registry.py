"""Find a backend by name: built-in, installed plugin, or import string.

Third-party packages add schedulers through the ``ipphpc.backends`` entry-point
group; an entry point may name a :class:`Backend` or a function returning one::

    [project.entry-points."ipphpc.backends"]
    flux = "ipphpc_flux:BACKEND"

A custom backend can also be named directly with ``"package.module:attr"`` or
``"package.module.attr"``.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points

from .backend import Backend

ENTRY_POINT_GROUP = "ipphpc.backends"

#: canonical name -> where the backend object lives
BUILTINS: dict[str, str] = {
    "slurm": "ipphpc.batch.slurm:BACKEND",
    "pbspro": "ipphpc.batch.pbs:PBSPRO",
    "torque": "ipphpc.batch.pbs:TORQUE",
    "sge": "ipphpc.batch.sge:BACKEND",
    "lsf": "ipphpc.batch.lsf:BACKEND",
    "htcondor": "ipphpc.batch.htcondor:BACKEND",
}
#: short names that are not a backend's own name
ALIASES: dict[str, str] = {
    "pbs": "pbspro",
    "openpbs": "pbspro",
    "condor": "htcondor",
    "gridengine": "sge",
    "grid_engine": "sge",
    "uge": "sge",
    "oge": "sge",
    "spectrum-lsf": "lsf",
    "openlava": "lsf",
}


def _load(target: str) -> object:
    """Import ``package.module:attr`` or ``package.module.attr``."""
    if ":" in target:
        module_name, _, attr_path = target.partition(":")
    else:
        module_name, _, attr_path = target.rpartition(".")
    if not module_name or not attr_path:
        raise ValueError(f"{target!r} is not an import string like 'package.module:attr'")
    obj: object = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return obj


def _as_backend(obj: object, origin: str) -> Backend:
    if callable(obj) and not isinstance(obj, Backend):
        obj = obj()
    if not isinstance(obj, Backend):
        raise TypeError(f"{origin} is a {type(obj).__name__}, not an ipphpc Backend")
    return obj


def plugin_names() -> list[str]:
    """Names registered by installed packages in the ``ipphpc.backends`` group."""
    return sorted(ep.name.lower() for ep in entry_points(group=ENTRY_POINT_GROUP))


def available_backends() -> list[str]:
    """Every short name :func:`get_backend` accepts (aliases included)."""
    return sorted({*BUILTINS, *ALIASES, *plugin_names()})


def get_backend(name: str | Backend) -> Backend:
    """The backend called ``name`` (case-insensitive), or loaded from an import string.

    Raises ValueError naming the valid choices, and the closest one, when
    ``name`` matches nothing.
    """
    if isinstance(name, Backend):
        return name
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in BUILTINS:
        return _as_backend(_load(BUILTINS[key]), BUILTINS[key])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == key:
            return _as_backend(ep.load(), f"entry point {ep.name!r} ({ep.value})")
    if "." in name or ":" in name:
        try:
            obj = _load(name.strip())
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load batch backend {name!r}: {exc}") from exc
        return _as_backend(obj, repr(name))
    valid = available_backends()
    message = f"unknown batch scheduler {name!r}; valid names: {', '.join(valid)}"
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    message += "; a custom backend can be given as 'package.module:attr'"
    raise ValueError(message)
