"""GPUs on a real Slurm: .ci/services/slurm.sh gives its node 4 stand-in GPUs (character devices
listed in gres.conf), so Slurm allocates them and sets CUDA_VISIBLE_DEVICES as it would on a GPU
node. Two engines share each element; each must see its own device, one of those Slurm gave the
element, and the element must ask for its engines' devices together."""
from __future__ import annotations

import os

import pytest

from ipphpc import HPCCluster
from tests.core.helpers import ship_by_value

from .sched_facts import Sched


def _devices() -> dict[str, str]:
    import os
    return {k: os.environ.get(k, "") for k in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                                               "SLURM_JOB_GPUS", "SLURM_ARRAY_TASK_ID")}


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_engines_of_one_element_get_their_own_gpu(sched: Sched) -> None:
    gpus = int(os.environ.get("IPPHPC_SLURM_GPUS", "0"))
    assert gpus >= 4, "the CI Slurm has no GPUs: rerun `bash .ci/services/slurm.sh`"
    profile = sched.profile(sched.root / "profile", "gpus1")
    cluster = HPCCluster(scheduler=sched.scheduler, n=4, engines_per_task=2, gpus=1, walltime="0:05:00",
                         profile_dir=str(profile), cluster_id="gpus1", engine_timeout=120,
                         shutdown_atexit=False, **sched.cluster_options())
    with cluster as rc:
        seen = rc[:].apply_sync(_devices)
    by_element: dict[str, list[dict[str, str]]] = {}
    for d in seen:
        by_element.setdefault(d["SLURM_ARRAY_TASK_ID"], []).append(d)
    assert sorted(by_element) == ["0", "1"], seen
    for element, engines in by_element.items():
        granted = engines[0]["SLURM_JOB_GPUS"].split(",")
        assert len(granted) == 2, engines  # 1 GPU per engine x 2 engines, asked once per element
        mine = [e["CUDA_VISIBLE_DEVICES"] for e in engines]
        assert sorted(mine) == sorted(granted), (element, engines)  # one each, none shared
        assert all(e["ROCR_VISIBLE_DEVICES"] == e["CUDA_VISIBLE_DEVICES"] for e in engines), engines


ship_by_value(__name__)
