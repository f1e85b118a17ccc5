"""Engines inside a Podman image (.ci/services/podman.sh builds it): started locally and by Slurm.

Each task checks from the inside that it runs in the image (the image's interpreter, podman's
marker file, no host source tree), and `rc.engines` must name the image. After each test no
container of the test's cluster may be left, running or stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from ipphpc import HPCCluster

from ..services import declared, require

pytestmark = [pytest.mark.podman, require("podman", "run `bash .ci/services/podman.sh` first")]

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # engines cannot import this test module

IMAGE = os.environ.get("IPPHPC_PODMAN_IMAGE", "localhost/ipphpc-engine:ci")
HOST_SOURCE = str(Path(__file__).resolve().parents[2])


def inside() -> dict[str, Any]:
    """What a task sees of where it runs."""
    import os
    import sys

    import numpy
    return {"python": sys.executable, "containerenv": os.path.exists("/run/.containerenv"),
            "container_var": os.environ.get("container"), "image_var": os.environ.get("IPPHPC_CONTAINER_IMAGE"),
            "sees_host_source": os.path.exists(HOST_SOURCE), "numpy": float(numpy.arange(4).sum()),
            "slurm_task": os.environ.get("SLURM_ARRAY_TASK_ID")}


def containers_of(cluster_id: str) -> list[str]:
    r = subprocess.run(["podman", "ps", "-a", "--filter", f"label=ipphpc.cluster_id={cluster_id}",
                        "--format", "{{.ID}} {{.Status}}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.fixture
def cluster_id(request: pytest.FixtureRequest) -> Any:
    """A cluster id for the test; afterwards none of its containers may be left (removed if so)."""
    cid = f"ctr-{request.node.name[:20]}-{os.urandom(3).hex()}"
    yield cid
    deadline = time.monotonic() + 20  # --rm removes a container right after its engine exits
    while containers_of(cid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = containers_of(cid)
    if left:
        subprocess.run(["podman", "rm", "-f", *[line.split()[0] for line in left]], capture_output=True, timeout=60)
    assert not left, f"containers left after the test: {left}"


def check_engines_in_image(rc: Any, n: int) -> list[dict[str, Any]]:
    seen = rc[:].apply_sync(inside)
    assert len(seen) == n
    for s in seen:
        assert s["python"].startswith("/opt/ipphpc/"), s  # the image's venv, not the host's interpreter
        assert s["containerenv"] and s["container_var"] == "podman", s
        assert s["image_var"] == IMAGE and not s["sees_host_source"] and s["numpy"] == 6.0, s
    infos = [rc.engines[i] for i in rc.ids]
    assert [(e["container"], e["container_runtime"]) for e in infos] == [(IMAGE, "podman")] * n, infos
    return seen


def test_local_engines_run_in_the_image(tmp_path: Path, cluster_id: str) -> None:
    cluster = HPCCluster(n=2, container=IMAGE, container_runtime="podman", profile_dir=str(tmp_path / "profile"),
                         cluster_id=cluster_id, engine_timeout=90, shutdown_atexit=False)
    with cluster as rc:
        check_engines_in_image(rc, 2)
        assert rc.load_balanced_view().map_sync(lambda x: x * x, range(50)) == [x * x for x in range(50)]
        # the container has a /dev/shm of its own: large frames go through the sockets, and arrive whole
        assert all("shm" not in rc.engines[i] for i in rc.ids)
        import numpy as np
        a = np.arange(3 * 2**20 // 8, dtype=np.float64)
        assert np.array_equal(rc[rc.ids[0]].apply_sync(lambda x: x * 2, a), a * 2)
        assert len(containers_of(cluster_id)) == 1  # `ipphpc engine -n 2`: one container, two engines
    assert not cluster.engine_sets


def test_wrong_image_fails_with_podmans_reason(tmp_path: Path, cluster_id: str) -> None:
    missing = "localhost/ipphpc-no-such-image:none"
    cluster = HPCCluster(n=1, container=missing, container_runtime="podman", profile_dir=str(tmp_path / "profile"),
                         cluster_id=cluster_id, engine_timeout=60, shutdown_atexit=False)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        with cluster:
            pass
    assert time.monotonic() - t0 < 45, "a missing image must fail at once, not after the engine timeout"
    assert "no more will come" in str(e.value) and "ipphpc-no-such-image" in str(e.value), str(e.value)


def test_sigterm_to_podman_ends_the_container(cluster_id: str) -> None:
    """What a cancelled batch job or a stopped launcher does: SIGTERM to `podman run`, nothing more."""
    from ipphpc.cluster.container import wrap_engine_command
    cmd = wrap_engine_command(["python3", "-c", "import time; time.sleep(120)", "--cluster-id", cluster_id],
                              IMAGE, runtime="podman")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not any(" Up " in f" {line} " for line in containers_of(cluster_id)):
            assert proc.poll() is None and time.monotonic() < deadline, "the container did not start"
            time.sleep(0.2)
        proc.terminate()
        assert proc.wait(timeout=20) != 0  # the engine died of the forwarded signal
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.slurm
@pytest.mark.skipif(not declared("slurm"), reason="slurm not declared in IPPHPC_CI_SERVICES; "
                    "run `bash .ci/services/slurm.sh` first")
def test_slurm_array_engines_run_in_the_image(tmp_path: Path, cluster_id: str) -> None:
    cluster = HPCCluster(scheduler="slurm", n=2, walltime="0:10:00", container=IMAGE, container_runtime="podman",
                         profile_dir=str(tmp_path / "profile"), cluster_id=cluster_id, engine_timeout=120,
                         shutdown_atexit=False)
    with cluster as rc:
        (job,) = cluster.engine_sets[0].job_ids
        seen = check_engines_in_image(rc, 2)
        # the scheduler's variables reached the engines inside the containers
        assert sorted(s["slurm_task"] for s in seen) == ["0", "1"], seen
        infos = [rc.engines[i] for i in rc.ids]
        assert sorted((e["scheduler"], e["job_id"], e["array_index"]) for e in infos) == \
            [("slurm", job, 0), ("slurm", job, 1)], infos
        assert rc.load_balanced_view().map_sync(lambda x: x + 1, range(20)) == list(range(1, 21))
