"""`ipphpc controller`: run a controller in the foreground."""
from __future__ import annotations

import asyncio

from traitlets.config import Config

from .. import paths
from ..config import load_profile_config, setup_logging
from .controller import Controller
from .memtrim import tune_gc


def run_controller(config: Config, log_to_stderr: bool = False, log_level: str = "INFO") -> int:
    pdir = paths.profile_dir(config.Controller.get("profile", "default"),
                             config.Controller.get("profile_dir") or None)
    cfg = load_profile_config(pdir, "controller")
    cfg.merge(config)
    ctl = Controller(config=cfg)
    ctl.log = setup_logging(None if log_to_stderr else paths.log_file(pdir, "ipcontroller", ctl.cluster_id),
                            log_level, stream=log_to_stderr)
    tune_gc()
    asyncio.run(ctl.run())
    return 0
