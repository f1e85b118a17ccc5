"""`--Class.trait=value` checked before anything starts: a class or setting that nothing reads is one
line naming it and the closest real name, instead of a setting quietly ignored."""
from __future__ import annotations

import importlib
from typing import Any

from ..config import CONTROLLER_SECTIONS, ENGINE_SECTIONS, UserError

# the configurable classes, imported only when a command's settings are checked
_CLASSES = {
    "Controller": "ipphpc.controller.controller:Controller",
    "DictDB": "ipphpc.controller.taskdb.config:DictDB",
    "MongoDB": "ipphpc.controller.taskdb.config:MongoDB",
    "Engine": "ipphpc.engine.settings:Engine",
    "MPI": "ipphpc.engine.settings:MPIConfig",
    "HPCCluster": "ipphpc.cluster.cluster:HPCCluster",
    "SSHEngineSetLauncher": "ipphpc.launch.ssh:SSHEngineSetLauncher",
    "SSHProxyEngineSetLauncher": "ipphpc.launch.ssh:SSHProxyEngineSetLauncher",
    "SSHControllerLauncher": "ipphpc.launch.ssh:SSHControllerLauncher",
}
# a controller or an engine reads its own sections; the commands that start clusters read them all
_READ_BY = {"controller": [n for n in CONTROLLER_SECTIONS if n in _CLASSES],
            "engine": [n for n in ENGINE_SECTIONS if n in _CLASSES]}
_BASES = {"Configurable", "LoggingConfigurable", "HasTraits", "HasDescriptors"}


def _load(where: str) -> Any:
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def _hint(word: str, valid: set[str]) -> str:
    import difflib  # the error path only
    close = difflib.get_close_matches(word, sorted(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_settings(cmd: str, cfg: dict[str, dict[str, Any]]) -> None:
    """Raise UserError for the first `--Class.trait` that `ipphpc <cmd>` would not read."""
    if not cfg:
        return
    classes = [_load(_CLASSES[n]) for n in _READ_BY.get(cmd, _CLASSES)]
    batch: set[str] = set()
    if cmd not in _READ_BY:
        from ..batch.registry import BUILTINS, plugin_names
        from ..launch.batch import every_config_section, launcher_settings
        batch = every_config_section([*BUILTINS, *plugin_names()])
    sections = {s for c in classes for s in c.section_names()} - _BASES
    for section, values in cfg.items():
        first = f"--{section}.{next(iter(values), '')}"
        if section in batch:
            try:
                launcher_settings(section, values)
            except ValueError as e:
                raise UserError(f"{first}: {e}") from None
            continue
        owners = [c for c in classes if section in c.section_names()]
        if not owners:
            where = "a batch launcher's section (as c.SlurmEngineSetLauncher) or " if batch else ""
            other = (" (an engine's settings go to `ipphpc engine`)" if section in ENGINE_SECTIONS
                     else " (a controller's settings go to `ipphpc controller`)" if section in CONTROLLER_SECTIONS
                     else "")
            raise UserError(f"{first}: `ipphpc {cmd}` reads no settings of {section!r}{other}"
                            f"{_hint(section, sections | batch)}; it reads {where}{', '.join(sorted(sections))}")
        if section == "HPCCluster":
            continue  # the cluster checks its own, with the resource options' other names
        names = {t for c in owners for t in c.class_trait_names(config=True)}
        for key in values:
            if key not in names:
                raise UserError(f"--{section}.{key}: {section} has no setting {key!r}{_hint(key, names)}; "
                                f"its settings are {', '.join(sorted(names))}")
