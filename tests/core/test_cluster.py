"""HPCCluster: start, connect, re-attach and stop, leaving no process behind."""
from __future__ import annotations

import asyncio
import json
import os

from ipphpc import HPCCluster, paths
from ipphpc.cluster.cluster import list_cluster_files

from .helpers import alive, kill_matching, procs_matching, wait_until


def _cluster_pids(c: HPCCluster, rc) -> list[int]:
    return [c.controller_pid, *rc[:].apply_sync(os.getpid)]


def test_context_manager_leaves_nothing(ipphpc_dir, tmp_path):
    """`with HPCCluster(n=2) as rc` gives a connected client; leaving the block stops every process and
    removes the cluster and connection files."""
    c = HPCCluster(n=2, shutdown_atexit=False)
    assert c.pdir == paths.profile_dir() and str(ipphpc_dir) in str(c.pdir)
    with c as rc:
        assert len(rc.ids) == 2
        pids = _cluster_pids(c, rc)
        assert all(alive(p) for p in pids)
        assert c.cluster_file.exists() and c.client_file.exists()
        assert procs_matching(str(c.pdir))
    assert not any(alive(p) for p in pids)
    assert procs_matching(str(c.pdir)) == []
    assert not c.cluster_file.exists() and not c.client_file.exists()
    assert not paths.connection_file(c.pdir, "engine", c.cluster_id).exists()


def test_start_and_connect_sync_and_cluster_file(ipphpc_dir):
    """start_and_connect_sync waits for the engines; the cluster file describes the running cluster
    and disappears on stop."""
    c = HPCCluster(n=1, shutdown_atexit=False, cluster_id="explicit-id")
    try:
        rc = c.start_and_connect_sync()
        assert rc.ids and rc.cluster_id == "explicit-id"
        d = json.loads(c.cluster_file.read_text())
        assert d["cluster"]["cluster_id"] == "explicit-id" and d["cluster"]["n"] == 1
        assert d["controller"]["pid"] == c.controller_pid
        assert c.cluster_file in list_cluster_files(c.pdir)
        assert rc[:].apply_sync(lambda: 1) == [1]
    finally:
        c.stop_cluster_sync()
    assert not c.cluster_file.exists()
    assert procs_matching(str(c.pdir)) == []


def test_from_file_reattaches_and_stops(ipphpc_dir):
    """HPCCluster.from_file(cluster_id=...) finds a running cluster and stops all of its processes."""
    c = HPCCluster(n=2, shutdown_atexit=False)
    rc = c.start_and_connect_sync()
    pids = _cluster_pids(c, rc)
    try:
        again = HPCCluster.from_file(cluster_id=c.cluster_id)
        assert again.cluster_id == c.cluster_id and again.controller_pid == c.controller_pid
        assert [e.pid for e in again.engine_sets] == [e.pid for e in c.engine_sets]
        newest = HPCCluster.from_file()
        assert newest.cluster_id == c.cluster_id
        rc2 = again.connect_client_sync()
        assert sorted(rc2.ids) == sorted(rc.ids)
        again.stop_cluster_sync()
        wait_until(lambda: not any(alive(p) for p in pids), 10, what="the cluster's processes to exit")
        assert not c.cluster_file.exists()
        assert procs_matching(str(c.pdir)) == []
    finally:
        c.stop_cluster_sync()  # reaps the children this process started


def test_async_context_manager(ipphpc_dir):
    """`async with HPCCluster(...) as rc` works from a running event loop; AsyncResults are awaitable."""
    c = HPCCluster(n=2, shutdown_atexit=False)

    async def main():
        async with c as rc:
            pids = await rc[:].apply_async(os.getpid)
            return pids, c.controller_pid
    pids, ctl = asyncio.run(main())
    assert len(set(pids)) == 2
    assert not any(alive(p) for p in [ctl, *pids])
    assert procs_matching(str(c.pdir)) == []
    assert not c.cluster_file.exists()


def test_two_clusters_share_a_profile(ipphpc_dir):
    """Two clusters with different ids run side by side in one profile and stop independently."""
    a = HPCCluster(n=1, shutdown_atexit=False)
    b = HPCCluster(n=1, shutdown_atexit=False)
    try:
        ra, rb = a.start_and_connect_sync(), b.start_and_connect_sync()
        assert a.cluster_id != b.cluster_id
        assert ra[:].apply_sync(os.getpid) != rb[:].apply_sync(os.getpid)
        a.stop_cluster_sync()
        assert rb[:].apply_sync(lambda: "b alive") == ["b alive"]
        assert [p.name for p in list_cluster_files(b.pdir)] == [b.cluster_file.name]
    finally:
        a.stop_cluster_sync()
        b.stop_cluster_sync()
    assert procs_matching(str(a.pdir)) == []


def test_cluster_stopped_at_interpreter_exit(ipphpc_dir):
    """A script that starts a cluster and exits without stopping it leaves no process behind."""
    import subprocess

    from .helpers import PY
    code = ("from ipphpc import HPCCluster\n"
            "c = HPCCluster(n=2)\n"
            "rc = c.start_and_connect_sync()\n"
            "print(c.controller_pid, *rc[:].apply_sync(__import__('os').getpid))\n")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pids = [int(x) for x in r.stdout.split()]
    try:
        assert len(pids) == 3
        wait_until(lambda: not any(alive(p) for p in pids), 6, what="the cluster to stop at exit")
        assert procs_matching(str(paths.profile_dir())) == []
        assert "Traceback" not in r.stderr, r.stderr
    finally:
        kill_matching(str(paths.profile_dir()))
