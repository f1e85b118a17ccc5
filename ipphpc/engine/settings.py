"""The engine's settings as traitlets configurables, made from the tables in :mod:`.options`.

Used when there is configuration to read (`c.Engine.*`, `c.IPEngine.*` and `c.MPI.*` in profile files or as
`--Class.trait=value`), to check such settings, and to write the commented configuration file of a new profile.
"""
from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Integer, TraitType, Unicode
from traitlets.config import Config, Configurable, LoggingConfigurable

from ..config import read_before
from . import options

_TRAITS = {str: Unicode, float: Float, int: Integer, bool: Bool}


def _traits(table: dict[str, options.Option]) -> dict[str, TraitType]:
    return {name: _TRAITS[o.kind](o.default, config=True, help=o.help) for name, o in table.items()}


def _engine_sections(cls: Any) -> list[str]:
    """IPython Parallel's section name, IPEngine, read just before Engine, so its configuration files keep working."""
    return read_before(super(Engine, cls).section_names(), "Engine", "IPEngine")


#: `c.Engine.*` (and `c.IPEngine.*`): one engine process
Engine: Any = type("Engine", (LoggingConfigurable,), {
    "__doc__": "One engine process.",
    "__module__": __name__,
    "section_names": classmethod(_engine_sections),
    **_traits(options.ENGINE),
})

#: `c.MPI.*`: engines started under mpiexec join COMM_WORLD
MPIConfig: Any = type("MPIConfig", (Configurable,), {
    "__doc__": "`c.MPI.use = 'mpi4py'`: engines started under mpiexec join COMM_WORLD.",
    "__module__": __name__,
    "section_names": classmethod(lambda cls: ["MPI"]),
    **_traits(options.MPI),
})


def read(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Engine settings, MPI settings) that `config` gives, defaults filled in; a TraitError for a value of the
    wrong type."""
    engine = Engine(config=config)
    mpi = MPIConfig(config=config)
    return ({name: getattr(engine, name) for name in options.ENGINE},
            {name: getattr(mpi, name) for name in options.MPI})
