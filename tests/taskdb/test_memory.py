"""Controller memory after a large map: back near its idle size, whatever the backend records."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

import ipphpc
from ipphpc import paths
from tests.core.helpers import Spawner, kill_matching, ship_by_value, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
N = 200_000
SLACK = 50 * 2**20


def noop(x):
    return x


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def spawner(tmp_path: Path):
    sp = Spawner(tmp_path)
    yield sp
    sp.cleanup()
    left = kill_matching(str(tmp_path.resolve()))
    assert not left, f"processes survived their test: {left}"


# routing alone, the file backend most users choose, and dict, which keeps records up to its byte budget
# by design (16 MiB here) and must hold nothing more: the ids of the ~195,000 records it culled once cost
# 40 MiB; hdf5 (and every backend at a million tasks) is measured by bench/taskdb_bench.py
@pytest.mark.parametrize("kind,extra", [("none", 0), ("sqlite", 0), ("dict", 16 * 2**20)])
def test_rss_returns_after_a_200k_task_map(kind, extra, spawner, tmp_path):
    pdir = paths.profile_dir(profile_dir=str(tmp_path / "profile"))
    ctl, _, _ = spawner.controller(pdir, "mem", f"--db={kind}", f"--DictDB.size_limit={16 * 2**20}")
    spawner.engine(pdir, "mem", "-n", "2")
    with ipphpc.Client(profile_dir=str(pdir), cluster_id="mem") as rc:
        rc.wait_for_engines(2, timeout=30)
        lv = rc.load_balanced_view()
        lv.map_sync(noop, range(2000), chunksize=1)  # warm: imports, buffers, the writer thread
        time.sleep(1.5)
        idle = rss(ctl.pid)
        assert lv.map_sync(noop, range(N), chunksize=1)[-1] == N - 1
        rc.purge_local_results("all")
        # the writer drains and, once idle, the controller gives the heap back (next heartbeat)
        after = wait_until(lambda: (lambda r: r if r - idle < SLACK + extra else None)(rss(ctl.pid)), 60,
                           interval=0.5, what=f"controller RSS within {(SLACK + extra) >> 20} MiB of idle "
                                              f"({idle >> 20} MiB), last {rss(ctl.pid) >> 20} MiB")
        print(f"{kind}: idle {idle / 2**20:.1f} MiB, after {N} tasks {after / 2**20:.1f} MiB")
        if kind != "none":
            assert len(rc.db_query({"completed": {"$ne": None}}, keys=["msg_id"])) >= (N if kind != "dict" else 1)


ship_by_value(__name__)
