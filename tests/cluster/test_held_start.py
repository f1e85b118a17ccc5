"""HPCCluster.start_and_connect with engines Slurm holds: it gives up after held_grace and leaves the jobs
queued, as its other failures do (the `with` form stops them: see tests/schedulers/test_every_scheduler.py);
the release command it names lets the same cluster go on."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from traitlets.config import Config

from ipphpc import HPCCluster
from ipphpc.cluster.cluster import JobsHeld

from ..schedulers.sched_facts import Slurm, check_service
from ..schedulers.scheduler_support import stop_if_running


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    check_service("slurm")
    facts = Slurm(tmp_path.resolve())
    facts.setup(monkeypatch)
    yield facts
    facts.nothing_left()


@pytest.mark.slurm
def test_start_and_connect_leaves_held_jobs_for_a_release(slurm: Slurm) -> None:
    """JobsHeld names the job, HELD and `scontrol release`, says the jobs are left queued and how to stop them;
    running that very command lets the engines start and register with the cluster's client."""
    config = Config()
    config.BatchEngineSetLauncher.submit_args = ["--hold"]
    cluster = HPCCluster(scheduler="slurm", n=2, walltime="0:10:00", config=config,
                         profile_dir=str(slurm.root / "profile"), cluster_id="later", engine_timeout=60,
                         held_grace=1, shutdown_atexit=False)
    try:
        with pytest.raises(JobsHeld) as info:
            cluster.start_and_connect_sync()
        text = str(info.value)
        found = re.fullmatch(r'cluster later: engines job (\S+) elements 0-1 HELD for \d+ s '
                             r'\(Slurm says "JobHeldUser"\); `(.+?)` releases it; its jobs are left queued: '
                             r'release them to go on, or `ipphpc stop later` cancels them', text)
        assert found, text
        job, release = found.groups()
        assert set(slurm.queued(job).values()) == {slurm.held_in_queue}
        assert release == f"scontrol release {job}"
        subprocess.run(shlex.split(release), check=True, timeout=30)
        cluster.client.wait_for_engines(2, timeout=60)
        assert sorted(e["array_index"] for e in cluster.client.engines.values()) == [0, 1]
    finally:
        stop_if_running(cluster)
    slurm.left_queue(job)
