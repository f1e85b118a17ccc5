"""An engine's settings, as data: name, type, default and help, written once.

`ipphpc engine` started with its own flags only (no configuration file, no `--Class.trait=value`)
reads its settings from here without importing traitlets, which with its configuration machinery
is 1.5 MiB of every engine's memory. Configuration files and `--Engine.x=value` go through the
traitlets classes that :mod:`.settings` makes from these tables, so they mean what they always meant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    kind: type
    default: Any
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        """`value` as this option's type; ValueError naming the setting when it is not one."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ValueError(f"Engine.{name} must be of type {self.kind.__name__}, not {value!r}")
        return value


ENGINE: dict[str, Option] = {
    "profile": Option(str, "default"),
    "profile_dir": Option(str, ""),
    "cluster_id": Option(str, "", "Cluster to join (finds the connection file by name)."),
    "file": Option(str, "", "Engine connection file; default: the profile's, by cluster id."),
    "wait_for_file": Option(float, 300.0, "Seconds to wait for the connection file to appear (on a shared filesystem "
                            "the controller may start after the engines)."),
    "register_timeout": Option(float, 60.0, "Seconds to wait for the controller to answer registration."),
    "controller_timeout": Option(float, 120.0, "Exit when the controller has been silent this long, so an allocation "
                                 "is not burned by orphaned engines."),
    "work_dir": Option(str, "", "Directory to change into before running anything."),
    "startup_script": Option(str, "", "Python file run in the engine namespace at start."),
    "startup_command": Option(str, "", "Python code run in the engine namespace at start."),
    "mpi": Option(str, "", "'mpi4py' to initialize MPI: engine id = COMM_WORLD rank, and comm, mpi_rank, mpi_size in "
                  "the namespace."),
    "engine_id": Option(int, -1, "Engine id to ask for (default: the controller picks)."),
    "sshserver": Option(str, "", "[user@]host[:port] of an ssh server that can reach the controller when this host "
                        "cannot; default: the connection file's 'ssh', if any."),
    "sshkey": Option(str, "", "Private key file for the ssh tunnel."),
    "walltime": Option(float, 0.0, "Seconds this engine may live (`ipphpc engine --walltime 1:00:00`); 0: what its "
                       "batch job says (ipphpc's job scripts export it), else no limit."),
    "drain_margin": Option(float, 60.0, "Seconds before its allocation ends that the engine stops taking tasks, so it "
                           "leaves on its own instead of being killed with a task half done."),
    "ask_scheduler": Option(bool, True, "In a batch job whose walltime the engine was not told (an `ipphpc engine` "
                            "line in your own script, without --walltime), ask the scheduler once at start when the "
                            "job ends."),
    "direct": Option(bool, True, "Listen for clients that send large frames (1 MiB or more) straight to this engine, "
                     "and answer them the same way, instead of through the controller: one TCP hop each way, sealed "
                     "with AES-GCM. Off (or IPPHPC_NO_DIRECT=1 in the environment): every frame goes through the "
                     "controller."),
    "drain_stagger": Option(float, 30.0, "Up to this many seconds more, drawn at random per engine, so the elements of "
                            "an array do not all drain at once."),
}

#: `c.MPI.*`: engines started under mpiexec join COMM_WORLD
MPI: dict[str, Option] = {
    "use": Option(str, "", "'mpi4py' to initialize MPI in every engine (same as `ipphpc engine --mpi`)."),
    "init_script": Option(str, "from mpi4py import MPI\n", "Code run first to initialize MPI; it must leave `MPI` in "
                          "the namespace."),
}
