"""The task database inside a real controller: restarts after SIGKILL, offline HDF5, bad input, a full disk."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ipphpc
from ipphpc import paths
from ipphpc.error import TaskAborted
from tests.core.helpers import PY, Spawner, kill_matching, ship_by_value, wait_for_file, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def spawner(tmp_path: Path):
    sp = Spawner(tmp_path)
    yield sp
    sp.cleanup()
    left = kill_matching(str(tmp_path.resolve()))
    assert not left, f"processes survived their test: {left}"


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    return paths.profile_dir(profile_dir=str(tmp_path / "profile"))


def square(x):
    return x * x


def array(n):
    import numpy as np
    return np.full(n, 7.0)


def _client(pdir: Path, cid: str, engines: int = 2) -> ipphpc.Client:
    rc = ipphpc.Client(profile_dir=str(pdir), cluster_id=cid, timeout=20)
    rc.wait_for_engines(engines, timeout=30)
    return rc


@pytest.mark.parametrize("kind", ["sqlite", "hdf5"])
def test_restart_after_sigkill_keeps_results_and_marks_in_flight(kind, spawner, pdir, tmp_path):
    args = (f"--db={kind}", "--Controller.heartbeat_period=0.25")
    ctl, _, _ = spawner.controller(pdir, "rs", *args)
    spawner.engine(pdir, "rs", "-n", "2", "--controller-timeout=60")
    release = tmp_path / "release"
    with _client(pdir, "rs") as rc:
        lv = rc.load_balanced_view()
        done = lv.map_async(square, range(12), chunksize=1)
        assert done.get(20) == [x * x for x in range(12)]
        flying = lv.apply_async(wait_for_file, str(release), 60)
        wait_until(lambda: rc.queue_status()[0]["tasks"] + rc.queue_status()[1]["tasks"] == 1, 10,
                   what="the long task on an engine")
        time.sleep(0.3)  # the writer thread batches every 20 ms
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait(10)
        done_ids, fly_id = list(done.msg_ids), flying.msg_ids[0]
    spawner.controller(pdir, "rs", "--reuse", *args)
    with _client(pdir, "rs", engines=1) as rc2:  # the busy engine registers again once its task ends
        assert rc2.get_result(done_ids).get(10) == [[x * x] for x in range(12)]
        with pytest.raises(TaskAborted, match="in flight"):
            rc2.get_result(fly_id).get(10)
        assert rc2.db_query({"msg_id": fly_id}, keys=["error"])[0]["error"]["ename"] == "TaskAborted"
        assert set(done_ids) | {fly_id} <= set(rc2.hub_history())
        release.touch()
        assert rc2.load_balanced_view().apply_sync(square, 9) == 81


OFFLINE_READER = r'''
import json, pickle, sys
import h5py
path = sys.argv[1]
with open(sys.argv[2]) as w:
    want = json.load(w)
with h5py.File(path, "r") as f:
    assert f.attrs["format"] == "ipphpc-taskdb", dict(f.attrs)
    r, blob = f["results"], f["blob"]
    ids = [m.decode() for m in r["msg_id"][()]]
    found = {}
    for i, mid in enumerate(ids):
        lens = [int(n) for n in r["result_buffers_len"].asstr()[i].split(",") if n]
        at = int(r["result_buffers_at"][i])
        data = blob[at:at + sum(lens)].tobytes()
        frames, o = [], 0
        for n in lens:
            frames.append(data[o:o + n]); o += n
        meta = json.loads(frames[0])
        value = pickle.loads(frames[1], buffers=frames[2:])
        found[mid] = value.tolist() if hasattr(value, "tolist") else value
        assert meta["completed"] >= meta["started"]
assert "ipphpc" not in sys.modules
missing = [m for m in want if m not in found]
assert not missing, missing
bad = [m for m, v in want.items() if found[m] != v]
assert not bad, bad
print(len(found))
'''


def test_hdf5_file_is_readable_offline_with_h5py_alone(spawner, pdir, tmp_path):
    path = tmp_path / "scratch" / "run7.h5"
    ctl, _, _ = spawner.controller(pdir, "h5", "--db=hdf5", f"--db-file={path}")
    spawner.engine(pdir, "h5", "-n", "2")
    with _client(pdir, "h5") as rc:
        lv = rc.load_balanced_view()
        ars = [lv.apply_async(square, i) for i in range(30)] + [lv.apply_async(array, 40_000)]
        values = [ar.get(20) for ar in ars]
        want = {ar.msg_ids[0]: (v.tolist() if hasattr(v, "tolist") else v) for ar, v in zip(ars, values)}
        rc.shutdown(hub=True)
    ctl.wait(20)
    import json
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(want))
    out = subprocess.run([PY, "-c", OFFLINE_READER, str(path), str(expected)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 31


def test_unwritable_db_file_fails_at_start(spawner, pdir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = blocker / "tasks.sqlite"
    p = spawner.ipphpc("controller", "--profile-dir", str(pdir), "--cluster-id", "bad", "--db=sqlite",
                       f"--db-file={bad}")
    assert p.wait(30) != 0
    err = Spawner.output(p)[1].strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "cannot open the sqlite task database" in err[0], err
    assert not paths.connection_file(pdir, "client", "bad").exists()


def test_unknown_backend_is_one_line(spawner, pdir):
    p = spawner.ipphpc("controller", "--profile-dir", str(pdir), "--db=postgres")
    assert p.wait(30) == 2
    err = Spawner.output(p)[1].strip().splitlines()
    assert len(err) == 1 and "unknown task database 'postgres'" in err[0] and "dict, sqlite, hdf5" in err[0]


def test_submit_passes_db_flags_to_its_controller(tmp_path):
    from ipphpc import HPCCluster
    from ipphpc.cli.main import build_parser, to_config
    ns, extra = build_parser().parse_known_args(["submit", "-n", "2", "--db=SQLiteDB", f"--db-file={tmp_path}/r.db",
                                                 "--profile-dir", str(tmp_path / "p")])
    cmd = HPCCluster(config=to_config(ns, extra, ("HPCCluster", "Controller", "Engine")))._controller_cmd()
    assert "--Controller.db_class='sqlite'" in cmd and f"--Controller.db_file='{tmp_path}/r.db'" in cmd


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (needs root); unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["sqlite", "hdf5"])
def test_full_disk_keeps_routing_and_logs_once(kind, spawner, pdir, tiny_fs):
    ctl, _, _ = spawner.controller(pdir, "full", f"--db={kind}", f"--db-file={tiny_fs / 'tasks.db'}",
                                   "--log-to-stderr")
    spawner.engine(pdir, "full", "-n", "2")
    with _client(pdir, "full") as rc:
        lv = rc.load_balanced_view()
        for _ in range(3):  # 60 results of 80 KB: several times what the filesystem holds
            ars = [lv.apply_async(array, 10_000) for _ in range(20)]
            assert all(ar.get(30).shape == (10_000,) for ar in ars)
            time.sleep(0.1)
        assert lv.apply_sync(square, 5) == 25  # still routing
        rc.shutdown(hub=True)
    ctl.wait(20)
    log = Spawner.output(ctl)[1]
    errors = [ln for ln in log.splitlines() if "cannot record tasks" in ln]
    assert len(errors) == 1, log[-3000:]
    assert "ERROR" in errors[0] and ("full" in errors[0].lower() or "space" in errors[0].lower()), errors[0]


ship_by_value(__name__)
_ = sys
