"""How long the batch job running this engine may live, asked of its scheduler.

ipphpc's own job scripts export the walltime they asked for; an `ipphpc engine` line in a user's own
batch script does not know it. There the engine asks once, at start, with the job's own id from its
environment: Slurm `squeue -o %S|%e`, SGE `qstat -j` (h_rt), PBS `qstat -f` (Resource_List.walltime, or
Torque's PBS_WALLTIME), LSF `bjobs -o runtimelimit`, HTCondor the job ad (+IpphpcWalltime, or
AllowedJobDuration). When the scheduler does not say when the job started, the start time of the process
its daemon started for the job is used (the job's shell). The parsers are pure functions of the text.
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: (start epoch or None when the text does not say, limit in seconds)
Limit = tuple[float | None, float]


def clock(text: str) -> float | None:
    """'[[D-]HH:]MM:SS' or plain seconds -> seconds; None for what is no duration ('UNLIMITED', '-')."""
    text = text.strip()
    days = 0
    if "-" in text[1:]:
        d, _, text = text.partition("-")
        if not d.isdigit():
            return None
        days = int(d)
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    if not values or len(values) > 3 or any(v < 0 for v in values):
        return None
    seconds = 0.0
    for v in values:
        seconds = seconds * 60 + v
    return days * 86400 + seconds


def parse_slurm(text: str) -> Limit | None:
    """`squeue -h -j ID -o %S|%e`: start and end, local time."""
    try:
        first = text.strip().splitlines()[0] if text.strip() else ""
        start, end = (datetime.datetime.fromisoformat(t.strip()).timestamp() for t in first.split("|"))
    except ValueError:  # 'N/A', 'Unknown': no limit, or not started
        return None
    return (start, end - start) if end > start else None


def parse_sge(text: str) -> Limit | None:
    """`qstat -j ID`: the hard (else soft) run-time limit of its resource list."""
    for kind in ("hard", "soft"):
        m = re.search(rf"^{kind} resource_list:.*?\b[hs]_rt=([^,\s]+)", text, re.MULTILINE)
        if m and (seconds := clock(m.group(1))):
            return None, seconds
    return None


def parse_pbs(text: str) -> Limit | None:
    """`qstat -f ID`: Resource_List.walltime, and stime (PBS Pro) or start_time (Torque) when given."""
    m = re.search(r"^\s*Resource_List\.walltime = (\S+)", text, re.MULTILINE)
    seconds = clock(m.group(1)) if m else None
    if not seconds:
        return None
    start = None
    s = re.search(r"^\s*stime = (.+)$", text, re.MULTILINE)
    t = re.search(r"^\s*start_time = (\d+)\s*$", text, re.MULTILINE)
    if s:
        try:
            start = time.mktime(time.strptime(" ".join(s.group(1).split()), "%a %b %d %H:%M:%S %Y"))
        except ValueError:
            start = None
    elif t:
        start = float(t.group(1))
    return start, seconds


def parse_lsf(text: str) -> Limit | None:
    """`bjobs -noheader -o runtimelimit ID`: minutes (LSF may add '/host')."""
    m = re.match(r"\s*(\d+(?:\.\d*)?)", text)
    return (None, float(m.group(1)) * 60) if m and float(m.group(1)) > 0 else None


def parse_htcondor(text: str) -> Limit | None:
    """The job ad ($_CONDOR_JOB_AD): IpphpcWalltime (as ipphpc's templates set it) or AllowedJobDuration,
    and JobCurrentStartDate."""
    ad = {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in text.splitlines()) if _}
    for name in ("IpphpcWalltime", "AllowedJobDuration"):
        try:
            seconds = float(ad[name])
        except (KeyError, ValueError):
            continue
        if seconds > 0:
            start = ad.get("JobCurrentStartDate", "")
            return (float(start) if start.isdigit() else None), seconds
    return None


@dataclass(frozen=True)
class Asker:
    """How one scheduler is asked from inside its job: the command (from the job's environment, None when
    the environment says it all), the parser, and the daemon whose child is the job's shell."""

    command: Callable[[Mapping[str, str]], list[str] | None]
    parse: Callable[[str], Limit | None]
    daemon: str


def _slurm_command(env: Mapping[str, str]) -> list[str]:
    # an array's last element has the array's own job id, which names every element: ask for this one
    job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if env.get("SLURM_ARRAY_TASK_ID") \
        else env["SLURM_JOB_ID"]
    return ["squeue", "-h", "-j", job, "-o", "%S|%e"]


def _pbs_command(env: Mapping[str, str]) -> list[str] | None:
    return None if env.get("PBS_WALLTIME") else ["qstat", "-f", env["PBS_JOBID"]]


def _lsf_command(env: Mapping[str, str]) -> list[str]:
    index = env.get("LSB_JOBINDEX", "0")
    job = env["LSB_JOBID"] + (f"[{index}]" if index not in ("", "0") else "")
    return ["bjobs", "-noheader", "-o", "runtimelimit", job]


ASKERS: dict[str, Asker] = {
    "slurm": Asker(_slurm_command, parse_slurm, "slurmstepd"),
    "sge": Asker(lambda env: ["qstat", "-j", env["JOB_ID"]], parse_sge, "sge_shepherd"),
    "pbs": Asker(_pbs_command, parse_pbs, "pbs_mom"),
    "lsf": Asker(_lsf_command, parse_lsf, "res"),
    "htcondor": Asker(lambda env: None, parse_htcondor, "condor_starter"),
}


def _env_text(scheduler: str, env: Mapping[str, str]) -> str:
    """What the environment itself says: Torque's PBS_WALLTIME, HTCondor's job ad."""
    if scheduler == "pbs" and env.get("PBS_WALLTIME"):
        return f"Resource_List.walltime = {env['PBS_WALLTIME']}"
    if scheduler == "htcondor" and env.get("_CONDOR_JOB_AD"):
        try:
            return Path(env["_CONDOR_JOB_AD"]).read_text(errors="replace")
        except OSError:
            return ""
    return ""


def job_shell_start(daemon: str, pid: int | None = None) -> float | None:
    """Start time (epoch) of this process's ancestor that `daemon` started: the job's shell."""
    try:
        btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None
    pid = os.getpid() if pid is None else pid
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        parent = int(fields[1])
        try:
            parent_comm = Path(f"/proc/{parent}/comm").read_text().strip()
        except OSError:
            return None
        if parent_comm == daemon:
            return btime + int(fields[19]) / ticks
        if parent <= 1:
            return None
        pid = parent
    return None


def ask_scheduler(scheduler: str, env: Mapping[str, str] = os.environ, now: float | None = None,
                  timeout: float = 15.0, tries: int = 2, pause: float = 0.5,
                  log: logging.Logger | None = None) -> tuple[float, float] | None:
    """(start, end) of this engine's job, as its scheduler tells it; None when it cannot (no limit, no
    answer). A query that fails (a busy scheduler: a whole array starting asks at once) is tried again
    `tries` times in all, `pause` seconds apart (and a random share of it)."""
    asker = ASKERS.get(scheduler)
    if asker is None:
        return None
    now = time.time() if now is None else now
    try:
        cmd = asker.command(env)
    except KeyError:  # not inside such a job after all
        return None
    found = None
    for attempt in range(max(1, tries)):
        if cmd is None:
            text, problem = _env_text(scheduler, env), ""
        else:
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
                text = r.stdout
                problem = (r.stderr.strip() or f"exit status {r.returncode}") if r.returncode else \
                    ("" if text.strip() else "no output")
            except (OSError, subprocess.SubprocessError) as e:
                text, problem = "", str(e)
        found = asker.parse(text)
        if found is not None or not problem:  # an answer, or a clear "no limit"
            break
        if log is not None:
            log.warning("asking %s when this job ends: `%s` failed (%s)%s", scheduler, " ".join(cmd or []),
                        problem.splitlines()[0] if problem else "no answer",
                        "; trying again" if attempt + 1 < tries else "")
        if attempt + 1 < tries:
            time.sleep(pause * (1 + random.random()))
    if found is None:
        return None
    start, seconds = found
    if start is None:
        start = job_shell_start(asker.daemon) or now
    return start, start + seconds
