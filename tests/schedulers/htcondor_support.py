"""Helpers for tests that run ipphpc inside the HTCondor test pool's chroot.

HTCondor jobs there run the chroot's own venv (/opt/ipphpc-venv), so this source tree
must be installed into it before an engine can start. The install takes tens of seconds:
it runs at most once per source tree, even with several pytest processes at once.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = Path(os.environ.get("IPPHPC_CI_SHARED_DIR", "/tmp/ipphpc-shared"))
LOCK_FILE = SHARED_DIR / ".ipphpc-install.lock"
STAMP_FILE = SHARED_DIR / ".ipphpc-install.stamp"
JOB_UID = int(os.environ.get("IPPHPC_HTCONDOR_UID", "1500"))
CHROOT = Path(os.environ.get("IPPHPC_HTCONDOR_ROOT", "/var/lib/ipphpc-ci/htcondor/root"))
VENV_IN = os.environ.get("IPPHPC_HTCONDOR_VENV", "/opt/ipphpc-venv")
JOB_PYTHON = f"{VENV_IN}/bin/python"
ENGINE_CMD = [JOB_PYTHON, "-m", "ipphpc", "engine"]
INSTALL_SCRIPT = REPO_ROOT / ".ci" / "services" / "htcondor.sh"


def _package_files(pkg: Path, templates: Path) -> list[tuple[str, Path]]:
    """(name, path) of everything that decides how the installed package behaves."""
    files = [(f"ipphpc/{p.relative_to(pkg)}", p) for p in pkg.rglob("*.py") if "__pycache__" not in p.parts]
    files += [(f"templates/{p.relative_to(templates)}", p) for p in templates.rglob("*") if p.is_file()]
    return sorted(files)


def _digest(files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256()
    for name, path in files:
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def source_hash(root: Path = REPO_ROOT) -> str:
    """Hash of the package sources, templates and pyproject.toml of a source tree."""
    h = hashlib.sha256(_digest(_package_files(root / "ipphpc", root / "templates")).encode())
    h.update((root / "pyproject.toml").read_bytes())
    return h.hexdigest()


def _installed_package() -> Path | None:
    found = glob.glob(str(CHROOT) + VENV_IN + "/lib/python3*/site-packages/ipphpc/__init__.py")
    return Path(found[0]).parent if found else None


def _installed_matches_source() -> bool:
    """True when the chroot's installed package has exactly this tree's files (another
    tree, installed by hand or from another checkout, would not)."""
    pkg = _installed_package()
    if pkg is None:
        return False
    src = REPO_ROOT / "ipphpc"
    installed = [(n, p) for n, p in _package_files(pkg, pkg / "templates") if not n.startswith("ipphpc/templates/")]
    return _digest(installed) == _digest(_package_files(src, REPO_ROOT / "templates"))


def ensure_project_in_chroot() -> None:
    """Install this source tree into the chroot venv unless it is there already.

    Holds an exclusive lock so that concurrent test runs install once, one after the other.
    """
    SHARED_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            stamp = STAMP_FILE.read_text().strip() if STAMP_FILE.exists() else ""
            # a file edited while the tree is copied leaves a mismatch: then copy again
            for _ in range(3):
                want = source_hash()
                if stamp == want and _installed_matches_source():
                    return
                _install()
                if _installed_matches_source():
                    tmp = STAMP_FILE.with_suffix(".tmp")
                    tmp.write_text(want + "\n")
                    tmp.replace(STAMP_FILE)
                    return
            raise RuntimeError(f"after install-project the chroot's ipphpc still differs from {REPO_ROOT}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install() -> None:
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT), "install-project", str(REPO_ROOT)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"installing {REPO_ROOT} into the HTCondor chroot failed "
                           f"(exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
