"""`ipphpc engine`: start one or several engines in this process group.

With `-n k`, the interpreter starts and imports once and then forks k-1 siblings; on a
shared filesystem that is k times fewer imports hitting the metadata server.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .. import paths
from ..config import load_profile_config, profile_config_files, setup_logging
from .engine import Engine, RegistrationFailed
from .origin import engine_origin


def run_engines(flags: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]] | None = None, n: int = 1,
                log_to_stderr: bool = False, log_level: str = "INFO", argv: list[str] | None = None) -> int:
    """Run n engines (this process and n-1 forked siblings), with the settings of the command's flags, then of
    `extra` ({Class: {trait: value}}, from `--Class.trait=value`); `argv`, the command's arguments, lets an
    engine asked to restart execute a fresh interpreter in its own process, under the same id."""
    engine, pdir = make_engine(flags, extra or {})
    cid = engine.cluster_id
    boot_log = setup_logging(None if log_to_stderr else _log_path(pdir, cid), log_level, stream=log_to_stderr)
    engine.log = boot_log
    try:
        info = engine.prepare()
    except Exception as e:  # noqa: BLE001 - the reason goes to the log and stderr, then a non-zero exit
        boot_log.error("%s", e)
        print(f"ipphpc engine: {e}", file=sys.stderr)
        return 2
    # siblings forked before a restart of this process: still ours to wait for
    children: list[int] = [int(p) for p in os.environ.pop("IPPHPC_ENGINE_CHILDREN", "").split(",") if p]
    for _ in range(n - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            _relog(pdir, cid, log_to_stderr, log_level)
            break
        children.append(pid)
    engine.log = logging.getLogger("ipphpc")
    try:
        code = asyncio.run(engine.run(info))
    except RegistrationFailed as e:
        engine.log.error("%s", e)
        print(f"ipphpc engine: {e}", file=sys.stderr)
        code = 2
    if engine.restart and argv is not None:
        _restart(engine, argv, children)
    for pid in children:
        try:
            _, status = os.waitpid(pid, 0)
            code = code or os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass
    return code


def make_engine(flags: dict[str, dict[str, Any]], extra: dict[str, dict[str, Any]]) -> tuple[Engine, Path]:
    """The engine the flags and configuration ask for, and its profile directory. Profile files and
    `--Class.trait=value` settings are read through traitlets, as every ipphpc process reads them; an engine
    given flags only does without it."""
    own = flags.get("Engine", {})
    where = {**own, **extra.get("Engine", {})}
    pdir = paths.profile_dir(str(where.get("profile", "default")), str(where.get("profile_dir") or "") or None)
    if not extra and not profile_config_files(pdir, "engine"):
        return Engine(**own), pdir
    from traitlets.config import Config
    cfg = load_profile_config(pdir, "engine")
    cfg.merge(Config(flags))
    cfg.merge(Config(extra))
    return Engine(config=cfg), pdir


def restart_argv(argv: list[str], engine_id: int) -> list[str]:
    """The `ipphpc engine` arguments for one engine that keeps its id: -n and any id dropped, the id added."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("-n", "--n", "--engine-id"):
            skip = True
            continue
        if a.startswith(("--n=", "--engine-id=", "--Engine.engine_id=")) or (a.startswith("-n") and a[2:].isdigit()):
            continue
        out.append(a)
    return [*out, "--engine-id", str(engine_id)]


def _restart(engine: Engine, argv: list[str], children: list[int]) -> None:
    """Replace this process's image by a fresh `ipphpc engine`: same pid (so a job, a launcher or mpiexec
    keeps tracking it), new interpreter, namespace and startup script, same engine id."""
    args = [sys.executable, "-m", "ipphpc", *restart_argv(argv, engine.id)]
    if children:
        os.environ["IPPHPC_ENGINE_CHILDREN"] = ",".join(map(str, children))
    engine.log.info("restarting: %s", " ".join(args))
    for h in logging.getLogger("ipphpc").handlers:
        h.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, args)


def _relog(pdir, cid: str, log_to_stderr: bool, level: str) -> None:
    logger = logging.getLogger("ipphpc")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    setup_logging(None if log_to_stderr else _log_path(pdir, cid), level, stream=log_to_stderr)


def _log_path(pdir, cid: str):
    """Named by cluster, job, element, host and pid: engines of many hosts share one log folder."""
    return paths.engine_log_file(pdir, cid, engine_origin())
