"""Runs the benchmark figures for ONE system and writes the results as JSON.

run.py starts this script once per system, each time as a fresh process with
its own temporary directories, so the systems never share memory or event
loops.  It is not meant to be started by hand, but it can be:

    python bench/side.py --system dask --figures latency --out /tmp/x.json

Everything this process starts is stopped in ``finally`` blocks; run.py
additionally terminates anything still carrying the run's tag afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback

from common import (
    FIGURES,
    FULL,
    FigureTimeout,
    cmdline,
    descendants,
    median,
    peak_above,
    percentile,
    pss_kib,
    rss_kib,
    time_limit,
    tree_cpu,
    write_json,
)
from workload import checksum

# figures that run on the long-lived cluster, in the order they run
MAIN_CLUSTER_FIGURES = ("rss", "latency", "apply", "apply_main", "map", "array", "array_new", "array_far",
                        "array_balanced", "push")


def load_system(name):
    if name == "ipphpc":
        from ipphpc_side import Ipphpc

        return Ipphpc()
    if name == "ipphpc-curve":
        from ipphpc_side import IpphpcCurve

        return IpphpcCurve()
    if name == "ipyparallel":
        from peers import IPyParallel

        return IPyParallel()
    if name == "dask":
        from peers import Dask

        return Dask()
    if name == "parsl-enc":
        from parsl_side import ParslEncrypted

        return ParslEncrypted()
    raise ValueError(f"unknown system {name!r}")


class Runner:
    def __init__(self, system, params, figures, out, progress):
        self.sys = system
        self.p = params
        self.figures = figures
        self.out = out
        self.progress = progress
        self.result = {
            "system": system.name,
            "available": True,
            "version": None,
            "error": None,
            "figures": {},
            "info": {},
        }
        self.started = False
        self.start_error = None
        # generous per-step limits; a stuck step is abandoned, not waited for
        scale = params["tasks"] / FULL["tasks"]
        self.limit_burst = max(60.0, 150.0 * scale)
        self.limit_step = 90.0

    # -- bookkeeping ----------------------------------------------------------
    def say(self, msg):
        if self.progress:
            self.progress.write(f"  [{self.sys.name}] {msg}\n")
            self.progress.flush()

    def save(self):
        write_json(self.out, self.result)

    def record(self, figure, data):
        self.result["figures"][figure] = data
        self.save()

    def fail(self, figure, exc):
        msg = f"{type(exc).__name__}: {exc}"
        self.say(f"{figure}: FAILED ({msg})")
        traceback.print_exc()
        self.record(figure, {"error": msg})

    # -- cluster life cycle ---------------------------------------------------
    def ensure_started(self):
        if self.started:
            return
        if self.start_error:
            raise RuntimeError(f"cluster did not start earlier ({self.start_error})")
        n = self.p["engines"]
        self.say(f"starting {n} engines")
        t0 = time.perf_counter()
        self.started = True  # set first: a half-started cluster must be stopped too
        try:
            with time_limit(self.limit_step):
                self.sys.start(n)
                t1 = time.perf_counter()
                self.sys.warmup()
        except (Exception, FigureTimeout) as exc:
            self.start_error = f"{type(exc).__name__}: {exc}"
            raise
        self.result["info"]["start_s"] = round(t1 - t0, 3)
        self.result["info"]["warmup_s"] = round(time.perf_counter() - t1, 3)

    def shutdown(self):
        if not self.started:
            return
        self.started = False
        try:
            with time_limit(60):
                self.sys.stop()
        except Exception:  # noqa: BLE001 - reported; leftovers are terminated
            traceback.print_exc()
            self.say("stopping the cluster failed; leftovers will be terminated")

    # -- figures ----------------------------------------------------------------
    def fig_coldstart(self):
        n, runs = self.p["coldstart_engines"], self.p["coldstart_runs"]
        times = []
        for i in range(runs):
            with time_limit(self.limit_step):
                t = self.sys.cold_start(n)
            times.append(t)
            self.say(f"coldstart {i + 1}/{runs}: {t:.2f} s")
        return {"engines": n, "runs_s": times, "median_s": median(times)}

    def fig_wide(self):
        n, calls = self.p["wide_engines"], self.p["wide_calls"]
        with time_limit(2 * self.limit_step):  # 16 engines of IPython Parallel take a while to start on 2 cores
            ms = [s * 1e3 for s in self.sys.wide_calls(n, calls)]
        out = {"engines": n, "calls": calls, "median_ms": median(ms), "p99_ms": percentile(ms, 99), "min_ms": min(ms)}
        self.say(f"wide: a call on all {n} engines, median {out['median_ms']:.2f} ms")
        return out

    def _runs(self, once, most: int) -> list[dict]:
        """Up to `most` results of `once()` (each a dict with "seconds"): another run starts only while the runs
        so far and one more fit in `apply_budget_s`, so a slow system runs once."""
        runs: list[dict] = []
        spent = 0.0
        while len(runs) < most:
            runs.append(once())
            spent += runs[-1]["seconds"]
            if spent + runs[-1]["seconds"] > self.p["apply_budget_s"]:
                break
        return runs

    def fig_apply(self, fn=None, name="apply"):
        """Bursts of `tasks` no-op apply_async, the median of up to `apply_runs` of them: on 2 cores one burst
        of a fast system varies by a third from run to run."""
        n = self.p["tasks"]

        def once() -> dict:
            with time_limit(self.limit_burst), tree_cpu() as cpu:
                t0 = time.perf_counter()
                results = self.sys.apply_burst(n, fn)
                dt = time.perf_counter() - t0
            ok = len(results) == n and all(r is None for r in results)
            return {"seconds": dt, "tasks_per_s": n / dt, "cpu_us_per_task": 1e6 * cpu.seconds / n,
                    "results_ok": ok, "cpu_processes": len(cpu.pids)}
        runs = self._runs(once, self.p["apply_runs"])
        rate = median([r["tasks_per_s"] for r in runs])
        per_task = median([r["cpu_us_per_task"] for r in runs])
        self.say(f"{name}: {n} tasks, median of {len(runs)} bursts: {rate:,.0f} tasks/s, {per_task:.0f} us CPU per "
                 f"task over {runs[-1]['cpu_processes']} processes "
                 f"(bursts: {', '.join('%.0f' % r['cpu_us_per_task'] for r in runs)} us)")
        return {"tasks": n, "seconds": median([r["seconds"] for r in runs]), "tasks_per_s": rate,
                "results_ok": all(r["results_ok"] for r in runs), "cpu_us_per_task": per_task,
                "cpu_processes": runs[-1]["cpu_processes"], "runs": runs}

    def fig_apply_main(self):
        return self.fig_apply(notebook_noop, "apply_main")

    def fig_map(self):
        """The median of up to `map_runs` maps: a fast system's map takes a few milliseconds, and one hiccup of
        the machine in those is a factor of several in a single run."""
        n = self.p["tasks"]

        def once() -> dict:
            with time_limit(self.limit_burst):
                t0 = time.perf_counter()
                results = self.sys.map_burst(n)
                dt = time.perf_counter() - t0
            return {"seconds": dt, "tasks_per_s": n / dt, "results_ok": list(results) == list(range(1, n + 1))}
        runs = self._runs(once, self.p["map_runs"])
        rate = median([r["tasks_per_s"] for r in runs])
        self.say(f"map: {n} items, median of {len(runs)} runs: {rate:,.0f} tasks/s "
                 f"(runs: {', '.join('%.4f' % r['seconds'] for r in runs)} s)")
        return {"tasks": n, "seconds": median([r["seconds"] for r in runs]), "tasks_per_s": rate,
                "results_ok": all(r["results_ok"] for r in runs), "runs": runs}

    def fig_latency(self):
        k = self.p["latency_calls"]
        call = self.sys.one_call()
        samples = []
        with time_limit(self.limit_step):
            for _ in range(min(50, k)):  # not recorded
                call()
            clock = time.perf_counter
            for _ in range(k):
                t0 = clock()
                call()
                samples.append(clock() - t0)
        ms = [s * 1e3 for s in samples]
        out = {
            "calls": k,
            "median_ms": median(ms),
            "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / k,
            "min_ms": min(ms),
            "max_ms": max(ms),
        }
        self.say(f"latency: median {out['median_ms']:.3f} ms, p99 {out['p99_ms']:.3f} ms")
        return out

    def fig_array_new(self):
        from workload import fresh
        return self.fig_array(fresh)

    def fig_array_far(self):
        with self.sys.far_echo() as far:
            return self.fig_array(far=far)

    def fig_array_balanced(self):
        with self.sys.far_balanced() as (far, pid):
            with peak_above(pid) as peak:
                out = self.fig_array(far=far)
        out["controller_peak_mib"] = peak["mib"]
        return out

    def fig_array(self, fn=None, far=None):
        import numpy as np

        nbytes, runs = self.p["array_bytes"], self.p["array_runs"]
        arr = np.random.default_rng(12345).random(nbytes // 8)
        if far is not None:
            # one round trip first, not recorded, for every system: ipphpc's cluster for this figure is new, the
            # others use the cluster figure 5 has just warmed
            with time_limit(self.limit_step):
                far(arr)
        times, equal = [], True
        for i in range(runs):
            with time_limit(self.limit_step):
                t0 = time.perf_counter()
                back = far(arr) if far is not None else self.sys.echo(arr) if fn is None else self.sys.echo(arr, fn)
                dt = time.perf_counter() - t0
            equal = equal and isinstance(back, np.ndarray) and np.array_equal(back, arr)
            del back
            times.append(dt)
            kind = " (far)" if far is not None else " (new)" if fn is not None else ""
            self.say(f"array{kind} {i + 1}/{runs}: {dt:.3f} s")
        med = median(times)
        return {
            "bytes": arr.nbytes,
            "runs_s": times,
            "median_s": med,
            "mb_per_s_both_ways": 2 * arr.nbytes / med / 1e6,
            "equal": equal,
        }

    def fig_push(self):
        import numpy as np

        nbytes, n = self.p["push_bytes"], self.p["engines"]
        arr = np.random.default_rng(54321).random(nbytes // 8)
        want = tuple(checksum(arr))
        with peak_above(self.sys.main_controller_pid()) as peak, time_limit(self.limit_step):
            t0 = time.perf_counter()
            sums = self.sys.push_all(arr)
            dt = time.perf_counter() - t0
        self.sys.drop_pushed()
        out = {
            "bytes": arr.nbytes,
            "engines": n,
            "seconds": dt,
            "mb_per_s_to_all": n * arr.nbytes / dt / 1e6,
            "controller_peak_mib": peak["mib"],
            "equal": [tuple(s) for s in sums] == [want] * n,
        }
        self.say(f"push: {arr.nbytes / 2**20:,.0f} MiB to {n} engines in {dt:.2f} s, controller peak "
                 f"+{peak['mib'] if peak['mib'] is not None else float('nan'):.0f} MiB")
        return out

    def fig_push_wide(self):
        import numpy as np

        nbytes, n = self.p["push_wide_bytes"], self.p["push_wide_engines"]
        arr = np.random.default_rng(4242).random(nbytes // 8)
        warm = np.ones(2 * 2**20 // 8)  # opens whatever connections a large push opens
        with time_limit(2 * self.limit_step):
            times, sums, sent = self.sys.push_wide(n, arr, warm, self.p["push_wide_runs"])
        dt = median(times)
        out = {
            "bytes": arr.nbytes,
            "engines": n,
            "runs_s": times,
            "seconds": dt,
            "client_bytes_sent": sent,
            "client_copies": None if sent is None else sent / arr.nbytes,
            "equal": [tuple(s) for s in sums] == [tuple(checksum(arr))] * n,
        }
        copies = "?" if sent is None else f"{out['client_copies']:.2f}"
        self.say(f"push_wide: {arr.nbytes / 1e6:g} MB to {n} engines in {dt:.2f} s; the client wrote {copies} copies")
        return out

    def fig_rss(self):
        n = self.p["engines"]
        with time_limit(self.limit_step):
            with self.sys.idle_processes(n) as procs:
                time.sleep(1.0)  # let the processes settle into idleness
                engines = []
                for e in procs["engines"]:
                    ek = rss_kib(e["engine"])
                    nk = rss_kib(e["nanny"]) if e["nanny"] else 0
                    engines.append(
                        {"engine_pid": e["engine"], "engine_kib": ek, "nanny_pid": e["nanny"], "nanny_kib": nk}
                    )
                ctl = procs["controller"]
                tree = [ctl] + descendants(ctl)
                tree_info = [
                    {"pid": p, "rss_kib": rss_kib(p) or 0, "pss_kib": pss_kib(p) or 0, "cmd": cmdline(p)[:160]}
                    for p in tree
                ]
                for e in engines:
                    e["engine_pss_kib"] = pss_kib(e["engine_pid"])
                    e["nanny_pss_kib"] = pss_kib(e["nanny_pid"]) if e["nanny_pid"] else 0
        engine_mib = sum(e["engine_kib"] + e["nanny_kib"] for e in engines) / len(engines) / 1024
        out = {
            "engine_mib": engine_mib,
            "engine_only_mib": sum(e["engine_kib"] for e in engines) / len(engines) / 1024,
            "engines": engines,
            "controller_main_mib": tree_info[0]["rss_kib"] / 1024,
            "controller_tree_rss_mib": sum(t["rss_kib"] for t in tree_info) / 1024,
            "controller_tree_pss_mib": sum(t["pss_kib"] for t in tree_info) / 1024,
            "controller_tree": tree_info,
            "measured_on": "main cluster" if self.sys.rss_on_main_cluster else "separate cluster",
        }
        self.say(
            f"rss: engine {engine_mib:.1f} MiB, controller {out['controller_main_mib']:.1f} MiB "
            f"(PSS {out['controller_tree_pss_mib']:.1f} MiB over {len(tree)} processes)"
        )
        return out

    # -- driver -----------------------------------------------------------------
    def run_figure(self, name, needs_main):
        try:
            if needs_main:
                self.ensure_started()
            self.record(name, getattr(self, f"fig_{name}")())
        except (Exception, FigureTimeout) as exc:  # noqa: BLE001 - one figure failing ends only that figure
            self.fail(name, exc)
            if needs_main:
                # the cluster may be wedged; the next figure gets a fresh one
                self.shutdown()

    def run(self):
        self.result["version"] = self.sys.version()
        self.save()
        self.say(f"version {self.result['version']}")
        if self.sys.supported is not None:
            self.figures = [f for f in self.figures if f in self.sys.supported]
        for name in ("coldstart", "wide", "push_wide"):  # clusters of their own
            if name in self.figures:
                self.run_figure(name, needs_main=False)
        try:
            for name in MAIN_CLUSTER_FIGURES:
                if name not in self.figures:
                    continue
                on_main = name != "rss" or self.sys.rss_on_main_cluster
                self.run_figure(name, needs_main=on_main)
        finally:
            self.shutdown()


def notebook_noop(*args, **kwargs):
    """A no-op defined where a notebook's or a script's functions are (`__main__`): engines cannot import it,
    so it travels by value, as cloudpickle writes it."""
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", required=True)
    ap.add_argument("--figures", default=",".join(FIGURES))
    ap.add_argument("--params", default=None, help="JSON dict overriding the full-run parameters")
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress-fd", type=int, default=None)
    args = ap.parse_args(argv)

    # a polite stop from run.py must still run the finally blocks below
    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    progress = None
    if args.progress_fd is not None:
        os.set_inheritable(args.progress_fd, False)  # keep it out of engines/workers
        progress = os.fdopen(args.progress_fd, "w", buffering=1)

    params = dict(FULL)
    if args.params:
        params.update(json.loads(args.params))
    figures = [f for f in args.figures.split(",") if f]

    result = {"system": args.system, "available": False, "version": None, "error": None, "figures": {}}
    try:
        system = load_system(args.system)
    except Exception as exc:  # noqa: BLE001 - reported in the result
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
        write_json(args.out, result)
        if progress:
            progress.write(f"  [{args.system}] not available: {result['error']}\n")
        return 2

    runner = Runner(system, params, figures, args.out, progress)
    try:
        runner.run()
    except BaseException as exc:
        traceback.print_exc()
        runner.result["error"] = f"{type(exc).__name__}: {exc}"
        runner.save()
        if not isinstance(exc, Exception):
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
