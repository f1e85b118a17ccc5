"""Task-database cost: ipphpc with each backend beside IPython Parallel with DictDB and SQLiteDB.

    .venv/bin/python bench/taskdb_bench.py                 # 10,000 tasks per figure, RSS after 1,000,000
    .venv/bin/python bench/taskdb_bench.py --quick         # 2,000 tasks, RSS after 100,000

For each configuration a fresh controller and 2 engines are started (one configuration at a time),
warmed up, and timed on: `apply` (one `apply_async(noop)` per task, then every result) and `map`
(`map_sync(inc, range(n), chunksize=1)`: one task, so one record, per item). Then, for ipphpc,
the controller's RSS is read idle and after a map of `--rss-tasks` no-op tasks (lowest value seen in
the 30 s after it ends). Everything lives in a temporary directory that is removed at the end.
Figures are printed, never checked.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from common import cpu_seconds  # noqa: E402
from workload import inc, noop  # noqa: E402

IPPHPC = ("none", "dict", "sqlite", "hdf5")
IPP = ("DictDB", "SQLiteDB")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def controller_cpu(pid: int | None) -> float:
    """User + system CPU time of the controller so far (NaN without a pid)."""
    return float("nan") if pid is None else cpu_seconds(pid)


def timed(lv, n: int, ctl_pid: int | None = None) -> dict:
    """Both throughputs, and the controller's CPU per task over both (a figure the machine's other load
    moves far less than a rate: it shows what recording costs the controller)."""
    c0 = controller_cpu(ctl_pid)
    t0 = time.perf_counter()
    ars = [lv.apply_async(noop) for _ in range(n)]
    for ar in ars:
        ar.get(300)
    apply = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = lv.map_sync(inc, range(n), chunksize=1)
    mapped = n / (time.perf_counter() - t0)
    assert list(out) == list(range(1, n + 1))
    time.sleep(0.5)  # the writer finishes its last batch: its work counts too
    return {"apply": apply, "map": mapped, "cpu_us": 1e6 * (controller_cpu(ctl_pid) - c0) / (2 * n)}


class IpphpcSide:
    def __init__(self, db: str, root: Path):
        import ipphpc
        self.ipphpc, self.root, self.db = ipphpc, root, db
        self.pdir = root / f"profile-{db}"
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "ipphpc"]
        self.ctl = subprocess.Popen([*cmd, "controller", "--profile-dir", str(self.pdir), "--cluster-id", db,
                                     f"--db={db}"], env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.eng = subprocess.Popen([*cmd, "engine", "--profile-dir", str(self.pdir), "--cluster-id", db, "-n", "2"],
                                    env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.rc = ipphpc.Client(profile_dir=str(self.pdir), cluster_id=db, timeout=5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.rc.wait_for_engines(2, timeout=60)
        self.lv = self.rc.load_balanced_view()
        self.lv.map_sync(inc, range(2000), chunksize=1)  # warm up

    def rss(self, n: int) -> dict:
        time.sleep(2)
        idle = rss_mib(self.ctl.pid)
        self.lv.map_sync(noop, range(n), chunksize=1)
        self.rc.purge_local_results("all")
        peak, low, t0 = rss_mib(self.ctl.pid), float("inf"), time.monotonic()
        while time.monotonic() - t0 < 30:
            low = min(low, rss_mib(self.ctl.pid))
            if low - idle < 10:
                break
            time.sleep(0.5)
        return {"idle": idle, "end_of_map": peak, "after": low}

    def close(self) -> None:
        try:
            self.rc.shutdown(hub=True)
            self.rc.close()
        except Exception:  # noqa: BLE001 - the processes are killed below anyway
            pass
        for p in (self.ctl, self.eng):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


class IppSide:
    def __init__(self, db: str, root: Path):
        import ipyparallel as ipp
        self.cluster = ipp.Cluster(n=2, profile_dir=str(root / f"ipp-{db}"), log_level=40,
                                   controller_args=[f"--IPController.db_class={db}"])
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(2, timeout=60)
        self.lv = self.rc.load_balanced_view()
        self.lv.map_sync(inc, range(2000), chunksize=1)

    def close(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 tasks and an RSS map of 100,000")
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--rss-tasks", type=int, default=None, help="tasks of the RSS map (default 1,000,000)")
    ap.add_argument("--skip-ipyparallel", action="store_true")
    ap.add_argument("--reps", type=int, default=None,
                    help="rounds over the ipphpc backends, one after another; each figure is the median "
                         "(default 3, 1 with --quick)")
    args = ap.parse_args()
    n = args.tasks or (2000 if args.quick else 10_000)
    args.reps = args.reps or (1 if args.quick else 3)
    n_rss = args.rss_tasks if args.rss_tasks is not None else (100_000 if args.quick else 1_000_000)
    root = Path(tempfile.mkdtemp(prefix="taskdb-bench-"))
    os.environ.update(IPPHPC_DIR=str(root / "ipphpc"), IPYTHONDIR=str(root / "ipython"),
                      PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
    rows: list[tuple[str, dict]] = []
    try:
        # rounds alternate the backends, so that a slow minute of the machine falls on all of them
        rounds: dict[str, list[dict]] = {db: [] for db in IPPHPC}
        for r in range(args.reps):
            for db in IPPHPC:
                print(f"ipphpc --db={db} (round {r + 1} of {args.reps}) ...", file=sys.stderr, flush=True)
                side = IpphpcSide(db, root / f"round-{r}")
                try:
                    fig = timed(side.lv, n, side.ctl.pid)
                    if n_rss and db != "dict" and r == args.reps - 1:
                        fig.update(side.rss(n_rss))
                finally:
                    side.close()
                rounds[db].append(fig)
        for db in IPPHPC:
            fig = {k: sorted(f[k] for f in rounds[db])[len(rounds[db]) // 2] for k in ("apply", "map", "cpu_us")}
            fig.update({k: v for k, v in rounds[db][-1].items() if k not in fig})
            rows.append((f"ipphpc {db}", fig))
        if not args.skip_ipyparallel:
            for db in IPP:
                print(f"ipyparallel {db} ...", file=sys.stderr, flush=True)
                side = IppSide(db, root)
                try:
                    rows.append((f"ipyparallel {db}", timed(side.lv, n)))
                finally:
                    side.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows, n, n_rss)
    return 0


def report(rows: list[tuple[str, dict]], n: int, n_rss: int) -> None:
    base = dict(rows).get("ipphpc none", {})
    ipp_sql = dict(rows).get("ipyparallel SQLiteDB", {})
    print(f"\n{n:,} no-op tasks, 2 engines; map with chunksize=1 (a record per task)\n")
    print(f"{'configuration':24} {'apply/s':>9} {'% none':>7} {'map/s':>9} {'% none':>7} {'vs ipp SQLite':>14} "
          f"{'controller CPU/task':>20}")
    for name, f in rows:
        pa = 100 * f["apply"] / base["apply"] if base else float("nan")
        pm = 100 * f["map"] / base["map"] if base else float("nan")
        vs = (f"{f['apply'] / ipp_sql['apply']:.1f}x / {f['map'] / ipp_sql['map']:.1f}x" if ipp_sql else "")
        cpu = "-" if math.isnan(f.get("cpu_us", math.nan)) else f"{f['cpu_us']:.0f} us"
        print(f"{name:24} {f['apply']:9.0f} {pa:6.0f}% {f['map']:9.0f} {pm:6.0f}% {vs:>14} {cpu:>20}")
    rss = [(name, f) for name, f in rows if "idle" in f]
    if rss:
        print(f"\ncontroller RSS (MiB), map of {n_rss:,} no-op tasks, chunksize=1\n")
        print(f"{'configuration':24} {'idle':>7} {'end of map':>11} {'after':>7} {'after - idle':>13}")
        for name, f in rss:
            print(f"{name:24} {f['idle']:7.1f} {f['end_of_map']:11.1f} {f['after']:7.1f} "
                  f"{f['after'] - f['idle']:13.1f}")


if __name__ == "__main__":
    sys.exit(main())
