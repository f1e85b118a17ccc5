"""Work done per allocation-hour when jobs end at their walltime: ipphpc beside dask-jobqueue, on a real Slurm.

    .venv/bin/python bench/walltime_bench.py                   # both figures, about 12 minutes
    .venv/bin/python bench/walltime_bench.py --minutes 2       # a shorter stream
    .venv/bin/python bench/walltime_bench.py --only rest       # one figure (stream, rest)

Figures (see bench/README.md, "Engines that live with the walltime"):

* stream: ``--workers`` engines (workers) whose jobs have a walltime of 4x the task length are kept
  busy with tasks of ``--task`` seconds for ``--minutes``. Counted: tasks that completed in that
  time, tasks whose error reached the caller, tasks that ran more than once (each run leaves a
  marker file), and the allocation both used: the sum of Slurm's elapsed time of every job or
  element the system submitted (sacct), from its first submission to its stop. ipphpc runs with its
  defaults (engines drain before the end; a task starts only where it can finish, its length
  learned from earlier runs; ended elements are replaced), with the drain margin scaled to this
  short walltime. dask-jobqueue runs its documented recipe for walltimes: ``--lifetime`` and
  ``--lifetime-stagger`` on the workers, and ``adapt(minimum=N, maximum=N)`` so that retired
  workers are replaced, with the same margin.
* rest: scheduler calls in a minute of adapting (between 0 and ``--workers``) with nothing to do.

Every scheduler call goes through a logging shim first on PATH; jobs are cancelled and processes
stopped in ``finally`` blocks. Needs Slurm (.ci/services/slurm.sh) and, for the peer, dask-jobqueue.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
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
    progress,
    ratio,
    read_shim_log,
    reap,
    render_table,
    slurm_cleanup,
    write_json,
    write_scheduler_shims,
)

FIGURES = ("stream", "rest")
SYSTEMS = ("ipphpc", "dask-jobqueue")
MARGIN, STAGGER = 5, 4  # seconds: the end margin and its random spread, the same for both systems


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


# -- inside one system's process ------------------------------------------------------------------
def keep_busy(submit: Any, outstanding: Any, workers: int, task: float, marks: str, seconds: float,
              harvest: Any = None) -> int:
    """Submit tasks so that two per worker are always out, for `seconds`, fetching results as they come
    (`harvest`); returns how many were submitted."""
    from workload import mark_sleep
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        if harvest is not None:
            harvest()
        for _ in range(max(0, 2 * workers - outstanding())):
            submit(mark_sleep, n, task, marks)
            n += 1
        time.sleep(0.2)
    if harvest is not None:
        harvest()
    return n


def side_ipphpc(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ipphpc import HPCCluster
    wall = 4 * args.task
    out: dict[str, Any] = {}
    if args.side_figure == "stream":
        cluster = HPCCluster(scheduler="slurm", n=args.workers, walltime=hms(wall), profile_dir=str(work / "profile"),
                             cluster_id="wall", shutdown_atexit=False, engine_timeout=300, replace_interval=2.0,
                             job_name="ipphpc-bench-wall",
                             engine_args=[f"--Engine.drain_margin={MARGIN}", f"--Engine.drain_stagger={STAGGER}"])
        t0 = time.monotonic()
        try:
            rc = cluster.start_and_connect_sync()
            out["start_s"] = time.monotonic() - t0
            lv = rc.load_balanced_view()
            ars: list[Any] = []
            out["submitted"] = keep_busy(lambda f, *a: ars.append(lv.apply_async(f, *a)),
                                         lambda: sum(1 for ar in ars if not ar.ready()), args.workers, args.task,
                                         str(work / "marks"), args.minutes * 60 - out["start_s"])
            errors: collections.Counter = collections.Counter()
            completed = 0
            for ar in ars:
                if ar.ready():
                    try:
                        ar.get(0)
                        completed += 1
                    except Exception as e:  # noqa: BLE001 - counted by kind
                        errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            out.update(completed=completed, errors=dict(errors), replaced=cluster._replacer.count
                       if getattr(cluster, "_replacer", None) else 0)
        finally:
            cluster.stop_cluster_sync()
        out["seconds"] = time.monotonic() - t0
    else:
        cluster = HPCCluster(scheduler="slurm", n=0, walltime=hms(wall), profile_dir=str(work / "profile"),
                             cluster_id="rest", shutdown_atexit=False, job_name="ipphpc-bench-rest")
        try:
            cluster.start_and_connect_sync()
            out["window"] = rest_window(lambda: cluster.adapt(minimum=0, maximum=args.workers), args)
        finally:
            cluster.stop_cluster_sync()
    return out


def rest_window(adapt: Any, args: argparse.Namespace) -> list[float]:
    """Start adapting (with the system's defaults but the range), let it settle, and return the window
    [start, end] (epoch seconds) of rest in which its scheduler calls are counted."""
    adapt()
    time.sleep(args.settle)
    t0 = time.time()
    time.sleep(args.rest_seconds)
    return [t0, time.time()]


def side_dask(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from dask_jobqueue import SLURMCluster
    from distributed import Client
    wall = 4 * args.task
    common = dict(cores=1, processes=1, memory="1GB", walltime=hms(wall), job_directives_skip=["--mem"],
                  python=sys.executable, local_directory=str(work / "dask"), log_directory=str(work / "dask-logs"),
                  job_name="dask-bench-wall", scheduler_options={"dashboard_address": None})
    out: dict[str, Any] = {}
    if args.side_figure == "stream":
        # the documented recipe: workers retire before the walltime, adapt keeps N of them
        cluster = SLURMCluster(**common, worker_extra_args=["--lifetime", f"{wall - MARGIN - STAGGER}s",
                                                            "--lifetime-stagger", f"{STAGGER}s"])
        t0 = time.monotonic()
        try:
            cluster.adapt(minimum=args.workers, maximum=args.workers)
            client = Client(cluster)
            client.wait_for_workers(args.workers, timeout=300)
            out["start_s"] = time.monotonic() - t0
            futures: list[Any] = []
            errors: collections.Counter = collections.Counter()
            results: list[Any] = []

            def harvest() -> None:
                # results are fetched as soon as they exist, as a user's loop over as_completed would: a result
                # left on a worker is lost when the worker retires, and computed again
                for f in [f for f in futures if f.done()]:
                    futures.remove(f)
                    if f.status == "finished":
                        results.append(f.result(timeout=30))
                    else:
                        e = f.exception(timeout=5)
                        errors[f"{type(e).__name__}: {str(e)[:80]}"] += 1
            out["submitted"] = keep_busy(lambda f, *a: futures.append(client.submit(f, *a, pure=False)),
                                         lambda: len(futures), args.workers, args.task, str(work / "marks"),
                                         args.minutes * 60 - out["start_s"], harvest)
            out.update(completed=len(results), errors=dict(errors))
            client.close()
        finally:
            cluster.close()
        out["seconds"] = time.monotonic() - t0
    else:
        cluster = SLURMCluster(**common)
        try:
            out["window"] = rest_window(lambda: cluster.adapt(minimum=0, maximum=args.workers), args)
        finally:
            cluster.close()
    return out


# -- the driver -----------------------------------------------------------------------------------
def allocation_seconds(job_ids: list[str]) -> tuple[float, int]:
    """Slurm's elapsed time summed over every element of the jobs, and how many elements there were."""
    if not job_ids:
        return 0.0, 0
    r = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,ElapsedRaw,State"],
                       capture_output=True, text=True, timeout=60, check=False)
    rows = [line.split("|") for line in r.stdout.splitlines() if line.count("|") == 2]
    return float(sum(int(e or 0) for _, e, _ in rows)), len(rows)


def run_side(system: str, figure: str, args: argparse.Namespace, tmp: Path, tag: str, shims: Path) -> dict[str, Any]:
    work = tmp / f"{system}-{figure}"
    log = work / "scheduler-calls.tsv"
    env = bench_env(work, tag, **{SHIM_LOG_VAR: str(log), "PATH": f"{shims}:{os.environ['PATH']}"})
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])  # workload, on every worker too
    (work / "marks").mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    cmd = [sys.executable, __file__, "--side", system, "--side-figure", figure, "--out", str(result),
           "--workers", str(args.workers), "--task", str(args.task), "--minutes", str(args.minutes),
           "--rest-seconds", str(args.rest_seconds), "--settle", str(args.settle), "--work", str(work)]
    progress(f"{system}: {figure}")
    out: dict[str, Any] = {}
    try:
        p = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=args.minutes * 60 + args.rest_seconds + 600, check=False)
        if p.returncode != 0 or not result.exists():
            out["error"] = f"exit {p.returncode}: {p.stderr.strip()[-1500:]}"
        else:
            out = json.loads(result.read_text())
    except subprocess.TimeoutExpired:
        out["error"] = "timed out"
    finally:
        calls = read_shim_log(log)
        ids = job_ids_from(calls)
        left = slurm_cleanup(ids)
        reap(tag, 5.0)
    if left:
        out["left_in_queue"] = left
    out["calls"] = count_calls(calls)
    out["jobs"] = len(ids)
    if figure == "stream":
        time.sleep(2)  # the accounting takes the last elements' end
        out["allocation_s"], out["elements"] = allocation_seconds(ids)
        runs = collections.Counter(p.name.split(".")[0] for p in (work / "marks").iterdir())
        out["ran_twice"] = sum(1 for n in runs.values() if n > 1)
        out["runs"] = sum(runs.values())
    elif "window" in out:
        lo, hi = out["window"]
        inside = [c for c in calls if lo <= c["start"] <= hi]
        out["rest_calls"] = count_calls(inside)
        out["rest_per_min"] = len(inside) * 60 / (hi - lo)
    return out


def rows_stream(r: dict[str, dict[str, Any]]) -> list[list[str]]:
    a, b = r.get("ipphpc", {}), r.get("dask-jobqueue", {})

    def per_hour(x: dict[str, Any]) -> float | None:
        return x["completed"] / (x["allocation_s"] / 3600) if x.get("allocation_s") else None

    def useful(x: dict[str, Any], task: float) -> float | None:
        return 100 * x["completed"] * task / x["allocation_s"] if x.get("allocation_s") else None

    def errs(x: dict[str, Any]) -> int | None:
        return sum(x["errors"].values()) if "errors" in x else None

    task = r["task"]
    rows = [["tasks completed", "", fmt(a.get("completed")), fmt(b.get("completed")),
             ratio(a.get("completed"), b.get("completed"))],
            ["allocation used", "s", fmt(a.get("allocation_s")), fmt(b.get("allocation_s")),
             ratio(a.get("allocation_s"), b.get("allocation_s"))],
            ["tasks per allocation-hour", "", fmt(per_hour(a)), fmt(per_hour(b)), ratio(per_hour(a), per_hour(b))],
            ["allocation spent in tasks that completed", "%", fmt(useful(a, task)), fmt(useful(b, task)),
             ratio(useful(a, task), useful(b, task))],
            ["task runs started", "", fmt(a.get("runs")), fmt(b.get("runs")), ratio(a.get("runs"), b.get("runs"))],
            ["tasks run more than once", "", fmt(a.get("ran_twice")), fmt(b.get("ran_twice")), "-"],
            ["errors that reached the caller", "", fmt(errs(a)), fmt(errs(b)), "-"],
            ["jobs or elements used", "", fmt(a.get("elements")), fmt(b.get("elements")),
             ratio(a.get("elements"), b.get("elements"))],
            ["sbatch calls", "", fmt(a.get("calls", {}).get("sbatch")), fmt(b.get("calls", {}).get("sbatch")),
             ratio(a.get("calls", {}).get("sbatch"), b.get("calls", {}).get("sbatch"))]]
    return rows


def rows_rest(r: dict[str, dict[str, Any]]) -> list[list[str]]:
    a, b = r.get("ipphpc", {}), r.get("dask-jobqueue", {})
    return [["scheduler calls while adapt rests", "per min", fmt(a.get("rest_per_min")),
             fmt(b.get("rest_per_min")), ratio(a.get("rest_per_min"), b.get("rest_per_min"))]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=None, help=f"figures: {', '.join(FIGURES)}")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma separated subset of " + ", ".join(SYSTEMS))
    ap.add_argument("--workers", type=int, default=2, help="engines (workers) kept busy")
    ap.add_argument("--task", type=float, default=15.0, help="seconds each task sleeps; the walltime is 4x this")
    ap.add_argument("--minutes", type=float, default=4.0, help="how long each system is kept busy")
    ap.add_argument("--rest-seconds", type=float, default=60.0, help="the window in which calls at rest are counted")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds of adapting before that window opens")
    ap.add_argument("--json", default=None, help="also write every figure as JSON")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--side", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--side-figure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    figures = [f for item in (args.only or list(FIGURES)) for f in item.split(",") if f]
    for f in figures:
        if f not in FIGURES:
            ap.error(f"unknown figure {f!r}; choose from {', '.join(FIGURES)}")
    args.figures = figures
    args.system_list = [s for s in args.systems.split(",") if s]
    for s in args.system_list:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        side = side_ipphpc if args.side == "ipphpc" else side_dask
        write_json(args.out, side(args, Path(args.work)))
        return 0
    if shutil.which("sbatch") is None:
        print("walltime_bench: sbatch not on PATH; start Slurm with .ci/services/slurm.sh", file=sys.stderr)
        return 2
    info = header("ipphpc walltime benchmark on Slurm")
    version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="ipphpc-walltime-bench-", dir="/tmp"))
    tag = uuid.uuid4().hex
    shims = write_scheduler_shims(tmp / "shims")
    results: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        for figure in args.figures:
            results[figure] = {"task": args.task}
            for system in args.system_list:
                results[figure][system] = run_side(system, figure, args, tmp, tag, shims)
    except KeyboardInterrupt:
        print("\ninterrupted; cancelling jobs", file=sys.stderr)
        return 130
    finally:
        if args.keep_tmp:
            print(f"temporary files kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nResults ({info['date'][:10]}, {info['cores']} cores, {version}, {args.workers} workers, tasks of "
          f"{args.task:g} s, walltime {hms(4 * args.task)}, {args.minutes:g} min each, wall "
          f"{time.monotonic() - t_start:.0f} s)\n")
    rows: list[list[str]] = []
    if "stream" in results:
        rows += rows_stream(results["stream"])
    if "rest" in results:
        rows += rows_rest(results["rest"])
    print(render_table(["figure", "unit", "ipphpc", "dask-jobqueue", "ipphpc/dask-jobqueue"], rows))
    print()
    for figure, by_system in results.items():
        for system, r in by_system.items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                print(f"note: {figure}/{system} failed: {r['error']}")
            if r.get("errors"):
                print(f"note: {figure}/{system} errors: {r['errors']}")
            if r.get("left_in_queue"):
                print(f"note: {figure}/{system} left in the queue after the cancel: {r['left_in_queue']}")
            if "rest_calls" in r:
                print(f"note: {figure}/{system} calls at rest: {r['rest_calls'] or 'none'}")
    if args.json:
        write_json(args.json, {"machine": info, "slurm": version, "args": {k: v for k, v in vars(args).items()},
                               "results": results})
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
