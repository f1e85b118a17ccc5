"""What a batch job asks for: the one place the batch options are defined.

HPCCluster's traits, the resource flags of ``ipphpc submit``, the batch
launchers and the templates all derive from :class:`Resources` and the
metadata of its fields (help text, other accepted names, extra flags), so an
option is added here once and appears everywhere.

Sizes are *per engine*: an array element running ``engines_per_task`` engines
asks the scheduler for that many times the cores, memory and GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import timedelta

CONTAINER_RUNTIMES = ("apptainer", "singularity", "podman", "docker")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class OptionInfo:
    """How one option is presented: its help, other accepted names, extra command-line flags."""

    help: str
    #: other keyword names meaning the same (older ipphpc names, dask-jobqueue's names)
    aliases: tuple[str, ...] = ()
    #: command-line flags besides ``--<name>`` (short forms, older spellings)
    flags: tuple[str, ...] = ()
    metavar: str | None = None


def _opt(default: Any, help: str, **info: Any) -> Any:
    meta = {"option": OptionInfo(help, **info)}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Resources:
    """A batch job's resources and settings, in scheduler-neutral words."""

    cores: int = _opt(1, "CPU cores per engine", aliases=("cpus_per_engine",), flags=("--cpus-per-engine",))
    memory: str = _opt("", "memory per engine, with a unit: 4G, 500M", aliases=("memory_per_engine", "mem"),
                       flags=("--mem",), metavar="SIZE")
    gpus: int = _opt(0, "GPUs per engine; each engine of an element sees its own devices")
    nodes: int = _opt(1, "nodes per array element (its engines start on the first)")
    engines_per_task: int = _opt(1, "engines per array element (one interpreter start, then fork)")
    walltime: str = _opt("", "wall-time limit, read as Slurm does: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, "
                         "D-HH:MM:SS; or 90m, 2h, 1d", flags=("-t",), metavar="TIME")
    queue: str = _opt("", "queue or partition", aliases=("partition",), flags=("-q", "--partition"))
    account: str = _opt("", "account to charge (Slurm --account, PBS and SGE -A)", flags=("-A",))
    project: str = _opt("", "project to charge (SGE, LSF and PBS Pro -P)", flags=("-P",))
    qos: str = _opt("", "quality of service (Slurm)")
    constraint: str = _opt("", "node features the job needs (Slurm --constraint, LSF select[], HTCondor "
                           "requirements, Torque node properties, PBS Pro chunk resource, SGE -l)", flags=("-C",))
    exclusive: bool = _opt(False, "whole nodes, shared with no other job")
    reservation: str = _opt("", "advance reservation to run in")
    job_name: str = _opt("", "job name (default ipphpc-engines / ipphpc-controller)")
    mail: str = _opt("", "address mailed when the job ends or fails", metavar="ADDRESS")
    env: dict[str, str] = _opt({}, "environment variables exported in the job", aliases=("environment",),
                               metavar="NAME=VALUE")
    prologue: list[str] = _opt([], "shell lines run before the engines (module load, venv)",
                               aliases=("job_script_prologue",), metavar="LINE")
    epilogue: list[str] = _opt([], "shell lines run after the engines exit", metavar="LINE")
    extra_directives: list[str] = _opt([], "scheduler directives added to the script; the prefix (#SBATCH ...) "
                                       "is added when missing", aliases=("job_extra_directives",),
                                       flags=("--extra-directive",), metavar="DIRECTIVE")
    container: str = _opt("", "container image the engines run in", metavar="IMAGE")
    container_runtime: str = _opt("apptainer", "container runtime: " + ", ".join(CONTAINER_RUNTIMES))
    container_binds: list[str] = _opt([], "paths bound into the container (SRC[:DST])",
                                      flags=("--container-bind",), metavar="PATH")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(Resources):
            value = getattr(self, f.name)
            default = _default(f)
            if value is None:
                value = default
            elif isinstance(default, list):
                value = [value] if isinstance(value, str) else list(value)
            elif isinstance(default, dict):
                value = dict(value)
            setattr(self, f.name, value)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], owner: str = "batch option") -> Resources:
        """Resources from keyword options, accepting aliases; an unknown name is an error."""
        return cls(**canonical_options(options, owner=owner))

    def resource_values(self) -> dict[str, Any]:
        """The option values alone (without the fields a subclass adds)."""
        return {name: getattr(self, name) for name in option_names()}

    def non_default(self) -> dict[str, Any]:
        """The options set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Resources)
                if getattr(self, f.name) != _default(f)}

    @property
    def walltime_seconds(self) -> int | None:
        return parse_walltime(self.walltime) if self.walltime not in ("", None) else None

    @property
    def memory_mb(self) -> int | None:
        return parse_memory(self.memory) if self.memory not in ("", None) else None

    def validate(self) -> None:
        """Raise ValueError (one line: the problem and the fix) for values no scheduler accepts."""
        for name in ("cores", "nodes", "engines_per_task"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.gpus < 0:
            raise ValueError(f"gpus={self.gpus}: cannot be negative")
        self.walltime_seconds  # noqa: B018 - parsing is the check
        self.memory_mb  # noqa: B018
        bad = [name for name in self.env if not _SHELL_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not valid environment variable names: {', '.join(map(repr, bad))}")
        if self.container_runtime not in CONTAINER_RUNTIMES:
            raise ValueError(f"container_runtime={self.container_runtime!r}: use one of "
                             f"{', '.join(CONTAINER_RUNTIMES)}")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def option_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`Resources`, each with its :class:`OptionInfo` as ``metadata['option']``."""
    return dataclasses.fields(Resources)


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in option_fields())


def option_default(name: str) -> Any:
    return _default(next(f for f in option_fields() if f.name == name))


def aliases() -> dict[str, str]:
    """Every other accepted keyword name -> the option's name."""
    return {alias: f.name for f in option_fields() for alias in f.metadata["option"].aliases}


#: names from dask-jobqueue that mean something else here: refused with what to use instead
REFUSED: dict[str, str] = {
    "processes": "dask-jobqueue's processes counts workers per job: use engines_per_task "
                 "(cores and memory here are per engine, not per job)",
    "worker_extra_args": "use engine_args (extra `ipphpc engine` arguments)",
    "interface": "use controller_ip ('*' listens on every interface) or controller_location",
}


def unknown_name_message(name: str, valid: Iterable[str], owner: str) -> str:
    """``unknown X 'quue'; did you mean 'queue'? valid: ...`` (one line)."""
    import difflib  # here, on the error path: every `ipphpc engine` imports this module
    valid = sorted(set(valid))
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {owner} {name!r}{hint} valid: {', '.join(valid)}"


def canonical_options(options: Mapping[str, Any], others: Iterable[str] = (),
                      owner: str = "batch option") -> dict[str, Any]:
    """``options`` with every alias replaced by its option's name.

    Names in ``others`` (the caller's own settings) pass through unchanged; any
    other unknown name, or a dask-jobqueue name with another meaning, raises
    ValueError naming the valid ones.
    """
    names, alias_map, others = set(option_names()), aliases(), set(others)
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = alias_map.get(key, key)
        if name in REFUSED:
            raise ValueError(f"{owner} {name!r} is not accepted: {REFUSED[name]}")
        if name not in names and name not in others:
            raise ValueError(unknown_name_message(key, names | set(alias_map) | others, owner))
        if name in out and out[name] != value:
            raise ValueError(f"{owner} {name!r} given twice with different values "
                             f"({out[name]!r} and {value!r}, as {key!r})")
        out[name] = value
    return out


# -- walltime ------------------------------------------------------------------------------------
_SLURM_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_UNIT_TIME = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$", re.IGNORECASE)
_SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WALLTIME_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, 90m, 2h or 1d"


def parse_walltime(value: str | timedelta) -> int:
    """Seconds in a walltime, read as Slurm reads it: ``90`` is 90 minutes, ``2:00`` two minutes.

    Slurm's forms are the ones users of every scheduler meet first; ``1h``,
    ``90m``, ``2d``, ``45s`` say the unit outright. A bare Python number is
    refused: seconds or minutes would both be a guess.
    """
    # a timedelta exists only once datetime is imported: looked up, not imported (0.4 MiB in every engine)
    dt = sys.modules.get("datetime")
    if dt is not None and isinstance(value, dt.timedelta):
        return math.ceil(value.total_seconds())
    if not isinstance(value, str):
        raise ValueError(f"walltime={value!r}: give a string such as '90' (minutes), '1:30:00' or '90m', "
                         "or a timedelta")
    text = value.strip()
    match = _UNIT_TIME.match(text)
    if match:
        return math.ceil(float(match.group(1)) * _SECONDS_PER[match.group(2).lower()])
    match = _SLURM_TIME.match(text)
    if not match:
        raise ValueError(f"walltime {value!r} is not a time; use {WALLTIME_FORMS}")
    days = int(match["days"] or 0)
    parts = [int(p) for p in (match["a"], match["b"], match["c"]) if p is not None]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (parts + [0, 0])[:3]
        if hours > 23:
            raise ValueError(f"walltime {value!r}: hours after 'D-' must be below 24")
    elif len(parts) == 1:  # MM
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:  # MM:SS
        hours, (minutes, seconds) = 0, parts
    else:  # HH:MM:SS
        hours, minutes, seconds = parts
    if seconds > 59 or (minutes > 59 and (days or len(parts) == 3)):
        raise ValueError(f"walltime {value!r}: minutes and seconds must be below 60; use {WALLTIME_FORMS}")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_hms(seconds: int) -> str:
    """``5400`` -> ``01:30:00`` (hours may exceed 24)."""
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def format_dhms(seconds: int) -> str:
    """Slurm's ``D-HH:MM:SS`` form for a day or more, ``HH:MM:SS`` below."""
    days, rest = divmod(seconds, 86400)
    return f"{days}-{format_hms(rest)}" if days else format_hms(rest)


# -- memory --------------------------------------------------------------------------------------
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGTP])(?:I?B)?$", re.IGNORECASE)
_MIB_PER = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}


def parse_memory(value: str) -> int:
    """MiB in a memory size: ``4G`` -> 4096, ``4000M`` -> 4000, ``512K`` -> 1.

    A number without a unit is refused: Slurm reads it as MB, PBS as bytes,
    LSF as KB by default and SGE as bytes, so no reading is safe everywhere.
    """
    text = str(value).strip()
    match = _MEMORY.match(text)
    if match:
        return math.ceil(float(match.group(1)) * _MIB_PER[match.group(2).upper()])
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise ValueError(f"memory {text!r} has no unit: write {text}G or {text}M")
    raise ValueError(f"memory {value!r} is not a size; use e.g. 4G, 4000M or 512MiB")
