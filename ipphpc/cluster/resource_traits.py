"""HPCCluster's batch options as traitlets traits, made from :class:`~ipphpc.batch.resources.Resources`.

The traits are generated from the dataclass's fields, so ``c.HPCCluster.<option>``
exists for every batch option without the list being written a second time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from traitlets import Bool, Dict, HasTraits, Integer, List, TraitType, Unicode

from ..batch.resources import option_default, option_fields


def _trait(f: dataclasses.Field) -> TraitType:
    default = option_default(f.name)
    info = f.metadata["option"]
    text = info.help + (f" (also: {', '.join(info.aliases)})" if info.aliases else "")
    if isinstance(default, bool):
        return Bool(default, config=True, help=text)
    if isinstance(default, int):
        return Integer(default, config=True, help=text)
    if isinstance(default, list):
        return List(Unicode(), default, config=True, help=text)
    if isinstance(default, dict):
        return Dict(value_trait=Unicode(), default_value=default, config=True, help=text)
    return Unicode(default, config=True, help=text)


def resource_traits() -> dict[str, TraitType]:
    """One configurable trait per batch option."""
    return {f.name: _trait(f) for f in option_fields()}


#: mixed into HPCCluster: the batch options as configurable traits
ResourceTraits: Any = type("ResourceTraits", (HasTraits,), {
    "__doc__": "Batch options of an HPCCluster (generated from Resources).",
    "__module__": __name__,
    **resource_traits(),
})
