"""Tests of the PBS Pro and Torque emulators (qsub, qstat, qdel, qhold, qrls)."""

from __future__ import annotations

import json
import os
import pwd
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.pbs

ENV_SCRIPT = """#!/bin/bash
#PBS -N envjob
cd "$PBS_O_WORKDIR"
{{
  echo "index=${{PBS_ARRAY_INDEX}}"
  echo "arrayid=${{PBS_ARRAYID}}"
  echo "jobid=${{PBS_JOBID}}"
  echo "array_id=${{PBS_ARRAY_ID}}"
  echo "jobname=${{PBS_JOBNAME}}"
  echo "queue=${{PBS_QUEUE}}"
  echo "workdir=${{PBS_O_WORKDIR}}"
  echo "nodefile=${{PBS_NODEFILE}}"
  echo "startdir={startdir}"
}} > "env_${{{var}}}.txt"
echo "stdout of ${{{var}}}"
exit $(( ${{{var}}} + 0 ))
"""


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def qstat_json(emu, *args: str) -> dict:
    proc = emu.run("qstat", "-f", "-F", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def pbs_state(emu, jid: str) -> str | None:
    proc = emu.run("qstat", "-x", "-f", "-F", "json", jid)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)["Jobs"][jid]["job_state"]


# ---------------------------------------------------------------------------
# PBS Pro
# ---------------------------------------------------------------------------
def test_array_of_four_runs_with_pbs_environment(pbs, wait) -> None:
    script = pbs.work / "job.sh"
    text = ENV_SCRIPT.format(var="PBS_ARRAY_INDEX", startdir="$START")
    script.write_text(text.replace('cd "$PBS_O_WORKDIR"', 'START=$(pwd); cd "$PBS_O_WORKDIR"'))
    proc = pbs.run("qsub", "-J", "0-3", "-q", "workq", "job.sh", check=True)
    jid = proc.stdout.strip()
    assert re.fullmatch(r"\d+\[\]\.pbsserver", jid), jid
    seq = jid.split("[")[0]

    wait(lambda: pbs_state(pbs, jid) == "F")
    data = qstat_json(pbs, "-x", "-t", jid)
    subjobs = {k: v for k, v in data["Jobs"].items() if k != jid}
    assert sorted(subjobs) == [f"{seq}[{i}].pbsserver" for i in range(4)]
    for i in range(4):
        sub = data["Jobs"][f"{seq}[{i}].pbsserver"]
        assert sub["job_state"] == "X"
        assert sub["Exit_status"] == i
        env = read_env(pbs.work / f"env_{i}.txt")
        assert env["index"] == str(i)
        assert env["jobid"] == f"{seq}[{i}].pbsserver"
        assert env["array_id"] == jid
        assert env["jobname"] == "envjob"
        assert env["queue"] == "workq"
        assert env["workdir"] == str(pbs.work)
        assert Path(env["nodefile"]).read_text().strip()
        # PBS starts jobs in the user's home from the password database, whatever $HOME says here
        assert env["startdir"] == pwd.getpwuid(os.getuid()).pw_dir
        out = pbs.work / f"envjob.o{seq}.{i}"
        assert out.read_text() == f"stdout of {i}\n"
        assert (pbs.work / f"envjob.e{seq}.{i}").exists()
    parent = data["Jobs"][jid]
    assert parent["array"] == "True"
    assert parent["array_indices_submitted"] == "0-3"
    assert parent["array_state_count"] == "Queued:0 Running:0 Exiting:0 Expired:4 "
    assert parent["Exit_status"] == 1  # some subjob exited non-zero


def test_walltime_kill_records_job_exec_kill_walltime(pbs, wait) -> None:
    (pbs.work / "long.sh").write_text("#!/bin/bash\n#PBS -l walltime=00:00:01\nsleep 30\n")
    jid = pbs.run("qsub", "-N", "longjob", "long.sh", check=True).stdout.strip()
    seq = jid.split(".")[0]
    t0 = time.monotonic()
    wait(lambda: pbs_state(pbs, jid) == "F", timeout=15)
    assert time.monotonic() - t0 < 10
    job = qstat_json(pbs, "-x", jid)["Jobs"][jid]
    assert job["Exit_status"] == -29
    assert job["Resource_List"]["walltime"] == "00:00:01"
    err = (pbs.work / f"longjob.e{seq}").read_text()
    assert re.search(r"=>> PBS: job killed: walltime \d+ exceeded limit 1", err)


def test_qdel_kills_running_job(pbs, wait) -> None:
    (pbs.work / "s.sh").write_text('#!/bin/bash\ncd "$PBS_O_WORKDIR"\necho $$ > pid\nsleep 60\n')
    jid = pbs.run("qsub", "s.sh", check=True).stdout.strip()
    wait(lambda: (pbs.work / "pid").exists() and pbs_state(pbs, jid) == "R")
    pid = int((pbs.work / "pid").read_text())
    assert pbs.run("qdel", jid).returncode == 0
    wait(lambda: pbs_state(pbs, jid) == "F", timeout=15)
    job = qstat_json(pbs, "-x", jid)["Jobs"][jid]
    assert job["Exit_status"] == 271  # 256 + SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    again = pbs.run("qdel", jid)
    assert again.returncode == 35 and "Job has finished" in again.stderr


def test_held_job_stays_held_until_released(pbs, wait) -> None:
    (pbs.work / "h.sh").write_text('#!/bin/bash\ncd "$PBS_O_WORKDIR"\ntouch ran\n')
    jid = pbs.run("qsub", "-h", "h.sh", check=True).stdout.strip()
    time.sleep(1.0)
    table = pbs.run("qstat").stdout.splitlines()
    assert table[2].split()[4] == "H"
    assert pbs_state(pbs, jid) == "H"
    assert not (pbs.work / "ran").exists()
    assert qstat_json(pbs, jid)["Jobs"][jid]["Hold_Types"] == "u"
    assert pbs.run("qrls", jid).returncode == 0
    wait(lambda: pbs_state(pbs, jid) == "F")
    assert (pbs.work / "ran").exists()


def test_slot_limit_keeps_elements_queued(pbs, wait) -> None:
    pbs.env["IPPHPC_EMU_SLOTS"] = "2"
    (pbs.work / "s.sh").write_text("#!/bin/bash\nsleep 1.5\n")
    jid = pbs.run("qsub", "-J", "1-4", "s.sh", check=True).stdout.strip()

    def two_running() -> bool:
        rows = pbs.run("qstat", "-t", jid).stdout.splitlines()[2:]
        states = [r.split()[4] for r in rows[1:]]
        return states.count("R") == 2

    wait(two_running)
    rows = pbs.run("qstat", "-t", jid).stdout.splitlines()[2:]
    states = sorted(r.split()[4] for r in rows[1:])
    assert states == ["Q", "Q", "R", "R"]
    assert rows[0].split()[4] == "B"
    wait(lambda: pbs_state(pbs, jid) == "F", timeout=20)


def test_default_table_and_error_formats(pbs, wait) -> None:
    (pbs.work / "s.sh").write_text("#!/bin/bash\nsleep 1\n")
    jid = pbs.run("qsub", "-N", "averyveryverylongname", "s.sh", check=True).stdout.strip()
    out = pbs.run("qstat").stdout.splitlines()
    assert out[0] == "Job id            Name             User              Time Use S Queue"
    assert out[1] == "----------------  ---------------- ----------------  -------- - -----"
    row = out[2]
    assert row.startswith(f"{jid:<17} averyveryverylo* ")
    assert re.match(r"^\S+\s+\S+\s+\S+\s+(0|00:00:00) [QR] workq\s*$", row)

    unknown = pbs.run("qstat", "999999")
    assert unknown.returncode == 153
    assert unknown.stderr.strip() == "qstat: Unknown Job Id 999999.pbsserver"
    assert unknown.stdout == ""

    wait(lambda: pbs_state(pbs, jid) == "F")
    finished = pbs.run("qstat", jid)
    assert finished.returncode == 35
    assert finished.stderr.strip() == f"qstat: {jid} Job has finished, use -x or -H to obtain historical job information"
    assert pbs.run("qstat").stdout == ""  # finished jobs vanish without -x
    assert f"{jid.split('.')[0]}.pbsserver" in pbs.run("qstat", "-x").stdout


def test_full_and_json_formats(pbs, wait) -> None:
    (pbs.work / "s.sh").write_text("#!/bin/bash\n#PBS -l select=1:ncpus=1\n#PBS -A proj1\nsleep 2\n")
    jid = pbs.run("qsub", "-l", "walltime=00:10:00", "s.sh", check=True).stdout.strip()
    text = pbs.run("qstat", "-f", jid).stdout
    lines = text.splitlines()
    assert lines[0] == f"Job Id: {jid}"
    assert all(re.match(r"^    [A-Za-z_]+(\.[A-Za-z_]+)? = ", ln) or ln.startswith("\t") or ln == "" for ln in lines[1:])
    assert "    Job_Name = s.sh" in lines
    assert "    Resource_List.walltime = 00:10:00" in lines
    assert "    Account_Name = proj1" in lines
    assert text.endswith("\n\n")

    data = qstat_json(pbs, jid)
    assert set(data) == {"timestamp", "pbs_version", "pbs_server", "Jobs"}
    assert isinstance(data["timestamp"], int) and data["pbs_server"] == "pbsserver"
    job = data["Jobs"][jid]
    for key in ("Job_Name", "Job_Owner", "job_state", "queue", "Resource_List", "Variable_List", "Submit_arguments"):
        assert key in job
    assert job["Variable_List"]["PBS_O_WORKDIR"] == str(pbs.work)
    assert job["Resource_List"]["select"] == "1:ncpus=1"

    wait(lambda: pbs_state(pbs, jid) == "F")
    done = qstat_json(pbs, "-x", jid)["Jobs"][jid]
    assert done["job_state"] == "F" and done["Exit_status"] == 0
    assert "exec_host" in done and done["comment"].endswith("and finished")
    empty = qstat_json(pbs)
    assert "Jobs" not in empty  # no job shown: prologue only


def test_array_json_keys_and_join(pbs, wait) -> None:
    (pbs.work / "s.sh").write_text("#!/bin/bash\n#PBS -j oe\necho out; echo err >&2\n")
    (pbs.work / "logs").mkdir()
    jid = pbs.run("qsub", "-J", "0-1", "-o", "logs", "s.sh", check=True).stdout.strip()
    seq = jid.split("[")[0]
    wait(lambda: pbs_state(pbs, jid) == "F")
    for i in (0, 1):
        text = (pbs.work / "logs" / f"s.sh.o{seq}.{i}").read_text()
        assert "out" in text and "err" in text
    job = qstat_json(pbs, "-x", jid)["Jobs"][jid]
    for key in ("array", "array_state_count", "array_indices_submitted", "array_indices_remaining", "Exit_status"):
        assert key in job
    assert job["array_indices_remaining"] == "-"


def test_invocations_are_logged(pbs) -> None:
    (pbs.work / "s.sh").write_text("#!/bin/bash\ntrue\n")
    pbs.run("qsub", "s.sh", check=True)
    pbs.run("qstat")
    pbs.run("qstat", "-x")
    assert len(pbs.invocations("qsub")) == 1
    assert len(pbs.invocations("qstat")) == 2
    assert pbs.invocations("qstat")[1]["argv"] == ["-x"]


def test_command_line_overrides_directives_and_env(pbs, wait) -> None:
    (pbs.work / "s.sh").write_text('#!/bin/bash\n#PBS -N fromscript\ncd "$PBS_O_WORKDIR"\necho "$FOO|$BAR|$PBS_JOBNAME" > vars\n')
    pbs.env["BAR"] = "not-exported"
    jid = pbs.run("qsub", "-N", "fromcli", "-v", "FOO=hello", "s.sh", check=True).stdout.strip()
    wait(lambda: pbs_state(pbs, jid) == "F")
    assert (pbs.work / "vars").read_text().strip() == "hello||fromcli"
    jid2 = pbs.run("qsub", "-V", "s.sh", check=True).stdout.strip()
    wait(lambda: pbs_state(pbs, jid2) == "F")
    assert (pbs.work / "vars").read_text().strip() == "|not-exported|fromscript"


# ---------------------------------------------------------------------------
# Torque
# ---------------------------------------------------------------------------
def torque_state(emu, jid: str) -> str | None:
    proc = emu.run("qstat", "-x", jid)
    if proc.returncode != 0 or "<Data>" not in proc.stdout:
        return None
    root = ET.fromstring(proc.stdout.split("\n", 1)[1])
    return root.find("Job/job_state").text  # type: ignore[union-attr]


def test_torque_array_formats_and_environment(torque, wait) -> None:
    (torque.work / "t.sh").write_text(ENV_SCRIPT.format(var="PBS_ARRAYID", startdir="x"))
    jid = torque.run("qsub", "-t", "0-3", "t.sh", check=True).stdout.strip()
    assert re.fullmatch(r"\d+\[\]\.torqueserver", jid)
    seq = jid.split("[")[0]
    wait(lambda: torque_state(torque, jid) == "C")

    table = torque.run("qstat", "-t").stdout.splitlines()
    assert table[0] == "Job ID                    Name             User            Time Use S Queue"
    assert table[1] == "------------------------- ---------------- --------------- -------- - -----"
    assert [r.split()[0] for r in table[2:]] == [jid] + [f"{seq}[{i}].torqueserver" for i in range(4)]
    assert all(r.split()[4] == "C" for r in table[2:])
    assert table[3].split()[1] == "envjob-0"

    for i in range(4):
        env = read_env(torque.work / f"env_{i}.txt")
        assert env["arrayid"] == str(i)
        assert env["jobid"] == f"{seq}[{i}].torqueserver"
        assert env["jobname"] == f"envjob-{i}"
        assert env["queue"] == "batch"
        assert (torque.work / f"envjob.o{seq}-{i}").read_text() == f"stdout of {i}\n"

    xml = torque.run("qstat", "-x", "-t", jid).stdout
    assert xml.startswith('<?xml version="1.0"?>\n<Data><Job><Job_Id>')
    root = ET.fromstring(xml.split("\n", 1)[1])
    jobs = root.findall("Job")
    assert len(jobs) == 5
    sub = {j.find("Job_Id").text: j for j in jobs}[f"{seq}[2].torqueserver"]  # type: ignore[union-attr]
    assert sub.find("exit_status").text == "2"  # type: ignore[union-attr]
    assert sub.find("Resource_List/nodes") is not None
    assert sub.find("ctime").text.isdigit()  # type: ignore[union-attr]

    full = torque.run("qstat", "-f", f"{seq}[1]").stdout
    assert full.startswith(f"Job Id: {seq}[1].torqueserver\n")
    assert "    exit_status = 1\n" in full
    assert "    job_state = C\n" in full


def test_torque_walltime_qdel_and_keep_completed(torque, wait) -> None:
    torque.env["IPPHPC_EMU_KEEP_COMPLETED"] = "6"
    (torque.work / "w.sh").write_text("#!/bin/bash\nsleep 30\n")
    wall = torque.run("qsub", "-l", "walltime=1", "w.sh", check=True).stdout.strip()
    killed = torque.run("qsub", "w.sh", check=True).stdout.strip()
    wait(lambda: torque_state(torque, killed) == "R")
    torque.run("qdel", killed, check=True)
    wait(lambda: torque_state(torque, wall) == "C", timeout=15)
    assert "    exit_status = -11\n" in torque.run("qstat", "-f", wall).stdout
    wait(lambda: torque_state(torque, killed) == "C", timeout=15)
    assert "    exit_status = 271\n" in torque.run("qstat", "-f", killed).stdout
    rows = torque.run("qstat").stdout.splitlines()[2:]
    assert killed in {r.split()[0] for r in rows}
    assert all(r.split()[4] == "C" for r in rows)

    def expired() -> bool:
        return torque.run("qstat", wall).returncode == 153

    wait(expired, timeout=15)
    gone = torque.run("qstat", wall)
    assert gone.stderr.strip() == f"qstat: Unknown Job Id Error {wall}"
    wait(lambda: torque.run("qstat").stdout == "", timeout=15)
