"""`ipphpc submit | list | stop | profile`."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from traitlets import TraitError
from traitlets.config import Config

from .. import config as cfgmod
from .. import paths
from ..cluster.cluster import HPCCluster, list_cluster_files
from .table import render


def _pdir(ns: argparse.Namespace) -> Path:
    return paths.profile_dir(ns.profile or "default", ns.profile_dir)


def submit(ns: argparse.Namespace, cfg: Config) -> int:
    """Start a detached cluster and print its id; with --wait, show progress until its engines are up."""
    cfg.HPCCluster.shutdown_atexit = False
    try:
        cluster = HPCCluster(config=cfg)
        if ns.dry_run:
            print(cluster.dry_run())
            return 0
        cluster.start_cluster_sync()
    except (ValueError, FileNotFoundError, RuntimeError, TraitError) as e:
        print(f"ipphpc submit: {e}", file=sys.stderr)
        return 2
    batch = cluster.engines != "local"
    print(f"cluster {cluster.cluster_id}: controller pid {cluster.controller_pid}, {cluster.n} {cluster.engines} "
          f"engines, profile {cluster.pdir}", file=sys.stderr)
    for e in cluster.engine_sets:
        ids = getattr(e, "job_ids", None)
        if ids:
            print(f"submitted {e.scheduler} job(s) {', '.join(ids)}", file=sys.stderr)
    wait = ns.wait or (not batch and not ns.no_wait)
    if wait:
        timeout = ns.timeout or cluster.wait_timeout
        try:
            rc = cluster.connect_client_sync()
            _wait_with_bar(cluster, rc, cluster.engines_requested, timeout)
            rc.close()
        except Exception as e:  # noqa: BLE001 - report, stop what was started, fail
            print(f"ipphpc submit: {e}", file=sys.stderr)
            cluster.stop_cluster_sync()
            return 1
    print(cluster.cluster_id)
    return 0


def _wait_with_bar(cluster: HPCCluster, rc, n: int, timeout: float) -> None:
    from tqdm import tqdm
    with tqdm(total=n, desc="engines", unit="engine", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        deadline = time.monotonic() + timeout
        while len(rc.ids) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(rc.ids)} of {n} engines registered after {timeout:g} s; "
                                   f"`ipphpc status` shows the jobs; engine output:\n{cluster._tail('ipengine')}")
            dead = cluster.engines_failed()
            if dead:
                raise RuntimeError(f"{len(rc.ids)} of {n} engines registered, and no more will come:\n{dead}")
            try:
                rc.wait_for_engines(n, timeout=0.5)
            except TimeoutError:
                pass
            bar.update(len(rc.ids) - bar.n)
        bar.update(len(rc.ids) - bar.n)


def status(ns: argparse.Namespace, cfg: Config) -> int:
    """One table: each job or array element, its state and reason, how long, and its engines."""
    pdir = _pdir(ns)
    files = [paths.cluster_file(pdir, ns.cluster)] if ns.cluster else list_cluster_files(pdir)[-1:]
    if not files or not files[0].exists():
        print(f"no cluster {'named ' + repr(ns.cluster) + ' ' if ns.cluster else ''}in profile {pdir}",
              file=sys.stderr)
        return 1
    c = HPCCluster.from_dict(json.loads(files[0].read_text()))
    engines: dict = {}
    if c.controller_launcher is not None and c.controller_launcher.running:
        from ..client.client import Client
        try:
            with Client(c.client_file, timeout=3) as rc:
                engines = rc.engines
        except Exception as e:  # noqa: BLE001 - the table still shows the jobs
            print(f"(controller not answering: {e})", file=sys.stderr)
    by_element: dict = {}
    for eid, info in engines.items():
        key = (str(info.get("job_id") or "").split(".")[0].split("[")[0], info.get("array_index"))
        by_element.setdefault(key, []).append(eid)
    # what the scheduler says now: the shared cache may hold another process's poll from up to an
    # interval ago (`submit --wait` returns as soon as the engines register, while its last poll
    # still saw them PENDING); one query per scheduler covers every job of the cluster
    pollers = {id(x.poller): x.poller for x in [c.controller_launcher, *c.engine_sets]
               if x is not None and getattr(x, "submissions", None)}
    for poller in pollers.values():
        poller.poll_once(force=True)
    now = time.time()
    rows = []
    shown: set[int] = set()
    for launcher in [c.controller_launcher, *c.engine_sets]:
        if launcher is None:
            continue
        role = getattr(launcher, "role", "")
        if hasattr(launcher, "states"):
            for st in launcher.states():
                key = (st.job_id.split(".")[0].split("[")[0], st.array_index)
                eids = by_element.get(key, []) if role == "engines" else []
                shown.update(eids)
                rows.append([role, st.job_id, "" if st.array_index is None else st.array_index, st.state.value,
                             st.native_state, st.reason, _ago(now - st.since) if st.since else "",
                             st.host or "", ",".join(map(str, sorted(eids)))])
        else:
            alive = launcher.running
            eids = sorted(engines) if role == "engines" else []
            shown.update(eids)
            rows.append([role, f"pid {launcher.pid}", "", "RUNNING" if alive else "STOPPED", launcher.kind, "",
                         "", "", ",".join(map(str, eids))])
    # engines this cluster did not start: `ipphpc engine` lines in users' own batch scripts, or by hand
    joined: dict = {}
    for eid in sorted(set(engines) - shown):
        info = engines[eid]
        where = (info.get("job_id") or f"pid {info.get('pid')}", info.get("array_index"), info.get("scheduler"),
                 info.get("host"))
        joined.setdefault(where, []).append(eid)
    for (job, index, scheduler, host), eids in joined.items():
        rows.append(["joined", job, "" if index is None else index, "RUNNING", scheduler or "", "", "",
                     host or "", ",".join(map(str, eids))])
    if c.engine_sets:
        print(f"cluster {c.cluster_id} ({c.engines}): {len(engines)} of {c.n} engines registered")
    else:
        print(f"cluster {c.cluster_id}: {len(engines)} engines registered, all started outside it "
              f"(`ipphpc engine` in batch scripts or by hand)")
    print(render(["ROLE", "JOB", "INDEX", "STATE", "NATIVE", "REASON", "FOR", "HOST", "ENGINES"], rows))
    return 0


def _ago(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _engines_registered(cluster: HPCCluster) -> int | None:
    from ..client.client import Client
    try:
        with Client(cluster.client_file, timeout=2) as rc:
            return len(rc.ids)
    except Exception:  # noqa: BLE001 - shown as unknown
        return None


def list(ns: argparse.Namespace, cfg: Config) -> int:  # noqa: A001 - the subcommand's name
    pdir = _pdir(ns)
    rows = []
    for path in list_cluster_files(pdir):
        try:
            c = HPCCluster.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as e:
            rows.append([path.name, "?", "?", f"unreadable: {e}", ""])
            continue
        alive = c.controller_launcher is not None and c.controller_launcher.running
        engines = _engines_registered(c) if alive else None
        created = datetime.datetime.fromtimestamp(c.created).strftime("%Y-%m-%d %H:%M:%S") if c.created else ""
        rows.append([c.cluster_id, f"{c.controller_pid} {'running' if alive else 'stopped'}",
                     f"{'-' if engines is None else engines}/{c.n}", c.engines, created])
    if not rows:
        print(f"no clusters in profile {pdir}")
        return 0
    print(render(["CLUSTER ID", "CONTROLLER", "ENGINES", "LAUNCHER", "STARTED"], rows))
    return 0


def stop(ns: argparse.Namespace, cfg: Config) -> int:
    pdir = _pdir(ns)
    files = list_cluster_files(pdir)
    if ns.cluster:
        files = [paths.cluster_file(pdir, ns.cluster)]
        if not files[0].exists():
            known = ", ".join(p.name[8:-5] for p in list_cluster_files(pdir)) or "none"
            print(f"ipphpc stop: no cluster {ns.cluster!r} in profile {pdir} (clusters there: {known})",
                  file=sys.stderr)
            return 1
    elif not ns.all:
        files = files[-1:]
    if not files:
        print(f"no clusters to stop in profile {pdir}", file=sys.stderr)
        return 0
    for path in files:
        c = HPCCluster.from_dict(json.loads(path.read_text()))
        c.stop_cluster_sync()
        left = [x.pid for x in [c.controller_launcher, *c.engine_sets] if x is not None and x.running]
        state = "stopped" if not left else f"processes still alive: {left}"
        print(f"cluster {c.cluster_id}: {state}")
    return 0


def profile(ns: argparse.Namespace, cfg: Config) -> int:
    if ns.action == "list":
        for p in sorted(paths.ipphpc_dir().glob("profile_*")):
            print(p.name[len("profile_"):], p)
        return 0
    pdir = paths.profile_dir(ns.name)
    if ns.action == "locate":
        print(pdir)
        return 0
    from ..controller.controller import Controller
    from ..engine.engine import Engine
    written = []
    for role, classes in (("controller", [Controller]), ("engine", [Engine]), ("cluster", [HPCCluster])):
        path = pdir / cfgmod.role_file(role)
        if path.exists():
            continue
        body = "\n".join(cls.class_config_section() for cls in classes)
        path.write_text(f"# ipphpc {role} configuration for profile {ns.name!r}.\n"
                        f"# Uncomment and edit; command-line flags override these values.\nc = get_config()  # noqa\n\n"
                        + body)
        written.append(path.name)
    common = pdir / cfgmod.COMMON_FILE
    if not common.exists():
        common.write_text("# Settings shared by the controller, engines and clusters of this profile.\n"
                          "c = get_config()  # noqa\n")
        written.append(common.name)
    print(f"profile {ns.name!r} in {pdir}" + (f": wrote {', '.join(written)}" if written else " (already there)"))
    return 0
