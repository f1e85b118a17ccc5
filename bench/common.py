"""Helpers shared by the benchmark driver (run.py) and the per-system runner (side.py).

Only the standard library is used here, so importing this module is cheap in
every process that touches it (including worker processes that re-import the
runner's main module).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import time

# ---------------------------------------------------------------------------
# what is measured
# ---------------------------------------------------------------------------

# ipphpc-curve: every connection CurveZMQ-encrypted; parsl-enc: Parsl's HighThroughputExecutor, encrypted
SYSTEMS = ("ipphpc", "ipphpc-curve", "ipyparallel", "dask", "parsl-enc")
PEERS = ("ipyparallel", "dask")

# figure name -> short description (the names are what --only accepts)
FIGURES = {
    "apply": "one apply_async per no-op task through the load-balanced view, then wait for all",
    "apply_main": "figure 1 with a no-op defined in the benchmark's __main__, as a notebook's functions are "
                  "(sent by value)",
    "map": "map of a trivial function over a range through the load-balanced view",
    "latency": "sequential no-op round trips to one engine",
    "coldstart": "nothing -> controller + 4 engines registered + one result",
    "array": "100 MB numpy array sent to one engine and returned",
    "array_new": "100 MB numpy array sent to one engine, which returns a new copy of it",
    "array_far": "the array of 'array' where client and engine share no memory, as on different hosts",
    "array_balanced": "the array of 'array_far' as a load-balanced task's argument and result; the controller's "
                      "peak memory while it passes",
    "push": "one large array pushed to every engine; the controller's peak memory while it passes",
    "push_wide": "one array pushed to 8 engines that share no memory with the client, as on other hosts: "
                 "how long, and how many copies the client itself wrote",
    "rss": "resident memory of an idle engine and of the controller",
    "wide": "a no-op call on every engine of a 16-engine cluster, one after another",
}

# Parameters of a full run and of a --quick run.
FULL = {
    "tasks": 10_000,
    "apply_runs": 3,
    "map_runs": 5,
    "apply_budget_s": 40.0,
    "latency_calls": 1_000,
    "coldstart_runs": 3,
    "coldstart_engines": 4,
    "array_bytes": 100_000_000,
    "array_runs": 5,
    "push_bytes": 1 << 30,
    "push_wide_bytes": 100_000_000,
    "push_wide_engines": 8,
    "push_wide_runs": 5,
    "engines": 2,
    "wide_engines": 16,
    "wide_calls": 200,
}
QUICK = {
    "tasks": 2_000,
    "apply_runs": 1,
    "map_runs": 1,
    "apply_budget_s": 10.0,
    "latency_calls": 200,
    "coldstart_runs": 1,
    "coldstart_engines": 4,
    "array_bytes": 100_000_000,
    "array_runs": 3,
    "push_bytes": 200_000_000,
    "push_wide_bytes": 100_000_000,
    "push_wide_engines": 8,
    "push_wide_runs": 2,
    "engines": 2,
    "wide_engines": 16,
    "wide_calls": 50,
}


def table_rows(params):
    """Rows of the result table: (figure, label, unit, better, getter).

    ``better`` is "higher" or "lower"; ``getter`` extracts the number from one
    system's figure dict (returns None when missing).
    """
    n = params["tasks"]
    k = params["latency_calls"]
    e = params["coldstart_engines"]
    mb = params["array_bytes"] / 1e6

    def get(key):
        return lambda fig: fig.get(key)

    return [
        ("apply", f"1. apply_async throughput, {n:,} no-op tasks, median of bursts", "tasks/s", "higher",
         get("tasks_per_s")),
        ("apply", "1. CPU per task, every process of the system (client, controller, engines)", "us", "lower",
         get("cpu_us_per_task")),
        ("apply_main", f"1b. apply_async throughput, {n:,} no-op tasks of __main__", "tasks/s", "higher",
         get("tasks_per_s")),
        ("map", f"2. map throughput, {n:,} items, default chunking, median of runs", "tasks/s", "higher",
         get("tasks_per_s")),
        ("latency", f"3. no-op round trip, median of {k:,}", "ms", "lower", get("median_ms")),
        ("latency", f"3. no-op round trip, p99 of {k:,}", "ms", "lower", get("p99_ms")),
        ("coldstart", f"4. cold start, {e} engines + 1 result", "s", "lower", get("median_s")),
        ("array", f"5. {mb:g} MB array there and back, median", "s", "lower", get("median_s")),
        ("array_new", f"5b. {mb:g} MB array in, a new one back, median", "s", "lower", get("median_s")),
        ("array_far", f"5c. {mb:g} MB there and back, no shared memory (as between hosts), median", "s", "lower",
         get("median_s")),
        ("array_balanced", f"5d. {mb:g} MB there and back, load-balanced, no shared memory, median", "s", "lower",
         get("median_s")),
        ("array_balanced", "5d. controller peak RSS above its level before", "MiB", "lower",
         get("controller_peak_mib")),
        ("push", f"7. {params['push_bytes'] / 2**20:,.0f} MiB array pushed to {params['engines']} engines", "s",
         "lower", get("seconds")),
        ("push", "7. controller peak RSS above its level before the push", "MiB", "lower", get("controller_peak_mib")),
        ("push_wide", f"7b. {params['push_wide_bytes'] / 1e6:g} MB pushed to {params['push_wide_engines']} engines, "
         "no shared memory (as across hosts), median", "s", "lower", get("seconds")),
        ("push_wide", "7b. copies of the array the client wrote on TCP per push", "copies", "lower",
         get("client_copies")),
        ("wide", f"8. no-op call on all of {params['wide_engines']} engines, median of {params['wide_calls']}", "ms",
         "lower", get("median_ms")),
        ("rss", "6. idle engine RSS (incl. nanny if any)", "MiB", "lower", get("engine_mib")),
        ("rss", "6. controller RSS, main process", "MiB", "lower", get("controller_main_mib")),
        ("rss", "6. controller + child processes, sum of PSS", "MiB", "lower", get("controller_tree_pss_mib")),
    ]


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


def median(values):
    return statistics.median(values)


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def tcp_bytes_sent(pid):
    """Bytes this process's open TCP connections have sent (`ss`'s bytes_sent, summed); None without `ss`."""
    import re
    import subprocess

    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    total, mine = 0, False
    for line in out.splitlines():
        if not line[:1].isspace():  # a connection's line; its details follow, indented
            mine = f"pid={pid}," in line
        elif mine:
            m = re.search(r"bytes_sent:(\d+)", line)
            total += int(m.group(1)) if m else 0
    return total


def peak_rss_kib(pid):
    """VmHWM of one process in KiB: the most it held since start, or since `reset_peak_rss`."""
    status = _read(f"/proc/{pid}/status") or ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def reset_peak_rss(pid):
    """Set VmHWM back to the current RSS (Linux: write 5 to clear_refs; needs the right to write it)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@contextlib.contextmanager
def peak_above(pid):
    """Yields a dict whose "mib", once the block is done, is the most RSS `pid` held during it above what it
    held before, in MiB (None without a pid)."""
    out = {"mib": None}
    if pid is None:
        yield out
        return
    reset_peak_rss(pid)
    before = rss_kib(pid)
    yield out
    out["mib"] = (peak_rss_kib(pid) - before) / 1024


def rss_kib(pid):
    """VmRSS of one process in KiB (None if gone)."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # zombie or kernel thread


def pss_kib(pid):
    """Proportional set size in KiB: shared pages are divided among the
    processes sharing them, so PSS values of several processes can be summed."""
    rollup = _read(f"/proc/{pid}/smaps_rollup")
    if rollup is None:
        return None
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def ppid_of(pid):
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid):
    """User + system CPU time of one process so far, all its threads (None if gone)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class tree_cpu:
    """CPU time the benchmark process and every process of its system use inside the block: the client, the
    controller or scheduler, the engines or workers (and their nannies, threads and I/O threads) alike. The
    processes below it, and those that carry its system's tag in their environment (Parsl's worker pool is
    started detached)."""

    def __enter__(self):
        me = os.getpid()
        tag = os.environ.get(TAG_VAR)
        self.pids = sorted({me, *descendants(me), *(tagged_pids(tag) if tag else ())})
        self.before = {p: cpu_seconds(p) for p in self.pids}
        return self

    def __exit__(self, *exc):
        after = {p: cpu_seconds(p) for p in self.pids}
        self.seconds = sum(after[p] - self.before[p] for p in self.pids
                           if after[p] is not None and self.before[p] is not None)
        return False


def cmdline(pid):
    raw = _read(f"/proc/{pid}/cmdline", "rb")
    if not raw:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(pid):
    return [p for p in all_pids() if ppid_of(p) == pid]


def descendants(pid):
    """All processes below ``pid`` (not including it)."""
    parents = {}
    for p in all_pids():
        pp = ppid_of(p)
        if pp is not None:
            parents.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


TAG_VAR = "IPPHPC_BENCH_TAG"


def tagged_pids(tag):
    """Processes whose environment carries ``IPPHPC_BENCH_TAG=<tag>``.

    Every process a benchmark run starts inherits this variable, even ones
    that detach into a new process group, so this finds leftovers reliably.
    """
    needle = f"{TAG_VAR}={tag}".encode()
    me = os.getpid()
    found = []
    for p in all_pids():
        if p == me:
            continue
        env = _read(f"/proc/{p}/environ", "rb")
        if env and needle in env.split(b"\0"):
            found.append(p)
    return found


def wait_gone(tag, timeout):
    """Give processes carrying ``tag`` up to ``timeout`` seconds to exit by themselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in tagged_pids(tag) if _alive(p)]:
            return True
        time.sleep(0.1)
    return False


def reap(tag, grace=3.0):
    """Terminate every process carrying ``tag``; return [(pid, cmdline)] that were alive."""
    pids = [p for p in tagged_pids(tag) if _alive(p)]
    victims = [(p, cmdline(p)) for p in pids]
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            break
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
    return victims


def _alive(pid):
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return False
    # state field follows the ")" that closes the command name
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z"


# ---------------------------------------------------------------------------
# time limits
# ---------------------------------------------------------------------------


class FigureTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Raise FigureTimeout in the main thread if the block runs longer than ``seconds``."""

    def handler(signum, frame):
        raise FigureTimeout(f"gave up after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------
# misc
# ---------------------------------------------------------------------------


def write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
    os.replace(tmp, path)
