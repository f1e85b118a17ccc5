"""`ipphpc submit | status | list | stop | logs | profile`."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import jinja2
from traitlets import TraitError
from traitlets.config import Config

from .. import config as cfgmod
from .. import paths
from ..cluster.cluster import HPCCluster, JobsHeld, list_cluster_files
from ..controller import record as record_mod
from ..launch.processes import stop_process
from .table import render


def _pdir(ns: argparse.Namespace) -> Path:
    """The profile to read; commands that only look never create one."""
    return paths.profile_dir(ns.profile or "default", ns.profile_dir, create=False)


def submit(ns: argparse.Namespace, cfg: Config) -> int:
    """Start a detached cluster and print its id; with --wait, show progress until its engines are up."""
    cfg.HPCCluster.shutdown_atexit = False
    new_profile = not paths.profile_path(ns.profile or "default", ns.profile_dir).is_dir()
    try:
        cluster = HPCCluster(config=cfg)
        if new_profile:
            print(f"created profile {ns.profile or 'default'!r} in {cluster.pdir} "
                  f"(`ipphpc profile create` writes its configuration files)", file=sys.stderr)
        if ns.dry_run:
            print(cluster.dry_run())
            return 0
    except jinja2.TemplateError as e:
        return _template_error(e, cfg)
    except (ValueError, FileNotFoundError, RuntimeError, TraitError) as e:
        print(f"ipphpc submit: {e}", file=sys.stderr)
        return 2
    try:
        return _start_and_wait(ns, cfg, cluster)
    except KeyboardInterrupt:
        pass  # stopped below, once the interrupted call's frames (holding the poll cache's lock) are gone
    return _interrupted(cluster)


def _start_and_wait(ns: argparse.Namespace, cfg: Config, cluster: HPCCluster) -> int:
    """Start the cluster and, unless told not to, show progress until its engines registered."""
    from ..cluster import keeper
    cluster._keep_here = False  # this process exits: a keeper replaces lost elements and adapts
    try:
        cluster.start_cluster_sync()
    except jinja2.TemplateError as e:
        return _template_error(e, cfg)
    except (ValueError, FileNotFoundError, RuntimeError, TraitError) as e:
        print(f"ipphpc submit: {e}", file=sys.stderr)
        return 2
    if keeper.wanted(cluster):
        pid = keeper.start_keeper(cluster)
        print(f"keeper pid {pid}: {keeper.duties(cluster)} (log: {cluster.pdir / 'log'}/ipkeeper-{cluster.cluster_id}"
              f".out)", file=sys.stderr)
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
        except JobsHeld as e:
            cluster.stop_cluster_sync()
            print(f"ipphpc submit: {JobsHeld(e.cluster_id, e.held, stopped=True)}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - report, stop what was started, fail
            print(f"ipphpc submit: {e}", file=sys.stderr)
            cluster.stop_cluster_sync()
            return 1
    print(cluster.cluster_id)
    return 0


def _interrupted(cluster: HPCCluster) -> int:
    """Ctrl-C while starting or waiting: stop what was started without asking, and say so in one line.

    Called outside the `except KeyboardInterrupt` block: the interrupted poll's traceback, and with it the
    lock of the profile's poll cache, must be gone before the stop polls again.
    """
    cid = cluster.cluster_id
    jobs = [j for e in [cluster.controller_launcher, *cluster.engine_sets] for j in getattr(e, "job_ids", None) or []]
    try:
        left = _stop(cluster)
    except KeyboardInterrupt:
        print(f"ipphpc submit: interrupted again while stopping cluster {cid}; `ipphpc stop {cid}` stops it",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line, and what to do
        print(f"ipphpc submit: interrupted; stopping cluster {cid} failed ({e}); `ipphpc stop {cid}` stops it",
              file=sys.stderr)
        return 130
    if left:
        print(f"ipphpc submit: interrupted; cluster {cid} is not stopped yet ({', '.join(left)} still running); "
              f"`ipphpc stop {cid}` stops it", file=sys.stderr)
    else:
        cancelled = f" and cancelled its job(s) {', '.join(jobs)}" if jobs else ""
        print(f"ipphpc submit: interrupted; stopped cluster {cid}{cancelled}", file=sys.stderr)
    return 130


def _stop(cluster: HPCCluster, by_hand: bool = False) -> list[str]:
    """Stop a cluster; what still runs afterwards (processes, active jobs), named for the user."""
    launchers = [x for x in [cluster.controller_launcher, *cluster.engine_sets] if x is not None]
    cluster.stop_cluster_sync()
    if by_hand and cluster.controller_launcher is not None:
        _stop_hand_started(cluster.controller_launcher.pid)
    return [f"{x.role} job(s) {', '.join(x.job_ids)}" if getattr(x, "job_ids", None) else f"{x.role} pid {x.pid}"
            for x in launchers if x.running]


def _template_error(e: jinja2.TemplateError, cfg: Config) -> int:
    """A broken batch template: where and what, in one line."""
    where = getattr(e, "filename", None) or cfg.HPCCluster.get("batch_template_file") or "the batch template"
    line = getattr(e, "lineno", None)
    print(f"ipphpc submit: {where}{f', line {line}' if line else ''}: {(e.message or type(e).__name__).rstrip('.')}; "
          f"fix the template (`ipphpc submit --dry-run` shows the result) or leave out --template", file=sys.stderr)
    return 2


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
            cluster.raise_if_held()
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
    if c.keeper_pid is not None:
        from ..cluster import keeper
        rows.append(["keeper", f"pid {c.keeper_pid}", "", "RUNNING" if keeper.alive(c.keeper_pid) else "STOPPED",
                     keeper.duties(c), "", "", "", ""])
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
            record = json.loads(path.read_text())
            c = HPCCluster.from_dict(record)
        except (OSError, ValueError, KeyError) as e:
            rows.append([path.name, "?", "?", f"unreadable: {e}", ""])
            continue
        by_hand = _by_hand(record)
        alive = c.controller_launcher is not None and c.controller_launcher.running
        engines = _engines_registered(c) if alive else None
        created = datetime.datetime.fromtimestamp(c.created).strftime("%Y-%m-%d %H:%M:%S") if c.created else ""
        rows.append([c.cluster_id, f"{c.controller_pid} {'running' if alive else 'stopped'}",
                     f"{'-' if engines is None else engines}" + ("" if by_hand else f"/{c.n}"),
                     "controller started by hand" if by_hand else c.engines, created])
    if not rows:
        print(f"no clusters in profile {pdir}")
        return 0
    print(render(["CLUSTER ID", "CONTROLLER", "ENGINES", "LAUNCHER", "STARTED"], rows))
    return 0


def scale(ns: argparse.Namespace, cfg: Config) -> int:
    """Bring a running cluster to N engines."""
    pdir = _pdir(ns)
    path = paths.cluster_file(pdir, ns.cluster)
    if not path.exists():
        known = ", ".join(p.name[8:-5] for p in list_cluster_files(pdir)) or "none"
        print(f"ipphpc scale: no cluster {ns.cluster!r} in profile {pdir} (clusters there: {known})", file=sys.stderr)
        return 1
    c = HPCCluster.from_dict(json.loads(path.read_text()))
    try:
        done = c.scale_sync(ns.engines, ns.timeout)
    except (ValueError, KeyError, RuntimeError, TimeoutError, ConnectionError) as e:
        print(f"ipphpc scale: cluster {c.cluster_id}: {e}", file=sys.stderr)
        return 1
    what = (f"added {done['added']} engine(s)" if "added" in done else
            f"stopped engine(s) {', '.join(map(str, done['stopped']))}" if "stopped" in done else "nothing to do")
    print(f"cluster {c.cluster_id}: {what}; {ns.engines} engine(s) wanted")
    return 0


def restart(ns: argparse.Namespace, cfg: Config) -> int:
    """Restart engines in place: the same processes execute fresh interpreters and register under their ids."""
    pdir = _pdir(ns)
    files = [paths.cluster_file(pdir, ns.cluster)] if ns.cluster else list_cluster_files(pdir)[-1:]
    if not files or not files[0].exists():
        known = ", ".join(p.name[8:-5] for p in list_cluster_files(pdir)) or "none"
        print(f"ipphpc restart: no cluster {ns.cluster or ''!r} in profile {pdir} (clusters there: {known})"
              if ns.cluster else f"ipphpc restart: no cluster in profile {pdir}", file=sys.stderr)
        return 1
    c = HPCCluster.from_dict(json.loads(files[0].read_text()))
    try:
        if ns.restart_ids:
            done = sorted({e for eid in ns.restart_ids for e in c.restart_engine_sync(eid, ns.timeout)})
        else:
            done = c.restart_engines_sync(timeout=ns.timeout)
    except (RuntimeError, TimeoutError, ConnectionError) as e:
        print(f"ipphpc restart: cluster {c.cluster_id}: {e}", file=sys.stderr)
        return 1
    print(f"cluster {c.cluster_id}: restarted engine(s) {', '.join(map(str, done)) or 'none'}")
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
        record = json.loads(path.read_text())
        c = HPCCluster.from_dict(record)
        left = _stop(c, by_hand=_by_hand(record))
        state = "stopped" if not left else f"still running: {', '.join(left)}"
        print(f"cluster {c.cluster_id}: {state}")
    return 0


def _by_hand(record: dict) -> bool:
    """A cluster file the controller wrote about itself (`ipphpc controller` run by hand)."""
    return bool(record.get("cluster", {}).get(record_mod.BY_HAND))


def _stop_hand_started(pid: int | None, grace: float = 10.0) -> None:
    """A controller started by hand need not lead a process group: signal its pid, if it is still ours."""
    stop_process(pid, b"controller", grace=grace)


def keep(ns: argparse.Namespace, cfg: Config) -> int:
    """Run the keeper of a submitted cluster in the foreground (`ipphpc submit` starts it detached)."""
    from ..cluster import keeper
    pdir = _pdir(ns)
    if not paths.cluster_file(pdir, ns.cluster).exists():
        known = ", ".join(p.name[8:-5] for p in list_cluster_files(pdir)) or "none"
        print(f"ipphpc keep: no cluster {ns.cluster!r} in profile {pdir} (clusters there: {known})", file=sys.stderr)
        return 1
    return keeper.main(ns.cluster, str(pdir), ns.log_level)


def logs(ns: argparse.Namespace, cfg: Config) -> int:
    """Controller log, engine logs and job outputs of a cluster."""
    from .logs import show
    return show(_pdir(ns), ns.cluster or ns.cluster_id, ns.which, tail=ns.tail, follow=ns.follow)


def profile(ns: argparse.Namespace, cfg: Config) -> int:
    if ns.action == "list":
        for name in paths.profile_names():
            print(name, paths.profile_path(name))
        return 0
    if ns.action == "locate":
        print(paths.require_profile(ns.name))
        return 0
    pdir = paths.profile_dir(ns.name)
    from ..controller.controller import Controller
    from ..engine.settings import Engine
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
