"""Scheduler load and start-up time of ipphpc's batch layer on a real Slurm, beside ipyparallel.

    .venv/bin/python bench/batch_bench.py                      # all three figures, about 2.5 minutes
    .venv/bin/python bench/batch_bench.py --only poll          # one figure (poll, submit, startup)
    .venv/bin/python bench/batch_bench.py --json out.json      # also every raw sample

Figures (see bench/README.md, "Batch layer, MPI broadcast and SSH tunnels"):

* poll: scheduler calls made by ipphpc's Poller while it tracks a held
  1,000-element array and, at the same time, a held 1-element job;
* submit: scheduler calls of ``ipphpc submit --scheduler slurm -n 256``
  (held) and of the ``ipphpc stop`` that follows, beside ``ipcluster``;
* startup: ``ipphpc submit --scheduler slurm -n 8 --wait`` until 8 engines
  registered, beside ``ipcluster start --engines=slurm -n 8`` until its client
  sees 8 engines.

Every scheduler call goes through a logging shim first on PATH; jobs are
cancelled and processes stopped in ``finally`` blocks. Needs Slurm
(.ci/services/slurm.sh) and, for the peer columns, ipyparallel.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from hpc_common import (  # noqa: E402 - found through the path set above
    SHIM_LOG_VAR,
    bench_env,
    count_calls,
    fmt,
    header,
    job_ids_from,
    median,
    progress,
    ratio,
    read_shim_log,
    reap,
    render_table,
    slurm_cleanup,
    slurm_live,
    wait_until,
    write_json,
    write_scheduler_shims,
)

FIGURES = ("poll", "submit", "startup")


class Run:
    """State of one benchmark run: temp dir, tag, shims, and every job id to cancel at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex
        self.shims = write_scheduler_shims(tmp / "shims")
        self.logs: list[Path] = []
        self.job_ids: set[str] = set()
        self.notes: list[str] = []

    def env(self, name: str) -> tuple[dict[str, str], Path]:
        """A private environment for one step, and the shim log its scheduler calls go to."""
        d = self.tmp / name
        log = d / "scheduler-calls.tsv"
        env = bench_env(d, self.tag, **{SHIM_LOG_VAR: str(log), "PATH": f"{self.shims}:{os.environ['PATH']}"})
        self.logs.append(log)
        return env, log

    def calls(self, log: Path) -> list[dict[str, Any]]:
        calls = read_shim_log(log)
        self.job_ids.update(job_ids_from(calls))
        return calls

    def cleanup(self) -> None:
        for log in self.logs:
            self.calls(log)
        left = slurm_cleanup(sorted(self.job_ids))
        if left:
            self.notes.append(f"Slurm elements still listed after the final cancel: {', '.join(left[:10])}")
        procs = reap(self.tag)
        if procs:
            self.notes.append(f"{len(procs)} leftover process(es) had to be terminated: "
                              + "; ".join(f"{p} {c}" for p, c in procs[:5]))


def others_running(own: set[str]) -> int:
    """Running Slurm jobs and array tasks that are not this run's (the machine's queue is shared)."""
    r = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%F"], capture_output=True,
                       check=False, text=True, env={k: v for k, v in os.environ.items() if k != SHIM_LOG_VAR})
    return sum(1 for line in r.stdout.split() if line.strip() not in own)


# -- 1. the poller: 1,000 elements vs 1 -------------------------------------------------------
def _track(run: Run, size: int, seconds: float, out: dict[str, Any]) -> None:
    """Submit a held array of ``size``, follow it as HPCCluster does (states() every 0.25 s), cancel it."""
    from ipphpc.launch.batch import BatchLauncher

    pdir = run.tmp / f"poll-{size}" / "profile"
    pdir.mkdir(parents=True)
    launcher = BatchLauncher("engines", size, scheduler="slurm", profile_dir=str(pdir), cluster_id=f"poll{size}",
                             submit_args=["--hold"], job_name=f"ipphpc-bench-poll{size}")
    try:
        t_submit = time.monotonic()
        launcher.start(["/bin/true"], pdir / "log" / "engines.out")
        run.job_ids.update(launcher.job_ids)
        out["submit_s"] = time.monotonic() - t_submit
        counter = launcher.poller.counter
        out["submit_calls"] = counter.snapshot()
        counter.reset()
        t0 = time.monotonic()
        out["t0_epoch"] = time.time()
        while time.monotonic() - t0 < seconds:
            launcher.states()
            time.sleep(0.25)
        out["tracked_s"] = time.monotonic() - t0
        out["tracking_calls"] = counter.snapshot()
        out["interval_at_end_s"] = launcher.poller.interval
        out["summary"] = launcher.poller.summary()
        counter.reset()
        t1 = time.monotonic()
        remaining = launcher.stop(timeout=60)
        out["stop_s"] = time.monotonic() - t1
        out["stop_calls"] = counter.snapshot()
        out["stop_remaining"] = len(remaining)
        out["job_ids"] = launcher.job_ids
    except Exception as e:  # noqa: BLE001 - reported in the table, the other size still runs
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        slurm_cleanup(launcher.job_ids)


def figure_poll(run: Run, seconds: float) -> dict[str, Any]:
    env, log = run.env("poll")
    saved = {k: os.environ.get(k) for k in (SHIM_LOG_VAR, "PATH")}
    os.environ.update({SHIM_LOG_VAR: env[SHIM_LOG_VAR], "PATH": env["PATH"]})
    results: dict[int, dict[str, Any]] = {1000: {}, 1: {}}
    try:
        progress(f"poll: held arrays of 1,000 and 1 element(s), tracked for {seconds:g} s side by side")
        threads = [threading.Thread(target=_track, args=(run, size, seconds, results[size]), daemon=True)
                   for size in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    calls = run.calls(log)
    for r in results.values():
        ids = r.get("job_ids", [])
        t0 = r.get("t0_epoch", 0.0)
        mine = [c for c in calls if c["cmd"] == "squeue" and any(f"--jobs={j}" in c["args"] for j in ids)]
        r["squeue_at_s"] = [round(c["start"] - t0, 2) for c in mine if t0 <= c["start"] <= t0 + r.get("tracked_s", 0)]
        r["shim_squeue_while_tracking"] = len(r["squeue_at_s"])
    return {str(k): v for k, v in results.items()}


def rows_poll(fig: dict[str, Any], seconds: float) -> list[list[str]]:
    big, one = fig["1000"], fig["1"]
    if "error" in big or "error" in one:
        return [["1. poller", "-", big.get("error", "ok"), one.get("error", "ok"), "-"]]

    def calls(r: dict[str, Any], key: str, cmd: str | None = None) -> int:
        snap = r[key]
        return snap["total"] if cmd is None else snap["by_command"].get(cmd, 0)

    def mean_ms(r: dict[str, Any]) -> float | None:
        snap = r["tracking_calls"]
        return 1000 * snap["seconds"] / snap["total"] if snap["total"] else None

    lines = []
    for label, unit, a, b in (
        (f"1. scheduler calls in the first {seconds:g} s of tracking (held)", "calls",
         calls(big, "tracking_calls"), calls(one, "tracking_calls")),
        ("1.   of which squeue", "calls", calls(big, "tracking_calls", "squeue"),
         calls(one, "tracking_calls", "squeue")),
        ("1.   of which sacct", "calls", calls(big, "tracking_calls", "sacct"), calls(one, "tracking_calls", "sacct")),
        ("1. time inside those calls, mean per call", "ms", mean_ms(big), mean_ms(one)),
        ("1. poll interval reached at the end", "s", big["interval_at_end_s"], one["interval_at_end_s"]),
        ("1. calls per minute from then on (60 s / that interval)", "calls/min", 60 / big["interval_at_end_s"],
         60 / one["interval_at_end_s"]),
        ("1. submit: sbatch calls", "calls", calls(big, "submit_calls", "sbatch"),
         calls(one, "submit_calls", "sbatch")),
        ("1. stop: scheduler calls (scancel + until gone)", "calls", calls(big, "stop_calls"),
         calls(one, "stop_calls")),
        ("1. stop: scancel calls", "calls", calls(big, "stop_calls", "scancel"), calls(one, "stop_calls", "scancel")),
        ("1. stop: time until the queue no longer lists them active", "s", big["stop_s"], one["stop_s"]),
    ):
        lines.append([label, unit, fmt(a), fmt(b), ratio(a, b)])
    return lines


# -- 2. submit calls for 256 engines ----------------------------------------------------------
IPP_HELD_TEMPLATE = '''c.SlurmEngineSetLauncher.batch_template = """#!/bin/sh
#SBATCH --export=ALL
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --ntasks={n}
#SBATCH --hold
srun {program_and_args}
"""
'''


def _cli(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, check=False)
    return r, time.monotonic() - t0


def _fail(what: str, r: subprocess.CompletedProcess) -> RuntimeError:
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
    return RuntimeError(f"{what} exited {r.returncode}:\n{tail}")


def submit_ipphpc(run: Run, n: int, dry_run_n: int) -> dict[str, Any]:
    env, log = run.env("submit-ipphpc")
    cwd = Path(env["IPPHPC_DIR"]).parent
    out: dict[str, Any] = {}
    base = [sys.executable, "-m", "ipphpc"]
    r, out["submit_s"] = _cli([*base, "submit", "--scheduler", "slurm", "-n", str(n), "--no-wait",
                               "--job-name", "ipphpc-bench-submit",
                               "--HPCCluster.extra_directives=['#SBATCH --hold']"], env, cwd, 120)
    calls = run.calls(log)
    if r.returncode != 0:
        raise _fail("ipphpc submit", r)
    cid = r.stdout.strip().splitlines()[-1]
    ids = job_ids_from(calls)
    out["submit_calls"] = count_calls(calls)
    out["elements_queued"] = len(slurm_live(ids))
    log.rename(log.with_suffix(".submit.tsv"))
    r, out["stop_s"] = _cli([*base, "stop", cid], env, cwd, 120)
    out["stop_calls"] = count_calls(run.calls(log))
    out["stop_ok"] = r.returncode == 0
    out["left_after_stop"] = len(slurm_live(ids))
    slurm_cleanup(ids)
    # how many submissions a larger set needs (Slurm's MaxArraySize is 1001): planned only
    r, _ = _cli([*base, "submit", "--scheduler", "slurm", "-n", str(dry_run_n), "--dry-run"], env, cwd, 60)
    out["dry_run_submissions"] = r.stdout.count("# submit: sbatch") if r.returncode == 0 else None
    return out


def submit_ipyparallel(run: Run, n: int) -> dict[str, Any]:
    env, log = run.env("submit-ipyparallel")
    cwd = Path(env["IPYTHONDIR"]).parent
    prof = Path(env["IPYTHONDIR"]) / "profile_default"
    prof.mkdir(parents=True, exist_ok=True)
    (prof / "ipcluster_config.py").write_text(IPP_HELD_TEMPLATE)
    out: dict[str, Any] = {}
    r, out["submit_s"] = _cli(["ipcluster", "start", "--engines=slurm", f"-n={n}", "--cluster-id=bsub",
                               "--daemonize"], env, cwd, 120)
    calls = run.calls(log)
    ids = job_ids_from(calls)
    try:
        if r.returncode != 0:
            raise _fail("ipcluster start", r)
        wait_until(lambda: job_ids_from(run.calls(log)), 60, "ipcluster's sbatch", 0.1)
        calls = run.calls(log)
        ids = job_ids_from(calls)
        out["submit_calls"] = count_calls(calls)
        out["elements_queued"] = len(slurm_live(ids))
        log.rename(log.with_suffix(".submit.tsv"))
        r, out["stop_s"] = _cli(["ipcluster", "stop", "--cluster-id=bsub"], env, cwd, 120)
        out["stop_calls"] = count_calls(run.calls(log))
        out["stop_ok"] = r.returncode == 0
        out["left_after_stop"] = len(slurm_live(ids))
    finally:
        slurm_cleanup(ids)
    return out


def figure_submit(run: Run, n: int, dry_run_n: int, peers: bool) -> dict[str, Any]:
    progress(f"submit: ipphpc submit --scheduler slurm -n {n} (held), then ipphpc stop")
    fig: dict[str, Any] = {}
    try:
        fig["ipphpc"] = submit_ipphpc(run, n, dry_run_n)
    except Exception as e:  # noqa: BLE001
        fig["ipphpc"] = {"error": str(e)}
    if peers:
        progress(f"submit: ipcluster start --engines=slurm -n {n} (held), then ipcluster stop")
        try:
            fig["ipyparallel"] = submit_ipyparallel(run, n)
        except Exception as e:  # noqa: BLE001
            fig["ipyparallel"] = {"error": str(e)}
    return fig


def rows_submit(fig: dict[str, Any], n: int, dry_run_n: int) -> list[list[str]]:
    a, b = fig.get("ipphpc", {}), fig.get("ipyparallel", {})

    def get(d: dict[str, Any], *path: str) -> Any:
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d

    def total(d: dict[str, Any], key: str) -> int | None:
        calls = get(d, key)
        return sum(calls.values()) if isinstance(calls, dict) else None

    rows = []
    for label, unit, x, y in (
        (f"2. submit {n} engines: sbatch calls", "calls", get(a, "submit_calls", "sbatch"),
         get(b, "submit_calls", "sbatch")),
        (f"2. submit {n} engines: all scheduler calls", "calls", total(a, "submit_calls"), total(b, "submit_calls")),
        ("2. jobs or array elements that submit queued", "entries", a.get("elements_queued"), b.get("elements_queued")),
        ("2. submit command, wall time", "s", a.get("submit_s"), b.get("submit_s")),
        ("2. stop: all scheduler calls", "calls", total(a, "stop_calls"), total(b, "stop_calls")),
        ("2. stop: scancel calls", "calls", get(a, "stop_calls", "scancel") or 0 if "stop_calls" in a else None,
         get(b, "stop_calls", "scancel") or 0 if "stop_calls" in b else None),
        ("2. stop command, wall time", "s", a.get("stop_s"), b.get("stop_s")),
        ("2. entries still queued after stop returned", "entries", a.get("left_after_stop"),
         b.get("left_after_stop")),
    ):
        same = unit != "entries"  # 256 array elements vs one 256-task job: not a ratio
        rows.append([label, unit, fmt(x), fmt(y) if "ipyparallel" in fig else "-", ratio(x, y) if same else "-"])
    rows.append([f"2. submissions planned for {dry_run_n:,} engines (--dry-run)", "calls",
                 fmt(a.get("dry_run_submissions")), "-", "-"])
    return rows


# -- 3. time to 8 engines -----------------------------------------------------------------------
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", re.MULTILINE)


def _split(t0: float, total: float, calls: list[dict[str, Any]], engine_logs: Iterable[Path]) -> dict[str, float]:
    """Where a start's time went: until sbatch, sbatch -> first engine log line (Slurm starting the job,
    the interpreter, imports), and from there until every engine registered."""
    stamps = []
    for path in engine_logs:
        m = _LOG_TIME.search(path.read_text(errors="replace"))
        if m:
            stamps.append(datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp())
    sbatch = [c["start"] for c in calls if c["cmd"] == "sbatch"]
    if not stamps or not sbatch:
        return {}
    return {"to_sbatch_s": sbatch[0] - t0, "sbatch_to_first_engine_s": min(stamps) - sbatch[0],
            "first_engine_to_all_s": t0 + total - min(stamps)}


def start_ipphpc(run: Run, rep: int, n: int, timeout: float) -> dict[str, Any]:
    env, log = run.env(f"startup-ipphpc-{rep}")
    cwd = Path(env["IPPHPC_DIR"]).parent
    base = [sys.executable, "-m", "ipphpc"]
    out: dict[str, Any] = {"others_running": others_running(run.job_ids)}
    cid = f"start{rep}"
    try:
        t0 = time.time()
        r, out["start_s"] = _cli([*base, "submit", "--scheduler", "slurm", "-n", str(n), "--wait",
                                  "--timeout", str(timeout), "--cluster-id", cid,
                                  "--job-name", "ipphpc-bench-start"], env, cwd, timeout + 30)
        if r.returncode != 0:
            raise _fail("ipphpc submit --wait", r)
        out["start_calls"] = count_calls(run.calls(log))
        logs = (Path(env["IPPHPC_DIR"]) / "profile_default" / "log").glob(f"ipengine-{cid}-*.log")
        out.update(_split(t0, out["start_s"], read_shim_log(log), logs))
        log.rename(log.with_suffix(".start.tsv"))
        r, out["stop_s"] = _cli([*base, "stop", cid], env, cwd, 120)
        out["stop_calls"] = count_calls(run.calls(log))
        if r.returncode != 0:
            raise _fail("ipphpc stop", r)
    finally:
        slurm_cleanup(job_ids_from(read_shim_log(log.with_suffix(".start.tsv")) + read_shim_log(log)))
        reap(run.tag, 5.0)
    return out


def start_ipyparallel(run: Run, rep: int, n: int, timeout: float) -> dict[str, Any]:
    import ipyparallel as ipp

    env, log = run.env(f"startup-ipyparallel-{rep}")
    cwd = Path(env["IPYTHONDIR"]).parent
    cid = f"start{rep}"
    client_file = Path(env["IPYTHONDIR"]) / "profile_default" / "security" / f"ipcontroller-{cid}-client.json"
    out: dict[str, Any] = {"others_running": others_running(run.job_ids)}
    rc = None
    try:
        t0, t0_epoch = time.monotonic(), time.time()
        r = subprocess.run(["ipcluster", "start", "--engines=slurm", f"-n={n}", f"--cluster-id={cid}", "--daemonize"],
                           env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
        if r.returncode != 0:
            raise _fail("ipcluster start", r)
        wait_until(client_file.exists, timeout, "ipcluster's client connection file")
        rc = ipp.Client(str(client_file), timeout=timeout)
        rc.wait_for_engines(n, timeout=max(1.0, timeout - (time.monotonic() - t0)))
        out["start_s"] = time.monotonic() - t0
        rc.close()
        rc = None
        out["start_calls"] = count_calls(run.calls(log))
        logs = (Path(env["IPYTHONDIR"]) / "profile_default" / "log").glob(f"ipengine-{cid}-*.log")
        out.update(_split(t0_epoch, out["start_s"], read_shim_log(log), logs))
        log.rename(log.with_suffix(".start.tsv"))
        r, out["stop_s"] = _cli(["ipcluster", "stop", f"--cluster-id={cid}"], env, cwd, 120)
        out["stop_calls"] = count_calls(run.calls(log))
        if r.returncode != 0:
            raise _fail("ipcluster stop", r)
    finally:
        if rc is not None:
            rc.close()
        ids = job_ids_from(read_shim_log(log.with_suffix(".start.tsv")) + read_shim_log(log))
        if "stop_s" in out:
            # ipcluster stop returns once scancel ran; the job's end (not timed) is awaited before the next run
            try:
                wait_until(lambda: not slurm_live(ids), 30, "ipyparallel's engine job to leave the queue", 0.5)
            except TimeoutError:
                pass
        slurm_cleanup(ids)
        reap(run.tag, 5.0)
    return out


def figure_startup(run: Run, n: int, reps: int, timeout: float, peers: bool) -> dict[str, Any]:
    fig: dict[str, Any] = {"ipphpc": [], "ipyparallel": []}
    starters = {"ipphpc": start_ipphpc, "ipyparallel": start_ipyparallel}
    for rep in range(reps):
        order = ["ipphpc", "ipyparallel"] if rep % 2 == 0 else ["ipyparallel", "ipphpc"]
        for system in order:
            if system == "ipyparallel" and not peers:
                continue
            progress(f"startup {rep + 1}/{reps}: {system}, {n} engines on Slurm")
            try:
                fig[system].append(starters[system](run, rep, n, timeout))
            except Exception as e:  # noqa: BLE001 - the next repetition still runs
                fig[system].append({"error": f"{type(e).__name__}: {e}"})
                progress(f"  failed: {e}")
    return fig


def rows_startup(fig: dict[str, Any], n: int) -> list[list[str]]:
    def ok(system: str) -> list[dict[str, Any]]:
        return [r for r in fig.get(system, []) if "error" not in r]

    def med(system: str, key: str) -> float | None:
        return median([r[key] for r in ok(system) if key in r])

    def calls(system: str, key: str, cmd: str | None = None) -> float | None:
        vals = [sum(r[key].values()) if cmd is None else r[key].get(cmd, 0) for r in ok(system) if key in r]
        return median(vals)

    a_runs, b_runs = len(ok("ipphpc")), len(ok("ipyparallel"))
    rows = []
    for label, unit, x, y in (
        (f"3. submit -> {n} engines registered, median of {a_runs} / {b_runs}", "s",
         med("ipphpc", "start_s"), med("ipyparallel", "start_s")),
        ("3.   command start -> sbatch called", "s", med("ipphpc", "to_sbatch_s"), med("ipyparallel", "to_sbatch_s")),
        ("3.   sbatch -> first engine's first log line", "s", med("ipphpc", "sbatch_to_first_engine_s"),
         med("ipyparallel", "sbatch_to_first_engine_s")),
        ("3.   first engine log line -> all registered", "s", med("ipphpc", "first_engine_to_all_s"),
         med("ipyparallel", "first_engine_to_all_s")),
        ("3. stop command, median", "s", med("ipphpc", "stop_s"), med("ipyparallel", "stop_s")),
        ("3. scheduler calls during start, median", "calls", calls("ipphpc", "start_calls"),
         calls("ipyparallel", "start_calls")),
        ("3.   of which squeue/sacct (job states)", "calls",
         _sum(calls("ipphpc", "start_calls", "squeue"), calls("ipphpc", "start_calls", "sacct")),
         _sum(calls("ipyparallel", "start_calls", "squeue"), calls("ipyparallel", "start_calls", "sacct"))),
        ("3. scheduler calls during stop, median", "calls", calls("ipphpc", "stop_calls"),
         calls("ipyparallel", "stop_calls")),
    ):
        rows.append([label, unit, fmt(x), fmt(y), ratio(x, y)])
    return rows


def _sum(*vals: float | None) -> float | None:
    return None if any(v is None for v in vals) else sum(vals)  # type: ignore[misc]


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Scheduler calls and start-up time of ipphpc on Slurm, beside ipyparallel.")
    ap.add_argument("--only", action="append", metavar="NAME", help=f"figures to run: {', '.join(FIGURES)}")
    ap.add_argument("--poll-seconds", type=float, default=60.0, help="tracking window of the poll figure (60)")
    ap.add_argument("--submit-n", type=int, default=256, help="engines of the submit figure (256)")
    ap.add_argument("--engines", type=int, default=8, help="engines of the startup figure (8)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the startup figure (3)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds one start may take (120)")
    ap.add_argument("--no-peers", action="store_true", help="ipphpc only (no ipyparallel)")
    ap.add_argument("--json", metavar="PATH", help="also write all results, raw samples included, as JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (scripts, logs)")
    args = ap.parse_args(argv)
    figures = [f.strip() for item in args.only or [",".join(FIGURES)] for f in item.split(",") if f.strip()]
    for f in figures:
        if f not in FIGURES:
            ap.error(f"unknown figure {f!r}; choose from {', '.join(FIGURES)}")
    args.figures = figures
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("sbatch") is None:
        print("batch_bench: sbatch not on PATH; start Slurm with .ci/services/slurm.sh", file=sys.stderr)
        return 2
    peers = not args.no_peers and shutil.which("ipcluster") is not None
    info = header("ipphpc batch-layer benchmark on Slurm")
    version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="ipphpc-batch-bench-", dir="/tmp"))
    run = Run(tmp)
    results: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        if "poll" in args.figures:
            results["poll"] = figure_poll(run, args.poll_seconds)
        if "submit" in args.figures:
            results["submit"] = figure_submit(run, args.submit_n, 2000, peers)
        if "startup" in args.figures:
            results["startup"] = figure_startup(run, args.engines, args.reps, args.timeout, peers)
    except KeyboardInterrupt:
        print("\ninterrupted; cancelling jobs", file=sys.stderr)
        return 130
    finally:
        run.cleanup()
        if args.keep_tmp:
            print(f"temporary files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    rows: list[list[str]] = []
    if "poll" in results:
        rows += rows_poll(results["poll"], args.poll_seconds)
    print(f"\nResults ({info['date'][:10]}, {info['cores']} cores, {version}, "
          f"wall {time.monotonic() - t_start:.0f} s, load average at the end "
          f"{[round(x, 2) for x in os.getloadavg()]})\n")
    if rows:
        print(render_table(["figure", "unit", "1,000 elements", "1 element", "1000/1"], rows))
        print()
    rows = []
    if "submit" in results:
        rows += rows_submit(results["submit"], args.submit_n, 2000)
    if "startup" in results:
        rows += rows_startup(results["startup"], args.engines)
    if rows:
        print(render_table(["figure", "unit", "ipphpc", "ipyparallel", "ipphpc/ipyparallel"], rows))
        print()
    for name, fig in results.items():
        for system, r in fig.items():
            for item in r if isinstance(r, list) else [r]:
                if isinstance(item, dict) and "error" in item:
                    print(f"note: {name}/{system} failed: {item['error']}")
    if "startup" in results:
        busy = [r.get("others_running") for s in ("ipphpc", "ipyparallel") for r in results["startup"][s]]
        print(f"note: Slurm jobs of other users running at each start: {busy}")
    if "poll" in results:
        for size, r in results["poll"].items():
            if "summary" in r:
                print(f"note: poll {size}: states at the end {r['summary']}, squeue calls at t = "
                      f"{r['squeue_at_s']} s (shim: {r['shim_squeue_while_tracking']}, counter: "
                      f"{r['tracking_calls']['by_command'].get('squeue', 0)})")
    for note in run.notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, {"machine": info, "slurm": version, "args": vars(args), "results": results,
                               "notes": run.notes})
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
