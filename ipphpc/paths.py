"""Where ipphpc keeps its state: $IPPHPC_DIR/profile_<name>/{security,log,pid}."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .config import UserError


def ipphpc_dir() -> Path:
    """The root of all profiles: $IPPHPC_DIR, or ~/.ipphpc."""
    return Path(os.environ.get("IPPHPC_DIR") or Path.home() / ".ipphpc").expanduser()


def profile_path(profile: str = "default", profile_dir: str | os.PathLike | None = None) -> Path:
    """Where a profile lives, whether or not it exists yet."""
    return Path(profile_dir).expanduser() if profile_dir else ipphpc_dir() / f"profile_{profile}"


def profile_names() -> list[str]:
    """Profiles that exist under $IPPHPC_DIR."""
    root = ipphpc_dir()
    if not root.is_dir():
        return []
    return sorted(p.name[len("profile_"):] for p in root.glob("profile_*") if p.is_dir())


def _blocking_file(path: Path) -> Path | None:
    """The nearest ancestor of `path` (or itself) that exists and is not a directory."""
    for p in [path, *path.parents]:
        if p.exists():
            return None if p.is_dir() else p
    return None


def profile_dir(profile: str = "default", profile_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The profile directory, created with its security (0700), log and pid folders."""
    path = profile_path(profile, profile_dir)
    if create:
        try:
            existed = (path / "security").is_dir()
            for sub in ("security", "log", "pid"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            mode = (path / "security").stat().st_mode & 0o777
            if mode != 0o700:
                os.chmod(path / "security", 0o700)
                if existed and mode & 0o077:
                    logging.getLogger("ipphpc").warning(
                        "the security folder %s was open to group or others (mode %o); made it 0700: its "
                        "connection files let whoever reads them run code as you", path / "security", mode)
        except (FileExistsError, NotADirectoryError):
            blocker = _blocking_file(path / "security") or path
            raise UserError(f"cannot create the profile directory {path}: {blocker} is a file, not a directory; "
                            f"set IPPHPC_DIR (or --profile-dir) to a directory") from None
        except PermissionError as e:
            raise UserError(f"cannot create the profile directory {path}: {e.strerror} ({e.filename}); "
                            f"set IPPHPC_DIR (or --profile-dir) to a directory you can write") from None
    return path.resolve() if create else path


def _tag(cluster_id: str) -> str:
    return f"-{cluster_id}" if cluster_id else ""


def connection_file(pdir: Path, role: str, cluster_id: str = "") -> Path:
    """`security/ipcontroller[-<cluster_id>]-<role>.json`, role being 'client' or 'engine'."""
    return pdir / "security" / f"ipcontroller{_tag(cluster_id)}-{role}.json"


def cluster_file(pdir: Path, cluster_id: str) -> Path:
    return pdir / "security" / f"cluster-{cluster_id or 'default'}.json"


def pid_file(pdir: Path, name: str, cluster_id: str = "") -> Path:
    return pdir / "pid" / f"{name}{_tag(cluster_id)}.pid"


def log_file(pdir: Path, name: str, cluster_id: str = "", pid: int | None = None) -> Path:
    return pdir / "log" / f"{name}{_tag(cluster_id)}-{pid or os.getpid()}.log"


def short_job(job_id: str) -> str:
    """A job id as it can stand in a file name: '1234[3].pbs01' -> '1234'."""
    return re.sub(r"\[.*?\]", "", job_id).split(".")[0].replace("/", "_")


def engine_log_file(pdir: Path, cluster_id: str, origin: Mapping[str, Any]) -> Path:
    """`log/ipengine-<cluster>-<job>_<index>-<host>-<pid>.log`: unique across the hosts sharing a profile.

    `origin` is what `engine_origin()` reads; engines outside a batch job have no job part.
    """
    parts = ["ipengine"] + ([cluster_id] if cluster_id else [])
    if origin.get("job_id"):
        index = origin.get("array_index")
        parts.append(short_job(str(origin["job_id"])) + ("" if index is None else f"_{index}"))
    parts += [str(origin.get("host") or "unknown").replace("/", "_"), str(origin.get("pid") or os.getpid())]
    return pdir / "log" / ("-".join(parts) + ".log")


def check_ipphpc_dir() -> None:
    """Refuse an $IPPHPC_DIR that cannot be a directory, before anything tries to create it."""
    root = ipphpc_dir()
    blocker = _blocking_file(root)
    if blocker is not None:
        raise UserError(f"IPPHPC_DIR {root} cannot be used: {blocker} is a file, not a directory; "
                        f"set IPPHPC_DIR to a directory")


def require_profile(name: str) -> Path:
    """An existing named profile; the error names the ones there are and how to make one."""
    path = profile_path(name)
    if path.is_dir():
        return path
    known = ", ".join(profile_names()) or "none"
    raise UserError(f"no profile {name!r} in {ipphpc_dir()} (profiles there: {known}); create it with "
                    f"`ipphpc profile create {name}`, or `ipphpc submit --profile {name}` starts a cluster in "
                    f"a new one")
