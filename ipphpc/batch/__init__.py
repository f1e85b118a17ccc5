"""The batch layer: what to tell each scheduler, and how to read its answers.

Everything here is pure: commands are returned as argument lists, scheduler
output is parsed from text, scripts are rendered to strings, and what is known
about a job changes by functions of what was known and what was heard
(:mod:`.jobstate`). Nothing here runs a command, starts a process or writes a
file (templates and exit files are read). Running them is :mod:`ipphpc.launch`'s
business.
"""

from .._lazy import lazy_getattr

# name -> module that defines it, imported when first used: `import ipphpc.batch.resources` (the command
# line parser of every `ipphpc` command, engines included) must not load the templates, jinja2 and the
# backends with it
_LAZY = {
    **dict.fromkeys(("Backend", "BatchOutputError", "expand_index_list", "split_array"), ".backend"),
    **dict.fromkeys(("ElementStatus", "TrackedJob"), ".jobstate"),
    **dict.fromkeys(("available_backends", "get_backend"), ".registry"),
    **dict.fromkeys(("JobSpec", "RenderedFile", "array_directive_missing", "detect_style", "parse_memory",
                     "parse_walltime", "render_job", "render_template", "split_spec", "template_context"), ".render"),
    "Resources": ".resources",
    **dict.fromkeys(("JobRecord", "State", "exit_file_path", "read_exit_file", "short_job_id",
                     "state_from_exit_code"), ".states"),
}

__all__ = [
    "Backend",
    "BatchOutputError",
    "ElementStatus",
    "JobRecord",
    "JobSpec",
    "RenderedFile",
    "Resources",
    "State",
    "TrackedJob",
    "array_directive_missing",
    "available_backends",
    "detect_style",
    "exit_file_path",
    "expand_index_list",
    "get_backend",
    "parse_memory",
    "parse_walltime",
    "read_exit_file",
    "render_job",
    "render_template",
    "short_job_id",
    "split_array",
    "split_spec",
    "state_from_exit_code",
    "template_context",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
