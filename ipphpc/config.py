"""traitlets configuration: profile config files, `c.Class.trait = value`, and CLI flags onto the same traits."""
from __future__ import annotations

import ast
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from traitlets.config import Config

COMMON_FILE = "ipphpc_config.py"
# the configuration sections each process reads: a cluster hands a controller or an engine it starts
# these sections of its own configuration, as --Class.trait=value arguments
# (IPController and IPEngine: IPython Parallel's names, read just before Controller's and Engine's)
CONTROLLER_SECTIONS = ("IPController", "Controller", "DictDB", "MongoDB")
ENGINE_SECTIONS = ("IPEngine", "Engine", "MPI")


def read_before(names: list[str], own: str, other: str) -> list[str]:
    """Section names `names` of a configurable class with `other` read just before `own` (later ones win):
    IPython Parallel's name of a section, so its configuration files keep working."""
    i = names.index(own)
    return [*names[:i], other, *names[i:]]


class UserError(Exception):
    """Something the user asked for cannot be done as asked; the command prints the message, no traceback."""


def role_file(role: str) -> str:
    return f"ipphpc_{role}_config.py"


def profile_config_files(pdir: Path, role: str) -> list[str]:
    """The names of the configuration files a `role` process of profile `pdir` reads that exist."""
    return [name for name in (COMMON_FILE, role_file(role)) if (pdir / name).is_file()]


def load_profile_config(pdir: Path, role: str) -> Config:
    """The common file then the role's file (controller, engine, cluster); later wins."""
    from traitlets.config import Config, PyFileConfigLoader
    from traitlets.config.loader import ConfigFileNotFound
    cfg = Config()
    for name in (COMMON_FILE, role_file(role)):
        try:
            cfg.merge(PyFileConfigLoader(name, path=str(pdir)).load_config())
        except ConfigFileNotFound:
            pass
        except SyntaxError as e:
            raise UserError(f"{pdir / name}, line {e.lineno}: {e.msg}; fix the configuration file") from None
    return cfg


def parse_kv_args(args: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`--Class.trait=value` pairs, as traitlets applications accept them: {Class: {trait: value}} (`Config(...)`
    of it is the traitlets configuration)."""
    cfg: dict[str, dict[str, Any]] = {}
    for a in args:
        if not a.startswith("--") or "=" not in a or "." not in a.split("=", 1)[0]:
            raise SystemExit(f"ipphpc: unrecognized argument {a!r}; configuration options are written "
                             f"--Class.trait=value (for example --Controller.ip='*')")
        key, value = a[2:].split("=", 1)
        cls, trait = key.rsplit(".", 1)
        try:
            val = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            val = value
        cfg.setdefault(cls, {})[trait] = val
    return cfg


def setup_logging(log_path: Path | None, level: str | int = "INFO", stream: bool = False) -> logging.Logger:
    """Log to the profile's log/ file (and stderr when asked)."""
    logger = logging.getLogger("ipphpc")
    logger.setLevel(level)
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = []
    if log_path is not None:
        handlers.append(logging.FileHandler(log_path))
    if stream or log_path is None:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger
