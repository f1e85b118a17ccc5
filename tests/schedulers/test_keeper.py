"""A cluster started by `ipphpc submit` (which exits) is kept by its keeper on the real Slurm: an element
cancelled by hand is replaced by a new array with the cluster's own resources, `ipphpc scale` from another
shell adds engines with them too, and `ipphpc stop` ends the keeper and cancels every array."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from ipphpc import Client
from ipphpc.cluster import keeper

from .sched_facts import Sched
from .scheduler_support import run_ipphpc, wait_until


def time_limit(job: str) -> str:
    """Slurm's own word on the job's time limit (one line per element)."""
    out = subprocess.run(["squeue", "-h", "-j", job.split("_")[0], "-o", "%l"], capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert out, f"squeue shows nothing of job {job}"
    return out[0]


@pytest.mark.parametrize("sched", ["slurm"], indirect=True)
def test_submitted_cluster_is_kept_at_its_size_with_its_resources(sched: Sched) -> None:
    pdir = sched.root / "ipphpc" / "profile_default"
    sched.profile(pdir, "kept")
    record = lambda: json.loads((pdir / "security" / "cluster-kept.json").read_text())  # noqa: E731
    stopped = False
    try:
        r = run_ipphpc("submit", "--scheduler", sched.scheduler, "-n", "2", "--walltime", "0:07:00", "--wait",
                       "--timeout", "240", "--cluster-id", "kept", "--HPCCluster.replace_interval=0.5",
                       *sched.cli_options())
        assert r.returncode == 0, r.stderr
        assert "replaces lost elements" in r.stderr, r.stderr
        (job,) = re.findall(rf"^submitted {sched.submitted_as} job\(s\) (\S+)$", r.stderr, re.MULTILINE)
        pid = record()["keeper"]["pid"]
        assert keeper.alive(pid)
        with Client() as rc:
            rc.wait_for_engines(2, timeout=60)
            first = {e: i["job_id"] for e, i in rc.engines.items()}
            victim = next(e for e, i in rc.engines.items() if i["array_index"] == 0)
            sched.cancel(f"{job}_0")
            wait_until(lambda: len(record()["engine_sets"]) == 2 and len(rc.ids) == 2 and victim not in rc.ids, 120,
                       what="the keeper to replace the cancelled element")
            new = record()["engine_sets"][1]
            assert new["n"] == 1 and len(new["submissions"]) == 1
            (replacement,) = [s["job_id"] for s in new["submissions"]]
            assert replacement != job and {i["job_id"] for i in rc.engines.values()} != set(first.values())
            assert time_limit(replacement) == time_limit(job) == "7:00"
            scale = run_ipphpc("scale", "kept", "3")
            assert scale.returncode == 0 and "added 1 engine(s)" in scale.stdout, scale.stderr
            rc.wait_for_engines(3, timeout=120)
            (added,) = [s["job_id"] for s in record()["engine_sets"][2]["submissions"]]
            assert time_limit(added) == "7:00"
            log = (pdir / "log" / "ipkeeper-kept.out").read_text()
            assert "replaced 1 lost element(s)" in log, log
        stop = run_ipphpc("stop", "kept")
        assert stop.returncode == 0 and "cluster kept: stopped" in stop.stdout, stop.stdout + stop.stderr
        stopped = True
        assert not keeper.alive(pid)
        sched.left_queue(job, replacement, added)
        assert not (pdir / "security" / "cluster-kept.json").exists()
    finally:
        if not stopped:
            run_ipphpc("stop", "--all", timeout=120)
