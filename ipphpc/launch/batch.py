"""BatchLauncher: engines (as job arrays) or the controller, started by a batch scheduler.

It follows the launcher protocol of :mod:`ipphpc.launch.base`
(``start``/``running``/``exit_code``/``stop``/``to_dict``/``from_dict``), so a
cluster can use Slurm, PBS, SGE, LSF or HTCondor where it would start local
processes. One ``start`` renders the role's template, writes the script(s)
into ``<profile_dir>/log/<cluster_id>/batch/`` and submits them: one submit
command per array chunk (one for 256 engines unless the scheduler's array
limit is smaller). States come from a :class:`~ipphpc.launch.poller.Poller`
shared by every launcher of the profile, so watching a cluster costs one
status query per interval, however many engines it has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..batch.backend import Backend, BatchOutputError
from ..batch.registry import available_backends, get_backend
from ..batch.render import (
    JobSpec,
    RenderedFile,
    array_directive_missing,
    describe,
    render_job,
    render_template,
    split_spec,
    template_context,
)
from ..batch.resources import Resources, aliases, canonical_options, option_default, option_names
from ..batch.states import State, exit_dir, short_job_id
from .commands import SCHEDULER_LABELS, SchedulerCommandError, failed_command_message, tail
from .poller import ElementStatus, Poller, shared_poller

log = logging.getLogger("ipphpc.batch")

#: the launcher's own settings (the resources are :class:`~ipphpc.batch.resources.Resources`)
LAUNCHER_DEFAULTS: dict[str, Any] = {
    "template_file": "", "batch_template": "", "max_array_size": None, "work_dir": "", "submit_args": [],
    "options": {}, "stop_timeout": 60.0,
}
_ROLE_WORDS = {"engines": "EngineSet", "controller": "Controller"}
# IPython Parallel's names: its sections (one PBS launcher for PBS Pro and Torque, SGE for Grid Engine,
# BatchSystemLauncher for all) and its name of the template file setting
_IPP_LABELS = {"pbspro": "PBS", "torque": "PBS", "sge": "SGE"}
_IPP_NAMES = {"batch_template_file": "template_file"}


def _default(name: str) -> Any:
    return LAUNCHER_DEFAULTS[name] if name in LAUNCHER_DEFAULTS else option_default(name)


def config_sections(role: str, scheduler: str) -> list[str]:
    """The configuration sections a launcher reads, in order (later ones win); IPython Parallel's names
    of a section come just before ipphpc's."""
    label = SCHEDULER_LABELS.get(scheduler, scheduler.capitalize()).replace(" ", "")
    ipp = _IPP_LABELS.get(scheduler)
    word = _ROLE_WORDS[role]
    return ["BatchSystemLauncher", "BatchLauncher", *([f"{ipp}Launcher"] if ipp else []), f"{label}Launcher",
            f"Batch{word}Launcher", *([f"{ipp}{word}Launcher"] if ipp else []), f"{label}{word}Launcher"]


def every_config_section(schedulers: Iterable[str]) -> set[str]:
    """The sections some batch launcher of these schedulers reads, for either role."""
    return {s for role in _ROLE_WORDS for name in schedulers for s in config_sections(role, name)}


def launcher_settings(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A section's settings under their own names (aliases and IPython Parallel's names replaced);
    an unknown name is a ValueError naming the valid ones."""
    own: dict[str, Any] = {}
    for key, value in values.items():
        name = _IPP_NAMES.get(key, key)
        if name in own and own[name] != value:
            raise ValueError(f"c.{section} option {name!r} given twice with different values "
                             f"({own[name]!r} and {value!r}, as {key!r})")
        own[name] = value
    return canonical_options(own, [*LAUNCHER_DEFAULTS, "scheduler"], f"c.{section} option")


def _configured(parent: Any, role: str, scheduler: str) -> dict[str, Any]:
    """Launcher options found in ``parent.config`` (a traitlets Config)."""
    config = getattr(parent, "config", None)
    if not config or role not in _ROLE_WORDS:
        return {}
    found: dict[str, Any] = {}
    for section in config_sections(role, scheduler):
        if section not in config:
            continue
        for name, value in launcher_settings(section, config[section]).items():
            if hasattr(value, "get_value"):  # c.X.extra_directives.append(...)
                value = value.get_value(found.get(name, _default(name) if name != "scheduler" else None))
            found[name] = value
    return found


@dataclass
class Submission:
    """One submitted batch job: an array chunk of engines, or the controller."""

    job_id: str
    #: scheduler index -> exit-file index (see :class:`~ipphpc.batch.jobstate.TrackedJob`)
    elements: dict[int | None, int | None]
    #: global number of the chunk's first element
    array_start: int = 0
    script: str = ""
    submitted_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "elements": [[i, e] for i, e in self.elements.items()],
                "array_start": self.array_start, "script": self.script, "submitted_at": self.submitted_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Submission:
        return cls(str(d["job_id"]), {i: e for i, e in d["elements"]}, d.get("array_start", 0),
                   d.get("script", ""), d.get("submitted_at", 0.0))


@dataclass
class PlannedSubmission:
    """What one submission will be: its files, the exact submit command, its elements."""

    spec: JobSpec
    files: list[RenderedFile]
    argv: list[str]
    stdin: str | None
    elements: dict[int | None, int | None] = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        """The submit command as a shell would read it (``bsub < script`` for LSF)."""
        line = shlex.join(self.argv)
        return f"{line} < {shlex.quote(str(self.files[0].path))}" if self.stdin is not None else line


def element_map(backend: Backend, role: str, size: int, job_name: str = "") -> dict[int | None, int | None]:
    """Scheduler index -> exit-file index for a submission of ``size`` elements.

    The controller is one job without an index. A one-element engines
    submission that the scheduler cannot make an array (PBS Pro) is a plain
    job whose script still writes index ``array_index_base``.
    """
    base = backend.array_index_base
    if role != "engines":
        return {None: None}
    if not backend.array_directive(size, job_name or "ipphpc-engines"):
        return {None: base}
    return {base + i: base + i for i in range(size)}


def _option_value(cmd: Sequence[str], name: str) -> str | None:
    """The value of ``--name X`` or ``--name=X`` in a command line."""
    for i, arg in enumerate(cmd):
        if arg == name and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def expand_output_pattern(pattern: str, job_id: str, index: int | None, native_id: str | None = None) -> str:
    """A scheduler output-file pattern (``%A_%a``, ``%J_%I``, ``$JOB_ID.$TASK_ID``,
    ``$(Cluster).$(Process)``, ``^array_index^``) filled in for one element."""
    short = short_job_id(job_id)
    idx = "0" if index is None else str(index)
    element_id = short_job_id(native_id) if native_id and native_id.split(".")[0].isdigit() else short
    for token, value in (
        ("%%", "\0"), ("%A", short), ("%a", idx), ("%j", element_id), ("%J", short), ("%I", idx),
        ("^array_index^", idx), ("$JOB_ID", short), ("${JOB_ID}", short), ("$TASK_ID", idx),
        ("${TASK_ID}", idx), ("$(Cluster)", short), ("$(Process)", idx),
    ):
        pattern = pattern.replace(token, value)
    return pattern.replace("\0", "%")


def read_tail(path: Path, lines: int = 20, max_bytes: int = 65536) -> str:
    """The last ``lines`` lines of a (possibly huge) file."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(size - max_bytes, 0))
        data = fh.read().decode(errors="replace")
    return "\n".join(data.splitlines()[-lines:])


class BatchLauncher:
    """Engines or the controller as batch jobs of one scheduler (Slurm by default).

    Options not given to the constructor come from the configuration of the
    ``parent`` (an HPCCluster), read from these sections, later ones winning:
    ``BatchLauncher``, ``<Scheduler>Launcher`` (``SlurmLauncher``),
    ``Batch<Role>Launcher`` (``BatchEngineSetLauncher``,
    ``BatchControllerLauncher``) and ``<Scheduler><Role>Launcher``
    (``SlurmEngineSetLauncher``, as IPython Parallel names them)::

        c.BatchLauncher.account = "proj42"
        c.SlurmEngineSetLauncher.queue = "short"
        c.BatchControllerLauncher.walltime = "24:00:00"
    """

    kind = "batch"
    #: the scheduler used when none is given (subclasses from :func:`scheduler_launcher` set it)
    default_scheduler = "slurm"
    #: HPCCluster passes itself as ``parent``, so the launcher reads the cluster's configuration
    configurable = True

    def __init__(
        self,
        role: str,
        n: int = 1,
        scheduler: str | None = None,
        *,
        template_file: str = "",
        batch_template: str = "",
        max_array_size: int | None = None,
        profile_dir: str = "",
        cluster_id: str = "",
        work_dir: str = "",
        submit_args: Sequence[str] = (),
        options: Mapping[str, str] | None = None,
        stop_timeout: float = 60.0,
        poller: Poller | None = None,
        parent: Any = None,
        **resources: Any,
    ) -> None:
        """``resources`` are :class:`~ipphpc.batch.resources.Resources` options (or their aliases)."""
        if role not in ("engines", "controller"):
            raise ValueError(f"a batch launcher starts 'engines' or the 'controller', not {role!r}")
        given = canonical_options(resources, owner="batch launcher option")
        self.role = role
        self.n = n
        provisional = get_backend(scheduler or self.default_scheduler)
        configured = _configured(parent, role, provisional.name)
        self.backend = get_backend(scheduler or configured.pop("scheduler", None) or provisional)
        if self.backend is not provisional:  # c.BatchLauncher.scheduler chose another one
            configured = _configured(parent, role, self.backend.name)
            configured.pop("scheduler", None)
        profile_dir = profile_dir or str(getattr(parent, "profile_dir", "") or "")
        cluster_id = cluster_id or str(getattr(parent, "cluster_id", "") or "")
        self.scheduler = self.backend.name
        self.template_file = template_file
        self.batch_template = batch_template
        self.max_array_size = max_array_size
        self.profile_dir = str(profile_dir) if profile_dir else ""
        self.cluster_id = cluster_id
        self.work_dir = work_dir
        self.submit_args = list(submit_args)
        self.options = dict(options or {})
        self.stop_timeout = stop_timeout
        for name in LAUNCHER_DEFAULTS:
            # configuration fills what the caller left at its default
            default = LAUNCHER_DEFAULTS[name]
            if name in configured and getattr(self, name) == default:
                value = configured[name]
                setattr(self, name, type(default)(value) if isinstance(default, (list, dict)) else value)
        wanted = {k: v for k, v in configured.items() if k in option_names()}
        wanted.update({k: v for k, v in given.items() if v != option_default(k) or k not in wanted})
        self.resources = Resources(**wanted)
        self.resources.validate()
        self.submissions: list[Submission] = []
        self.cmd: list[str] = []
        self.log_path = ""
        self.tag = os.urandom(2).hex()
        self._poller = poller
        self._tracked: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        """The resource options read as attributes: ``launcher.queue``, ``launcher.cpus_per_engine``."""
        name = aliases().get(name, name)
        if name in option_names() and "resources" in self.__dict__:
            return getattr(self.__dict__["resources"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- the protocol ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """Batch jobs have no local process."""
        return None

    @property
    def job_ids(self) -> list[str]:
        return [s.job_id for s in self.submissions]

    @property
    def poller(self) -> Poller:
        """The poller following this launcher's jobs (the profile's shared one by default)."""
        if self._poller is None:
            self._poller = shared_poller(self.backend, self.profile_dir or None)
        for sub in self.submissions:
            if sub.job_id not in self._tracked:
                self._poller.track(sub.job_id, sub.elements, cluster_id=self.cluster_id, role=self.role,
                                   submitted_at=sub.submitted_at or None)
                self._tracked.add(sub.job_id)
        return self._poller

    def start(self, cmd: list[str], log_path: Path) -> None:
        """Render, write and submit the job(s) running ``cmd``; one submit call per array chunk."""
        if self.submissions:  # a second start must not overwrite the first one's scripts
            self.tag = os.urandom(2).hex()
        self.cmd = list(cmd)
        self.log_path = str(log_path)
        self._locate(cmd, log_path)
        plans = self.plan(cmd)
        directory = self.script_dir
        directory.mkdir(parents=True, exist_ok=True)
        # schedulers fail jobs whose output directory is missing
        self.log_dir.mkdir(parents=True, exist_ok=True)
        poller = self.poller
        submitted: list[str] = []
        for plan in plans:
            for rendered in plan.files:
                rendered.path.write_text(rendered.text)
                rendered.path.chmod(0o755 if rendered.executable else 0o644)
            try:
                job_id = self._submit(plan)
            except Exception:
                if submitted:  # all or nothing: no orphaned part of an engine set
                    log.warning("cancelling the %d job(s) already submitted: %s", len(submitted),
                                ", ".join(submitted))
                    self._cancel(submitted)
                raise
            submitted.append(job_id)
            job = poller.track(job_id, plan.elements, cluster_id=self.cluster_id, role=self.role)
            self._tracked.add(job_id)
            self.submissions.append(
                Submission(job_id, plan.elements, plan.spec.array_start, str(plan.files[0].path), job.submitted_at))
            log.info("submitted %s job %s (%d element(s)): %s", self.role, job_id, len(plan.elements),
                     plan.command_line)
        poller.request_fast_poll()

    def dry_run(self, cmd: list[str], log_path: Path | None = None) -> str:
        """The scripts ``start`` would write and the exact submit commands, without submitting."""
        self._locate(cmd, log_path)
        plans = self.plan(cmd)
        engines = self.role == "engines"
        head = (f"# {self.backend.name}: {self.n} engine(s), {self.engines_per_task} per element, "
                f"{len(plans)} submission(s)" if engines else f"# {self.backend.name}: the controller")
        parts = [head, "# " + describe(template_context(self.backend, plans[0].spec, self.role))]
        for plan in plans:
            for rendered in plan.files:
                parts.append(f"# --- {rendered.path} ---\n{rendered.text.rstrip()}")
            parts.append(f"# submit: {plan.command_line}")
        return "\n".join(parts) + "\n"

    def job_script(self, cmd: list[str]) -> str:
        """The exact file the first submission would submit (for HTCondor, with its wrapper script)."""
        self._locate(cmd, None)
        files = self.plan(cmd)[0].files
        if len(files) == 1:
            return files[0].text
        return "\n".join(f"# --- {f.path.name} ---\n{f.text}" for f in files)

    @property
    def running(self) -> bool:
        """True while any element is queued, held or running."""
        return any(s.active for s in self.states())

    @property
    def exit_code(self) -> int | None:
        """None while any element is active; then 0 if all completed, else the first failing code (1 if none)."""
        statuses = self.states()
        if not statuses or any(s.active for s in statuses):
            return None
        bad = [s for s in statuses if s.state is not State.COMPLETED]
        if not bad:
            return 0
        codes = [s.exit_code for s in bad if s.exit_code]
        return codes[0] if codes else 1

    def states(self) -> list[ElementStatus]:
        """Every element of this launcher's jobs, polled if the interval has passed."""
        if not self.submissions:
            return []
        poller = self.poller
        poller.poll_if_due()
        return poller.records(self.job_ids)

    def stop(self, grace: float = 5.0, timeout: float | None = None) -> list[ElementStatus]:
        """Cancel every active job with ONE cancel command, then wait until they left the queue.

        Returns the elements still active after ``timeout`` (default
        ``stop_timeout``), which are also logged. The scheduler decides the
        signals and the delay before it kills (``grace`` is a minimum wait).
        """
        if not self.submissions:
            return []
        poller = self.poller
        poller.poll_if_due()
        active = [j for j in self.job_ids if any(s.active for s in poller.records([j]))]
        if not active:
            return []
        self._cancel(active)
        wait = max(grace, self.stop_timeout if timeout is None else timeout)
        poller.wait_until(lambda recs: not any(r.active for r in recs), wait, self.job_ids)
        remaining = [s for s in poller.records(self.job_ids) if s.active]
        if remaining:
            log.warning("%d %s element(s) still %s %.0f s after %s: %s", len(remaining), self.role,
                        "/".join(sorted({s.state.value for s in remaining})), wait,
                        shlex.join(self.backend.cancel_command(active)),
                        ", ".join(self._element_name(s) for s in remaining[:10]))
        return remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "role": self.role,
            "n": self.n,
            "scheduler": self.scheduler,
            "profile_dir": self.profile_dir,
            "cluster_id": self.cluster_id,
            "cmd": self.cmd,
            "log_path": self.log_path,
            "tag": self.tag,
            "options": {**{name: getattr(self, name) for name in LAUNCHER_DEFAULTS},
                        **self.resources.resource_values()},
            "submissions": [s.to_dict() for s in self.submissions],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> BatchLauncher:
        """Rebuild a launcher (in any process) from :meth:`to_dict`; it can then poll and cancel."""
        kwargs: dict[str, Any] = dict(d.get("options", {}))
        kwargs.update(scheduler=d.get("scheduler"), profile_dir=d.get("profile_dir", ""),
                      cluster_id=d.get("cluster_id", ""))
        kwargs.update(overrides)
        self = cls(d["role"], d.get("n", 1), **kwargs)
        self.cmd = list(d.get("cmd", []))
        self.log_path = d.get("log_path", "")
        self.tag = d.get("tag", self.tag)
        self.submissions = [Submission.from_dict(s) for s in d.get("submissions", [])]
        return self

    # -- failures --------------------------------------------------------------------------------
    def output_path(self, status: ElementStatus) -> Path | None:
        """Where the element's scheduler output goes, by the template's conventions."""
        sub = next((s for s in self.submissions if s.job_id == status.job_id), None)
        array_start = sub.array_start if sub else 0
        pattern = self.backend.output_patterns.get(self.role)
        if pattern:
            job_name = self.resources.job_name or f"ipphpc-{self.role}"
            name = expand_output_pattern(pattern.format(array_start=array_start, job_name=job_name), status.job_id,
                                         status.array_index, status.native_id)
        else:
            # templates without an output pattern redirect to <role>-$PBS_JOBID.out themselves
            element_id = status.native_id or status.job_id
            if status.native_id is None and status.array_index is not None and "[]" in status.job_id:
                element_id = status.job_id.replace("[]", f"[{status.array_index}]", 1)
            name = f"{self.role}-{element_id}.out"
        path = self.log_dir / name
        if path.exists():
            return path
        short = short_job_id(status.job_id)
        # <role>-..., or a scheduler's default name (<job name>.o<job number>...)
        found = {*self.log_dir.glob(f"{self.role}-*{short}*"), *self.log_dir.glob(f"*.o{short}*")}
        candidates = sorted(found, key=lambda p: p.stat().st_mtime)
        if status.array_index is not None:
            candidates = [p for p in candidates if str(status.array_index) in p.name.split(short, 1)[-1]]
        return candidates[-1] if candidates else path

    def failures(self, lines: int = 20) -> list[dict[str, Any]]:
        """Elements that failed, timed out, were cancelled or lost, with their output tails."""
        out = []
        for status in self.states():
            if not status.finished or status.state is State.COMPLETED:
                continue
            path = self.output_path(status)
            text = ""
            if path is not None:
                try:
                    text = read_tail(path, lines)
                except OSError:
                    text = ""
                err = path.with_suffix(".err")
                if path.suffix == ".out" and err.exists():  # schedulers that keep stderr apart (HTCondor)
                    try:
                        err_text = read_tail(err, lines)
                    except OSError:
                        err_text = ""
                    if err_text.strip():
                        text = f"{text}\n--- {err.name} ---\n{err_text}".strip()
            out.append({**status.to_dict(), "element": self._element_name(status),
                        "output_path": str(path) if path else None, "output_tail": text})
        return out

    def failure_report(self, lines: int = 20, limit: int = 5) -> str:
        """State, reason, exit code and output tail of each element that did not complete ('' if none)."""
        failed = self.failures(lines)
        if not failed:
            return ""
        total = len(self.states())
        parts = [f"{len(failed)} of {total} {self.role} element(s) did not complete ({self.backend.name}):"]
        for item in failed[:limit]:
            code = "" if item["exit_code"] is None else f", exit code {item['exit_code']}"
            host = f" on {item['host']}" if item.get("host") else ""
            reason = f": {item['reason']}" if item["reason"] else ""
            parts.append(f"  {item['element']}: {item['state']}{code}{host}{reason}")
            if item["output_tail"]:
                parts.append(f"    last lines of {item['output_path']}:")
                parts.extend("      " + line for line in item["output_tail"].splitlines())
            elif item["output_path"]:
                parts.append(f"    (no output in {item['output_path']})")
        if len(failed) > limit:
            parts.append(f"  ... and {len(failed) - limit} more")
        return "\n".join(parts)

    # -- holds -----------------------------------------------------------------------------------
    def held(self, grace: float = 0.0) -> list[ElementStatus]:
        """Elements the scheduler has held for at least ``grace`` seconds, as a fresh query confirms.

        A hold is not lifted by waiting, so whoever waits for these elements should give up and say
        why. The shared cache may predate a release: one forced poll checks before anyone gives up.
        """
        def held_long(records: list[ElementStatus]) -> list[ElementStatus]:
            now = time.time()
            return [s for s in records if s.state is State.HELD and now - s.since >= grace]

        if not held_long(self.states()):
            return []
        self.poller.poll_once(force=True)
        return held_long(self.poller.records(self.job_ids))

    def held_report(self, held: Sequence[ElementStatus]) -> str:
        """One clause per held job and reason: its elements, for how long, the scheduler's words, how to release it."""
        label = SCHEDULER_LABELS.get(self.backend.name, self.backend.name)
        groups: dict[tuple[str, str], list[ElementStatus]] = {}
        for s in held:
            groups.setdefault((s.job_id, s.reason), []).append(s)
        now = time.time()
        clauses = []
        for (job_id, reason), elements in groups.items():
            indices = sorted(s.array_index for s in elements if s.array_index is not None)
            which = f" element{'s' if len(indices) > 1 else ''} {index_ranges(indices)}" if indices else ""
            seconds = now - max(s.since for s in elements)
            why = f'{label} says "{reason}"' if reason else f"{label} gives no reason"
            release = shlex.join(self.backend.release_command([job_id]))
            how = f"; `{release}` releases it" if release else ""
            clauses.append(f"{self.role} job {job_id}{which} HELD for {seconds:.0f} s ({why}){how}")
        return "; ".join(clauses)

    # -- helpers ---------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        """The directory holding the jobs' output and exit files."""
        return exit_dir(self.profile_dir or ".", self.cluster_id)

    @property
    def script_dir(self) -> Path:
        return self.log_dir / "batch"

    def _locate(self, cmd: Sequence[str], log_path: Path | None) -> None:
        """Take the profile and cluster from the command when the launcher was not told them."""
        if not self.profile_dir:
            found = _option_value(cmd, "--profile-dir")
            if found:
                self.profile_dir = found
            elif log_path is not None:
                self.profile_dir = str(Path(log_path).resolve().parent.parent)
            else:
                raise ValueError("a batch launcher needs a profile_dir (or --profile-dir in its command)")
        if not self.cluster_id:
            self.cluster_id = _option_value(cmd, "--cluster-id") or ""

    def _spec(self, cmd: Sequence[str]) -> JobSpec:
        command = shlex.join(cmd)
        engines = self.role == "engines"
        values = self.resources.resource_values()
        if not engines:  # the controller is one process on one node
            values.update(engines_per_task=1, gpus=0, nodes=1, exclusive=False)
        return JobSpec(
            **values,
            n=self.n if engines else 1,
            engine_command=command if engines else "",
            controller_command="" if engines else command,
            profile_dir=self.profile_dir,
            cluster_id=self.cluster_id,
            work_dir=self.work_dir or None,
            options=dict(self.options),
        )

    def plan(self, cmd: Sequence[str]) -> list[PlannedSubmission]:
        """Every submission ``start`` would make: rendered files, submit command, elements."""
        spec = self._spec(cmd)
        if self.role == "engines":
            specs = split_spec(spec, self.max_array_size or self.backend.max_array_size)
        else:
            specs = [spec]
        if not specs:
            raise ValueError(f"no engines to submit (n={self.n})")
        plans = []
        for part in specs:
            stem = f"{self.role}-{self.tag}" + (f"-{part.array_start}" if len(specs) > 1 else "")
            files = self._render(part, stem)
            script = files[0]
            argv = self.backend.submit_command(str(script.path), list(self.submit_args))
            stdin = script.text if self.backend.submit_via_stdin else None
            size = part.elements if self.role == "engines" else 1
            plans.append(PlannedSubmission(part, files, argv, stdin,
                                           element_map(self.backend, self.role, size, part.job_name or "")))
        return plans

    def _render(self, spec: JobSpec, stem: str) -> list[RenderedFile]:
        files = render_job(self.backend, spec, self.script_dir, role=self.role, stem=stem)
        if not (self.template_file or self.batch_template):
            return files
        extra = {"wrapper_path": str(files[1].path)} if len(files) > 1 else None
        text = render_template(
            self.backend, spec, template_file=self.template_file or None,
            template_text=self.batch_template or None, role=self.role, extra_context=extra,
        )
        if self.role == "engines" and array_directive_missing(self.backend, text, spec):
            log.warning("the custom %s template has no array directive: the scheduler will start one "
                        "element, not %d", self.backend.name, spec.elements)
        return [dataclasses.replace(files[0], text=text), *files[1:]]

    def _submit(self, plan: PlannedSubmission) -> str:
        result = self.poller.run_command(plan.argv, plan.stdin, cwd=self.work_dir or None)
        script = plan.files[0].path
        if result.rc != 0:
            raise SchedulerCommandError(
                failed_command_message(plan.argv, result.rc, result.stderr, result.stdout)
                + f" (script: {script})", plan.argv, "failed", result.rc, result.stdout, result.stderr,
            )
        try:
            return self.backend.parse_submit(result.stdout)
        except BatchOutputError as exc:
            raise SchedulerCommandError(
                f"`{plan.command_line}` printed no job id: {tail(result.stdout + result.stderr) or 'no output'}",
                plan.argv, "failed", result.rc, result.stdout, result.stderr,
            ) from exc

    def _cancel(self, job_ids: Sequence[str]) -> None:
        argv = self.backend.cancel_command(list(job_ids))
        try:
            result = self.poller.run_command(argv)
        except SchedulerCommandError as exc:
            log.warning("cancelling %s failed: %s", ", ".join(job_ids), exc)
        else:
            if result.rc != 0 and not self.backend.is_unknown_job_error(result.stderr):
                log.warning("%s", failed_command_message(argv, result.rc, result.stderr, result.stdout))
        self.poller.mark_cancelled(job_ids)

    def _element_name(self, status: ElementStatus) -> str:
        if status.array_index is None:
            return f"job {status.job_id}"
        return f"job {status.job_id} element {status.array_index}"

    def __repr__(self) -> str:
        jobs = ", ".join(self.job_ids) or "not submitted"
        return f"<{type(self).__name__} {self.backend.name} {self.role} n={self.n}: {jobs}>"


def index_ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``: array elements as a scheduler would write them."""
    parts: list[str] = []
    for i in sorted(set(indices)):
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


# -- one launcher class per scheduler name ---------------------------------------------------------
_CLASSES: dict[str, type[BatchLauncher]] = {}


def is_scheduler_name(name: str) -> bool:
    """True when ``name`` selects a batch launcher: ``batch``, or a scheduler
    :func:`~ipphpc.batch.registry.get_backend` knows by name (not an import string)."""
    return name.strip().lower() in launcher_names()


def scheduler_launcher(name: str) -> type[BatchLauncher]:
    """A :class:`BatchLauncher` subclass whose default scheduler is ``name`` (``slurm``, ``pbs``...).

    ``find_launcher("slurm")("engines", 64)`` then submits to Slurm without
    further arguments. ``batch`` is :class:`BatchLauncher` itself (the
    scheduler then comes from ``c.BatchLauncher.scheduler``, Slurm by
    default); it is also the ``kind`` to_dict writes, so from_dict goes
    through it.
    """
    if name.strip().lower() == BatchLauncher.kind:
        return BatchLauncher
    backend = get_backend(name)
    cls = _CLASSES.get(backend.name)
    if cls is None:
        label = SCHEDULER_LABELS.get(backend.name, backend.name.capitalize()).replace(" ", "")
        cls = type(f"{label}Launcher", (BatchLauncher,), {
            "default_scheduler": backend.name,
            "__doc__": f"Engines or the controller as {backend.description or backend.name} jobs.",
            "__module__": __name__,
        })
        _CLASSES[backend.name] = cls
    return cls


def launcher_names() -> list[str]:
    """Every name that selects a batch launcher."""
    return ["batch", *available_backends()]


__all__ = [
    "BatchLauncher",
    "PlannedSubmission",
    "Submission",
    "element_map",
    "expand_output_pattern",
    "index_ranges",
    "is_scheduler_name",
    "launcher_names",
    "scheduler_launcher",
]
