"""A 100 MB numpy array to 4 MPI engines: the client's MPI broadcast vs a push through the controller.

    .venv/bin/python bench/mpi_bench.py                 # 7 runs of each, under a minute
    .venv/bin/python bench/mpi_bench.py --runs 3 --mb 10 --json out.json

One cluster ``HPCCluster(engines="mpi", n=4)`` (one ``mpiexec -n 4``, engine
id = rank) serves every run.  Timed, each from the call until it returned
(``block=True``):

* ``rc[:].mpi_bcast("a", arr)``: one copy to rank 0 through the controller,
  then ``MPI.Bcast`` of the raw buffer to the other ranks;
* ``rc[:].push({"a": arr})``: the controller forwards the (once serialized)
  array to each of the 4 engines;

the same array held by one engine (rank 0) and wanted by all, timed from the call until it returned:

* ``rc[:].mpi_bcast("a", root=0)``: ``MPI.Bcast`` from rank 0, nothing through the controller;
* ``rc[1:].push({"a": rc[0].pull("a")})``: up to the client and down to the 3 others through the
  controller;

and, to show where the broadcast's time goes, its two steps on their own
(``rc[0].push`` and the ``mpi_bcast`` apply on all ranks).  One unrecorded
transfer of each kind comes first (the engines' first 100 MB allocation is
slow); then the two methods alternate in order from run to run.  ``a`` is
deleted on every engine before each timed step, and every engine's copy is
checked (CRC-32) after it, outside the timed region.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from hpc_common import (  # noqa: E402 - found through the path set above
    TAG_VAR,
    fmt,
    header,
    median,
    progress,
    ratio,
    reap,
    render_table,
    write_json,
)


def crc_of(name: str) -> tuple[int, int]:
    """On an engine: (CRC-32, byte count) of the array ``name`` in its namespace."""
    import zlib as _z

    value = globals()[name]
    return _z.crc32(memoryview(value).cast("B")), value.nbytes


def forget(name: str) -> None:
    """On an engine: drop ``name`` so the next transfer allocates afresh."""
    import gc

    globals().pop(name, None)
    gc.collect()


def timed(step: Any) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from ipphpc.client.remote import EngineNamespace, mpi_bcast
    from ipphpc.cluster.cluster import HPCCluster
    from ipphpc.launch.mpi import find_mpiexec, mpi_flavor

    mpiexec = find_mpiexec()
    want = os.environ.get("IPPHPC_MPIEXEC")
    out: dict[str, Any] = {"mpiexec": mpiexec, "mpi": mpi_flavor(mpiexec), "runs": {}}
    if want and os.path.realpath(want) != os.path.realpath(mpiexec):
        out["note"] = f"the cluster uses {mpiexec}, not $IPPHPC_MPIEXEC={want}"
    arr = np.random.default_rng(7).random(int(args.mb * 1e6) // 8)
    expect = (zlib.crc32(memoryview(arr).cast("B")), arr.nbytes)
    cluster = HPCCluster(engines="mpi", n=args.engines, engine_timeout=120.0)
    t0 = time.monotonic()
    rc = cluster.start_and_connect_sync()
    try:
        out["cluster_start_s"] = time.monotonic() - t0
        dv = rc[:]
        ids = sorted(rc.ids)
        ranks = dv.apply_sync(lambda: mpi_rank)  # noqa: F821 - set on MPI engines
        out["engines"] = {"ids": ids, "ranks": ranks}
        if sorted(ranks) != list(range(args.engines)):
            raise RuntimeError(f"engine ranks {ranks} are not 0..{args.engines - 1}")
        root = rc.direct_view(ids[0])
        steps = {
            "mpi_bcast": lambda: dv.mpi_bcast("a", arr, block=True),
            "push": lambda: dv.push({"a": arr}, block=True),
            "push_root": lambda: root.push({"a": arr}, block=True),
            "bcast_step": lambda: dv.apply_sync(mpi_bcast, EngineNamespace(), "a", ids[0]),
        }
        others = rc.direct_view(ids[1:])
        held = {
            "engine_mpi": lambda: dv.mpi_bcast("a", root=ids[0], block=True),
            "engine_controller": lambda: others.push({"a": root.pull("a", block=True)}, block=True),
        }

        def on_root_only() -> None:
            dv.apply_sync(forget, "a")
            root.push({"a": arr}, block=True)

        samples: dict[str, list[float]] = {k: [] for k in [*steps, *held]}
        wrong: list[str] = []
        progress(f"warm-up: one unrecorded {args.mb:g} MB transfer of each kind")
        for name, step in steps.items():
            if name != "bcast_step":
                dv.apply_sync(forget, "a")
            step()
        for step in held.values():
            on_root_only()
            step()
        dv.apply_sync(forget, "a")
        for i in range(args.runs):
            order = ["mpi_bcast", "push"] if i % 2 == 0 else ["push", "mpi_bcast"]
            progress(f"run {i + 1}/{args.runs}: {' then '.join(order)}, then the two broadcast steps")
            for name in order:
                dv.apply_sync(forget, "a")
                samples[name].append(timed(steps[name]))
                got = dv.apply_sync(crc_of, "a")
                if any(tuple(g) != expect for g in got):
                    wrong.append(f"{name} run {i + 1}")
            for name in (["engine_mpi", "engine_controller"] if i % 2 == 0 else ["engine_controller", "engine_mpi"]):
                on_root_only()
                samples[name].append(timed(held[name]))
                if any(tuple(g) != expect for g in dv.apply_sync(crc_of, "a")):
                    wrong.append(f"{name} run {i + 1}")
            dv.apply_sync(forget, "a")
            samples["push_root"].append(timed(steps["push_root"]))
            samples["bcast_step"].append(timed(steps["bcast_step"]))
            if any(tuple(g) != expect for g in dv.apply_sync(crc_of, "a")):
                wrong.append(f"two-step broadcast run {i + 1}")
        dv.apply_sync(forget, "a")
        out["runs"] = samples
        out["wrong"] = wrong
    finally:
        t1 = time.monotonic()
        cluster.stop_cluster_sync()
        out["cluster_stop_s"] = time.monotonic() - t1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="MPI broadcast vs push through the controller, 4 MPI engines.")
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each method (7)")
    ap.add_argument("--mb", type=float, default=100.0, help="array size in MB, 10^6 bytes (100)")
    ap.add_argument("--engines", type=int, default=4, help="MPI engines (4)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw samples as JSON")
    args = ap.parse_args(argv)
    info = header("ipphpc MPI broadcast benchmark")
    tmp = Path(tempfile.mkdtemp(prefix="ipphpc-mpi-bench-", dir="/tmp"))
    tag = uuid.uuid4().hex
    os.environ.update({"IPPHPC_DIR": str(tmp / "ipphpc"), TAG_VAR: tag})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = run(args)
    finally:
        left = reap(tag)
        shutil.rmtree(tmp, ignore_errors=True)
    if left:
        result["leftovers"] = left
    s = result["runs"]
    bcast, push = median(s["mpi_bcast"]), median(s["push"])
    mb = args.mb
    n = args.engines
    rows = [
        [f"{mb:g} MB to {n} engines, median of {args.runs}", "s", fmt(bcast), fmt(push), ratio(bcast, push)],
        [f"{mb:g} MB to {n} engines, best of {args.runs}", "s", fmt(min(s["mpi_bcast"])), fmt(min(s["push"])),
         ratio(min(s["mpi_bcast"]), min(s["push"]))],
        [f"{mb:g} MB to {n} engines, data rate into the engines (median)", "MB/s",
         fmt(n * mb / bcast), fmt(n * mb / push), ratio(push, bcast)],
        [f"{mb:g} MB held by one engine, to all {n}, median of {args.runs}", "s", fmt(median(s["engine_mpi"])),
         fmt(median(s["engine_controller"])), ratio(median(s["engine_mpi"]), median(s["engine_controller"]))],
        [f"{mb:g} MB held by one engine, to all {n}, best of {args.runs}", "s", fmt(min(s["engine_mpi"])),
         fmt(min(s["engine_controller"])), ratio(min(s["engine_mpi"]), min(s["engine_controller"]))],
    ]
    print(f"\nResults ({info['date'][:10]}, {info['cores']} cores, {result['mpi']} {result['mpiexec']}, "
          f"{n} engines, load average at the end {[round(x, 2) for x in os.getloadavg()]})\n")
    print(render_table(["figure", "unit", "mpi_bcast", "through the controller", "ratio"], rows))
    print()
    steps = [
        ["step 1: rc[0].push (to rank 0 through the controller)", "s", fmt(median(s["push_root"]))],
        ["step 2: mpi_bcast apply on all ranks (MPI.Bcast)", "s", fmt(median(s["bcast_step"]))],
        ["cluster start (mpiexec, 4 engines registered)", "s", fmt(result["cluster_start_s"])],
    ]
    print(render_table(["where mpi_bcast's time goes, median", "unit", "value"], steps))
    print()
    if result.get("wrong"):
        print(f"note: WRONG contents on some engine after: {', '.join(result['wrong'])}")
    else:
        print("note: every engine's copy matched (CRC-32) after every run")
    if result.get("note"):
        print(f"note: {result['note']}")
    if left:
        print(f"note: {len(left)} leftover process(es) had to be terminated")
    print("note: raw samples, s: " + "; ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in s.items()))
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "result": result})
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
