"""Tests of the LSF emulator (bsub, bjobs, bkill, bhist, bstop, bresume)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

pytestmark = pytest.mark.lsf

ARRAY_SCRIPT = """#!/bin/bash
#BSUB -J envarr[1-4]
#BSUB -o out.%J.%I
#BSUB -e err.%J.%I
{
  echo "jobid=$LSB_JOBID"
  echo "index=$LSB_JOBINDEX"
  echo "name=$LSB_JOBNAME"
  echo "queue=$LSB_QUEUE"
  echo "hosts=$LSB_HOSTS"
  echo "end=$LSB_JOBINDEX_END"
  echo "subcwd=$LS_SUBCWD"
  echo "pwd=$(pwd)"
} > "env_$LSB_JOBINDEX.txt"
echo "hello from $LSB_JOBINDEX"
exit $(( LSB_JOBINDEX - 1 ))
"""

JSON_FMT = "jobid jobindex stat exit_code exit_reason job_name queue"


def records(emu, *ids: str) -> list[dict]:
    proc = emu.run("bjobs", "-a", "-o", JSON_FMT, "-json", *ids)
    if not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)["RECORDS"]


def stats(emu, jid: str) -> list[str]:
    return [r["STAT"] for r in records(emu, jid)]


def finished(emu, jid: str) -> bool:
    s = stats(emu, jid)
    return bool(s) and all(x in ("DONE", "EXIT") for x in s)


def submit_id(proc) -> str:
    m = re.fullmatch(r"Job <(\d+)> is submitted to (default )?queue <\w+>\.\n", proc.stdout)
    assert m, proc.stdout
    return m.group(1)


def test_array_of_four_from_stdin(lsf, wait) -> None:
    proc = lsf.run("bsub", input=ARRAY_SCRIPT, check=True)
    assert proc.stdout == f"Job <{submit_id(proc)}> is submitted to default queue <normal>.\n"
    jid = submit_id(proc)
    wait(lambda: finished(lsf, jid))
    recs = records(lsf, jid)
    assert [r["JOBINDEX"] for r in recs] == ["1", "2", "3", "4"]
    assert [r["JOB_NAME"] for r in recs] == [f"envarr[{i}]" for i in range(1, 5)]
    assert [r["STAT"] for r in recs] == ["DONE", "EXIT", "EXIT", "EXIT"]
    assert [r["EXIT_CODE"] for r in recs] == ["", "1", "2", "3"]
    for i in range(1, 5):
        env = dict(line.split("=", 1) for line in (lsf.work / f"env_{i}.txt").read_text().splitlines())
        assert env["jobid"] == jid
        assert env["index"] == str(i)
        assert env["name"] == f"envarr[{i}]"
        assert env["queue"] == "normal"
        assert env["hosts"]
        assert env["end"] == "4"
        assert env["subcwd"] == env["pwd"] == str(lsf.work)
        out = (lsf.work / f"out.{jid}.{i}").read_text()
        assert out.startswith("Sender: LSF System <")
        assert "# LSBATCH: User input\n" in out
        assert ("Successfully completed." if i == 1 else f"Exited with exit code {i - 1}.") in out
        assert out.endswith(f"The output (if any) follows:\n\nhello from {i}\n\n\nPS:\n\nRead file <{lsf.work}/err.{jid}.{i}> for stderr output of this job.\n\n")
        assert (lsf.work / f"err.{jid}.{i}").exists()


def test_command_argument_and_default_table(lsf, wait) -> None:
    proc = lsf.run("bsub", "-q", "short", "-J", "averylongjobname", "-o", "o.%J", "sh", "-c", "sleep 1; exit 3", check=True)
    jid = submit_id(proc)
    assert proc.stdout == f"Job <{jid}> is submitted to queue <short>.\n"
    table = lsf.run("bjobs").stdout.splitlines()
    assert table[0] == "JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME"
    row = table[1]
    assert row.startswith(f"{jid:<7} ")
    assert row[8:].split()[1] in ("PEND", "RUN")
    assert "*ngjobname " in row  # job names keep their last 9 characters
    assert re.search(r"[A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d$", row)
    wait(lambda: finished(lsf, jid))
    rec = records(lsf, jid)[0]
    assert rec["STAT"] == "EXIT" and rec["EXIT_CODE"] == "3" and rec["QUEUE"] == "short"
    assert "Exited with exit code 3." in (lsf.work / f"o.{jid}").read_text()
    nohead = lsf.run("bjobs", "-a", "-noheader", "-o", "jobid stat exit_code delimiter='^'", jid).stdout
    assert nohead == f"{jid}^EXIT^3\n"


def test_runlimit_kills_with_term_runlimit(lsf, wait) -> None:
    proc = lsf.run("bsub", "-W", "1", "-o", "o.%J", input="#!/bin/bash\nsleep 30\n", check=True)
    jid = submit_id(proc)
    t0 = time.monotonic()
    wait(lambda: finished(lsf, jid), timeout=15)
    assert time.monotonic() - t0 < 10
    rec = records(lsf, jid)[0]
    assert rec["STAT"] == "EXIT"
    assert rec["EXIT_CODE"] == "140"  # 128 + SIGUSR2
    assert rec["EXIT_REASON"] == "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
    report = (lsf.work / f"o.{jid}").read_text()
    assert "TERM_RUNLIMIT: job killed after reaching LSF run time limit.\nExited with exit code 140." in report
    hist = lsf.run("bhist", "-l", jid).stdout
    assert "Exited with exit code 140." in hist


def test_bkill_running_job(lsf, wait) -> None:
    proc = lsf.run("bsub", "-o", "o.%J", input='#!/bin/bash\necho $$ > pid\nsleep 60\n', check=True)
    jid = submit_id(proc)
    wait(lambda: (lsf.work / "pid").exists() and stats(lsf, jid) == ["RUN"])
    pid = int((lsf.work / "pid").read_text())
    kill = lsf.run("bkill", jid)
    assert kill.returncode == 0 and kill.stdout == f"Job <{jid}> is being terminated\n"
    wait(lambda: finished(lsf, jid), timeout=15)
    rec = records(lsf, jid)[0]
    assert rec["STAT"] == "EXIT"
    assert rec["EXIT_REASON"] == "TERM_OWNER: job killed by owner"
    assert rec["EXIT_CODE"] == "130"  # 128 + SIGINT, the first signal of the sequence
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    again = lsf.run("bkill", jid)
    assert again.returncode == 255 and again.stderr == f"Job <{jid}>: Job has already finished\n"
    missing = lsf.run("bkill", "999999")
    assert missing.returncode == 255 and missing.stderr == "Job <999999>: No matching job found\n"


def test_held_job_stays_pending_until_resumed(lsf, wait) -> None:
    jid = submit_id(lsf.run("bsub", "-H", "touch", "ran", check=True))
    time.sleep(1.0)
    assert stats(lsf, jid) == ["PSUSP"]
    assert not (lsf.work / "ran").exists()
    resumed = lsf.run("bresume", jid)
    assert resumed.stdout == f"Job <{jid}> is being resumed\n"
    wait(lambda: finished(lsf, jid))
    assert stats(lsf, jid) == ["DONE"]
    assert (lsf.work / "ran").exists()


def test_slot_limit_keeps_elements_pending(lsf, wait) -> None:
    lsf.env["IPPHPC_EMU_SLOTS"] = "2"
    jid = submit_id(lsf.run("bsub", "-J", "slots[1-4]", "sleep", "1.5", check=True))
    wait(lambda: stats(lsf, jid).count("RUN") == 2)
    assert sorted(stats(lsf, jid)) == ["PEND", "PEND", "RUN", "RUN"]
    wait(lambda: finished(lsf, jid), timeout=20)
    assert stats(lsf, jid) == ["DONE"] * 4


def test_array_slot_limit_from_job_name(lsf, wait) -> None:
    jid = submit_id(lsf.run("bsub", "-J", "lim[1-3]%1", "sleep", "1", check=True))
    wait(lambda: "RUN" in stats(lsf, jid))
    assert sorted(stats(lsf, jid)) == ["PEND", "PEND", "RUN"]


def test_query_formats_and_errors(lsf, wait) -> None:
    empty = lsf.run("bjobs")
    assert empty.returncode == 255 and empty.stderr == "No unfinished job found\n" and empty.stdout == ""
    unknown = lsf.run("bjobs", "424242")
    assert unknown.stderr == "Job <424242> is not found\n" and unknown.stdout == ""
    jid = submit_id(lsf.run("bsub", "-P", "proj", "true", check=True))
    wait(lambda: finished(lsf, jid))
    doc = json.loads(lsf.run("bjobs", "-a", "-o", "jobid stat exit_code finish_time proj_name", "-json").stdout)
    assert list(doc) == ["COMMAND", "JOBS", "RECORDS"]
    assert doc["COMMAND"] == "bjobs" and doc["JOBS"] == 1
    rec = doc["RECORDS"][0]
    assert list(rec) == ["JOBID", "STAT", "EXIT_CODE", "FINISH_TIME", "PROJ_NAME"]
    assert rec["STAT"] == "DONE" and rec["EXIT_CODE"] == "" and rec["FINISH_TIME"].endswith(" L")
    assert rec["PROJ_NAME"] == "proj"
    assert lsf.run("bjobs").returncode == 255  # finished jobs need -a or -d
    assert f"{jid} " in lsf.run("bjobs", "-d").stdout
    table = lsf.run("bjobs", "-a", "-o", "jobid:8 stat:-6").stdout.splitlines()
    assert table == [f"{'JOBID':<8} {'STAT':>6}", f"{jid:<8} {'DONE':>6}"]
    hist = lsf.run("bhist", "-a").stdout.splitlines()
    assert hist[0] == "Summary of time in seconds spent in various states:"
    assert hist[1].split() == ["JOBID", "USER", "JOB_NAME", "PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "UNKWN", "TOTAL"]
    long = lsf.run("bjobs", "-l", jid).stdout
    assert f"Job <{jid}>, Job Name <true>" in long and "Done successfully." in long
    before = len(lsf.invocations("bjobs"))
    lsf.run("bjobs", "-a")
    lsf.run("bjobs", "-w", jid)
    assert len(lsf.invocations("bjobs")) == before + 2
    assert lsf.invocations("bjobs")[-1]["argv"] == ["-w", jid]
    assert len(lsf.invocations("bsub")) == 1
