"""Turn a portable job description into a scheduler's batch script.

The built-in templates live in the repository's top-level ``templates/``
directory (shipped inside the wheel as ``ipphpc/templates``), one
sub-directory per scheduler. A profile overrides any of them by placing a file
of the same name in ``<profile_dir>/templates/<scheduler>/`` (and the shared
pieces in ``<profile_dir>/templates/common/``).

Two template languages are understood:

* Jinja2 (files ending in ``.j2``, or text using ``{% ... %}`` / ``{{ ... }}``),
  which gets the whole :func:`template_context`.
* IPython Parallel's ``str.format`` style (``{n}``, ``{n//4}``, ``{queue}``,
  ``{profile_dir}``, ``{cluster_id}``, ``{output_file}``,
  ``{program_and_args}``): each field is a Python expression evaluated in the
  same names, so existing ipyparallel batch templates keep working.

Rendering is pure: nothing is written, nothing is run. The caller creates the
log directory before submitting (schedulers fail jobs whose output file cannot
be opened) and writes the files :func:`render_job` returns.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from .backend import Backend, split_array
from .registry import get_backend
from .resources import Resources, aliases, format_dhms, format_hms, parse_memory, parse_walltime  # noqa: F401 - re-exported
from .states import exit_dir as _exit_dir

ROLES = ("engines", "controller")


@dataclasses.dataclass
class JobSpec(Resources):
    """A :class:`Resources` plus what to run and where this submission sits in the array.

    ``n`` counts engines over *all* submissions of an engine set; one
    submission covers the array elements ``array_start`` ..
    ``array_start + array_size - 1`` and each element starts
    ``engines_per_task`` engines (the last one fewer when ``n`` is not a
    multiple). For the controller job, the per-engine sizes size the
    controller itself.
    """

    n: int = 1
    #: elements in this submission; None means "all the remaining ones"
    array_size: int | None = None
    #: global number of this submission's first element
    array_start: int = 0
    #: output file of each element, in the scheduler's pattern syntax; by
    #: default a file per element in the log directory
    output: str | None = None
    #: where scheduler output goes; defaults to ``<profile_dir>/log/<cluster_id>``
    log_dir: str | None = None
    engine_command: str = ""
    controller_command: str = ""
    profile_dir: str = ""
    cluster_id: str = ""
    work_dir: str | None = None
    #: scheduler-specific knobs the built-in templates read (``pe`` for SGE's
    #: parallel environment, ``getenv`` for HTCondor)
    options: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def total_elements(self) -> int:
        return math.ceil(self.n / self.engines_per_task) if self.n > 0 else 0

    @property
    def elements(self) -> int:
        """Array elements in this submission."""
        if self.array_size is not None:
            return self.array_size
        return max(self.total_elements - self.array_start, 0)

    def validate(self) -> None:
        super().validate()
        if self.n < 0 or self.array_start < 0:
            raise ValueError(f"n={self.n} and array_start={self.array_start} cannot be negative")
        if self.array_size is not None and self.array_size < 1:
            raise ValueError(f"array_size must be at least 1, not {self.array_size}")


def split_spec(spec: JobSpec, max_array_size: int) -> list[JobSpec]:
    """One JobSpec per submission, so no array exceeds ``max_array_size``."""
    return [
        dataclasses.replace(spec, array_start=start, array_size=size)
        for start, size in split_array(spec.total_elements, max_array_size)
    ]


def builtin_template_dir() -> Path:
    """The built-in templates: ``ipphpc/templates`` in a wheel, ``<repo>/templates`` otherwise."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "templates"
    return installed if installed.is_dir() else package.parent / "templates"


def template_search_path(
    backend: Backend, profile_dir: str | None = None, search_dirs: Iterable[str | Path] = ()
) -> list[Path]:
    """Where templates are looked up, first match wins: explicit dirs, profile, built-ins.

    Each place is searched as ``<dir>/<scheduler>/`` then ``<dir>/`` so that
    shared pieces (``common/run.sh.j2``) resolve the same way.
    """
    roots = [Path(d) for d in search_dirs]
    if profile_dir:
        roots.append(Path(profile_dir) / "templates")
    roots.append(builtin_template_dir())
    path = [root / backend.template_dir for root in roots]
    path += roots
    return path


def _environment(search_path: Sequence[Path]) -> jinja2.Environment:
    # built per call: an override dropped into a profile is seen at once
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search_path]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def _hhmm(seconds: int) -> str:
    """LSF's ``-W hours:minutes``, rounded up to a whole minute."""
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _var_ref(primary: str, fallback: str, default: str) -> str:
    if primary == fallback:
        return f"${{{primary}:-{default}}}"
    return f"${{{primary}:-${{{fallback}:-{default}}}}}"


def unsupported_message(backend: Backend, spec: Resources) -> str | None:
    """Why ``backend`` cannot express one of the options ``spec`` sets, or None."""
    for name, value in spec.non_default().items():
        if name in backend.unsupported:
            return f"{backend.name} cannot express {name}={value!r}: {backend.unsupported[name]}"
    return None


def prefixed_directives(backend: Backend, lines: Iterable[str]) -> list[str]:
    """Extra directives with the scheduler's prefix added where the user left it out.

    ``--hold`` becomes ``#SBATCH --hold``; without this it would run as a
    command. Lines already starting with ``#`` stay as they are.
    """
    prefix = backend.directive_prefix
    out = []
    for line in lines:
        text = line.strip()
        out.append(text if not prefix or text.startswith("#") else f"{prefix} {text}")
    return out


def _sizes(spec: JobSpec, per_task: int, gpus: int) -> dict[str, Any]:
    """Per-engine sizes turned into what one element asks for, in the units templates write."""
    seconds = spec.walltime_seconds
    memory = spec.memory_mb
    cpus_total = spec.cores * per_task
    return dict(
        walltime=format_hms(seconds) if seconds is not None else None,
        walltime_dhms=format_dhms(seconds) if seconds is not None else None,
        walltime_seconds=seconds,
        walltime_minutes=math.ceil(seconds / 60) if seconds is not None else None,
        walltime_hhmm=_hhmm(seconds) if seconds is not None else None,
        memory_mb=memory,
        memory_mb_total=memory * per_task if memory is not None else None,
        memory_mb_per_cpu=math.ceil(memory * per_task / cpus_total) if memory is not None else None,
        cpus_total=cpus_total,
        gpus=gpus,
        gpus_total=gpus * per_task,
    )


def template_context(backend: Backend, spec: JobSpec, role: str = "engines") -> dict[str, Any]:
    """Every name a template may use: the JobSpec fields (and their older names) plus derived values."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    spec.validate()
    refused = unsupported_message(backend, spec)
    if refused:
        raise ValueError(refused)
    engines = role == "engines"
    per_task = spec.engines_per_task if engines else 1
    elements = spec.elements if engines else 1
    if elements < 1:
        raise ValueError(f"no array elements to submit (n={spec.n}, array_start={spec.array_start})")
    base = backend.array_index_base
    exit_dir = str(_exit_dir(spec.profile_dir, spec.cluster_id))
    log_dir = spec.log_dir or exit_dir
    job_name = spec.job_name or f"ipphpc-{role}"
    pattern = backend.output_patterns.get(role)
    if pattern:
        # patterns may name the submission's first element, to keep chunks apart
        pattern = pattern.format(array_start=spec.array_start, job_name=job_name)
    output = spec.output or (f"{log_dir}/{pattern}" if pattern else None)
    job_var = backend.array_job_id_var if engines else backend.job_id_var
    command = (spec.engine_command if engines else spec.controller_command).strip()
    if not command:
        raise ValueError(f"nothing to run: the {'engine' if engines else 'controller'}_command is empty")
    context = dataclasses.asdict(spec)
    context.update(
        scheduler=backend.name,
        role=role,
        job_name=job_name,
        command=command,
        engines_per_task=per_task,
        array_size=elements,
        array_first=base,
        array_last=base + elements - 1,
        array_range=f"{base}-{base + elements - 1}",
        array_directive=backend.array_directive(elements, job_name) if engines else "",
        directive_prefix=backend.directive_prefix,
        extra_directives=prefixed_directives(backend, spec.extra_directives),
        index_var=backend.array_index_var,
        index_base=base,
        job_id_var=job_var,
        index_ref=_var_ref(backend.array_index_var, backend.array_index_var, str(base)),
        job_id_ref=_var_ref(job_var, backend.job_id_var, "unknown"),
        **_sizes(spec, per_task, spec.gpus if engines else 0),
        log_dir=log_dir,
        exit_dir=exit_dir,
        output=output,
        error_output=(output[: -len(".out")] + ".err") if output and output.endswith(".out") else output,
        wrapper_path=None,
    )
    # templates written for older names (cpus_per_engine, environment, ...) keep working
    context.update({alias: context[name] for alias, name in aliases().items()})
    return context


def describe(context: Mapping[str, Any]) -> str:
    """One line of what an element asks for, in the normalized units (for dry runs)."""
    parts = [f"{context['cpus_total']} core(s)"]
    if context["memory_mb_total"]:
        parts.append(f"{context['memory_mb_total']}M memory")
    if context["gpus_total"]:
        parts.append(f"{context['gpus_total']} GPU(s), {context['gpus']} per engine")
    if context["nodes"] > 1:
        parts.append(f"{context['nodes']} nodes")
    if context["walltime"]:
        parts.append(f"walltime {context['walltime_dhms']}")
    per = ("the controller" if context["role"] == "controller"
           else f"each element ({context['engines_per_task']} engine(s))")
    return f"{per}: " + ", ".join(parts)


def format_namespace(context: Mapping[str, Any]) -> dict[str, Any]:
    """The names IPython Parallel templates use, on top of the Jinja context."""
    namespace = dict(context)
    namespace.setdefault("output_file", context.get("output") or "")
    namespace["program_and_args"] = context.get("command", "")
    return namespace


class EvalFormatter(string.Formatter):
    """``str.format`` whose fields are Python expressions: ``{n//4}``, ``{n * 2}``.

    Expressions may not contain ``:`` or ``!`` (those start a format spec or a
    conversion), as in IPython's own EvalFormatter.
    """

    SAFE_BUILTINS = {f.__name__: f for f in (abs, int, len, max, min, round, str)}

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        if field_name.isdigit():
            return args[int(field_name)], field_name
        try:
            value = eval(field_name, {"__builtins__": self.SAFE_BUILTINS}, dict(kwargs))  # noqa: S307
        except Exception as exc:
            raise ValueError(f"template field {{{field_name}}} cannot be evaluated: {exc}") from exc
        return value, field_name


_JINJA_EXPRESSION = re.compile(r"\{\{\s*[A-Za-z_][^{}]*\}\}")
# a str.format field; shell "${VAR}" is not one (format templates spell it "${{VAR}}")
_FORMAT_FIELD = re.compile(r"(?<![{$])\{[A-Za-z_][^{}]*\}(?!\})")


def detect_style(text: str, filename: str | None = None) -> str:
    """``"jinja"`` or ``"format"`` for a template.

    ``.j2``/``.jinja`` files and text with ``{% %}`` are Jinja2. ``{{`` alone is
    ambiguous (it is also how str.format escapes a brace), so it only counts as
    Jinja2 when no single-brace ``{field}`` sits beside it.
    """
    if filename and Path(filename).suffix in (".j2", ".jinja", ".jinja2"):
        return "jinja"
    if "{%" in text:
        return "jinja"
    if _JINJA_EXPRESSION.search(text) and not _FORMAT_FIELD.search(text):
        return "jinja"
    return "format"


def render_template(
    backend: Backend | str,
    spec: JobSpec,
    template_file: str | Path | None = None,
    template_text: str | None = None,
    search_dirs: Iterable[str | Path] = (),
    role: str = "engines",
    style: str | None = None,
    extra_context: Mapping[str, Any] | None = None,
) -> str:
    """Render one batch script (or HTCondor submit file) for ``role``.

    With neither ``template_file`` nor ``template_text``, the scheduler's
    template for ``role`` is looked up (profile first, then built-in).
    """
    backend = get_backend(backend)
    context = template_context(backend, spec, role)
    if extra_context:
        context.update(extra_context)
    env = _environment(template_search_path(backend, spec.profile_dir, search_dirs))
    if template_text is None and template_file is None:
        return env.get_template(backend.templates[role]).render(context)
    if template_text is None:
        template_text = Path(template_file).read_text()  # type: ignore[arg-type]
    chosen = style or detect_style(template_text, str(template_file) if template_file else None)
    if chosen == "jinja":
        return env.from_string(template_text).render(context)
    if chosen == "format":
        return EvalFormatter().format(template_text, **format_namespace(context))
    raise ValueError(f"unknown template style {style!r}; expected 'jinja' or 'format'")


@dataclasses.dataclass(frozen=True)
class RenderedFile:
    path: Path
    text: str
    #: the file must be made executable (HTCondor's wrapper script)
    executable: bool = False


def _output_name(template_name: str, stem: str) -> str:
    parts = template_name.removesuffix(".j2").split(".", 1)
    return stem + ("." + parts[1] if len(parts) > 1 else "")


def render_job(
    backend: Backend | str,
    spec: JobSpec,
    directory: str | Path,
    role: str = "engines",
    stem: str | None = None,
    search_dirs: Iterable[str | Path] = (),
) -> list[RenderedFile]:
    """Every file a submission of ``role`` needs, with the path each should get.

    Usually one batch script; for HTCondor the submit description plus the
    wrapper script it names as executable. The first file is the one to submit.
    """
    backend = get_backend(backend)
    stem = stem or role
    directory = Path(directory)
    extra: dict[str, Any] = {}
    files: list[RenderedFile] = []
    wrapper_role = f"{role}-wrapper"
    if wrapper_role in backend.templates:
        wrapper_name = backend.templates[wrapper_role]
        wrapper_path = directory / _output_name(wrapper_name, stem)
        env = _environment(template_search_path(backend, spec.profile_dir, search_dirs))
        text = env.get_template(wrapper_name).render(template_context(backend, spec, role))
        files.append(RenderedFile(wrapper_path, text, executable=True))
        extra["wrapper_path"] = str(wrapper_path)
    main_name = backend.templates[role]
    text = render_template(backend, spec, search_dirs=search_dirs, role=role, extra_context=extra)
    main = RenderedFile(directory / _output_name(main_name, stem), text, executable=not extra)
    return [main, *files]


def array_directive_missing(backend: Backend | str, script: str, spec: JobSpec) -> bool:
    """True when a rendered engines script should be an array but has no array directive.

    User templates may leave it out on purpose; callers use this to warn.
    """
    backend = get_backend(backend)
    if not backend.array_directive(spec.elements, spec.job_name or "ipphpc-engines"):
        return False  # e.g. a one-element PBS Pro submission is a plain job
    return not backend.has_array_directive(script)
