"""The keeper of a cluster started by `ipphpc submit`.

`submit` returns once the cluster is up, so nothing would be left to replace elements the scheduler ends
(walltime, preemption, node failure, a cancel), to tell the controller why an engine went silent (its
Witness) or to adapt the cluster's size. A small detached process does all three, with the same Replacer,
Witness and Adaptive a cluster started from Python runs in threads. It reads
the cluster file before each look (`ipphpc scale` may have added engine sets), writes the sets it adds
there (so `ipphpc stop` cancels them), and ends when the cluster is stopped (`ipphpc stop` ends it first,
so nothing is replaced while jobs are cancelled) or its controller is gone. Its log:
`<profile>/log/ipkeeper-<cluster id>.out`.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from ..error import ControllerUnreachable
from ..launch.base import BatchJobs
from ..launch.launchers import ipphpc_command
from ..launch.processes import runs, spawn, stop_process
from .adapt import Adaptive, parse_range
from .replace import Replacer
from .witness import Witness


def _batch(cluster: Any) -> bool:
    return any(isinstance(e, BatchJobs) for e in cluster.engine_sets)


def wanted(cluster: Any) -> bool:
    """Whether a submitted cluster needs a keeper: batch engines (to replace, and to tell the controller why one
    went silent), or a size to adapt."""
    return _batch(cluster) or bool(cluster.adapt_range)


def duties(cluster: Any) -> str:
    """What the keeper of `cluster` does, in a few words."""
    batch = _batch(cluster)
    limits = parse_range(cluster.adapt_range)
    return ", ".join([*(["replaces lost elements"] if batch and cluster.replace_lost else []),
                      *(["tells the controller why an engine went silent"] if batch else []),
                      *([f"adapts between {limits[0]} and {limits[1]} engines"] if limits else [])]) or "nothing"


def alive(pid: int) -> bool:
    return runs(pid, b"ipphpc", b"keep")


def start_keeper(cluster: Any) -> int:
    """Start the keeper of `cluster` (detached, in a session of its own); its pid goes in the cluster file."""
    cmd = [*ipphpc_command("keep", cluster.cluster_id), "--profile-dir", cluster.profile_dir]
    proc = spawn(cmd, cluster.pdir / "log" / f"ipkeeper-{cluster.cluster_id}.out")
    cluster.keeper_pid = proc.pid
    cluster.write_cluster_file()
    return proc.pid


def stop_keeper(pid: int, grace: float = 30.0) -> None:
    """End a keeper and wait for it: a submission it is making is finished and written down first."""
    stop_process(pid, b"ipphpc", b"keep", grace=grace)
    try:  # our child when the keeper was started from this process
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def run(cluster_id: str, profile_dir: str, log: logging.Logger) -> int:
    """Keep the cluster until it stops; returns an exit status."""
    from .cluster import HPCCluster
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())
    try:
        cluster = HPCCluster.from_file(cluster_id, profile_dir=profile_dir)
    except FileNotFoundError as e:
        log.error("%s", e)
        return 1
    cluster.log = log
    deadline = time.monotonic() + cluster.wait_timeout
    while not done.is_set():  # a batch controller may still be queued
        try:
            cluster.connect_client_sync(timeout=1.0)
            break
        except ControllerUnreachable as e:
            if time.monotonic() > deadline or not cluster.refresh_from_file():
                log.error("cluster %s: %s", cluster_id, e)
                return 1
    else:
        return 0
    batch = _batch(cluster)
    replacer = Replacer(cluster, cluster.start_engines_sync, cluster.replace_interval, cluster.max_replacements,
                        log, background=False) if batch and cluster.replace_lost else None
    limits = parse_range(cluster.adapt_range)
    adaptive = Adaptive(cluster, *limits, interval=cluster.adapt_interval, log=log, background=False) \
        if limits else None
    log.info("keeping cluster %s: %s", cluster_id, duties(cluster))
    witness = Witness(cluster, log) if batch else None  # a thread of its own: it long-polls the controller
    looks = [(x, x.interval) for x in (adaptive, replacer) if x is not None]
    due = {id(x): time.monotonic() + interval for x, interval in looks}
    try:
        while not done.wait(min([1.0, *(i for _, i in looks)])):
            if not cluster.refresh_from_file():
                log.info("cluster %s was stopped", cluster_id)
                break
            launcher = cluster.controller_launcher
            if launcher is not None and not launcher.running:
                log.warning("the controller of cluster %s is gone; nothing more to keep", cluster_id)
                break
            for helper, interval in looks:
                if time.monotonic() >= due[id(helper)] and not done.is_set():
                    try:
                        helper.look()
                    except Exception as e:  # noqa: BLE001 - one failed look must not end the keeper; say why
                        log.warning("%s: %s: %s", type(helper).__name__, type(e).__name__, e)
                    due[id(helper)] = time.monotonic() + interval
    finally:
        if witness is not None:
            witness.stop()
        if cluster.client is not None:
            cluster.client.close()
    return 0


def main(cluster_id: str, profile_dir: str, level: int | str = logging.INFO) -> int:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(message)s")
    return run(cluster_id, profile_dir, logging.getLogger(f"ipphpc.keeper.{cluster_id}"))
