"""Fixtures for the task-database tests: a store of each backend, and a real cluster of each backend.

The mongodb backend runs against a real server when IPPHPC_TEST_MONGODB_URL names one; otherwise
against the in-process double of `mongo_double` (no MongoDB server can be installed here), with
its controller running in a thread of the test process so that the double can stand in for pymongo.
"""
from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from ipphpc import paths
from tests.core.helpers import Spawner, kill_matching, ship_by_value, wait_until

BACKENDS = ["dict", "sqlite", "hdf5", "mongodb", "none"]
MONGO_URL = os.environ.get("IPPHPC_TEST_MONGODB_URL", "")


@pytest.fixture(autouse=True)
def _private_home(ipphpc_session_home):
    """Every test runs under the run's private IPPHPC_DIR."""


def make_store(kind: str, where: Path, name: str = "tasks"):
    """A store of `kind` (mongodb: the real server if configured, else the double)."""
    from ipphpc.controller.taskdb.hdf5 import HDF5Store
    from ipphpc.controller.taskdb.memory import DictStore
    from ipphpc.controller.taskdb.mongo import MongoStore
    from ipphpc.controller.taskdb.sqlite import SQLiteStore
    if kind == "dict":
        return DictStore()
    if kind == "sqlite":
        return SQLiteStore(where / f"{name}.sqlite")
    if kind == "hdf5":
        return HDF5Store(where / f"{name}.h5")
    if MONGO_URL:
        return MongoStore(MONGO_URL, "ipphpc_test", f"{name}-{os.getpid()}-{id(where)}")
    from .mongo_double import Client
    return MongoStore(client=Client(), collection=name)


class InThreadController:
    """A controller served by a thread of this process (for the mongodb double)."""

    def __init__(self, pdir: Path, cluster_id: str, args: dict):
        from traitlets.config import Config

        from ipphpc.controller.controller import Controller
        cfg = Config()
        cfg.Controller.profile_dir = str(pdir)
        cfg.Controller.cluster_id = cluster_id
        cfg.Controller.heartbeat_period = 0.25
        for k, v in args.items():
            cfg.Controller[k] = v
        self.ctl = Controller(config=cfg)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.ctl.run()), daemon=True)
        self.thread.start()
        wait_until(lambda: self.ctl.client_file.exists() and self.ctl.engine_file.exists(), 20,
                   what="in-thread controller files")

    def poll(self):
        return None if self.thread.is_alive() else 0


def start_cluster(kind: str, root: Path, sp: Spawner, cluster_id: str = "tdb", extra: tuple = ()):
    """A controller with backend `kind` and two engines; returns (controller, engines, profile dir)."""
    pdir = paths.profile_dir(profile_dir=str(root / "profile"))
    if kind == "mongodb" and not MONGO_URL:
        ctl = InThreadController(pdir, cluster_id, {"db_class": "mongodb"})
    else:
        args = [f"--db={kind}", "--Controller.heartbeat_period=0.25", *extra]
        if kind == "mongodb":
            args.append(f"--MongoDB.url={MONGO_URL}")
        ctl, _, _ = sp.controller(pdir, cluster_id, *args)
    eng = sp.engine(pdir, cluster_id, "-n", "2")
    return ctl, eng, pdir


@pytest.fixture(scope="module", params=BACKENDS)
def backend_cluster(request, tmp_path_factory, ipphpc_session_home):
    """(backend name, profile dir, cluster id) of a running cluster recording with that backend."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"tdb-{kind}").resolve()
    sp = Spawner(root)
    patch = pytest.MonkeyPatch()
    if kind == "mongodb" and not MONGO_URL:
        import pymongo

        from .mongo_double import Client
        double = Client()
        patch.setattr(pymongo, "MongoClient", lambda *a, **k: double)
    ctl = None
    try:
        ctl, _, pdir = start_cluster(kind, root, sp)
        yield kind, pdir, "tdb"
    finally:
        if isinstance(ctl, InThreadController):
            import ipphpc
            try:
                with ipphpc.Client(profile_dir=str(pdir), cluster_id="tdb") as rc:
                    rc.shutdown(hub=True)
            finally:
                ctl.thread.join(10)
        sp.cleanup()
        patch.undo()
        left = kill_matching(str(root))
        assert not left, f"processes survived: {left}"


ship_by_value(__name__)
