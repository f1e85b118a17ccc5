"""The tests in inside/ run in every rank of one `mpiexec -n 4` under pytest-mpi; each rank must pass them all."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ipphpc.launch.mpi import find_mpiexec, mpiexec_args

from ..services import require

pytestmark = [pytest.mark.mpiexec, require("mpi", "run `bash .ci/services/mpi.sh` first")]

INSIDE = Path(__file__).parent / "inside"
ROOT = Path(__file__).resolve().parents[2]
RANKS = 4
# pytest in one rank: its own JUnit report (ranks' console lines interleave) and its own temporary
# directory (ranks cleaning up one shared base directory race)
ONE_RANK = (
    "import sys, pytest\n"
    "from mpi4py import MPI\n"
    "out = '%s/rank-%d' % (sys.argv[1], MPI.COMM_WORLD.Get_rank())\n"
    "sys.exit(pytest.main(['--junitxml', out + '.xml', '--basetemp', out + '.tmp', *sys.argv[2:]]))\n"
)
# -q: one node id a line when collecting; the thread method ends a rank stuck in an MPI call (mpiexec then
# ends the others), which a signal cannot interrupt
PYTEST_ARGS = ["--with-mpi", "-q", "-p", "no:cacheprovider", "--timeout=120", "--timeout-method=thread", str(INSIDE)]


def run_under_mpiexec(n: int, args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """mpiexec -n N python ..., killed with all its ranks if it outlives `timeout`."""
    mpiexec = os.environ.get("IPPHPC_MPIEXEC") or find_mpiexec()
    prefix, mpi_env = mpiexec_args(mpiexec, n)
    proc = subprocess.Popen(prefix + [sys.executable, *args], cwd=ROOT, env={**env, **mpi_env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} did not finish within {timeout:g} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def junit_name(nodeid: str) -> tuple[str, str]:
    """A node id as JUnit's (classname, name)."""
    path, *rest = nodeid.split("::")
    classname = ".".join([path.removesuffix(".py").replace("/", "."), *rest[:-1]])
    return classname, rest[-1]


def outcomes(report: Path) -> dict[tuple[str, str], str]:
    """(classname, name) -> passed, failed, error or skipped, from one rank's JUnit report."""
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        result[(case.get("classname"), case.get("name"))] = kinds[0] if kinds else "passed"
    return result


@pytest.mark.timeout(1200)
def test_every_rank_passes_every_inside_test(tmp_path: Path) -> None:
    env = {**os.environ, "IPPHPC_DIR": str(tmp_path / "ipphpc")}
    # what there is to run, collected on its own (one rank, so mpi4py starts as it will in the run)
    listing = run_under_mpiexec(1, ["-m", "pytest", "--collect-only", *PYTEST_ARGS],
                                env, timeout=300)
    assert listing.returncode == 0, listing.stdout[-4000:]
    expected = {junit_name(line.strip()) for line in listing.stdout.splitlines() if "::" in line}
    assert len(expected) >= 20, listing.stdout[-4000:]

    run = run_under_mpiexec(RANKS, ["-c", ONE_RANK, str(tmp_path), *PYTEST_ARGS], env, timeout=600)
    tail = run.stdout[-6000:]
    assert run.returncode == 0, tail
    reports = sorted(p.name for p in tmp_path.glob("rank-*.xml"))
    assert reports == [f"rank-{r}.xml" for r in range(RANKS)], tail
    for r in range(RANKS):
        got = outcomes(tmp_path / f"rank-{r}.xml")
        assert got == dict.fromkeys(expected, "passed"), (r, {k: v for k, v in got.items() if v != "passed"}, tail)
