"""PBS Professional / OpenPBS and Torque emulation: qsub, qstat, qdel, qhold, qrls.

The flavour is chosen by ``IPPHPC_EMU_FLAVOR`` (``pbspro``, the default, or
``torque``).  Formats follow the upstream sources and documentation:

* OpenPBS ``src/cmds/qstat.c`` (display_statjob, prt_attr, main): default
  table ``"%-17s %-16s %-16s  %8s %1s %-16s"`` with ``*`` truncation, the
  ``Job Id:`` / ``    attr = value`` full display wrapped at 78 columns, the
  ``-F json`` prologue ``timestamp``/``pbs_version``/``pbs_server`` followed by
  ``Jobs`` (omitted when no job is shown), ``qstat: Unknown Job Id <id>``
  with exit status ``PBSE_UNKJOBID & 0xff`` = 153, and for finished jobs
  without ``-x`` ``qstat: <id> Job has finished, use -x or -H to obtain
  historical job information`` with ``PBSE_HISTJOBID (15139) & 0xff`` = 35.
* OpenPBS ``src/include/job.h``: ``JOB_EXEC_KILL_WALLTIME = -29``; the job's
  stderr gets ``=>> PBS: job killed: walltime <used> exceeded limit <limit>``.
* Torque ``src/cmds/qstat.c`` (display_statjob, create_full_job_xml): table
  header ``Job ID ... Time Use S Queue`` with ``"%-26s %-16s %-15s %8s %1s %-15s"``,
  ``-x`` prints ``<?xml version="1.0"?>`` then ``<Data><Job><Job_Id>...``
  with resources as nested elements and times as epoch seconds; unknown jobs
  give ``qstat: Unknown Job Id Error <id>``.
* Torque 6.1.2 admin guide, "Job exit status": ``JOB_EXEC_OVERLIMIT_WT = -11``
  (job exceeded a walltime limit); Adaptive Computing KB: 271 (256+SIGTERM)
  for cancelled running jobs; completed jobs stay visible as ``C`` for
  ``keep_completed`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .common import (
    DONE,
    HELD,
    QUEUED,
    RUNNING,
    Store,
    compress_indices,
    ctime,
    current_user,
    env_float,
    hms,
    new_element,
    parse_index_list,
    short_hostname,
    sorted_elements,
    split_directive_line,
    user_home,
    user_shell,
)

PBSE_UNKJOBID = 15001
PBSE_HISTJOBID = 15139
PBSE_BADSTATE = 15018
JOB_EXEC_FAIL1 = -1
JOB_EXEC_KILL_WALLTIME = -29  # OpenPBS src/include/job.h
TORQUE_JOB_EXEC_OVERLIMIT_WT = -11  # Torque 6.1.2 admin guide, job exit status
CHAR_LINE_LIMIT = 78

# qsub options that take an argument (PBS Pro and Torque together).
WITH_ARG = set("aAbcCdDeEFgGjJklLmMNoOpPqrSTtuvwWx")
NO_ARG = set("fhIVXzn")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def flavor() -> str:
    """``pbspro`` or ``torque`` from ``IPPHPC_EMU_FLAVOR``."""
    value = os.environ.get("IPPHPC_EMU_FLAVOR", "pbspro").strip().lower()
    return "torque" if value in ("torque", "pbs_torque") else "pbspro"


def server_name() -> str:
    """Name of the emulated server (``IPPHPC_EMU_SERVER`` or the short host name)."""
    return os.environ.get("IPPHPC_EMU_SERVER") or short_hostname()


def store() -> Store:
    """The PBS state directory."""
    return Store("pbs")


def parse_walltime(value: str) -> int:
    """``[[HH:]MM:]SS`` (fractions ignored) to seconds."""
    parts = value.strip().split(":")
    total = 0.0
    for p in parts:
        total = total * 60 + float(p or 0)
    return int(total)


def job_id(job: dict[str, Any], index: int | None = None, array_parent: bool = False) -> str:
    """``12.server``, ``12[].server`` or ``12[3].server``."""
    seq = job["seq"]
    if array_parent:
        return f"{seq}[].{job['server']}"
    if index is not None and job["array"]:
        return f"{seq}[{index}].{job['server']}"
    return f"{seq}.{job['server']}"


def parse_job_ref(text: str) -> tuple[int, str, int | None] | None:
    """Parse ``12``, ``12.srv``, ``12[]``, ``12[3].srv`` into (seq, kind, index).

    ``kind`` is ``plain`` (no brackets), ``array`` (``[]``) or ``sub`` (``[n]``).
    """
    m = re.fullmatch(r"(\d+)(\[(\d*)\])?(\..*)?", text.strip())
    if not m:
        return None
    seq = int(m.group(1))
    if m.group(2) is None:
        return seq, "plain", None
    if m.group(3) == "":
        return seq, "array", None
    return seq, "sub", int(m.group(3))


def full_ref(text: str) -> str:
    """Complete a job id given without server name, as the commands echo it."""
    text = text.strip()
    if "." in text:
        return text
    return f"{text}.{server_name()}"


def elem_state(job: dict[str, Any], elem: dict[str, Any], fl: str) -> str:
    """State letter of one element (or of a non-array job)."""
    st = elem["status"]
    if st == QUEUED:
        return "Q"
    if st == HELD:
        return "H"
    if st == RUNNING:
        return "E" if elem.get("kill") and elem["kill"]["reason"] == "delete" else "R"
    if fl == "torque":
        return "C"
    return "X" if job["array"] else "F"


def array_state(job: dict[str, Any], fl: str) -> str:
    """State letter of an array parent."""
    elems = list(job["elements"].values())
    statuses = [e["status"] for e in elems]
    if all(s == DONE for s in statuses):
        return "C" if fl == "torque" else "F"
    if fl == "torque":
        if RUNNING in statuses:
            return "R"
        if QUEUED in statuses:
            return "Q"
        return "H"
    begun = any(e["start"] is not None or e["status"] == DONE for e in elems)
    if begun:
        return "B"
    return "H" if HELD in statuses else "Q"


def job_finished(job: dict[str, Any]) -> bool:
    """True once every element is done."""
    return all(e["status"] == DONE for e in job["elements"].values())


def finished_at(job: dict[str, Any]) -> float:
    """When the last element ended."""
    return max((e["end"] or 0.0) for e in job["elements"].values())


def torque_visible(job: dict[str, Any], now: float) -> bool:
    """Torque keeps completed jobs for ``keep_completed`` seconds."""
    if not job_finished(job):
        return True
    keep = env_float("IPPHPC_EMU_KEEP_COMPLETED", 300.0)
    return now - finished_at(job) <= keep


# ---------------------------------------------------------------------------
# qsub
# ---------------------------------------------------------------------------
class UsageError(Exception):
    """Bad command line."""


def parse_opts(args: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """getopt-style parsing of qsub options; returns (options, operands)."""
    opts: list[tuple[str, str | None]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return opts, args[i:]
        if not a.startswith("-") or a == "-":
            return opts, args[i:]
        j = 1
        while j < len(a):
            ch = a[j]
            if ch in WITH_ARG:
                if j + 1 < len(a):
                    opts.append((ch, a[j + 1 :]))
                else:
                    i += 1
                    if i >= len(args):
                        raise UsageError(f"option requires an argument -- '{ch}'")
                    opts.append((ch, args[i]))
                break
            if ch in NO_ARG:
                opts.append((ch, None))
                j += 1
                continue
            raise UsageError(f"invalid option -- '{ch}'")
        i += 1
    return opts, []


def script_directives(text: str, prefix: str) -> list[str]:
    """Option words from ``#PBS`` lines before the first executable line."""
    words: list[str] = []
    for n, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if n == 0 and stripped.startswith("#!"):
            continue
        if not stripped or (stripped.startswith("#") and not stripped.startswith(prefix)):
            continue
        if stripped.startswith(prefix):
            rest = stripped[len(prefix) :]
            if rest and not rest[0].isspace():
                continue
            words.extend(split_directive_line(rest))
            continue
        break
    return words


def merge_resources(res: dict[str, str], spec: str) -> None:
    """Add ``-l a=b,c=d`` resources (``select=`` keeps its own colons)."""
    for part in re.split(r",(?=[A-Za-z_]+=)", spec):
        if "=" in part:
            k, v = part.split("=", 1)
            res[k.strip()] = v.strip()
        elif part.strip():
            res[part.strip()] = "True"


def qsub(argv: list[str]) -> int:
    """Submit a job; print its id."""
    st = store()
    st.log_invocation("qsub", argv)
    fl = flavor()
    try:
        cli_opts, operands = parse_opts(argv)
    except UsageError as exc:
        print(f"qsub: {exc}", file=sys.stderr)
        print("usage: qsub [-a date_time] [-A account_string] [-e path] [-h] [-J X-Y[:Z]] [-j oe|eo|n]\n"
              "\t[-k keep] [-l resource_list] [-N name] [-o path] [-q queue] [-S path] [-v variable_list]\n"
              "\t[-V] [-W additional_attributes] [script | -- executable [arglist]]", file=sys.stderr)
        return 2

    submit_cwd = os.getcwd()
    command_args: list[str] | None = None
    script_file: str | None = None
    if operands and operands[0] == "--":
        command_args = operands[1:]
        if not command_args:
            print("qsub: no executable given after --", file=sys.stderr)
            return 2
        script_text = " ".join(_shell_quote(a) for a in command_args) + "\n"
        default_name = os.path.basename(command_args[0])
    elif operands:
        script_file = operands[0]
        try:
            script_text = Path(script_file).read_text()
        except OSError:
            print("qsub: script file:: No such file or directory", file=sys.stderr)
            return 1
        default_name = os.path.basename(script_file)
    else:
        script_text = sys.stdin.read()
        default_name = "STDIN"

    prefix = "#PBS"
    for k, v in cli_opts:
        if k == "C" and v:
            prefix = v
    directive_words = script_directives(script_text, prefix) if command_args is None else []
    try:
        dir_opts, _ = parse_opts(directive_words)
    except UsageError as exc:
        print(f"qsub: directive error: {exc}", file=sys.stderr)
        return 2
    opts = dir_opts + cli_opts  # command line wins (applied last)

    name = default_name
    queue = os.environ.get("IPPHPC_EMU_QUEUE") or ("batch" if fl == "torque" else "workq")
    resources: dict[str, str] = {}
    out_path = err_path = None
    join = "n"
    keep = "n"
    hold = False
    account = None
    shell_path = None
    array_spec = None
    pass_env = False
    var_specs: list[str] = []
    workdir = None
    max_concurrent = None
    for k, v in opts:
        if k == "N":
            name = v or name
        elif k == "q":
            queue = (v or queue).split("@")[0] or queue
        elif k == "l":
            merge_resources(resources, v or "")
        elif k == "o":
            out_path = v
        elif k == "e":
            err_path = v
        elif k == "j":
            join = v or "n"
        elif k == "k":
            keep = v or "n"
        elif k == "h":
            hold = True
        elif k == "A":
            account = v
        elif k == "S":
            shell_path = (v or "").split(",")[0].split("@")[0] or None
        elif k == "J" and fl == "pbspro":
            array_spec = v
        elif k == "t" and fl == "torque":
            array_spec = v
        elif k == "V":
            pass_env = True
        elif k == "v":
            var_specs.append(v or "")
        elif k in ("d", "w") and fl == "torque":
            workdir = v
        elif k == "W":
            for item in (v or "").split(","):
                if item.startswith("depend=") or item.startswith("sandbox="):
                    continue

    indices: list[int] = []
    if array_spec:
        spec = array_spec
        if fl == "torque" and "%" in spec:
            spec, slot = spec.split("%", 1)
            max_concurrent = int(slot)
        try:
            if fl == "pbspro":
                m = re.fullmatch(r"(\d+)-(\d+)(:(\d+))?(%(\d+))?", spec.strip())
                if not m or int(m.group(2)) <= int(m.group(1)):
                    raise ValueError(spec)
                indices = list(range(int(m.group(1)), int(m.group(2)) + 1, int(m.group(4) or 1)))
                if m.group(6):
                    max_concurrent = int(m.group(6))
            else:
                indices = parse_index_list(spec)
        except ValueError:
            print(f"qsub: illegal -{'J' if fl == 'pbspro' else 't'} value", file=sys.stderr)
            return 2

    walltime_s = None
    if "walltime" in resources:
        try:
            walltime_s = parse_walltime(resources["walltime"])
            resources["walltime"] = hms(walltime_s)
        except ValueError:
            print("qsub: Illegal attribute or resource value Resource_List.walltime", file=sys.stderr)
            return 1

    submit_env = dict(os.environ)
    variable_list: dict[str, str] = {}
    for var in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ"):
        if var in submit_env:
            variable_list[f"PBS_O_{var}"] = submit_env[var]
    variable_list["PBS_O_WORKDIR"] = submit_cwd
    variable_list["PBS_O_SYSTEM"] = os.uname().sysname
    variable_list["PBS_O_QUEUE"] = queue
    variable_list["PBS_O_HOST"] = short_hostname()
    extra_vars: dict[str, str] = {}
    for spec in var_specs:
        for item in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*(=|,|$))", spec):
            if not item or item in ("=",):
                continue
            if "=" in item:
                k2, v2 = item.split("=", 1)
                extra_vars[k2] = v2.strip("'\"")
            elif item in submit_env:
                extra_vars[item] = submit_env[item]

    user = current_user()
    now = time.time()
    with st.locked():
        seq = st.next_seq()
        script_path = st.spool_dir / f"{seq}.SC"
        script_path.write_text(script_text)
        os.chmod(script_path, 0o700)
        elements = {}
        if indices:
            for i in indices:
                elements[str(i)] = new_element(i, hold)
        else:
            elements["0"] = new_element(None, hold)
        job = {
            "seq": seq,
            "flavor": fl,
            "server": server_name(),
            "name": name,
            "owner": user,
            "submit_host": short_hostname(),
            "queue": queue,
            "account": account,
            "script_path": str(script_path),
            "script_file": script_file,
            "shell_path": shell_path,
            "submit_cwd": submit_cwd,
            "workdir": workdir,
            "submit_env": submit_env if pass_env else {},
            "pass_env": pass_env,
            "variable_list": variable_list,
            "extra_vars": extra_vars,
            "resources": resources,
            "walltime_s": walltime_s,
            "array": bool(indices),
            "array_spec": array_spec,
            "indices": indices,
            "max_concurrent": max_concurrent,
            "out_path": out_path,
            "err_path": err_path,
            "join": join,
            "keep": keep,
            "hold_at_submit": hold,
            "ctime": now,
            "mtime": now,
            "submit_args": argv,
            "elements": elements,
        }
        st.save(job)
    st.write_config()
    st.ensure_daemon()
    print(job_id(job, array_parent=bool(indices)))
    return 0


def _shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


# ---------------------------------------------------------------------------
# daemon hooks
# ---------------------------------------------------------------------------
def default_name(job: dict[str, Any], elem: dict[str, Any], stream: str) -> str:
    """``<name>.o<seq>`` (PBS Pro subjob: ``.o<seq>.<idx>``, Torque: ``.o<seq>-<idx>``)."""
    base = f"{job['name']}.{stream}{job['seq']}"
    if job["array"] and elem["index"] is not None:
        sep = "-" if job["flavor"] == "torque" else "."
        base += f"{sep}{elem['index']}"
    return base


def final_path(job: dict[str, Any], elem: dict[str, Any], stream: str) -> str:
    """Destination of the output (``o``) or error (``e``) file of an element."""
    requested = job["out_path"] if stream == "o" else job["err_path"]
    base_dir = job["submit_cwd"]
    if requested:
        path = requested.split(":", 1)[1] if re.match(r"^[^/]+:", requested) else requested
        if elem["index"] is not None:
            path = path.replace("^array_index^", str(elem["index"]))
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        if os.path.isdir(path):
            path = os.path.join(path, default_name(job, elem, stream))
        return path
    if stream in job.get("keep", "n") and "d" not in job.get("keep", "n"):
        return os.path.join(user_home(), default_name(job, elem, stream))
    return os.path.join(base_dir, default_name(job, elem, stream))


def display_path(job: dict[str, Any], stream: str) -> str:
    """Output_Path / Error_Path attribute value (``host:/path``)."""
    elem = {"index": None}
    fake = dict(job, array=False)
    path = final_path(fake, elem, stream)
    if job["array"]:
        path = path.replace(default_name(fake, elem, stream), default_name(fake, elem, stream) + (".^array_index^" if job["flavor"] == "pbspro" else ""))
    return f"{job['submit_host']}:{path}"


def walltime_seconds(job: dict[str, Any]) -> float | None:
    """Requested walltime in seconds."""
    return job.get("walltime_s")


def kill_delay(cfg: dict[str, Any]) -> float:
    """Seconds between SIGTERM and SIGKILL (PBS ``kill_delay``, default 10)."""
    return float(cfg.get("kill_delay", 10.0))


def walltime_plan(st: Store, job: dict[str, Any], elem: dict[str, Any], used: float, limit: float, cfg: dict[str, Any]) -> list[list[float]]:
    """Write the mom's message to the job's stderr, then SIGTERM, kill_delay, SIGKILL."""
    target = elem.get("stderr") or elem.get("stdout")
    if target:
        try:
            with open(target, "a") as fh:
                fh.write(f"=>> PBS: job killed: walltime {int(used)} exceeded limit {int(limit)}\n")
        except OSError:
            pass
    return [[signal.SIGTERM, kill_delay(cfg)], [signal.SIGKILL, 0]]


def delete_plan(cfg: dict[str, Any], force: bool = False) -> list[list[float]]:
    """qdel: SIGTERM, wait kill_delay, SIGKILL (``-W force``: SIGKILL at once)."""
    if force:
        return [[signal.SIGKILL, 0]]
    return [[signal.SIGTERM, kill_delay(cfg)], [signal.SIGKILL, 0]]


def nodefile(st: Store, job: dict[str, Any]) -> str:
    """Write the node file (one line per MPI process slot) and return its path."""
    res = job["resources"]
    count = 1
    if "select" in res:
        m = re.match(r"(\d+)?(.*)", res["select"])
        chunks = int(m.group(1) or 1) if m else 1
        per = 1
        mm = re.search(r"mpiprocs=(\d+)", res["select"]) or re.search(r"ncpus=(\d+)", res["select"])
        if mm:
            per = int(mm.group(1))
        count = chunks * per
    elif "nodes" in res:
        m = re.match(r"(\d+)(:ppn=(\d+))?", res["nodes"])
        if m:
            count = int(m.group(1)) * int(m.group(3) or 1)
    path = st.root / "aux" / str(job["seq"])
    path.parent.mkdir(exist_ok=True)
    path.write_text((short_hostname() + "\n") * max(1, count))
    return str(path)


def element_env(st: Store, job: dict[str, Any], elem: dict[str, Any]) -> dict[str, str]:
    """Environment of a running element, as the mom would build it."""
    fl = job["flavor"]
    home = user_home()
    if job["pass_env"]:
        env = dict(job["submit_env"])
    else:
        env = {
            "HOME": home,
            "LOGNAME": job["owner"],
            "USER": job["owner"],
            "SHELL": user_shell(),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        for var in ("LANG", "TZ", "MAIL"):
            if f"PBS_O_{var}" in job["variable_list"]:
                env[var] = job["variable_list"][f"PBS_O_{var}"]
    env.update(job["variable_list"])
    env.update(job["extra_vars"])
    jid = job_id(job, elem["index"])
    tmpdir = st.root / "tmp" / jid
    tmpdir.mkdir(parents=True, exist_ok=True)
    name = job["name"]
    if fl == "torque" and job["array"]:
        name = f"{job['name']}-{elem['index']}"
    env.update(
        {
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "PBS_JOBID": jid,
            "PBS_JOBNAME": name,
            "PBS_QUEUE": job["queue"],
            "PBS_NODEFILE": nodefile(st, job),
            "PBS_NODENUM": "0",
            "PBS_TASKNUM": "1",
            "PBS_MOMPORT": "15003",
            "TMPDIR": str(tmpdir),
        }
    )
    if fl == "pbspro":
        env["PBS_JOBDIR"] = home
        env["ENVIRONMENT"] = "BATCH"
        ncpus = "1"
        m = re.search(r"ncpus=(\d+)", job["resources"].get("select", ""))
        if m:
            ncpus = m.group(1)
        env["NCPUS"] = env["OMP_NUM_THREADS"] = job["resources"].get("ncpus", ncpus)
        if job["array"]:
            env["PBS_ARRAY_INDEX"] = str(elem["index"])
            env["PBS_ARRAY_ID"] = job_id(job, array_parent=True)
    else:
        env["PBS_SERVER"] = job["server"]
        env["PBS_VNODENUM"] = "0"
        env["PBS_NUM_NODES"] = "1"
        env["PBS_NUM_PPN"] = "1"
        env["PBS_NP"] = "1"
        if job.get("walltime_s"):
            env["PBS_WALLTIME"] = str(job["walltime_s"])
        if job["array"]:
            env["PBS_ARRAYID"] = str(elem["index"])
    return env


def interpreter(job: dict[str, Any]) -> list[str]:
    """Shell used to run the script (``-S``, else the ``#!`` line, else the login shell)."""
    if job.get("shell_path"):
        return [job["shell_path"]]
    first = Path(job["script_path"]).read_text().split("\n", 1)[0]
    if first.startswith("#!"):
        words = first[2:].strip().split(None, 1)
        if words:
            return words
    return [user_shell()]


def launch_spec(st: Store, job: dict[str, Any], elem: dict[str, Any]) -> dict[str, Any]:
    """How the daemon should start an element."""
    key = f"{job['seq']}-{elem['index'] if elem['index'] is not None else 0}"
    direct = "d" in job.get("keep", "n")
    out_final = final_path(job, elem, "o")
    err_final = final_path(job, elem, "e")
    out = out_final if direct or "o" in job.get("keep", "n") else str(st.spool_dir / f"{key}.OU")
    err = err_final if direct or "e" in job.get("keep", "n") else str(st.spool_dir / f"{key}.ER")
    join = job.get("join", "n")
    if join.startswith("o") and "e" in join:
        stdout, stderr = out, None
    elif join.startswith("e") and "o" in join:
        stdout, stderr = err, None
    else:
        stdout, stderr = out, err
    elem["stdout"], elem["stderr"] = stdout, stderr
    elem["final"] = {"stdout": out_final if stdout == out else err_final, "stderr": err_final if stderr else None}
    if job["flavor"] == "torque" and job.get("workdir"):
        cwd = job["workdir"]
    else:
        cwd = user_home()
    return {
        "argv": interpreter(job) + [job["script_path"]],
        "cwd": cwd,
        "env": element_env(st, job, elem),
        "stdout": stdout,
        "stderr": stderr,
    }


def finalize(st: Store, job: dict[str, Any], elem: dict[str, Any]) -> None:
    """Compute the documented exit status and deliver spooled output."""
    rc = elem.get("raw_returncode")
    reason = (elem.get("kill") or {}).get("reason")
    if elem.get("launch_error"):
        status = JOB_EXEC_FAIL1
    elif reason == "walltime":
        if job["flavor"] == "torque":
            status = int(env_float("IPPHPC_EMU_TORQUE_WALLTIME_EXIT", TORQUE_JOB_EXEC_OVERLIMIT_WT))
        else:
            status = JOB_EXEC_KILL_WALLTIME
    elif rc is None:
        status = JOB_EXEC_FAIL1
    elif rc < 0:
        status = 256 - rc  # killed by a signal: 256 + signal number
    else:
        status = rc
    elem["exit_status"] = status
    elem["reason"] = reason
    final = elem.get("final") or {}
    for stream in ("stdout", "stderr"):
        src, dst = elem.get(stream), final.get(stream)
        if src and dst and src != dst and os.path.exists(src):
            try:
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst) if _same_fs(src, dst) else _copy(src, dst)
            except OSError:
                pass


def _same_fs(a: str, b: str) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(os.path.dirname(b) or ".").st_dev
    except OSError:
        return False


def _copy(src: str, dst: str) -> None:
    import shutil

    shutil.copyfile(src, dst)
    os.unlink(src)


# ---------------------------------------------------------------------------
# attributes (qstat -f)
# ---------------------------------------------------------------------------
Attr = tuple[str, "str | None", str]


def _comment(job: dict[str, Any], elem: dict[str, Any] | None) -> str | None:
    if elem is None:
        starts = [e["start"] for e in job["elements"].values() if e["start"]]
        if not starts:
            return None
        text = time.strftime("Job Array Began at %a %b %d at %H:%M", time.localtime(min(starts)))
        return text + (" and finished" if job_finished(job) else "")
    if elem["start"] is None:
        if elem["status"] == DONE:
            return "Job deleted"
        return "Job held by " + job["owner"] + " on " + ctime(job["ctime"]) if elem["status"] == HELD else "Not Running: Insufficient amount of resource: ncpus"
    text = time.strftime("Job run at %a %b %d at %H:%M", time.localtime(elem["start"]))
    text += f" on ({short_hostname()}:ncpus=1)"
    if elem["status"] == DONE:
        text += " and finished"
    return text


def pbspro_attributes(job: dict[str, Any], elem: dict[str, Any] | None, now: float) -> list[Attr]:
    """Attribute list of a job, subjob (``elem``) or array parent (``elem`` None with array)."""
    fl = "pbspro"
    is_parent = job["array"] and elem is None
    if elem is None and not job["array"]:
        elem = job["elements"]["0"]
    a: list[Attr] = [("Job_Name", None, job["name"]), ("Job_Owner", None, f"{job['owner']}@{job['submit_host']}")]
    started = elem is not None and elem["start"] is not None
    if started:
        end = elem["end"] or now
        a += [
            ("resources_used", "cpupercent", "0"),
            ("resources_used", "cput", "00:00:00"),
            ("resources_used", "mem", "0kb"),
            ("resources_used", "ncpus", "1"),
            ("resources_used", "vmem", "0kb"),
            ("resources_used", "walltime", hms(end - elem["start"])),
        ]
    state = array_state(job, fl) if is_parent else elem_state(job, elem, fl)  # type: ignore[arg-type]
    a += [("job_state", None, state), ("queue", None, job["queue"]), ("server", None, job["server"])]
    if job.get("account"):
        a.append(("Account_Name", None, job["account"]))
    a += [("Checkpoint", None, "u"), ("ctime", None, ctime(job["ctime"])), ("Error_Path", None, display_path(job, "e"))]
    if started:
        a += [("exec_host", None, f"{short_hostname()}/0"), ("exec_vnode", None, f"({short_hostname()}:ncpus=1)")]
    held = (elem is not None and elem["status"] == HELD) or (is_parent and any(e["status"] == HELD for e in job["elements"].values()))
    a += [
        ("Hold_Types", None, "u" if held else "n"),
        ("Join_Path", None, job["join"] if job["join"] in ("oe", "eo") else "n"),
        ("Keep_Files", None, job.get("keep") or "n"),
        ("Mail_Points", None, "a"),
        ("mtime", None, ctime(job.get("mtime", job["ctime"]))),
        ("Output_Path", None, display_path(job, "o")),
        ("Priority", None, "0"),
        ("qtime", None, ctime(job["ctime"])),
        ("Rerunable", None, "True"),
    ]
    res = dict(job["resources"])
    res.setdefault("ncpus", "1")
    res.setdefault("nodect", "1")
    res.setdefault("place", "pack")
    res.setdefault("select", f"1:ncpus={res['ncpus']}")
    for k in sorted(res):
        a.append(("Resource_List", k, res[k]))
    if started:
        a.append(("stime", None, ctime(elem["start"])))  # type: ignore[index]
        if elem["status"] == RUNNING:  # type: ignore[index]
            a.append(("session_id", None, str(elem["pid"] or 0)))  # type: ignore[index]
        if elem["status"] == DONE and elem["end"]:  # type: ignore[index]
            a.append(("obittime", None, ctime(elem["end"])))  # type: ignore[index]
    a.append(("jobdir", None, user_home()))
    substate = {"Q": "10", "H": "20", "R": "42", "E": "51", "B": "91", "F": "92", "X": "93"}.get(state, "10")
    a.append(("substate", None, substate))
    a.append(("Variable_List", None, ",".join(f"{k}={v}" for k, v in job["variable_list"].items())))
    comment = _comment(job, None if is_parent else elem)
    if comment:
        a.append(("comment", None, comment))
    a.append(("etime", None, ctime(job["ctime"])))
    if started or is_parent:
        a.append(("run_count", None, "1" if started else "0"))
    if is_parent and job_finished(job):
        statuses = [e.get("exit_status") for e in job["elements"].values()]
        if any(e["deleted"] for e in job["elements"].values()):
            ex = 2
        elif all(s == 0 for s in statuses):
            ex = 0
        else:
            ex = 1
        a.append(("Exit_status", None, str(ex)))
    elif elem is not None and elem["status"] == DONE and elem.get("exit_status") is not None and elem["start"] is not None:
        a.append(("Exit_status", None, str(elem["exit_status"])))
    a.append(("Submit_arguments", None, " ".join(job["submit_args"])))
    if (is_parent and job_finished(job)) or (elem is not None and elem["status"] == DONE):
        a.append(("history_timestamp", None, str(int(finished_at(job) if is_parent else (elem["end"] or now)))))  # type: ignore[index]
    a.append(("project", None, "_pbs_project_default"))
    a.append(("Submit_Host", None, job["submit_host"]))
    if is_parent:
        counts = {"Queued": 0, "Running": 0, "Exiting": 0, "Expired": 0}
        remaining = []
        for e in sorted_elements(job):
            if e["status"] in (QUEUED, HELD):
                counts["Queued"] += 1
                remaining.append(e["index"])
            elif e["status"] == RUNNING:
                counts["Running"] += 1
            else:
                counts["Expired"] += 1
        a.append(("array", None, "True"))
        a.append(("array_state_count", None, "".join(f"{k}:{v} " for k, v in counts.items())))
        a.append(("array_indices_submitted", None, job["array_spec"]))
        a.append(("array_indices_remaining", None, compress_indices(remaining)))
    elif job["array"] and elem is not None:
        a.append(("array_id", None, job_id(job, array_parent=True)))
        a.append(("array_index", None, str(elem["index"])))
    return a


def torque_attributes(job: dict[str, Any], elem: dict[str, Any] | None, now: float) -> list[Attr]:
    """Attribute list in Torque's naming (``exit_status``, ``start_time``...)."""
    fl = "torque"
    is_parent = job["array"] and elem is None
    if elem is None and not job["array"]:
        elem = job["elements"]["0"]
    name = job["name"] if (is_parent or not job["array"]) else f"{job['name']}-{elem['index']}"  # type: ignore[index]
    a: list[Attr] = [("Job_Name", None, name), ("Job_Owner", None, f"{job['owner']}@{job['submit_host']}")]
    started = elem is not None and elem["start"] is not None
    if started:
        end = elem["end"] or now  # type: ignore[index]
        a += [
            ("resources_used", "cput", "00:00:00"),
            ("resources_used", "energy_used", "0"),
            ("resources_used", "mem", "0kb"),
            ("resources_used", "vmem", "0kb"),
            ("resources_used", "walltime", hms(end - elem["start"])),  # type: ignore[index]
        ]
    state = array_state(job, fl) if is_parent else elem_state(job, elem, fl)  # type: ignore[arg-type]
    a += [("job_state", None, state), ("queue", None, job["queue"]), ("server", None, job["server"])]
    if job.get("account"):
        a.append(("Account_Name", None, job["account"]))
    a += [("Checkpoint", None, "u"), ("ctime", None, str(int(job["ctime"]))), ("Error_Path", None, display_path(job, "e"))]
    if started:
        a.append(("exec_host", None, f"{short_hostname()}/0"))
    held = elem is not None and elem["status"] == HELD
    a += [
        ("Hold_Types", None, "u" if held else "n"),
        ("Join_Path", None, job["join"] if job["join"] in ("oe", "eo") else "n"),
        ("Keep_Files", None, job.get("keep") or "n"),
        ("Mail_Points", None, "a"),
        ("mtime", None, str(int(job.get("mtime", job["ctime"])))),
        ("Output_Path", None, display_path(job, "o")),
        ("Priority", None, "0"),
        ("qtime", None, str(int(job["ctime"]))),
        ("Rerunable", None, "True"),
    ]
    res = dict(job["resources"])
    res.setdefault("nodect", "1")
    res.setdefault("nodes", "1")
    for k in sorted(res):
        a.append(("Resource_List", k, res[k]))
    if started and elem["status"] == RUNNING:  # type: ignore[index]
        a.append(("session_id", None, str(elem["pid"] or 0)))  # type: ignore[index]
    a.append(("Variable_List", None, ",".join(f"{k}={v}" for k, v in job["variable_list"].items())))
    a += [("euser", None, job["owner"]), ("egroup", None, job["owner"]), ("queue_type", None, "E")]
    a.append(("etime", None, str(int(job["ctime"]))))
    if elem is not None and elem["status"] == DONE and elem.get("exit_status") is not None:
        a.append(("exit_status", None, str(elem["exit_status"])))
    a.append(("submit_args", None, " ".join(job["submit_args"])))
    if started:
        a.append(("start_time", None, str(int(elem["start"]))))  # type: ignore[index]
        a.append(("start_count", None, "1"))
    a.append(("fault_tolerant", None, "False"))
    if elem is not None and elem["status"] == DONE and elem["end"]:
        a.append(("comp_time", None, str(int(elem["end"]))))
    a.append(("job_radix", None, "0"))
    if started:
        a.append(("total_runtime", None, f"{((elem['end'] or now) - elem['start']):.6f}"))  # type: ignore[index]
    a.append(("submit_host", None, job["submit_host"]))
    a.append(("init_work_dir", None, job["submit_cwd"]))
    a.append(("request_version", None, "1"))
    if is_parent:
        a.append(("job_array_request", None, job["array_spec"]))
    elif job["array"] and elem is not None:
        a.append(("job_array_id", None, str(elem["index"])))
    return a


TORQUE_TIME_ATTRS = {"ctime", "etime", "mtime", "qtime", "start_time", "comp_time"}


def prt_attr(name: str, resource: str | None, value: str) -> str:
    """One ``    name[.resource] = value`` entry, wrapped like qstat's prt_attr."""
    out = [f"    {name}" + (f".{resource}" if resource else "") + " = "]
    start = len(name) + 7 + (len(resource) + 1 if resource else 0)
    pieces = value.split(",") if value else [""]
    pieces = [p for p in pieces if p != ""] or [""]
    first = True
    for n, piece in enumerate(pieces):
        if len(piece) + start < CHAR_LINE_LIMIT:
            out.append(piece)
            start += len(piece)
        else:
            if not first:
                out.append("\n\t")
                start = 9
            for ch in piece:
                out.append(ch)
                start += 1
                if start > CHAR_LINE_LIMIT:
                    start = 8
                    out.append("\n\t")
        if n + 1 < len(pieces):
            first = False
            out.append(",")
    return "".join(out)


def json_value(value: str) -> Any:
    """PBS's JSON output prints numeric-looking values as numbers."""
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d+", value):
        return float(value)
    return value


def attrs_to_json(attrs: list[Attr]) -> dict[str, Any]:
    """Group ``Resource_List.x`` style attributes into objects; split Variable_List."""
    obj: dict[str, Any] = {}
    for name, res, value in attrs:
        if name == "Variable_List":
            obj[name] = {k: v for k, _, v in (item.partition("=") for item in value.split(",") if item)}
        elif res:
            obj.setdefault(name, {})[res] = json_value(value)
        else:
            obj[name] = json_value(value)
    return obj


# ---------------------------------------------------------------------------
# qstat
# ---------------------------------------------------------------------------
def _trunc_star(value: str, width: int) -> str:
    """Truncate to ``width`` replacing the last kept character by ``*``."""
    if len(value) > width:
        return value[: width - 1] + "*"
    return value


def pbspro_row(jid: str, name: str, owner: str, timeu: str, state: str, queue: str) -> str:
    """A default ``qstat`` line (OpenPBS format ``%-17s %-16s %-16s  %8s %1s %-16s``)."""
    parts = jid.split(".")
    short = ".".join(parts[:2])
    short = _trunc_star(short, 17)
    name = name[:15] + "*" if len(name) >= 16 else name
    owner = _trunc_star(owner.split("@")[0], 16)
    queue = _trunc_star(queue, 16)
    return f"{short:<17} {name:<16} {owner:<16}  {timeu:>8} {state:>1} {queue:<16}"


def torque_row(jid: str, name: str, owner: str, timeu: str, state: str, queue: str) -> str:
    """A default Torque ``qstat`` line (``%-26s %-16s %-15s %8s %1s %-15s``)."""
    if len(name) > 16:
        name = "..." + name[len(name) - 13 :]
    owner = owner.split("@")[0][:15]
    return f"{jid:<26} {name:<16} {owner:<15} {timeu:>8} {state:>1} {queue[:15]:<15}"


PBSPRO_HEADER = (
    "Job id            Name             User              Time Use S Queue\n"
    "----------------  ---------------- ----------------  -------- - -----"
)
TORQUE_HEADER = (
    "Job ID                    Name             User            Time Use S Queue\n"
    "------------------------- ---------------- --------------- -------- - -----"
)


def entries_for(job: dict[str, Any], sub: int | None, kind: str, expand: bool, history: bool, fl: str, now: float) -> list[tuple[str, dict[str, Any] | None]]:
    """(display id, element or None for the array parent) pairs to show for a job."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    if not job["array"]:
        out.append((job_id(job), job["elements"]["0"]))
        return out
    if kind == "sub":
        elem = job["elements"].get(str(sub))
        return [(job_id(job, sub), elem)] if elem else []
    out.append((job_id(job, array_parent=True), None))
    if expand:
        for e in sorted_elements(job):
            out.append((job_id(job, e["index"]), e))
    return out


def qstat(argv: list[str]) -> int:
    """Show job status in the flavour's documented formats."""
    st = store()
    st.log_invocation("qstat", argv)
    fl = flavor()
    full = expand = history = arrays_only = False
    out_format = "default"
    xml = False
    operands: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--version":
            print("pbs_version = " + os.environ.get("IPPHPC_EMU_PBS_VERSION", "22.05.11"))
            return 0
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                ch = a[j]
                if ch == "f":
                    full = True
                elif ch == "t":
                    expand = True
                elif ch == "x":
                    if fl == "torque":
                        xml = True
                    else:
                        history = True
                elif ch == "H" and fl == "pbspro":
                    history = True
                elif ch == "J" and fl == "pbspro":
                    arrays_only = True
                elif ch in "anrsiw1GMe":
                    pass
                elif ch == "u":
                    if j + 1 == len(a):
                        i += 1
                    break
                elif ch == "F" and fl == "pbspro":
                    val = a[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else "")
                    if not a[j + 1 :]:
                        i += 1
                    out_format = val.lower()
                    if out_format not in ("json", "dsv", "default"):
                        print("qstat: conflicting options.", file=sys.stderr)
                        return 2
                    break
                else:
                    print(f"qstat: invalid option -- '{ch}'", file=sys.stderr)
                    print("usage: \nqstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]", file=sys.stderr)
                    return 2
                j += 1
        else:
            operands.append(a)
        i += 1
    if out_format != "default" and not full:
        print("qstat: conflicting options.", file=sys.stderr)
        return 2

    now = time.time()
    jobs = st.all_jobs()
    by_seq = {j["seq"]: j for j in jobs}
    selected: list[tuple[dict[str, Any], int | None, str]] = []
    errors: list[str] = []
    exit_code = 0
    if operands:
        for op in operands:
            ref = parse_job_ref(op)
            job = by_seq.get(ref[0]) if ref else None
            if ref and job and ref[1] == "sub" and str(ref[2]) not in job["elements"]:
                job = None
            if ref and job and ref[1] == "plain" and job["array"] and fl == "pbspro":
                job = None  # PBS Pro needs the [] form for arrays
            if job is not None and fl == "torque" and not torque_visible(job, now):
                job = None
            if job is None:
                msg = "Unknown Job Id Error" if fl == "torque" else "Unknown Job Id"
                errors.append(f"qstat: {msg} {full_ref(op)}")
                exit_code = PBSE_UNKJOBID & 0xFF
                continue
            if fl == "pbspro" and not history:
                finished = job_finished(job) if ref[1] != "sub" else job["elements"][str(ref[2])]["status"] == DONE and job_finished(job)
                if finished:
                    errors.append(f"qstat: {full_ref(op)} Job has finished, use -x or -H to obtain historical job information")
                    exit_code = PBSE_HISTJOBID & 0xFF
                    continue
            selected.append((job, ref[2], ref[1]))
    else:
        for job in jobs:
            if fl == "pbspro" and not history and job_finished(job):
                continue
            if fl == "torque" and not torque_visible(job, now):
                continue
            if arrays_only and not job["array"]:
                continue
            selected.append((job, None, "plain"))

    rows: list[tuple[dict[str, Any], str, dict[str, Any] | None]] = []
    for job, sub, kind in selected:
        for jid, elem in entries_for(job, sub, kind, expand, history, fl, now):
            rows.append((job, jid, elem))

    for line in errors:
        print(line, file=sys.stderr)

    if xml:
        parts = ['<?xml version="1.0"?>']
        body = "".join(_torque_xml(job, jid, elem, now) for job, jid, elem in rows)
        print(parts[0] + "\n" + f"<Data>{body}</Data>" if rows else parts[0])
        return exit_code

    if full:
        if out_format == "json":
            doc: dict[str, Any] = {
                "timestamp": int(now),
                "pbs_version": os.environ.get("IPPHPC_EMU_PBS_VERSION", "22.05.11"),
                "pbs_server": server_name(),
            }
            if rows:
                doc["Jobs"] = {jid: attrs_to_json(_attributes(job, elem, fl, now)) for job, jid, elem in rows}
            print(json.dumps(doc, indent=4, separators=(",", ":")))
            return exit_code
        chunks = []
        for job, jid, elem in rows:
            attrs = _attributes(job, elem, fl, now)
            lines = [f"Job Id: {jid}"]
            for name, res, value in attrs:
                if fl == "torque" and name in TORQUE_TIME_ATTRS:
                    value = ctime(float(value))
                lines.append(prt_attr(name, res, value))
            chunks.append("\n".join(lines) + "\n")
        if chunks:
            sys.stdout.write("\n".join(chunks) + "\n")
        return exit_code

    if rows:
        header = TORQUE_HEADER if fl == "torque" else PBSPRO_HEADER
        out_lines = [header]
        for job, jid, elem in rows:
            if elem is None:
                state = array_state(job, fl)
                started = any(e["start"] for e in job["elements"].values())
            else:
                state = elem_state(job, elem, fl)
                started = elem["start"] is not None
            name = job["name"]
            if fl == "torque" and elem is not None and job["array"]:
                name = f"{job['name']}-{elem['index']}"
            timeu = "00:00:00" if started else "0"
            row = torque_row if fl == "torque" else pbspro_row
            out_lines.append(row(jid, name, job["owner"], timeu, state, job["queue"]))
        print("\n".join(out_lines))
    return exit_code


def _attributes(job: dict[str, Any], elem: dict[str, Any] | None, fl: str, now: float) -> list[Attr]:
    return torque_attributes(job, elem, now) if fl == "torque" else pbspro_attributes(job, elem, now)


def _torque_xml(job: dict[str, Any], jid: str, elem: dict[str, Any] | None, now: float) -> str:
    """One ``<Job>`` element as Torque's create_full_job_xml builds it."""
    parts = [f"<Job><Job_Id>{escape(jid)}</Job_Id>"]
    open_res: str | None = None
    for name, res, value in torque_attributes(job, elem, now):
        if res:
            if open_res != name:
                if open_res:
                    parts.append(f"</{open_res}>")
                parts.append(f"<{name}>")
                open_res = name
            parts.append(f"<{res}>{escape(value)}</{res}>")
        else:
            if open_res:
                parts.append(f"</{open_res}>")
                open_res = None
            parts.append(f"<{name}>{escape(value)}</{name}>")
    if open_res:
        parts.append(f"</{open_res}>")
    parts.append("</Job>")
    return "".join(parts)


# ---------------------------------------------------------------------------
# qdel / qhold / qrls
# ---------------------------------------------------------------------------
def _targets(job: dict[str, Any], kind: str, sub: int | None) -> list[dict[str, Any]]:
    if kind == "sub":
        e = job["elements"].get(str(sub))
        return [e] if e else []
    return list(job["elements"].values())


def _control(command: str, argv: list[str]) -> int:
    """Shared body of qdel, qhold and qrls."""
    st = store()
    st.log_invocation(command, argv)
    fl = flavor()
    force = False
    operands: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-W", "-h", "-m") and i + 1 < len(argv):
            if a == "-W" and argv[i + 1] == "force":
                force = True
            i += 2
            continue
        if a.startswith("-W"):
            force = force or a[2:] == "force"
        elif a in ("-x", "-Wsuppress_email") or a.startswith("-"):
            pass
        else:
            operands.append(a)
        i += 1
    if not operands:
        print(f"usage: {command} [-W force|suppress_email=X] [-x] job_identifier...", file=sys.stderr)
        return 2
    cfg = st.config()
    exit_code = 0
    now = time.time()
    with st.locked():
        for op in operands:
            ref = parse_job_ref(op)
            job = st.load(ref[0]) if ref else None
            if job is not None and ref and ref[1] == "sub" and str(ref[2]) not in job["elements"]:
                job = None
            if job is not None and fl == "torque" and not torque_visible(job, now):
                job = None
            if job is None or ref is None:
                msg = "Unknown Job Id Error" if fl == "torque" else "Unknown Job Id"
                print(f"{command}: {msg} {full_ref(op)}", file=sys.stderr)
                exit_code = PBSE_UNKJOBID & 0xFF
                continue
            targets = _targets(job, ref[1], ref[2])
            if all(e["status"] == DONE for e in targets):
                if fl == "torque":
                    print(f"{command}: Invalid state for job - COMPLETE {full_ref(op)}", file=sys.stderr)
                    exit_code = PBSE_BADSTATE & 0xFF
                else:
                    print(f"{command}: Job has finished", file=sys.stderr)
                    exit_code = PBSE_HISTJOBID & 0xFF
                continue
            for e in targets:
                if command == "qdel":
                    if e["status"] in (QUEUED, HELD):
                        e["status"] = DONE
                        e["deleted"] = True
                        e["end"] = now
                    elif e["status"] == RUNNING and not (e.get("kill") and e["kill"]["reason"] == "delete"):
                        e["kill"] = {"reason": "delete", "plan": delete_plan(cfg, force), "step": 0, "next": 0.0}
                elif command == "qhold":
                    if e["status"] == QUEUED:
                        e["status"] = HELD
                elif command == "qrls":
                    if e["status"] == HELD:
                        e["status"] = QUEUED
            job["mtime"] = now
            if all(e["status"] == DONE for e in job["elements"].values()):
                job["finished_time"] = now
            st.save(job)
    st.write_config()
    st.ensure_daemon()
    return exit_code


def qdel(argv: list[str]) -> int:
    """Delete jobs: queued ones at once, running ones via SIGTERM, kill_delay, SIGKILL."""
    return _control("qdel", argv)


def qhold(argv: list[str]) -> int:
    """Place a user hold on queued jobs."""
    return _control("qhold", argv)


def qrls(argv: list[str]) -> int:
    """Release held jobs."""
    return _control("qrls", argv)


COMMANDS = {"qsub": qsub, "qstat": qstat, "qdel": qdel, "qhold": qhold, "qrls": qrls}


def main(command: str) -> None:
    """Run one of the commands with ``sys.argv``."""
    sys.exit(COMMANDS[command](sys.argv[1:]))
