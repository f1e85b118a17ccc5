"""Starting and watching processes: the code with effects, below the cluster and above the pure backends.

Launchers start the controller and engine sets locally, under mpiexec or srun, over ssh, or as
batch jobs (:mod:`.batch`, which renders with :mod:`ipphpc.batch` and submits); :mod:`.poller`
asks the scheduler how those jobs are doing; :mod:`.commands` runs and counts scheduler commands;
:mod:`.processes` starts, signals and reaps local process groups. The contract every launcher
follows is :class:`~ipphpc.launch.base.Launcher`.
"""
from .base import BatchJobs, DryRun, Launcher
from .launchers import LocalLauncher, find_launcher, ipphpc_command, launcher_from_dict

__all__ = ["BatchJobs", "DryRun", "Launcher", "LocalLauncher", "find_launcher", "ipphpc_command",
           "launcher_from_dict"]
