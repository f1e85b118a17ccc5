"""Where ipphpc keeps its state: $IPPHPC_DIR/profile_<name>/{security,log,pid}."""
from __future__ import annotations

import os
from pathlib import Path


def ipphpc_dir() -> Path:
    """The root of all profiles: $IPPHPC_DIR, or ~/.ipphpc."""
    return Path(os.environ.get("IPPHPC_DIR") or Path.home() / ".ipphpc").expanduser()


def profile_dir(profile: str = "default", profile_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The profile directory, created with its security (0700), log and pid folders."""
    path = Path(profile_dir).expanduser() if profile_dir else ipphpc_dir() / f"profile_{profile}"
    if create:
        for sub in ("security", "log", "pid"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(path / "security", 0o700)
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
