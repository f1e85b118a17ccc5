"""HPCCluster: a controller, engines and a client started and stopped together.

Each cluster writes `security/cluster-<id>.json` so that `ipphpc list`, `ipphpc stop` and
`HPCCluster.from_file()` can find and stop it from another process.

The control plane is synchronous: `start_cluster_sync()`, `stop_cluster_sync()`, ... do the work
(submitting jobs, running ssh, waiting for files), and each `async def` of the same name without
`_sync` runs it in a worker thread, so an event loop (a notebook's) keeps running meanwhile.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, List, TraitError, Unicode, Union, default, observe, validate
from traitlets.config import Config, LoggingConfigurable

from .. import connection, paths, shm
from ..batch.resources import Resources, canonical_options, option_names
from ..config import CONTROLLER_SECTIONS, ENGINE_SECTIONS, load_profile_config
from ..error import ControllerUnreachable
from ..launch.base import BatchJobs, DryRun, Launcher
from ..launch.launchers import find_launcher, ipphpc_command, launcher_from_dict
from . import shared_file
from .resource_traits import ResourceTraits


async def _in_thread(func: Any, *args: Any, **kwargs: Any) -> Any:
    """`func(*args, **kwargs)` in the loop's default thread pool, awaited."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))


def new_cluster_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


class JobsHeld(RuntimeError):
    """The scheduler holds jobs of the cluster: they will not start by themselves, so the wait ends.

    ``held`` names the jobs, elements, reasons and release commands; ``stopped`` says whether the
    cluster was stopped (its jobs cancelled) or left queued for a release.
    """

    def __init__(self, cluster_id: str, held: str, stopped: bool = False) -> None:
        then = ("stopped the cluster and cancelled its jobs (a longer held_grace, `--held-grace`, waits for a "
                "release instead)" if stopped else
                f"its jobs are left queued: release them to go on, or `ipphpc stop {cluster_id}` cancels them")
        super().__init__(f"cluster {cluster_id}: {held}; {then}")
        self.cluster_id, self.held, self.stopped = cluster_id, held, stopped


class HPCCluster(ResourceTraits, LoggingConfigurable):
    """Start a cluster, connect a client, stop everything: `with HPCCluster(n=4) as rc: ...`

    The batch options (cores, memory, walltime, queue, ...) are the fields of
    :class:`~ipphpc.batch.resources.Resources`, as traits.
    """

    n = Integer(4, config=True, help="Number of engines.")
    profile = Unicode("default", config=True)
    profile_dir = Unicode("", config=True)
    cluster_id = Unicode("", config=True, help="Cluster id (default: generated from the time).")
    engines = Unicode("local", config=True, help="Where engines run: 'local', or a launcher name or import string.")
    controller = Unicode("local", config=True, help="Where the controller runs.")
    controller_ip = Unicode("", config=True, help="Controller interface ('*' for all).")
    controller_location = Unicode("", config=True)
    curve = Bool(None, allow_none=True, config=True, help="Encrypt the cluster's traffic with CurveZMQ. Default: on "
                 "whenever engines are not local processes (batch, SSH, MPI) or the controller listens beyond "
                 "loopback; off for a local cluster on loopback.")
    controller_args = List(Unicode(), [], config=True, help="Extra `ipphpc controller` arguments.")
    engine_args = List(Unicode(), [], config=True, help="Extra `ipphpc engine` arguments.")
    controller_cmd = List(Unicode(), [], config=True, help="Command that starts a controller (default: this "
                          "Python with `-m ipphpc controller`); e.g. a site module's python, or a wrapper.")
    engine_cmd = List(Unicode(), [], config=True, help="Command that starts an engine where engines run "
                      "(default: this Python with `-m ipphpc engine`); set it when compute nodes use another "
                      "Python or environment.")
    engine_timeout = Float(0.0, config=True, help="Seconds start_and_connect waits for the engines "
                           "(0: 120 s for local engines, an hour for batch jobs, which may queue).")
    replace_lost = Bool(True, config=True, help="Batch clusters: resubmit elements the scheduler ended (walltime, "
                        "preemption, node failure, a cancel) or whose engines drained for the walltime, as one job "
                        "array per look, so the cluster keeps n engines until stopped. Runs in the process that "
                        "started the cluster, while it has a client.")
    max_replacements = Integer(100, config=True, help="Most elements replaced over the cluster's life.")
    replace_interval = Float(30.0, config=True, help="Seconds between two looks for lost elements.")
    adapt_range = Unicode("", config=True, help="'MIN:MAX' or 'MIN:MAX:IDLE_SECONDS': a cluster started by "
                          "`ipphpc submit --adapt` adapts between MIN and MAX engines (see adapt()), releasing "
                          "engines idle for IDLE_SECONDS (default 300).")
    adapt_interval = Float(5.0, config=True, help="Seconds between two looks of adapt_range's adaptation.")
    held_grace = Float(15.0, config=True, help="Seconds the scheduler may hold a job of the cluster (a user's or "
                       "an admin's hold) while start_and_connect or `ipphpc submit --wait` waits; then the wait fails "
                       "naming the jobs, the scheduler's reason and how to release them, since a hold does not lift "
                       "by itself.")
    # -- batch jobs (engines='slurm' | 'pbs' | 'torque' | 'sge' | 'lsf' | 'htcondor') --------------
    scheduler = Unicode("", config=True, help="Batch scheduler for the engines (same as engines=<name>).")
    batch_template = Unicode("", config=True, help="Template text (Jinja2, or IPython Parallel's {n} style).")
    batch_template_file = Unicode("", config=True, help="Template file (Jinja2, or IPython Parallel's {n} style).")
    max_array_size = Integer(0, config=True, help="Largest array the site allows (0: the scheduler's default).")
    shutdown_atexit = Bool(True, config=True, help="Stop the cluster when this Python process exits.")
    created = Float(0.0)
    # IPython Parallel's Cluster settings, meaning the same here
    log_level = Union([Integer(), Unicode()], default_value=logging.INFO, config=True,
                      help="Level of this cluster object's log: a number or a name such as 'DEBUG'.")
    delay = Float(0.0, config=True, help="Seconds to wait between starting the controller and the engines "
                  "(IPython Parallel waits 1 s; ipphpc's engines wait for the connection file themselves).")
    load_profile = Bool(True, config=True, help="Read the profile's cluster configuration files "
                        "(ipphpc_config.py, ipphpc_cluster_config.py); False ignores them.")

    @default("log")
    def _default_log(self) -> logging.Logger:
        log = logging.getLogger(f"ipphpc.cluster.{self.cluster_id or id(self)}")
        log.setLevel(self.log_level)
        return log

    @validate("log_level")
    def _valid_log_level(self, proposal: Any) -> int:
        value = proposal.value
        level = logging.getLevelName(value.upper()) if isinstance(value, str) else value
        if not isinstance(level, int):
            raise TraitError(f"log_level={value!r}: use a number or one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @observe("log_level")
    def _set_log_level(self, change: Any) -> None:
        if self.trait_has_value("log"):
            self.log.setLevel(change.new)

    @validate("n")
    def _valid_n(self, proposal: Any) -> int:
        if proposal.value < 0:
            raise TraitError(f"n={proposal.value}: the number of engines cannot be negative")
        return proposal.value

    @validate("adapt_range")
    def _valid_adapt_range(self, proposal: Any) -> str:
        from .adapt import parse_range
        try:
            parse_range(proposal.value)
        except ValueError as e:
            raise TraitError(str(e)) from None
        return proposal.value

    @validate("engines_per_task", "cores", "nodes")
    def _valid_positive(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise TraitError(f"{proposal.trait.name}={proposal.value}: must be at least 1")
        return proposal.value

    def __init__(self, n: int | None = None, config: Config | None = None, **kwargs: Any):
        prof = kwargs.get("profile") or (config.HPCCluster.get("profile") if config else None) or "default"
        pdir_arg = kwargs.get("profile_dir") or (config.HPCCluster.get("profile_dir") if config else None)
        pdir = paths.profile_dir(prof, pdir_arg or None)
        # IPython Parallel's names for where the controller and engines start
        for theirs, ours in (("engine_launcher_class", "engines"), ("controller_launcher_class", "controller")):
            if theirs in kwargs:
                cls = kwargs.pop(theirs)
                kwargs[ours] = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        load = kwargs.get("load_profile", config.HPCCluster.get("load_profile", True) if config else True)
        cfg = load_profile_config(pdir, "cluster") if load else Config()
        if config is not None:
            cfg.merge(config)
        if n is not None:
            kwargs["n"] = n
        # older and dask-jobqueue names become the options' names; an unknown one is an error, not a warning
        own = [*self.class_trait_names(config=True), "parent"]
        kwargs = canonical_options(kwargs, own, "HPCCluster option")
        if "HPCCluster" in cfg:
            cfg.HPCCluster = Config(canonical_options(dict(cfg.HPCCluster), own, "c.HPCCluster option"))
        super().__init__(config=cfg, **kwargs)
        Resources(**self.resource_options()).validate()
        # controller and engine settings given here (not the profile's, which those processes read
        # themselves) travel to them as --Class.trait=value arguments
        self._passed = {cls: dict(config[cls]) for cls in (*CONTROLLER_SECTIONS, *ENGINE_SECTIONS)
                        if config is not None and cls in config}
        self.pdir = pdir
        self.profile_dir = str(pdir)
        self.cluster_id = self.cluster_id or new_cluster_id()
        if self.scheduler and self.engines == "local":
            self.engines = self.scheduler
        if self.controller == "batch":
            self.controller = self.engines
        if not self.controller_ip and (self.engines != "local" or self.controller != "local") \
                and self.engines.lower() not in ("mpi", "mpiexec", "srun"):
            # engines on other hosts must be able to reach the controller: not loopback
            self.controller_ip = "*"
        self.controller_launcher: Launcher | None = None
        self.engine_sets: list[Launcher] = []
        self.engine_set_ids: list[str] = []  # one per engine set, as start_engines returned it
        self.client: Any = None
        self._atexit = False
        #: how the newest engine set started (command, batch settings): other processes start more the same way
        self._engine_set_template: dict[str, Any] | None = None
        self._from_file = False
        self._removed_sets: set[str] = set()  # engine sets stopped here: never taken back from the file
        self.keeper_pid: int | None = None  # the process keeping a submitted cluster (see keeper.py)
        self._keep_here = True  # False: a keeper process replaces lost elements, not a thread of this one

    # -- files -------------------------------------------------------------------------------
    @property
    def cluster_file(self) -> Path:
        return paths.cluster_file(self.pdir, self.cluster_id)

    @property
    def client_file(self) -> Path:
        return paths.connection_file(self.pdir, "client", self.cluster_id)

    @property
    def controller_pid(self) -> int | None:
        return self.controller_launcher.pid if self.controller_launcher else None

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": {"cluster_id": self.cluster_id, "profile_dir": self.profile_dir, "n": self.n,
                            "engines": self.engines, "controller": self.controller,
                            "controller_ip": self.controller_ip, "created": self.created,
                            "replace_lost": self.replace_lost, "max_replacements": self.max_replacements,
                            "replace_interval": self.replace_interval, "adapt_range": self.adapt_range,
                            "adapt_interval": self.adapt_interval},
                "controller": self.controller_launcher.to_dict() if self.controller_launcher else None,
                "engine_sets": [e.to_dict() for e in self.engine_sets], "engine_set_ids": self.engine_set_ids,
                "engine_set_template": self._engine_set_template, "keeper": {"pid": self.keeper_pid}}

    def write_cluster_file(self) -> None:
        """Write the file, keeping the engine sets other processes added to it meanwhile."""
        with shared_file.locked(self.cluster_file):
            self._take_sets_from_file()
            connection.write(self.cluster_file, self.to_dict())

    def refresh_from_file(self) -> bool:
        """Take in the engine sets other processes added (`ipphpc scale`); False once the file is gone."""
        with shared_file.locked(self.cluster_file):
            return self._take_sets_from_file()

    def _take_sets_from_file(self) -> bool:
        d = shared_file.read(self.cluster_file)
        if d is None:
            return False
        for sid, e in shared_file.sets_added_elsewhere(d, set(self.engine_set_ids), self._removed_sets):
            self.engine_sets.append(launcher_from_dict(e))
            self.engine_set_ids.append(sid)
        if self.keeper_pid is None:
            self.keeper_pid = (d.get("keeper") or {}).get("pid")
        return True

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kwargs: Any) -> "HPCCluster":
        c = d["cluster"]
        kept = {k: c[k] for k in ("replace_lost", "max_replacements", "replace_interval", "adapt_range",
                                  "adapt_interval") if k in c}
        batch = (d.get("engine_set_template") or {}).get("batch") or {}
        kept.update({k: v for k, v in batch.get("options", {}).items() if k in option_names()})
        self = cls(n=c["n"], profile_dir=c["profile_dir"], cluster_id=c["cluster_id"], engines=c["engines"],
                   controller=c.get("controller", "local"), controller_ip=c.get("controller_ip", ""),
                   shutdown_atexit=False, **{**kept, **kwargs})
        self.created = c.get("created", 0.0)
        self._from_file = True
        self._engine_set_template = d.get("engine_set_template")
        self.keeper_pid = (d.get("keeper") or {}).get("pid")
        self.controller_launcher = launcher_from_dict(d["controller"]) if d.get("controller") else None
        self.engine_sets = [launcher_from_dict(e) for e in d.get("engine_sets", [])]
        self.engine_set_ids = d.get("engine_set_ids") or [str(i) for i in range(len(self.engine_sets))]
        return self

    @classmethod
    def from_allocation(cls, n: int | None = None, **kwargs: Any) -> "HPCCluster":
        """Inside a batch job: the controller on this (batch) host, engines across the allocation,
        with srun under Slurm and mpiexec elsewhere. Use it as `with HPCCluster.from_allocation() as rc:`."""
        from ..launch.srun import allocation_size
        launcher, slots = allocation_size()
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or os.environ.get("JOB_ID") \
            or os.environ.get("LSB_JOBID") or "job"
        kwargs.setdefault("cluster_id", f"alloc-{job.split('.')[0]}-{os.urandom(2).hex()}")
        kwargs.setdefault("controller_ip", "*")
        return cls(n=n or slots, engines=launcher, **kwargs)

    @classmethod
    def from_file(cls, cluster_id: str | None = None, profile: str = "default", profile_dir: str | None = None,
                  **kwargs: Any) -> "HPCCluster":
        """Re-attach to a running cluster (the newest of the profile when no id is given)."""
        pdir = paths.profile_dir(profile, profile_dir)
        if cluster_id is None:
            found = list_cluster_files(pdir)
            if not found:
                raise FileNotFoundError(f"no cluster files in {pdir / 'security'}; start one with `ipphpc submit`")
            path = found[-1]
        else:
            path = paths.cluster_file(pdir, cluster_id)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no cluster {cluster_id!r} in profile {pdir}: `ipphpc list` shows the "
                                    f"clusters there") from None
        return cls.from_dict(d, **kwargs)

    # -- start -------------------------------------------------------------------------------
    def _controller_cmd(self) -> list[str]:
        cmd = (list(self.controller_cmd) or ipphpc_command("controller")) + [
            "--profile-dir", self.profile_dir, "--cluster-id", self.cluster_id]
        if self.controller_ip:
            cmd += ["--ip", self.controller_ip]
        if self.controller_location:
            cmd += ["--location", self.controller_location]
        curve = self.curve if self.curve is not None else (True if self.engines != "local" else None)
        if curve is not None:
            cmd += ["--curve" if curve else "--no-curve"]
        # how long queued tasks wait for engines once all have gone: batch elements may be replaced after
        # a wait in the queue, local processes come back at once or not at all (later arguments win)
        cmd += [f"--Controller.engine_wait={10 if self.engines in ('local', 'mpi', 'ssh') else 300}"]
        if getattr(find_launcher(self.engines), "kind", "") == "batch":
            cmd += ["--Controller.verdict_wait=60"]  # the scheduler's reason for a silent engine (witness.py)
        return cmd + _as_args(self._passed, CONTROLLER_SECTIONS) + list(self.controller_args)

    def _engine_cmd(self) -> list[str]:
        """The command for one engine; launchers add how many and how (fork, mpiexec, job array)."""
        from .container import CONTAINER_ENGINE_CMD, wrap_engine_command
        # inside an image the host's interpreter path means nothing: the image's python3 runs the engine
        default = list(CONTAINER_ENGINE_CMD) if self.container else ipphpc_command("engine")
        cmd = [*(self.engine_cmd or default), "--profile-dir", self.profile_dir,
               "--cluster-id", self.cluster_id, *_as_args(self._passed, ENGINE_SECTIONS),
               *self.engine_args]
        if self.container:
            cmd = wrap_engine_command(cmd, image=self.container, runtime=self.container_runtime,
                                      binds=list(self.container_binds), profile_dir=self.profile_dir)
        return cmd

    def _launcher(self, name: str, role: str, n: int = 1) -> Launcher:
        """Configurable launchers read their own section of this cluster's config (c.SSHEngineSetLauncher...)."""
        cls = find_launcher(name)
        kwargs: dict[str, Any] = {"parent": self} if getattr(cls, "configurable", False) else {}
        if getattr(cls, "kind", "") == "batch":
            kwargs.update(self.batch_options())
        return cls(role, n, **kwargs)

    def resource_options(self) -> dict[str, Any]:
        """The batch options (cores, memory, walltime, ...) as set on this cluster."""
        return {name: getattr(self, name) for name in option_names()}

    def batch_options(self) -> dict[str, Any]:
        """This cluster's batch settings, as a batch launcher takes them (unset ones left out)."""
        opts = {"batch_template": self.batch_template, "template_file": self.batch_template_file,
                "max_array_size": self.max_array_size or None, "profile_dir": self.profile_dir,
                "cluster_id": self.cluster_id}
        return {**{k: v for k, v in opts.items() if v}, **Resources(**self.resource_options()).non_default()}

    def job_script(self) -> str:
        """The exact engines batch script (for HTCondor, the submit file and its wrapper) start would submit."""
        launcher = self._launcher(self.engines, "engines", self.n)
        if not isinstance(launcher, BatchJobs):
            raise ValueError(f"engines={self.engines!r} are not batch jobs: there is no job script")
        return launcher.job_script(self._engine_cmd())

    def dry_run(self) -> str:
        """The scripts and exact commands `start_cluster` would run, without running them."""
        out = []
        ctl = self._launcher(self.controller, "controller")
        if isinstance(ctl, DryRun):
            out.append(ctl.dry_run(self._controller_cmd()))
        else:
            out.append("# controller (local process)\n" + shlex.join(self._controller_cmd()))
        eng = self._launcher(self.engines, "engines", self.n)
        if isinstance(eng, DryRun):
            out.append(eng.dry_run(self._engine_cmd()))
        else:
            out.append(f"# {self.n} engines ({self.engines})\n" + shlex.join(self._engine_cmd()))
        return "\n\n".join(out)

    @property
    def engines_requested(self) -> int:
        """What the engine sets will start (a launcher's own host list may differ from `n`)."""
        return sum(e.n for e in self.engine_sets) or self.n

    def start_controller_sync(self) -> None:
        for role in ("client", "engine"):
            # a stale file of an earlier run with this id would send engines to a dead controller
            paths.connection_file(self.pdir, role, self.cluster_id).unlink(missing_ok=True)
        launcher = self._launcher(self.controller, "controller")
        launcher.start(self._controller_cmd(), self.pdir / "log" / f"ipcontroller-{self.cluster_id}.out")
        self.controller_launcher = launcher
        self._register_atexit()
        self.write_cluster_file()

    def start_engines_sync(self, n: int | None = None, engine_set_id: str | None = None) -> str:
        """Start a set of `n` engines; returns its id (for stop_engines)."""
        n = n or self.n
        set_id = engine_set_id or f"{int(time.time())}-{os.urandom(2).hex()}"
        if set_id in self.engine_set_ids:
            raise ValueError(f"engine set {set_id!r} exists already in cluster {self.cluster_id}")
        template = self._engine_set_template if self._from_file else None
        # in another process than the one that started the cluster, more engines start as the first did: with
        # its engine command and, for batch jobs, its resources (this process may not know either)
        cmd = template["cmd"] if template else self._engine_cmd()
        if template and template.get("batch"):
            launcher = launcher_from_dict({**template["batch"], "n": n})
        else:
            launcher = self._launcher(self.engines, "engines", n)
        launcher.start(cmd, self.pdir / "log" / f"ipengine-{self.cluster_id}.out")
        if not template:
            batch = {k: v for k, v in launcher.to_dict().items() if k not in ("submissions", "tag")} \
                if isinstance(launcher, BatchJobs) else None
            self._engine_set_template = {"cmd": cmd, "batch": batch}
        self.engine_sets.append(launcher)
        self.engine_set_ids.append(set_id)
        self._register_atexit()
        self.write_cluster_file()
        return set_id

    def start_cluster_sync(self, n: int | None = None) -> None:
        """Controller and engines start together; engines wait for the connection file."""
        if n is not None:
            self.n = n
        self.created = time.time()
        # a wrong name must fail here, before a controller is started and left waiting for engines
        # (not in __init__: `ipphpc stop` from another process must not need a user's launcher class)
        find_launcher(self.engines)
        find_launcher(self.controller)
        self.start_controller_sync()
        if self.delay > 0:
            time.sleep(self.delay)
        if self.n > 0:  # n=0: a controller alone, for engines that users' own batch scripts start
            try:
                self.start_engines_sync(self.n)
            except BaseException:
                # a refused submission or a bad option: no controller may be left waiting for engines
                self.stop_cluster_sync()
                raise
            if isinstance(self.engine_sets[-1], BatchJobs) and self._keep_here:
                from .witness import Witness
                self._witness = Witness(self, self.log)
                if self.replace_lost:
                    from .replace import Replacer
                    self._replacer = Replacer(self, self.start_engines_sync, self.replace_interval,
                                              self.max_replacements, self.log)

    def connect_client_sync(self, **kwargs: Any) -> Any:
        from ..client.client import Client
        default = 30.0 if self.controller == "local" else self.wait_timeout  # a batch controller may queue
        self._wait_for_client_file(kwargs.pop("timeout", default))
        self.client = Client(self.client_file, **kwargs)
        self.client._cluster = self
        return self.client

    def _wait_for_client_file(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        next_check = time.monotonic()
        while not self.client_file.exists():
            launcher = self.controller_launcher
            if launcher is not None and launcher.exit_code is not None:
                raise ControllerUnreachable(f"the controller exited with status {launcher.exit_code} before "
                                            f"writing {self.client_file}:\n{self._tail('ipcontroller')}")
            if time.monotonic() > deadline:
                raise ControllerUnreachable(f"the controller did not write {self.client_file} within {timeout:g} s:"
                                            f"\n{self._tail('ipcontroller')}")
            if isinstance(launcher, BatchJobs) and time.monotonic() >= next_check:
                self.raise_if_held()  # a held controller job never writes the file
                next_check = time.monotonic() + 0.25
            time.sleep(0.01)

    def _tail(self, name: str, lines: int = 20) -> str:
        path = self.pdir / "log" / f"{name}-{self.cluster_id}.out"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no output in {path})"

    def start_and_connect_sync(self, n: int | None = None, activate: bool = False) -> Any:
        self.start_cluster_sync(n)
        rc = self.connect_client_sync()
        self._wait_for_engines(rc, self.engines_requested)
        if activate:  # the %px magics on all engines, in the running IPython
            rc.activate()
        return rc

    @property
    def wait_timeout(self) -> float:
        return self.engine_timeout or (120.0 if self.engines.lower() in ("local", "mpi", "mpiexec", "srun")
                                       else 3600.0)

    def engines_failed(self) -> str | None:
        """Why the engine sets cannot bring more engines (the scheduler's reason and output), or None."""
        for e in self.engine_sets:
            if isinstance(e, BatchJobs):
                # one failed array element is enough: its engines will never register
                report = e.failure_report()
                if report:
                    return report
                continue
            code = e.exit_code
            if code in (None, 0):
                continue
            return f"engines exited with status {code}:\n{self._tail('ipengine')}"
        return None

    def jobs_held(self) -> str | None:
        """The cluster's jobs the scheduler has held for longer than held_grace (who, why, how to release), or None."""
        reports = []
        for launcher in [self.controller_launcher, *self.engine_sets]:
            held = getattr(launcher, "held", None)
            found = held(self.held_grace) if held is not None else []
            if found:
                reports.append(launcher.held_report(found))
        return "; ".join(reports) or None

    def raise_if_held(self) -> None:
        """JobsHeld when the scheduler holds a job of the cluster past held_grace: for code that waits for engines."""
        held = self.jobs_held()
        if held:
            raise JobsHeld(self.cluster_id, held)

    def _wait_for_engines(self, rc: Any, n: int) -> None:
        timeout = self.wait_timeout
        deadline = time.monotonic() + timeout
        while len(rc.ids) < n:
            dead = self.engines_failed()
            if dead:
                raise RuntimeError(f"{len(rc.ids)} of {n} engines registered, and no more will come:\n{dead}")
            self.raise_if_held()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(rc.ids)} of {n} engines registered after {timeout:g} s "
                                   f"(`ipphpc status` shows the jobs):\n{self._tail('ipengine')}")
            try:
                rc.wait_for_engines(n, timeout=0.25)
            except TimeoutError:
                pass

    # -- stop --------------------------------------------------------------------------------
    def add_engines_sync(self, n: int) -> str:
        """Start `n` more engines (one job array for a batch cluster); returns the new engine set's id."""
        return self.start_engines_sync(n)

    def scale_sync(self, n: int, timeout: float = 300.0) -> dict:
        """Bring the cluster to `n` engines: more are submitted as one set; fewer are stopped once idle
        (idle and newest first; an engine finishes what it holds, so no task is killed or lost).
        Returns {'added': k} or {'stopped': [ids]}."""
        from .scale import scale
        rc, own = self._client_for_control()
        try:
            return scale(self, rc, n, timeout)
        finally:
            if own:
                rc.close()

    def adapt(self, minimum: int = 0, maximum: int = 8, idle_timeout: float = 300.0, interval: float = 5.0) -> Any:
        """Add engines while tasks wait (up to `maximum`, one submission per look) and release engines idle
        for `idle_timeout` seconds (down to `minimum`). Returns at once: the adaptation runs in the
        background until `.stop()` on what this returns, or until the cluster stops."""
        from .adapt import Adaptive
        if getattr(self, "_adaptive", None) is not None:
            self._adaptive.stop()
        self._adaptive = Adaptive(self, minimum, maximum, idle_timeout, interval, self.log)
        return self._adaptive

    def stop_engine_sync(self, engine_id: int, timeout: float = 300.0) -> None:
        """Stop one engine once it has finished the tasks it holds."""
        self.stop_engines_sync([engine_id], timeout)

    def stop_engines_sync(self, engine_set_id: Any = None, timeout: float = 300.0) -> None:
        """Stop one engine set (by the id start_engines returned), or all of them; given engine ids (ints),
        stop those engines once they have finished the tasks they hold."""
        if isinstance(engine_set_id, int) or (isinstance(engine_set_id, (list, tuple, set)) and engine_set_id
                                              and all(isinstance(i, int) for i in engine_set_id)):
            from .scale import stop_engine_ids
            ids = [engine_set_id] if isinstance(engine_set_id, int) else list(engine_set_id)
            rc, own = self._client_for_control()
            try:
                stop_engine_ids(rc, ids, timeout)
            finally:
                if own:
                    rc.close()
            return
        if engine_set_id is None:
            # out of the list before they stop: what they end is not lost (nothing replaces it)
            self._removed_sets.update(self.engine_set_ids)
            sets, self.engine_sets, self.engine_set_ids = self.engine_sets, [], []
            for e in sets:
                e.stop()
        else:
            if engine_set_id not in self.engine_set_ids:
                raise KeyError(f"no engine set {engine_set_id!r} in cluster {self.cluster_id}; its sets: "
                               f"{', '.join(self.engine_set_ids) or 'none'}")
            i = self.engine_set_ids.index(engine_set_id)
            self.engine_sets.pop(i).stop()
            self._removed_sets.add(self.engine_set_ids.pop(i))
        self.write_cluster_file()

    def stop_controller_sync(self) -> None:
        if self.controller_launcher is not None:
            self.controller_launcher.stop()

    def stop_cluster_sync(self) -> None:
        """Ask the controller to stop its engines and itself, then make sure every process is gone."""
        self._stop_all()

    def _stop_all(self) -> None:
        """Plain blocking code, so it also runs at interpreter exit, when thread pools are closed."""
        for name in ("_adaptive", "_replacer", "_witness"):  # nothing may start engines while the cluster stops
            helper = getattr(self, name, None)
            if helper is not None:
                helper.stop()
                setattr(self, name, None)
        if self.keeper_pid is not None and self.keeper_pid != os.getpid():
            from .keeper import stop_keeper
            stop_keeper(self.keeper_pid)  # it could replace what is cancelled below
        self.refresh_from_file()  # sets another process added (`ipphpc scale`) are stopped too
        self._polite_shutdown()
        for e in self.engine_sets:
            e.stop()
        self.engine_sets, self.engine_set_ids = [], []
        if self.controller_launcher is not None:
            self.controller_launcher.stop()
        if self.client is not None:
            self.client.close()
            self.client = None
        self._remove_dead_controller_files()
        self.cluster_file.unlink(missing_ok=True)
        shared_file.lock_path(self.cluster_file).unlink(missing_ok=True)
        self._atexit = False

    def _remove_dead_controller_files(self) -> None:
        """A controller killed hard (kill -9, its node lost) leaves its pid file and connection files: once it is
        gone, remove them, so that no client or engine finds a dead cluster. A controller that exited cleanly
        removed its pid file itself (and kept the connection files on purpose with --reuse): nothing is touched."""
        launcher = self.controller_launcher
        pid_file = paths.pid_file(self.pdir, "ipcontroller", self.cluster_id)
        if launcher is None or not pid_file.exists() or launcher.running:
            return
        try:  # its frames in /dev/shm too: it sweeps them when it stops, and it did not stop
            shm.sweep(shm.prefix(connection.read(self.client_file)["key"]))
        except OSError:  # (ConnectionFileError is one)
            pass
        for path in (pid_file, self.client_file, paths.connection_file(self.pdir, "engine", self.cluster_id)):
            path.unlink(missing_ok=True)

    def _polite_shutdown(self) -> None:
        if self.controller_launcher is None or not self.controller_launcher.running:
            return
        try:
            rc = self.client
            if rc is None:
                from ..client.client import Client
                rc = Client(self.client_file, timeout=3)
            rc._request("shutdown", {"engines": True}, timeout=3)
            if rc is not self.client:
                rc.close()
        except Exception as e:  # noqa: BLE001 - signals below finish the job
            self.log.debug("polite shutdown failed: %s", e)
            return
        deadline = time.monotonic() + 5
        launchers = [self.controller_launcher, *self.engine_sets]
        while time.monotonic() < deadline and any(_obeys_shutdown(x) for x in launchers):
            time.sleep(0.05)

    def _register_atexit(self) -> None:
        if self.shutdown_atexit and not self._atexit:
            self._atexit = True
            atexit.register(self._stop_at_exit)

    def _stop_at_exit(self) -> None:
        if self._atexit:
            self._stop_all()

    # -- signals -----------------------------------------------------------------------------
    def _client_for_control(self) -> tuple[Any, bool]:
        if self.client is not None:
            return self.client, False
        from ..client.client import Client
        return Client(self.client_file, timeout=10), True

    def signal_engines_sync(self, signum: int | str) -> list[int]:
        """Send a signal to every engine; each engine signals itself, so this works wherever engines run
        (batch nodes, ssh hosts, under mpiexec). SIGINT interrupts running tasks and leaves engines serving."""
        return self._signal(signum, None)

    def signal_engine_sync(self, signum: int | str, engine_id: int) -> list[int]:
        """Send a signal to one engine (see signal_engines_sync)."""
        return self._signal(signum, [engine_id])

    def _signal(self, signum: int | str, targets: list[int] | None) -> list[int]:
        rc, own = self._client_for_control()
        try:
            return rc.send_signal(signum, targets)
        finally:
            if own:
                rc.close()

    def restart_engines_sync(self, engine_set_id: str | None = None, timeout: float = 120.0) -> list[int]:
        """Restart engines in place: each engine process executes a fresh interpreter, runs its startup
        script again and registers under the same id, with an empty namespace; the same pid, so a batch
        element goes on without a new submission. Queued tasks wait for it; returns the ids restarted.
        MPI ranks cannot restart alone: an MPI engine set is started again as a whole (a new mpiexec), each
        rank under the id its rank had."""
        if engine_set_id is not None and engine_set_id not in self.engine_set_ids:
            raise KeyError(f"no engine set {engine_set_id!r}; this cluster has {self.engine_set_ids}")
        chosen = [i for i, sid in enumerate(self.engine_set_ids) if engine_set_id in (None, sid)]
        # the ranks of an MPI job cannot restart alone: such a set is started again as a whole
        mpi = [i for i in chosen if getattr(self.engine_sets[i], "kind", "") == "mpi"]
        done = [eid for i in mpi for eid in self._relaunch_mpi(i, timeout)]
        if engine_set_id is None and not mpi:
            return self._restart(None, timeout)
        rc, own = self._client_for_control()
        try:
            mpi_ids = set(done)
            targets = [eid for i in chosen if i not in mpi for eid in self._engine_ids_of(self.engine_sets[i])] \
                if engine_set_id is not None else [eid for eid in rc.ids if eid not in mpi_ids]
        finally:
            if own:
                rc.close()
        return sorted(done + (self._restart(targets, timeout) if targets else []))

    def _relaunch_mpi(self, index: int, timeout: float) -> list[int]:
        """Start the MPI job of engine set `index` again: its engines leave (each after its running task), a new
        mpiexec starts the same number of ranks, and each rank registers under the id its rank had."""
        from ..launch.mpi import ENGINE_IDS_VAR, MPILauncher
        from .scale import wait_gone
        old = self.engine_sets[index]
        rc, own = self._client_for_control()
        try:
            ids = self._engine_ids_of(old)
            ids.sort(key=lambda eid: rc.engines[eid].get("mpi_rank") or 0)
            t0 = time.time()
            old.stop()
            wait_gone(rc, ids, timeout, f"of MPI set {self.engine_set_ids[index]} did not leave within {{timeout:g}} s")
            template = self._engine_set_template if self._from_file else None
            new = MPILauncher(old.role, old.n, mpiexec=old.mpiexec, mpi_args=old.mpi_args)
            new.env = {ENGINE_IDS_VAR: ",".join(map(str, ids))}
            new.start(template["cmd"] if template else self._engine_cmd(),
                      self.pdir / "log" / f"ipengine-{self.cluster_id}.out")
            self.engine_sets[index] = new
            self.write_cluster_file()
            if _wait_registered_since(rc, ids, t0, timeout, given_up=lambda: new.exit_code not in (None, 0)):
                raise RuntimeError(f"the MPI job restarting engines {ids} did not bring them back within "
                                   f"{timeout:g} s (exit status {new.exit_code}; `ipphpc logs "
                                   f"{self.cluster_id}` shows why)")
            return ids
        finally:
            if own:
                rc.close()

    def restart_engine_sync(self, engine_id: int, timeout: float = 120.0) -> list[int]:
        """Restart one engine in place (see restart_engines_sync)."""
        return self._restart([engine_id], timeout)

    def _engine_ids_of(self, launcher: Any) -> list[int]:
        """The engines one engine set started: by job number for batch jobs, else by process group."""
        def pgid(pid: Any) -> int | None:
            try:
                return os.getpgid(pid)
            except (OSError, TypeError):
                return None
        jobs = {str(j).split(".")[0].split("[")[0] for j in getattr(launcher, "job_ids", None) or []}
        tag = getattr(launcher, "tag", "") if getattr(launcher, "kind", "") == "mpi" else ""
        rc, own = self._client_for_control()
        try:
            return sorted(eid for eid, i in rc.engines.items()
                          if (jobs and str(i.get("job_id") or "").split(".")[0].split("[")[0].split("_")[0] in jobs)
                          or (tag and i.get("engine_set") == tag)
                          or (not jobs and not tag and getattr(launcher, "pid", None)
                              and pgid(i.get("pid")) == launcher.pid))
        finally:
            if own:
                rc.close()

    def _restart(self, targets: list[int] | None, timeout: float) -> list[int]:
        rc, own = self._client_for_control()
        try:
            t0 = time.time()
            reply = rc._request("restart", {"targets": targets})
            if reply.get("refused"):
                by_why: dict[str, list[int]] = {}
                for eid, why in reply["refused"].items():
                    by_why.setdefault(why, []).append(int(eid))
                raise RuntimeError("cannot restart engine(s) " + "; ".join(
                    f"{', '.join(map(str, sorted(ids)))}: {why}" for why, ids in by_why.items()))
            reached = reply["reached"]
            missing = _wait_registered_since(rc, reached, t0, timeout)
            if missing:
                raise TimeoutError(f"engines {missing} did not register again within {timeout:g} s of their "
                                   f"restart (`ipphpc logs {self.cluster_id}` shows why)")
            return sorted(reached)
        finally:
            if own:
                rc.close()

    # -- the same, for an event loop: the work runs in a thread, the loop keeps running ------------
    async def start_controller(self) -> None:
        await _in_thread(self.start_controller_sync)

    async def start_engines(self, n: int | None = None, engine_set_id: str | None = None) -> str:
        """Start a set of `n` engines; returns its id (for stop_engines)."""
        return await _in_thread(self.start_engines_sync, n, engine_set_id)

    async def start_cluster(self, n: int | None = None) -> None:
        """Controller and engines start together; engines wait for the connection file."""
        await _in_thread(self.start_cluster_sync, n)

    async def connect_client(self, **kwargs: Any) -> Any:
        return await _in_thread(self.connect_client_sync, **kwargs)

    async def start_and_connect(self, n: int | None = None, activate: bool = False) -> Any:
        rc = await _in_thread(self.start_and_connect_sync, n)
        if activate:  # in the caller's thread: IPython registers magics in the running shell
            rc.activate()
        return rc

    async def stop_engines(self, engine_set_id: Any = None, timeout: float = 300.0) -> None:
        """Stop one engine set (by the id start_engines returned), all of them, or engines by id."""
        await _in_thread(self.stop_engines_sync, engine_set_id, timeout)

    async def add_engines(self, n: int) -> str:
        return await _in_thread(self.add_engines_sync, n)

    async def scale(self, n: int, timeout: float = 300.0) -> dict:
        return await _in_thread(self.scale_sync, n, timeout)

    async def stop_engine(self, engine_id: int, timeout: float = 300.0) -> None:
        await _in_thread(self.stop_engine_sync, engine_id, timeout)

    async def stop_controller(self) -> None:
        await _in_thread(self.stop_controller_sync)

    async def stop_cluster(self) -> None:
        """Ask the controller to stop its engines and itself, then make sure every process is gone."""
        await _in_thread(self.stop_cluster_sync)

    async def restart_engines(self, engine_set_id: str | None = None, timeout: float = 120.0) -> list[int]:
        return await _in_thread(self.restart_engines_sync, engine_set_id, timeout)

    async def restart_engine(self, engine_id: int, timeout: float = 120.0) -> list[int]:
        return await _in_thread(self.restart_engine_sync, engine_id, timeout)

    async def signal_engines(self, signum: int | str) -> list[int]:
        """Send a signal to every engine (see signal_engines_sync)."""
        return await _in_thread(self.signal_engines_sync, signum)

    async def signal_engine(self, signum: int | str, engine_id: int) -> list[int]:
        """Send a signal to one engine (see signal_engines_sync)."""
        return await _in_thread(self.signal_engine_sync, signum, engine_id)

    def __enter__(self) -> Any:
        try:
            return self.start_and_connect_sync()
        except JobsHeld as e:
            self.stop_cluster_sync()
            raise JobsHeld(e.cluster_id, e.held, stopped=True) from None
        except BaseException:
            # __exit__ does not run when __enter__ fails: stop the controller and the jobs here
            self.stop_cluster_sync()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop_cluster_sync()

    async def __aenter__(self) -> Any:
        try:
            return await self.start_and_connect()
        except JobsHeld as e:
            await self.stop_cluster()
            raise JobsHeld(e.cluster_id, e.held, stopped=True) from None
        except BaseException:
            await self.stop_cluster()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_cluster()

    def __repr__(self) -> str:
        return f"<HPCCluster {self.cluster_id}: {self.n} {self.engines} engines, profile {self.pdir.name}>"


def _wait_registered_since(rc: Any, ids: list[int], t0: float, timeout: float,
                           given_up: Any = lambda: False) -> list[int]:
    """Wait until each engine of `ids` has registered after `t0` (epoch seconds); the ids still missing when
    `timeout` passes or `given_up()` says so ([] once all are back)."""
    deadline = time.monotonic() + timeout
    while True:
        info = rc.engines
        missing = sorted(eid for eid in ids if info.get(eid, {}).get("since", 0) <= t0)
        if not missing or time.monotonic() > deadline or given_up():
            return missing
        time.sleep(0.05)


def _obeys_shutdown(launcher: Launcher) -> bool:
    """True while the shutdown message can still end something: a live process or a running batch element.

    Queued and held elements have no engine to hear it; they are cancelled right after, not waited for.
    """
    if isinstance(launcher, BatchJobs):
        from ..batch.states import State
        return any(s.state is State.RUNNING for s in launcher.states())
    return launcher.running


_OWN = {"profile", "profile_dir", "cluster_id"}


def _as_args(passed: dict[str, dict[str, Any]], sections: tuple[str, ...]) -> list[str]:
    return [f"--{cls}.{k}={v!r}" for cls in sections for k, v in passed.get(cls, {}).items() if k not in _OWN]


def list_cluster_files(pdir: Path) -> list[Path]:
    """Cluster files of a profile, oldest first."""
    def created(p: Path) -> float:
        try:
            return json.loads(p.read_text())["cluster"].get("created", 0.0) or p.stat().st_mtime
        except (OSError, ValueError, KeyError):
            return 0.0
    return sorted((pdir / "security").glob("cluster-*.json"), key=created)


#: IPython Parallel's name for the same class
Cluster = HPCCluster
