"""`ipphpc logs`: what a cluster left in its profile's log folder, for the whole cluster, one element or one engine.

Files are found by name, so the logs of a stopped cluster (whose cluster file is gone) can still be read:
`ipcontroller-<cluster>-<pid>.log`, `ipengine-<cluster>-[<job>_<index>-]<host>-<pid>.log`, the output of
local process groups `ip{controller,engine}-<cluster>.out`, and the scheduler's output of each array
element in `<cluster>/`.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable

from ..cluster.cluster import list_cluster_files
from .parsing import fail

PROG = "ipphpc logs"
_CONTROLLER_LOG = re.compile(r"ipcontroller-(.+)-\d+\.log")
_LOCAL_OUT = re.compile(r"ip(?:controller|engine)-(.+)\.out")
_SELECTOR = re.compile(r"\d+|e(?:ngine)?\d+")


def known_clusters(pdir: Path) -> list[str]:
    """Ids of clusters with a cluster file (oldest first), then of those known only by their logs (by age)."""
    ids = [p.name[len("cluster-"):-len(".json")] for p in list_cluster_files(pdir)]
    log = pdir / "log"
    by_logs: dict[str, float] = {}
    if log.is_dir():
        for p in log.iterdir():
            m = _CONTROLLER_LOG.fullmatch(p.name) or _LOCAL_OUT.fullmatch(p.name)
            cid = m.group(1) if m else (p.name if p.is_dir() else None)
            if cid and cid not in ids:
                by_logs[cid] = max(by_logs.get(cid, 0.0), p.stat().st_mtime)
    return ids + sorted(by_logs, key=by_logs.__getitem__)


def newest_cluster(pdir: Path) -> str | None:
    """The newest cluster file's id; with none, the cluster whose logs were written last."""
    files = list_cluster_files(pdir)
    if files:
        return files[-1].name[len("cluster-"):-len(".json")]
    rest = known_clusters(pdir)
    return rest[-1] if rest else None


def cluster_logs(pdir: Path, cid: str, known: list[str]) -> list[Path]:
    """Every log and output file of cluster `cid`: controller first, then engines, then batch elements."""
    log = pdir / "log"
    # another cluster's id may extend this one ('run7' and 'run7-b'): its files are not ours
    longer = [k for k in known if k != cid and k.startswith(cid + "-")]

    def ours(name: str, prefix: str) -> bool:
        return not any(name.startswith(f"{prefix}-{k}-") for k in longer)
    controller = [p for p in log.glob(f"ipcontroller-{cid}-*.log")
                  if re.fullmatch(rf"ipcontroller-{re.escape(cid)}-\d+\.log", p.name)]
    engines = [p for p in log.glob(f"ipengine-{cid}-*.log") if ours(p.name, "ipengine")]
    local = [p for p in (log / f"ipcontroller-{cid}.out", log / f"ipengine-{cid}.out") if p.exists()]
    batch = sorted(p for p in (log / cid).glob("*") if p.suffix in (".out", ".err")) if (log / cid).is_dir() else []
    return sorted(controller) + local + sorted(engines) + batch


def of_element(files: list[Path], cid: str, index: int) -> list[Path]:
    """The engine logs and the scheduler output of array element `index`."""
    engine_log = re.compile(rf"ipengine-{re.escape(cid)}-[^-_]+_{index}-.+\.log")
    output = re.compile(rf"[a-z]+-.*[._-]{index}\.(out|err)")
    return [p for p in files if engine_log.fullmatch(p.name) or (p.parent.name == cid and output.fullmatch(p.name))]


def elements_with_logs(files: list[Path]) -> list[int]:
    found = {int(m.group(1)) for p in files for m in [re.search(r"_(\d+)-[^_]+-\d+\.log$", p.name)] if m}
    return sorted(found)


def of_engine(pdir: Path, cid: str, files: list[Path], engine_id: int) -> list[Path] | str:
    """The log of engine `engine_id` (and its element's output), asked of the running controller; or why not."""
    from .. import paths
    from ..client.client import Client
    try:
        with Client(paths.connection_file(pdir, "client", cid), timeout=3) as rc:
            engines = rc.engines
    except Exception as e:  # noqa: BLE001 - any failure means the ids cannot be resolved
        return (f"engine ids are known only while the controller runs ({e}); "
                f"select an array element by its index instead")
    info = engines.get(engine_id)
    if info is None:
        return f"no engine {engine_id} in cluster {cid} (engines: {', '.join(map(str, sorted(engines))) or 'none'})"
    suffix = f"-{info['host']}-{info['pid']}.log"
    mine = [p for p in files if p.name.startswith("ipengine-") and p.name.endswith(suffix)]
    if info.get("array_index") is not None:
        mine += [p for p in of_element(files, cid, info["array_index"]) if p not in mine]
    return mine


def tail_lines(path: Path, n: int | None) -> tuple[str, int]:
    """The last `n` lines of a file (all when None), and the size read up to."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        start = 0
        if n is not None:
            start = size
            while start > 0:
                start = max(0, start - 65536)
                f.seek(start)
                if f.read(size - start).count(b"\n") > n:
                    break
        f.seek(start)
        data = f.read(size - start)
    lines = data.decode(errors="replace").splitlines(keepends=True)
    return "".join(lines[-n:] if n is not None else lines), size


def show(pdir: Path, cluster: str | None, which: str | None, tail: int | None = None, follow: bool = False) -> int:
    """Print the files of a cluster (each under a header line); with `follow`, what they gain until Ctrl-C."""
    known = known_clusters(pdir)
    if which is None and cluster is not None and cluster not in known and _SELECTOR.fullmatch(cluster):
        cluster, which = None, cluster  # `ipphpc logs 3`: element 3 of the newest cluster
    cid = cluster or newest_cluster(pdir)
    if cid is None:
        return fail(PROG, f"no clusters and no logs in profile {pdir}; `ipphpc submit` starts a cluster", 1)
    if cid not in known:
        return fail(PROG, f"no cluster {cid!r} in profile {pdir} (clusters there: {', '.join(known) or 'none'})", 1)

    def select() -> list[Path] | str:
        files = cluster_logs(pdir, cid, known)
        if which is None:
            return files or f"cluster {cid} has no log files in {pdir / 'log'}"
        m = re.fullmatch(r"e(?:ngine)?(\d+)", which)
        if m:
            return of_engine(pdir, cid, files, int(m.group(1))) or f"engine {m.group(1)} has no log files"
        if not which.isdigit():
            return f"{which!r} is neither an array element (a number) nor an engine (e<ID>, e.g. e3)"
        chosen = of_element(files, cid, int(which))
        return chosen or (f"no logs of element {which} in cluster {cid} (elements with logs: "
                          f"{', '.join(map(str, elements_with_logs(files))) or 'none'}; engines are chosen as e<ID>)")

    chosen = select()
    if isinstance(chosen, str):
        return fail(PROG, chosen, 1)
    printer = _Printer()
    offsets: dict[Path, int] = {}
    for path in chosen:
        text, offsets[path] = tail_lines(path, tail)
        printer.show(path, text, header=True)
    if follow:
        # engine ids are resolved once, through the controller; the rest is looked up again as files appear
        refresh = select if which is None or which.isdigit() else (lambda: chosen)
        try:
            _follow(refresh, offsets, printer)
        except KeyboardInterrupt:
            pass
    return 0


class _Printer:
    """Text of several files, with a header line whenever the file changes, as `tail` does."""

    def __init__(self) -> None:
        self.last: Path | None = None

    def show(self, path: Path, text: str, header: bool = False) -> None:
        if header or path != self.last:
            sys.stdout.write(f"==> {path} <==\n")
        self.last = path
        sys.stdout.write(text if not text or text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def _follow(select: Callable[[], list[Path] | str], offsets: dict[Path, int], printer: _Printer,
            interval: float = 0.5) -> None:
    """Print what each file gains, and files that appear (engines that start later), until interrupted."""
    while True:
        time.sleep(interval)
        chosen = select()
        for path in chosen if isinstance(chosen, list) else []:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            start = offsets.get(path, 0)
            if size < start:  # truncated or replaced: read it again from the start
                start = 0
            if size > start:
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read(size - start)
                whole = data.rfind(b"\n") + 1  # a line still being written waits for its end
                if whole:
                    printer.show(path, data[:whole].decode(errors="replace"))
                start += whole
            offsets[path] = start

