"""Benchmark ipphpc against ipyparallel and dask.distributed in one run.

    .venv/bin/python bench/run.py                 # full run (a few minutes)
    .venv/bin/python bench/run.py --quick         # short run (about a minute)
    .venv/bin/python bench/run.py --only latency --only rss --json out.json

Each system runs in a fresh process of its own (bench/side.py) with its own
temporary IPYTHONDIR / IPPHPC_DIR / TMPDIR; the results come back as JSON and
are printed as one table with the ratio of ipphpc to each peer.
See bench/README.md for what every figure measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    FIGURES,
    FULL,
    PEERS,
    QUICK,
    SYSTEMS,
    TAG_VAR,
    reap,
    table_rows,
    wait_gone,
    write_json,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark ipphpc against ipyparallel and dask.distributed.",
        epilog="figures: " + "; ".join(f"{k}: {v}" for k, v in FIGURES.items()),
    )
    ap.add_argument("--quick", action="store_true", help="fewer tasks and repetitions (about a minute)")
    ap.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these figures (repeatable or comma separated): {', '.join(FIGURES)}",
    )
    ap.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma separated subset of: " + ", ".join(SYSTEMS),
    )
    ap.add_argument("--json", metavar="PATH", help="also write all results (raw samples included) as JSON")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per system before it is stopped (default 300, 150 with --quick)",
    )
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directories and logs")
    args = ap.parse_args(argv)

    figures = []
    for item in args.only or [",".join(FIGURES)]:
        for name in item.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in FIGURES:
                ap.error(f"unknown figure {name!r}; choose from {', '.join(FIGURES)}")
            if name not in figures:
                figures.append(name)
    args.figures = figures

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    args.systems = systems
    if args.timeout is None:
        args.timeout = 150.0 if args.quick else 300.0
    return args


# ---------------------------------------------------------------------------
# running one system
# ---------------------------------------------------------------------------


def system_env(tmp, tag):
    env = dict(os.environ)
    path = [HERE, REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    dirs = {
        "IPYTHONDIR": "ipython",
        "IPPHPC_DIR": "ipphpc",
        "JUPYTER_CONFIG_DIR": "jupyter/config",
        "JUPYTER_DATA_DIR": "jupyter/data",
        "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
        "DASK_CONFIG": "dask-config",
        "TMPDIR": "tmp",
    }
    for var, sub in dirs.items():
        d = os.path.join(tmp, sub)
        os.makedirs(d, exist_ok=True)
        env[var] = d
    env[TAG_VAR] = tag
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path, lines=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_system(name, args, params, root):
    tmp = os.path.join(root, name)
    os.makedirs(tmp)
    tag = uuid.uuid4().hex
    out = os.path.join(tmp, "result.json")
    log = os.path.join(tmp, "log.txt")
    progress_fd = os.dup(sys.stderr.fileno())
    cmd = [
        sys.executable,
        os.path.join(HERE, "side.py"),
        "--system",
        name,
        "--figures",
        ",".join(args.figures),
        "--params",
        json.dumps(params),
        "--out",
        out,
        "--progress-fd",
        str(progress_fd),
    ]
    print(f"\n== {name}", file=sys.stderr, flush=True)
    status = "ok"
    t0 = time.monotonic()
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=system_env(tmp, tag),
            cwd=tmp,
            start_new_session=True,
            pass_fds=[progress_fd],
        )
    os.close(progress_fd)
    try:
        proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        status = f"stopped after {args.timeout:g} s"
        print(f"  [{name}] {status}", file=sys.stderr, flush=True)
        stop_process(proc)
    except KeyboardInterrupt:
        stop_process(proc)
        reap(tag)
        raise
    finally:
        wait_gone(tag, 5.0)  # processes that are already on their way out
        leftovers = reap(tag)
    elapsed = time.monotonic() - t0

    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"system": name, "available": False, "error": "no result written", "figures": {}}
    if not result.get("available", False) and status == "ok":
        status = "not available"
    elif proc.returncode not in (0, None) and status == "ok":
        status = f"exit code {proc.returncode}"
    result["status"] = status
    result["wall_s"] = round(elapsed, 1)
    result["leftover_processes"] = [{"pid": p, "cmd": c[:200]} for p, c in leftovers]
    if leftovers:
        print(
            f"  [{name}] {len(leftovers)} process(es) were still running afterwards and were terminated",
            file=sys.stderr,
        )
    failed = status != "ok" or result.get("error") or any("error" in f for f in result["figures"].values())
    if failed and result.get("available", True):
        print(f"  [{name}] last lines of its log ({log}):", file=sys.stderr)
        print("    " + tail(log).replace("\n", "\n    "), file=sys.stderr)
    return result


def stop_process(proc):
    """SIGTERM (the runner stops its clusters), then SIGKILL its whole process group."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def fmt(v):
    if v is None:
        return "n/a"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}x"
    if x >= 10:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def ratio(a, b, unit):
    """a / b, or None when there is nothing to divide by: a memory figure under 1 MiB is noise of the
    reading (pages, accounting), not a size."""
    if a is None or not b or (unit == "MiB" and abs(b) < 1):
        return None
    return a / b


def build_rows(results, params, figures):
    rows = []
    for fig, label, unit, better, get in table_rows(params):
        if fig not in figures:
            continue
        values = {}
        for s in SYSTEMS:
            data = results.get(s, {}).get("figures", {}).get(fig)
            values[s] = get(data) if data and "error" not in data else None
        ratios = {peer: ratio(values["ipphpc"], values[peer], unit) for peer in PEERS}
        ratios["curve"] = ratio(values["ipphpc-curve"], values["ipphpc"], unit)
        ratios["curve/parsl"] = ratio(values["ipphpc-curve"], values["parsl-enc"], unit)
        rows.append(
            {"figure": fig, "label": label, "unit": unit, "better": better, "values": values, "ratios": ratios}
        )
    return rows


def cell(results, system, fig, value):
    r = results.get(system)
    if r is None:
        return "-"
    if not r.get("available", False):
        return "pending" if system == "ipphpc" else "n/a"
    data = r.get("figures", {}).get(fig)
    if data is None:
        return "-"
    if "error" in data:
        return "failed"
    return fmt(value)


def render_table(rows, results):
    head = ["figure", "unit", "better", *SYSTEMS, *(f"ipphpc/{p}" for p in PEERS), "curve/plain", "curve/parsl"]
    body = []
    for r in rows:
        line = [r["label"], r["unit"], r["better"]]
        line += [cell(results, s, r["figure"], r["values"][s]) for s in SYSTEMS]
        line += [fmt_ratio(r["ratios"][p]) for p in (*PEERS, "curve", "curve/parsl")]
        body.append(line)
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def fmt_line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(str(c).ljust(widths[i]) if i < 3 else str(c).rjust(widths[i]))
        return "  ".join(out)

    lines = [fmt_line(head), "  ".join("-" * w for w in widths)]
    lines += [fmt_line(b) for b in body]
    return "\n".join(lines)


def machine_info():
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "load_average": load,
        "cores": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main(argv=None):
    args = parse_args(argv)
    params = dict(QUICK if args.quick else FULL)
    started = datetime.datetime.now().astimezone()
    info = machine_info()
    print(
        f"ipphpc benchmark, {'quick' if args.quick else 'full'} run, {started:%Y-%m-%d %H:%M %Z}\n"
        f"machine: {info['cores']} cores ({info['cpu']}), {info['mem_gib']} GiB, "
        f"Linux {info['kernel']}, Python {info['python']}, load average {info['load_average']}\n"
        f"figures: {', '.join(args.figures)}",
        file=sys.stderr,
        flush=True,
    )

    root = tempfile.mkdtemp(prefix="ipphpc-bench-")
    results = {}
    try:
        for name in args.systems:
            results[name] = run_system(name, args, params, root)
    except KeyboardInterrupt:
        print("\ninterrupted; clusters stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_tmp:
            print(f"temporary files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    rows = build_rows(results, params, args.figures)

    print()
    print(f"Results ({'quick' if args.quick else 'full'} run, {started:%Y-%m-%d}, "
          f"{info['cores']} cores, {params['engines']} engines/workers unless stated)")
    print()
    for s in SYSTEMS:
        r = results.get(s)
        if r is None:
            continue
        v = r.get("version") or "not available"
        extra = f" -- {r['error']}" if r.get("error") else ""
        print(f"  {s:<12} {v}{extra}")
    print()
    print(render_table(rows, results))
    print()
    print("Ratios are the ipphpc value divided by the peer's value.  Where 'better' is")
    print("'higher' (throughput) a ratio above 1 favours ipphpc; where it is 'lower'")
    print("(time, memory) a ratio below 1 favours ipphpc.")
    for s, r in results.items():
        if r.get("status") not in ("ok", "not available"):
            print(f"note: {s}: {r['status']}")
        for fig, data in r.get("figures", {}).items():
            if "error" in data:
                print(f"note: {s}: {fig} failed: {data['error']}")
            elif data.get("results_ok") is False or data.get("equal") is False:
                print(f"note: {s}: {fig}: results were WRONG")
        if r.get("leftover_processes"):
            print(f"note: {s}: {len(r['leftover_processes'])} leftover process(es) had to be terminated")

    if args.json:
        write_json(
            args.json,
            {
                "date": started.isoformat(timespec="seconds"),
                "mode": "quick" if args.quick else "full",
                "machine": info,
                "load_average_at_end": list(os.getloadavg()),
                "params": params,
                "figures": args.figures,
                "rows": rows,
                "systems": results,
            },
        )
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
