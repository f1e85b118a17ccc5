"""HPCCluster.from_allocation(): a cluster inside a batch job, engines across its allocation."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ipphpc.launch.srun import allocation_size

from ..services import require


def test_allocation_size_reads_each_scheduler(tmp_path):
    """Slurm tasks use srun; PBS node files, SGE slots and LSF processor counts use mpiexec."""
    assert allocation_size({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "12"}) == ("srun", 12)
    assert allocation_size({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3"}) == ("srun", 3)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")
    assert allocation_size({"PBS_NODEFILE": str(nodefile)}) == ("mpi", 3)
    assert allocation_size({"NSLOTS": "8"}) == ("mpi", 8)
    assert allocation_size({"LSB_DJOB_NUMPROC": "5"}) == ("mpi", 5)
    with pytest.raises(RuntimeError, match="not inside a batch allocation"):
        allocation_size({})


@pytest.mark.slurm
@require("slurm", "run `bash .ci/services/slurm.sh` first")
def test_from_allocation_inside_a_slurm_job(tmp_path):
    """A job script with `-n 3` gets a controller on its batch host and 3 engines started by srun."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import os
        import ipphpc
        with ipphpc.HPCCluster.from_allocation() as rc:
            ranks = sorted(rc[:].apply_sync(lambda: int(os.environ["SLURM_PROCID"])))
            jobs = {info["job_id"] for info in rc.engines.values()}
            print("RESULT", len(rc.ids), ranks, jobs == {os.environ["SLURM_JOB_ID"]}, rc._info["bind_ip"])
    """))
    out = tmp_path / "out.txt"
    r = subprocess.run(["sbatch", "--wait", "-n", "3", "-t", "5", "-o", str(out), "--chdir", str(tmp_path),
                        f"--export=ALL,IPPHPC_DIR={tmp_path / 'ipphpc'}", "--wrap", f"{sys.executable} {script}"],
                       capture_output=True, text=True, timeout=180)
    text = out.read_text() if out.exists() else ""
    assert r.returncode == 0, r.stdout + r.stderr + text
    assert "RESULT 3 [0, 1, 2] True *" in text, text
