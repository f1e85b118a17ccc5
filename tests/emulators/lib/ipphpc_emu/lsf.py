"""IBM Spectrum LSF emulation: bsub, bjobs, bkill, bhist, bstop, bresume.

Formats and behaviour, with their sources:

* openlava ``lsbatch/cmd/bjobs.c`` (displayJobs): the default table header
  ``JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME``
  and rows ``"%-7d %-7.7s %-5.5s %-10.10s %-11.11s %-11.11s %-10.10s %s"``
  with job names cut to their last 9 characters behind ``*``; ``-w`` prints
  the same columns untruncated; times are ``%b %e %H:%M``.
* IBM LSF 10.1 command reference: ``bjobs -o "field[:[-]width] ...
  delimiter='c'"``, ``-json`` (only with ``-o``, not with ``-noheader``);
  ``bsub -W [hour:]minute``: a job over its run limit "is sent a SIGUSR2
  signal, and is killed if it does not terminate within ten minutes";
  ``bkill`` by default sends SIGINT, SIGTERM and SIGKILL ten seconds apart
  (``JOB_TERMINATE_INTERVAL``); termination reasons ``TERM_OWNER: job killed
  by owner`` and ``TERM_RUNLIMIT: job killed after reaching LSF run time
  limit``; environment ``LSB_JOBID``, ``LSB_JOBINDEX`` (0 for non-array
  jobs), ``LSB_HOSTS``, ``LSB_QUEUE``, ``LSB_JOBNAME``...
* Real command output quoted in public projects: ``Job <12> is submitted to
  default queue <normal>.``, ``bjobs -json`` as ``{"COMMAND":"bjobs","JOBS":n,
  "RECORDS":[...]}`` with every value a string (empty when unset),
  ``FINISH_TIME`` with an ``L`` suffix, ``Job <11> is being terminated``,
  ``Job <11>: Job has already finished`` / ``Job <22>: No matching job found``
  (exit 255), ``Job <1> is not found`` on stderr, the job report written to
  the ``-o`` file (``Sender: LSF System ...`` ... ``The output (if any)
  follows:``) and the bhist summary table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
    DONE,
    HELD,
    QUEUED,
    RUNNING,
    Store,
    ctime,
    current_user,
    env_float,
    hms,
    new_element,
    parse_index_list,
    short_hostname,
    signal_group,
    sorted_elements,
    split_directive_line,
    user_home,
)

BSUB_WITH_ARG = {
    "-J", "-q", "-o", "-oo", "-e", "-eo", "-W", "-We", "-n", "-R", "-P", "-cwd", "-env", "-M", "-G", "-g",
    "-w", "-app", "-m", "-u", "-L", "-Lp", "-sla", "-E", "-Ep", "-c", "-F", "-D", "-S", "-v", "-C", "-k",
    "-f", "-i", "-is", "-Jd", "-outdir", "-gpu", "-alloc_flags", "-nnodes", "-U", "-b", "-t", "-ext", "-a",
    "-p", "-T", "-jsdl", "-json", "-yaml", "-data", "-datagrp", "-eptl", "-ptl", "-rcacct", "-sp", "-s",
    "-Q", "-tty", "-hostfile", "-stage", "-network", "-pack", "-rnc", "-smt", "-cn_cu", "-cn_mem", "-core_isolation",
    "-csm", "-freq", "-ln_mem", "-ln_slots", "-mig", "-step_cgroup", "-clusters", "-jobaff",
}
BSUB_NO_ARG = {"-H", "-B", "-N", "-I", "-Ip", "-Is", "-IS", "-ISp", "-ISs", "-IX", "-K", "-r", "-rn", "-x",
               "-ul", "-hl", "-XF", "-Zs", "-h", "-V", "-tty"}

TERM_OWNER = "TERM_OWNER: job killed by owner"
TERM_RUNLIMIT = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"

FIELD_ALIASES = {
    "id": "jobid", "name": "job_name", "proj": "proj_name", "project": "proj_name", "app": "application",
    "sla": "service_class", "group": "job_group", "priority": "job_priority", "cmd": "command",
    "description": "job_description",
}


def store() -> Store:
    """The LSF state directory."""
    return Store("lsf")


def queue_default() -> str:
    """Default queue name (``IPPHPC_EMU_LSF_QUEUE`` or ``normal``)."""
    return os.environ.get("IPPHPC_EMU_LSF_QUEUE", "normal")


def cluster_name() -> str:
    """Cluster name shown in job reports."""
    return os.environ.get("IPPHPC_EMU_LSF_CLUSTER", "cluster1")


def lsf_time(epoch: float | None) -> str:
    """``Mar  7 00:58`` (``%b %e %H:%M``)."""
    return time.strftime("%b %e %H:%M", time.localtime(epoch)) if epoch else ""


def elem_id(job: dict[str, Any], elem: dict[str, Any]) -> str:
    """``12`` or ``12[3]``."""
    return f"{job['seq']}[{elem['index']}]" if job["array"] else str(job["seq"])


def elem_name(job: dict[str, Any], elem: dict[str, Any]) -> str:
    """Job name as bjobs shows it (``name[3]`` for array elements)."""
    return f"{job['base_name']}[{elem['index']}]" if job["array"] else job["name"]


def stat(elem: dict[str, Any]) -> str:
    """LSF state name of an element."""
    st = elem["status"]
    if st == QUEUED:
        return "PEND"
    if st == HELD:
        return "PSUSP"
    if st == RUNNING:
        return "USUSP" if elem.get("suspended") else "RUN"
    return "DONE" if elem.get("exit_code") == 0 and not elem.get("term_reason") else "EXIT"


# ---------------------------------------------------------------------------
# bsub
# ---------------------------------------------------------------------------
class UsageError(Exception):
    """Bad command line."""


def parse_bsub_args(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """Parse LSF's multi-letter options; the first non-option starts the command."""
    opts: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") or a == "-":
            return opts, args[i:]
        if a in BSUB_NO_ARG:
            opts.append((a, None))
        elif a in BSUB_WITH_ARG:
            if i + 1 >= len(args):
                raise UsageError(f"{a}: option requires an argument")
            opts.append((a, args[i + 1]))
            i += 1
        elif a[:2] in BSUB_WITH_ARG and len(a) > 2:
            opts.append((a[:2], a[2:]))
        else:
            raise UsageError(f"{a}: Illegal option")
        i += 1
    return opts, []


def script_directives(text: str) -> list[str]:
    """Option words from ``#BSUB`` lines before the first command line."""
    words: list[str] = []
    for n, line in enumerate(text.splitlines()):
        s = line.strip()
        if n == 0 and s.startswith("#!"):
            continue
        if s.startswith("#BSUB"):
            words.extend(split_directive_line(s[5:]))
            continue
        if not s or s.startswith("#"):
            continue
        break
    return words


def parse_runlimit(value: str) -> float:
    """``[hour:]minute[/host]`` to minutes."""
    value = value.split("/")[0]
    if ":" in value:
        h, m = value.split(":", 1)
        return int(h) * 60 + int(m)
    return float(int(value))


def bsub(argv: list[str]) -> int:
    """Submit a job; print ``Job <id> is submitted to [default ]queue <q>.``."""
    st = store()
    st.log_invocation("bsub", argv)
    try:
        cli_opts, command = parse_bsub_args(argv)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        print("Usage: bsub [options] command [arguments]", file=sys.stderr)
        return 255
    if command:
        script_text = None
        command_text = shlex.join(command)
        dir_opts: list[tuple[str, str | None]] = []
    else:
        script_text = sys.stdin.read()
        if not script_text.strip():
            print("bsub: No command is specified. Job not submitted.", file=sys.stderr)
            return 255
        command_text = "; ".join(line for line in script_text.splitlines() if line.strip())
        try:
            dir_opts, _ = parse_bsub_args(script_directives(script_text))
        except UsageError as exc:
            print(f"{exc}. Job not submitted.", file=sys.stderr)
            return 255
    opts = dict(dir_opts)
    opts.update(dict(cli_opts))

    queue_given = "-q" in opts
    queue = opts.get("-q") or queue_default()
    name = opts.get("-J") or command_text
    base_name, indices, max_conc = name, [], None
    m = re.fullmatch(r"(.*)\[([0-9,:\-]+)\](%(\d+))?", name) if "-J" in opts else None
    if m:
        base_name = m.group(1)
        try:
            indices = parse_index_list(m.group(2))
        except ValueError:
            print("Bad job name. Job not submitted.", file=sys.stderr)
            return 255
        if m.group(4):
            max_conc = int(m.group(4))
        name = f"{base_name}[{m.group(2)}]" + (f"%{m.group(4)}" if m.group(4) else "")
    runlimit_min = None
    if "-W" in opts:
        try:
            runlimit_min = parse_runlimit(opts["-W"] or "")
        except ValueError:
            print(f"{opts['-W']}: Bad RUNLIMIT specification. Job not submitted.", file=sys.stderr)
            return 255
    hold = "-H" in opts
    cwd = opts.get("-cwd") or os.getcwd()
    if not os.path.isabs(cwd):
        cwd = os.path.join(os.getcwd(), cwd)
    submit_env = dict(os.environ)
    env_opt = opts.get("-env")
    now = time.time()
    with st.locked():
        seq = st.next_seq()
        script_path = st.spool_dir / f"{seq}.{int(now)}"
        if script_text is not None:
            script_path.write_text(script_text)
        else:
            script_path.write_text(command_text + "\n")
        os.chmod(script_path, 0o700)
        elements = {str(i): new_element(i, hold) for i in indices} if indices else {"0": new_element(None, hold)}
        job = {
            "seq": seq,
            "flavor": "lsf",
            "name": name,
            "base_name": base_name,
            "owner": current_user(),
            "submit_host": short_hostname(),
            "queue": queue,
            "queue_given": queue_given,
            "project": opts.get("-P") or "default",
            "command": command_text,
            "from_stdin": script_text is not None,
            "script_path": str(script_path),
            "submit_cwd": os.getcwd(),
            "cwd": cwd,
            "submit_env": submit_env,
            "env_opt": env_opt,
            "out": opts.get("-oo") or opts.get("-o"),
            "out_overwrite": "-oo" in opts,
            "err": opts.get("-eo") or opts.get("-e"),
            "err_overwrite": "-eo" in opts,
            "stdout_direct": submit_env.get("LSB_STDOUT_DIRECT", "N").upper().startswith("Y"),
            "runlimit_min": runlimit_min,
            "seconds_per_minute": env_float("IPPHPC_EMU_LSF_SECONDS_PER_MINUTE", 60.0),
            "slots": int(opts.get("-n") or 1),
            "array": bool(indices),
            "indices": indices,
            "max_concurrent": max_conc,
            "ctime": now,
            "mtime": now,
            "submit_args": argv,
            "elements": elements,
        }
        st.save(job)
    st.write_config()
    st.ensure_daemon()
    where = f"queue <{queue}>" if queue_given else f"default queue <{queue}>"
    print(f"Job <{seq}> is submitted to {where}.")
    return 0


# ---------------------------------------------------------------------------
# daemon hooks
# ---------------------------------------------------------------------------
def _subst(path: str, job: dict[str, Any], elem: dict[str, Any]) -> str:
    path = path.replace("%J", str(job["seq"])).replace("%I", str(elem["index"] if elem["index"] is not None else 0))
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(job["cwd"], path)
    if os.path.isdir(path):
        path = os.path.join(path, f"{job['seq']}.out")
    return path


def walltime_seconds(job: dict[str, Any]) -> float | None:
    """Run limit in seconds (``IPPHPC_EMU_LSF_SECONDS_PER_MINUTE`` scales minutes)."""
    if job.get("runlimit_min") is None:
        return None
    return float(job["runlimit_min"]) * float(job.get("seconds_per_minute") or env_float("IPPHPC_EMU_LSF_SECONDS_PER_MINUTE", 60.0))


def walltime_plan(st: Store, job: dict[str, Any], elem: dict[str, Any], used: float, limit: float, cfg: dict[str, Any]) -> list[list[float]]:
    """Run limit reached: SIGUSR2, then SIGKILL after the grace period (10 min by default)."""
    return [[signal.SIGUSR2, float(cfg.get("lsf_runlimit_grace", 600.0))], [signal.SIGKILL, 0]]


def terminate_plan(cfg: dict[str, Any]) -> list[list[float]]:
    """bkill's default TERMINATE action: SIGINT, SIGTERM, SIGKILL, 10 s apart."""
    d = float(cfg.get("kill_delay", 10.0))
    return [[signal.SIGINT, d], [signal.SIGTERM, d], [signal.SIGKILL, 0]]


def launch_spec(st: Store, job: dict[str, Any], elem: dict[str, Any]) -> dict[str, Any]:
    """How the daemon should start an element."""
    key = f"{job['seq']}.{elem['index'] if elem['index'] is not None else 0}"
    out_final = _subst(job["out"], job, elem) if job.get("out") else None
    err_final = _subst(job["err"], job, elem) if job.get("err") else None
    spool_out = str(st.spool_dir / f"{key}.out")
    spool_err = str(st.spool_dir / f"{key}.err")
    if out_final and job["stdout_direct"]:
        if job["out_overwrite"]:
            Path(out_final).write_text("")
        stdout, append = out_final, True
    else:
        stdout, append = spool_out, False
    stderr = (err_final if job["stdout_direct"] else spool_err) if err_final else None
    elem["stdout"], elem["stderr"] = stdout, stderr
    elem["final"] = {"stdout": out_final, "stderr": err_final}
    env = _element_env(st, job, elem, out_final, err_final)
    if job["from_stdin"]:
        first = Path(job["script_path"]).read_text().split("\n", 1)[0]
        interp = first[2:].strip().split(None, 1) if first.startswith("#!") else ["/bin/sh"]
        argv = interp + [job["script_path"]]
    else:
        argv = ["/bin/sh", "-c", job["command"]]
    return {
        "argv": argv,
        "cwd": job["cwd"],
        "env": env,
        "stdout": stdout,
        "stderr": stderr,
        "append": append,
        "append_err": not job["err_overwrite"] and job["stdout_direct"],
    }


def _element_env(st: Store, job: dict[str, Any], elem: dict[str, Any], out: str | None, err: str | None) -> dict[str, str]:
    """LSF copies the submission environment and adds its own variables."""
    env_opt = (job.get("env_opt") or "all").strip()
    if env_opt.lower() == "none":
        env = {k: job["submit_env"][k] for k in ("HOME", "USER", "LOGNAME", "PATH", "SHELL") if k in job["submit_env"]}
    else:
        env = dict(job["submit_env"])
        for item in env_opt.split(","):
            item = item.strip()
            if item.startswith("~"):
                env.pop(item[1:], None)
            elif "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
    host = short_hostname()
    hostfile = st.root / "aux" / f"{job['seq']}"
    hostfile.parent.mkdir(exist_ok=True)
    hostfile.write_text((host + "\n") * job["slots"])
    env.update(
        {
            "LSB_JOBID": str(job["seq"]),
            "LSB_JOBINDEX": str(elem["index"] if elem["index"] is not None else 0),
            "LSB_BATCH_JID": elem_id(job, elem),
            "LSB_JOBNAME": elem_name(job, elem),
            "LSB_QUEUE": job["queue"],
            "LSB_HOSTS": " ".join([host] * job["slots"]),
            "LSB_MCPU_HOSTS": f"{host} {job['slots']}",
            "LSB_DJOB_HOSTFILE": str(hostfile),
            "LSB_DJOB_NUMPROC": str(job["slots"]),
            "LSB_MAX_NUM_PROCESSORS": str(job["slots"]),
            "LSB_SUB_HOST": job["submit_host"],
            "LSB_EXEC_CLUSTER": cluster_name(),
            "LSB_JOBFILENAME": job["script_path"],
            "LS_SUBCWD": job["submit_cwd"],
            "LSFUSER": job["owner"],
        }
    )
    if job["array"]:
        env["LSB_JOBINDEX_END"] = str(max(job["indices"]))
        steps = {b - a for a, b in zip(job["indices"], job["indices"][1:])}
        env["LSB_JOBINDEX_STEP"] = str(steps.pop() if len(steps) == 1 else 1)
    if out:
        env["LSB_OUTPUTFILE"] = out
    if err:
        env["LSB_ERRORFILE"] = err
    return env


def finalize(st: Store, job: dict[str, Any], elem: dict[str, Any]) -> None:
    """Record exit code and termination reason; deliver output with the job report."""
    rc = elem.get("raw_returncode")
    reason = (elem.get("kill") or {}).get("reason")
    if elem.get("launch_error"):
        code = 127
    elif rc is None:
        code = 255
    elif rc < 0:
        code = 128 - rc
    else:
        code = rc
    elem["exit_code"] = code
    if reason == "walltime":
        elem["term_reason"] = TERM_RUNLIMIT
    elif reason in ("delete", "signal") and code != 0:
        elem["term_reason"] = TERM_OWNER
    else:
        elem["term_reason"] = None
    final = elem.get("final") or {}
    out_final, err_final = final.get("stdout"), final.get("stderr")
    report = job_report(job, elem)
    if out_final:
        Path(out_final).parent.mkdir(parents=True, exist_ok=True)
        if job["stdout_direct"]:
            with open(out_final, "a") as fh:
                fh.write(report)
        else:
            body = _read(elem.get("stdout"))
            mode = "w" if job["out_overwrite"] else "a"
            with open(out_final, mode) as fh:
                fh.write(report + body)
                if err_final:
                    fh.write(f"\n\nPS:\n\nRead file <{err_final}> for stderr output of this job.\n\n")
            _unlink(elem.get("stdout"))
    if err_final and not job["stdout_direct"]:
        Path(err_final).parent.mkdir(parents=True, exist_ok=True)
        with open(err_final, "w" if job["err_overwrite"] else "a") as fh:
            fh.write(_read(elem.get("stderr")))
        _unlink(elem.get("stderr"))


def _read(path: str | None) -> str:
    try:
        return Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def job_report(job: dict[str, Any], elem: dict[str, Any]) -> str:
    """The report LSF writes to the ``-o`` file when an element ends."""
    host, user, cl = short_hostname(), job["owner"], cluster_name()
    done = elem["exit_code"] == 0 and not elem.get("term_reason")
    start, end = elem.get("start") or job["ctime"], elem.get("end") or time.time()
    lines = [
        f"Sender: LSF System <lsfadmin@{host}>",
        f"Subject: Job {elem_id(job, elem)}: <{elem_name(job, elem)}> in cluster <{cl}> {'Done' if done else 'Exited'}",
        "",
        f"Job <{elem_name(job, elem)}> was submitted from host <{job['submit_host']}> by user <{user}> in cluster <{cl}> at {ctime(job['ctime'])}",
        f"Job was executed on host(s) <{host}>, in queue <{job['queue']}>, as user <{user}> in cluster <{cl}> at {ctime(start)}",
        f"<{user_home()}> was used as the home directory.",
        f"<{job['cwd']}> was used as the working directory.",
        f"Started at {ctime(start)}",
        f"Terminated at {ctime(end)}",
        f"Results reported at {ctime(end)}",
        "",
        "Your job looked like:",
        "",
        "------------------------------------------------------------",
        "# LSBATCH: User input",
        _read(job["script_path"]).rstrip("\n"),
        "------------------------------------------------------------",
        "",
    ]
    if done:
        lines.append("Successfully completed.")
    else:
        if elem.get("term_reason"):
            lines.append(elem["term_reason"] + ".")
        lines.append(f"Exited with exit code {elem['exit_code']}.")
    run = int(end - start)
    lines += [
        "",
        "Resource usage summary:",
        "",
        "    CPU time :                                   0.00 sec.",
        "    Max Memory :                                 -",
        "    Average Memory :                             -",
        "    Total Requested Memory :                     -",
        "    Delta Memory :                               -",
        "    Max Swap :                                   -",
        "    Max Processes :                              -",
        "    Max Threads :                                -",
        f"    Run time :                                   {run} sec.",
        f"    Turnaround time :                            {int(end - job['ctime'])} sec.",
        "",
        "The output (if any) follows:",
        "",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# job selection
# ---------------------------------------------------------------------------
def parse_ref(text: str) -> tuple[int, int | None] | None:
    """``12`` or ``12[3]``."""
    m = re.fullmatch(r"\s*(\d+)(\[(\d+)\])?\s*", text)
    if not m:
        return None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) else None)


def visible_finished(job: dict[str, Any], elem: dict[str, Any], now: float) -> bool:
    """Finished elements stay visible for ``CLEAN_PERIOD`` (default 3600 s)."""
    clean = env_float("IPPHPC_EMU_LSF_CLEAN_PERIOD", 3600.0)
    return elem["status"] == DONE and now - (elem["end"] or now) <= clean


# ---------------------------------------------------------------------------
# bjobs
# ---------------------------------------------------------------------------
def field_value(job: dict[str, Any], elem: dict[str, Any], field: str, hms_fmt: bool, now: float) -> str:
    """Value of one ``bjobs -o`` field ('' when not applicable)."""
    started = elem["start"] is not None
    finished = elem["status"] == DONE
    if field == "jobid":
        return str(job["seq"])
    if field == "jobindex":
        return str(elem["index"] if elem["index"] is not None else 0)
    if field == "stat":
        return stat(elem)
    if field == "user":
        return job["owner"]
    if field == "user_group":
        return ""
    if field == "queue":
        return job["queue"]
    if field == "job_name":
        return elem_name(job, elem)
    if field == "proj_name":
        return job["project"]
    if field == "command":
        return job["command"]
    if field == "from_host":
        return job["submit_host"]
    if field in ("exec_host", "first_host"):
        return short_hostname() if started else ""
    if field == "nexec_host":
        return "1" if started else ""
    if field in ("alloc_slot",):
        return ":".join([short_hostname()] * job["slots"]) if started else ""
    if field in ("nalloc_slot", "slots"):
        return str(job["slots"]) if started else ""
    if field == "nreq_slot":
        return str(job["slots"])
    if field == "submit_time":
        return lsf_time(job["ctime"])
    if field == "start_time":
        return lsf_time(elem["start"]) if started else ""
    if field == "finish_time":
        return lsf_time(elem["end"]) + " L" if finished and elem["end"] else ""
    if field == "exit_code":
        code = elem.get("exit_code")
        return str(code) if finished and code not in (None, 0) else ""
    if field == "exit_reason":
        return elem.get("term_reason") or "" if finished else ""
    if field == "pend_reason":
        if elem["status"] == QUEUED:
            return "New job is waiting for scheduling;"
        if elem["status"] == HELD:
            return "The job was suspended by user;"
        return ""
    if field == "pids":
        return str(elem["pid"]) if elem["status"] == RUNNING and elem["pid"] else ""
    if field == "run_time":
        secs = int(((elem["end"] or now) - elem["start"])) if started else 0
        return hms(secs) if hms_fmt else f"{secs} second(s)"
    if field == "cpu_used":
        return "00:00:00" if hms_fmt else "0.0 second(s)"
    if field == "runtimelimit":
        if job.get("runlimit_min") is None:
            return ""
        return hms(job["runlimit_min"] * 60) if hms_fmt else f"{float(job['runlimit_min']):.1f}"
    if field == "pend_time":
        return str(int((elem["start"] or now) - job["ctime"]))
    if field == "output_file":
        return _subst(job["out"], job, elem) if job.get("out") else ""
    if field == "error_file":
        return _subst(job["err"], job, elem) if job.get("err") else ""
    if field == "sub_cwd":
        return job["submit_cwd"]
    if field == "exec_cwd":
        return job["cwd"] if started else ""
    if field == "exec_home":
        return user_home() if started else ""
    if field in ("mem", "max_mem", "avg_mem", "swap", "memlimit", "swaplimit", "job_description", "job_group",
                 "dependency", "application", "service_class", "job_priority", "nthreads", "input_file"):
        return ""
    raise KeyError(field)


def parse_format(spec: str) -> tuple[list[tuple[str, int | None, bool]], str]:
    """Parse ``"jobid stat:-5 job_name:10 delimiter='^'"``."""
    delimiter = " "
    m = re.search(r"delimiter=(['\"])(.*?)\1", spec)
    if m:
        delimiter = m.group(2)
        spec = spec[: m.start()] + spec[m.end() :]
    fields: list[tuple[str, int | None, bool]] = []
    for word in spec.split():
        parts = word.split(":")
        name = FIELD_ALIASES.get(parts[0].lower(), parts[0].lower())
        width: int | None = None
        right = False
        if len(parts) > 1 and parts[1]:
            w = parts[1]
            if w.startswith("-"):
                right, w = True, w[1:]
            if w.isdigit():
                width = int(w)
        fields.append((name, width, right))
    return fields, delimiter


def _fit(value: str, width: int | None, right: bool, field: str) -> str:
    if width is None:
        return value
    if len(value) > width:
        value = "*" + value[len(value) - width + 1 :] if field == "job_name" else value[:width]
    return value.rjust(width) if right else value.ljust(width)


def _trunc_name(name: str, width: int) -> str:
    """openlava TRUNC_STR: keep the last ``width - 1`` characters behind ``*``."""
    return "*" + name[len(name) - width + 1 :] if len(name) > width else name


def bjobs(argv: list[str]) -> int:
    """Report job status (table, ``-w``, ``-l``, ``-o``, ``-json``, ``-noheader``)."""
    st = store()
    st.log_invocation("bjobs", argv)
    show_all = done_only = pend_only = run_only = noheader = wide = long_fmt = as_json = hms_fmt = False
    fmt: str | None = os.environ.get("LSB_BJOBS_FORMAT")
    operands: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-a":
            show_all = True
        elif a == "-d":
            done_only = True
        elif a == "-p":
            pend_only = True
        elif a == "-r":
            run_only = True
        elif a == "-noheader":
            noheader = True
        elif a in ("-w", "-W"):
            wide = True
        elif a == "-l":
            long_fmt = True
        elif a == "-json":
            as_json = True
        elif a == "-hms":
            hms_fmt = True
        elif a == "-o":
            i += 1
            fmt = argv[i] if i < len(argv) else ""
        elif a in ("-u", "-q", "-J", "-m", "-P", "-g", "-G", "-sla", "-app", "-Lp"):
            i += 1
        elif a in ("-A", "-s", "-x", "-X", "-UF", "-aff", "-data", "-env", "-psum", "-sum", "-prio", "-ss", "-N"):
            pass
        elif a.startswith("-"):
            print(f"{a}: Illegal option", file=sys.stderr)
            print("Usage: bjobs [-h] [-V] [-w |-l] [-a] [-d] [-p] [-s] [-r] [-o format [-json]] [-noheader] [jobId ...]", file=sys.stderr)
            return 255
        else:
            operands.append(a)
        i += 1
    if as_json and noheader:
        print("bjobs: -json cannot be used with -noheader.", file=sys.stderr)
        return 255

    now = time.time()
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    errors: list[str] = []
    found = 0
    if operands:
        for op in operands:
            ref = parse_ref(op)
            job = st.load(ref[0]) if ref else None
            elems: list[dict[str, Any]] = []
            if job is not None:
                for e in sorted_elements(job):
                    if ref[1] is not None and e["index"] != ref[1]:
                        continue
                    if e["status"] == DONE and not visible_finished(job, e, now):
                        continue
                    elems.append(e)
            if not elems:
                errors.append(f"Job <{op}> is not found")
                continue
            found += 1
            rows.extend((job, e) for e in elems)  # type: ignore[misc]
    else:
        for job in st.all_jobs():
            for e in sorted_elements(job):
                finished = e["status"] == DONE
                if finished and not visible_finished(job, e, now):
                    continue
                if done_only and not finished:
                    continue
                if not (show_all or done_only) and finished:
                    continue
                if pend_only and e["status"] not in (QUEUED, HELD):
                    continue
                if run_only and e["status"] != RUNNING:
                    continue
                rows.append((job, e))

    for line in errors:
        print(line, file=sys.stderr)
    if not rows:
        if not operands:
            if done_only:
                msg = "No done job found"
            elif pend_only:
                msg = "No pending job found"
            elif run_only:
                msg = "No running job found"
            elif show_all:
                msg = "No job found"
            else:
                msg = "No unfinished job found"
            print(msg, file=sys.stderr)
            return 255
        # Observed on LSF 10: a single unknown id prints the error and exits 0.
        return 0

    if fmt:
        fields, delim = parse_format(fmt)
        try:
            table = [[field_value(j, e, f, hms_fmt, now) for f, _, _ in fields] for j, e in rows]
        except KeyError as exc:
            print(f"bjobs: {exc.args[0]}: Invalid field name in the output format.", file=sys.stderr)
            return 255
        if as_json:
            records = [{f.upper(): v for (f, _, _), v in zip(fields, vals)} for vals in table]
            print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2, separators=(",", ":")))
        else:
            out = []
            if not noheader:
                out.append(delim.join(_fit(f.upper(), w, r, "") for f, w, r in fields))
            for vals in table:
                out.append(delim.join(_fit(v or "-", w, r, f) for (f, w, r), v in zip(fields, vals)))
            print("\n".join(out))
    elif long_fmt:
        print(("\n" + "-" * 78 + "\n").join(_long(j, e, now) for j, e in rows))
    else:
        out = []
        if not noheader:
            out.append("JOBID   USER    STAT  QUEUE      FROM_HOST   EXEC_HOST   JOB_NAME   SUBMIT_TIME")
        for j, e in rows:
            exec_host = short_hostname() if e["start"] is not None and e["status"] != QUEUED else ""
            name = elem_name(j, e)
            if wide:
                out.append(f"{j['seq']:<7} {j['owner']:<7} {stat(e):<5} {j['queue']:<10} {j['submit_host']:<11} "
                           f"{exec_host:<11} {name:<10} {lsf_time(j['ctime'])}")
            else:
                out.append(f"{j['seq']:<7} {j['owner'][:7]:<7} {stat(e)[:5]:<5} {j['queue'][:10]:<10} "
                           f"{j['submit_host'][:11]:<11} {exec_host[:11]:<11} {_trunc_name(name, 10):<10} {lsf_time(j['ctime'])}")
        print("\n".join(out))
    if errors and found:
        return 255
    return 0


def _wrap(text: str) -> str:
    """Wrap ``bjobs -l`` lines at 79 columns with a 21-space continuation indent."""
    out: list[str] = []
    for line in text.split("\n"):
        while len(line) > 79:
            cut = line.rfind(" ", 0, 79)
            if cut <= 21:
                cut = 79
            out.append(line[:cut].rstrip())
            line = " " * 21 + line[cut:].lstrip()
        out.append(line)
    return "\n".join(out)


def _long(job: dict[str, Any], elem: dict[str, Any], now: float) -> str:
    """Approximation of ``bjobs -l`` for one element."""
    host = short_hostname()
    fmt_t = lambda t: time.strftime("%a %b %e %H:%M:%S", time.localtime(t))  # noqa: E731
    lines = [
        "",
        f"Job <{elem_id(job, elem)}>, Job Name <{elem_name(job, elem)}>, User <{job['owner']}>, Project <{job['project']}>, "
        f"Status <{stat(elem)}>, Queue <{job['queue']}>, Command <{job['command']}>",
        f"{fmt_t(job['ctime'])}: Submitted from host <{job['submit_host']}>, CWD <{job['submit_cwd']}>"
        + (f", Output File <{job['out']}>" if job.get("out") else "")
        + (f", Error File <{job['err']}>" if job.get("err") else "") + ";",
    ]
    if job.get("runlimit_min") is not None:
        lines += ["", " RUNLIMIT", f" {float(job['runlimit_min']):.1f} min", ""]
    if elem["start"]:
        lines.append(f"{fmt_t(elem['start'])}: Started 1 Task(s) on Host(s) <{host}>, Allocated {job['slots']} Slot(s) on Host(s) <{host}>, "
                     f"Execution Home <{user_home()}>, Execution CWD <{job['cwd']}>;")
    if elem["status"] == DONE and elem["end"]:
        if stat(elem) == "DONE":
            lines.append(f"{fmt_t(elem['end'])}: Done successfully. The CPU time used is 0.0 seconds.")
        else:
            if elem.get("exit_code") is not None and elem["start"]:
                lines.append(f"{fmt_t(elem['end'])}: Exited with exit code {elem['exit_code']}. The CPU time used is 0.0 seconds.")
            if elem.get("term_reason"):
                lines.append(f"{fmt_t(elem['end'])}: Completed <exit>; {elem['term_reason']}.")
            else:
                lines.append(f"{fmt_t(elem['end'])}: Completed <exit>.")
    elif elem["status"] in (QUEUED, HELD):
        lines += ["", " PENDING REASONS:", " " + (field_value(job, elem, "pend_reason", False, now) or "")]
    return _wrap("\n".join(lines))


# ---------------------------------------------------------------------------
# bkill / bstop / bresume
# ---------------------------------------------------------------------------
def _select_for_control(st: Store, op: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    ref = parse_ref(op)
    if ref is None:
        return None, []
    job = st.load(ref[0])
    if job is None:
        return None, []
    elems = [e for e in sorted_elements(job) if ref[1] is None or e["index"] == ref[1]]
    return job, elems


def _control(command: str, argv: list[str]) -> int:
    """Shared body of bkill, bstop and bresume."""
    st = store()
    st.log_invocation(command, argv)
    sig_name: str | None = None
    operands: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-s" and i + 1 < len(argv):
            sig_name = argv[i + 1]
            i += 1
        elif a in ("-J", "-q", "-u", "-m", "-g", "-app", "-sla", "-C", "-stat"):
            i += 1
        elif a.startswith("-"):
            pass
        else:
            operands.append(a)
        i += 1
    if not operands:
        print(f"Usage: {command} [-s signal] jobId | \"jobId[index_list]\" ...", file=sys.stderr)
        return 255
    cfg = st.config()
    now = time.time()
    rc = 0
    with st.locked():
        if operands == ["0"]:
            operands = [str(j["seq"]) for j in st.all_jobs() if any(e["status"] != DONE for e in j["elements"].values())]
        for op in operands:
            job, elems = _select_for_control(st, op)
            if job is None or not elems:
                print(f"Job <{op}>: No matching job found", file=sys.stderr)
                rc = 255
                continue
            live = [e for e in elems if e["status"] != DONE]
            if not live:
                print(f"Job <{op}>: Job has already finished", file=sys.stderr)
                rc = 255
                continue
            if command == "bkill":
                for e in live:
                    if e["status"] in (QUEUED, HELD):
                        e["status"] = DONE
                        e["deleted"] = True
                        e["end"] = now
                        e["exit_code"] = None
                        e["term_reason"] = TERM_OWNER
                    elif sig_name:
                        try:
                            signal_group(e["pid"], _signal(sig_name))
                        except (AttributeError, ValueError):
                            print(f"{sig_name}: Illegal signal value", file=sys.stderr)
                            return 255
                        if e.get("kill") is None:
                            e["kill"] = {"reason": "signal", "plan": [], "step": 0, "next": 0.0}
                    elif not (e.get("kill") and e["kill"]["reason"] == "delete"):
                        e["kill"] = {"reason": "delete", "plan": terminate_plan(cfg), "step": 0, "next": 0.0}
                print(f"Job <{op}> is being {'signaled' if sig_name else 'terminated'}")
            elif command == "bstop":
                for e in live:
                    if e["status"] == QUEUED:
                        e["status"] = HELD
                    elif e["status"] == RUNNING and not e.get("suspended"):
                        signal_group(e["pid"], signal.SIGSTOP)
                        e["suspended"] = True
                print(f"Job <{op}> is being stopped")
            elif command == "bresume":
                for e in live:
                    if e["status"] == HELD:
                        e["status"] = QUEUED
                    elif e["status"] == RUNNING and e.get("suspended"):
                        signal_group(e["pid"], signal.SIGCONT)
                        e["suspended"] = False
                print(f"Job <{op}> is being resumed")
            job["mtime"] = now
            st.save(job)
    st.write_config()
    st.ensure_daemon()
    return rc


def _signal(name: str) -> int:
    from .common import signal_number

    return signal_number(name)


def bkill(argv: list[str]) -> int:
    """Kill jobs (SIGINT, SIGTERM, SIGKILL) or send ``-s`` signal."""
    return _control("bkill", argv)


def bstop(argv: list[str]) -> int:
    """Suspend jobs (PEND -> PSUSP, RUN -> USUSP)."""
    return _control("bstop", argv)


def bresume(argv: list[str]) -> int:
    """Resume suspended jobs."""
    return _control("bresume", argv)


# ---------------------------------------------------------------------------
# bhist
# ---------------------------------------------------------------------------
def bhist(argv: list[str]) -> int:
    """Job history: time summary table, or ``-l`` event history."""
    st = store()
    st.log_invocation("bhist", argv)
    long_fmt = "-l" in argv
    operands = [a for a in argv if not a.startswith("-")]
    now = time.time()
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for job in st.all_jobs():
        for e in sorted_elements(job):
            if operands:
                if not any((r := parse_ref(o)) and r[0] == job["seq"] and (r[1] is None or r[1] == e["index"]) for o in operands):
                    continue
            elif e["status"] == DONE and "-a" not in argv and "-d" not in argv:
                continue
            rows.append((job, e))
    if not rows:
        print("No matching job found", file=sys.stderr)
        return 255
    if long_fmt:
        blocks = []
        fmt_t = lambda t: time.strftime("%a %b %e %H:%M:%S", time.localtime(t))  # noqa: E731
        for job, e in rows:
            pend, run = _durations(job, e, now)
            lines = [
                "",
                f"Job <{elem_id(job, e)}>, Job Name <{elem_name(job, e)}>, User <{job['owner']}>, Project <{job['project']}>, Command <{job['command']}>",
                f"{fmt_t(job['ctime'])}: Submitted from host <{job['submit_host']}>, to Queue <{job['queue']}>, CWD <{job['submit_cwd']}>;",
            ]
            if e["start"]:
                lines.append(f"{fmt_t(e['start'])}: Dispatched 1 Task(s) on Host(s) <{short_hostname()}>, Allocated {job['slots']} Slot(s) on Host(s) <{short_hostname()}>, Effective RES_REQ <select[type == local] order[r15s:pg] >;")
                lines.append(f"{fmt_t(e['start'])}: Starting (Pid {e['pid']});")
            if e["status"] == DONE and e["end"]:
                if stat(e) == "DONE":
                    lines.append(f"{fmt_t(e['end'])}: Done successfully. The CPU time used is 0.0 seconds;")
                    lines.append(f"{fmt_t(e['end'])}: Post job process done successfully;")
                else:
                    if e.get("exit_code") is not None and e["start"]:
                        lines.append(f"{fmt_t(e['end'])}: Exited with exit code {e['exit_code']}. The CPU time used is 0.0 seconds;")
                    lines.append(f"{fmt_t(e['end'])}: Completed <exit>" + (f"; {e['term_reason']}." if e.get("term_reason") else "."))
            lines += [
                "",
                f"Summary of time in seconds spent in various states by  {fmt_t(now)}",
                "  PEND     PSUSP    RUN      USUSP    SSUSP    UNKWN    TOTAL",
                f"  {pend:<8} {0:<8} {run:<8} {0:<8} {0:<8} {0:<8} {pend + run:<8}",
            ]
            blocks.append(_wrap("\n".join(lines)))
        print(("\n" + "-" * 78 + "\n").join(blocks))
        return 0
    out = ["Summary of time in seconds spent in various states:",
           "JOBID   USER    JOB_NAME  PEND    PSUSP   RUN     USUSP   SSUSP   UNKWN   TOTAL"]
    for job, e in rows:
        pend, run = _durations(job, e, now)
        out.append(f"{elem_id(job, e):<7} {job['owner'][:7]:<7} {_trunc_name(elem_name(job, e), 9):<9} {pend:<7} {0:<7} {run:<7} "
                   f"{0:<7} {0:<7} {0:<7} {pend + run:<7}")
    print("\n".join(out))
    return 0


def _durations(job: dict[str, Any], e: dict[str, Any], now: float) -> tuple[int, int]:
    start = e["start"]
    pend = int((start or e["end"] or now) - job["ctime"])
    run = int(((e["end"] or now) - start)) if start else 0
    return pend, run


COMMANDS = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill, "bhist": bhist, "bstop": bstop, "bresume": bresume}


def main(command: str) -> None:
    """Run one of the commands with ``sys.argv``."""
    sys.exit(COMMANDS[command](sys.argv[1:]))
