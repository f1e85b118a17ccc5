"""The `ipphpc` command. Flags map onto traitlets traits; `--Class.trait=value` sets any other."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable

from .. import paths
from .._version import __version__
from ..batch.resources import parse_walltime
from ..config import UserError, parse_kv_args
from .parsing import Parser, check_extra, fail, log_level, ports, positive
from .resource_flags import add_resource_arguments, resource_flag_traits
from .settings import check_settings

if TYPE_CHECKING:
    from traitlets.config import Config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None, help="profile name (default: 'default')")
    p.add_argument("--profile-dir", default=None, help="profile directory (overrides --profile)")
    p.add_argument("--cluster-id", default=None, help="cluster id; several clusters can share a profile")
    p.add_argument("--log-level", default="INFO", type=log_level, help="DEBUG, INFO, WARNING, ERROR")


def _db_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, type=_db_name, metavar="{dict,sqlite,hdf5,mongodb,none}",
                   help="the controller's task database (default: dict, in memory and bounded)")
    p.add_argument("--nodb", action="store_const", const="none", dest="db", help="same as --db=none")
    p.add_argument("--db-file", default=None, metavar="PATH", help="file of the sqlite or hdf5 task database "
                   "(default: <profile>/db/tasks-<cluster id>.sqlite or .h5)")


def _curve_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--curve", action=argparse.BooleanOptionalAction, default=None,
                   help="encrypt traffic with CurveZMQ (default: on unless the controller listens on loopback only "
                        "and engines are local)")


def _db_name(value: str) -> str:
    from ..controller.taskdb.config import backend_name
    try:
        return backend_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# flag dest -> (Class, trait, converter)
FLAG_TRAITS: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {
    "profile": [("Controller", "profile", str), ("Engine", "profile", str), ("HPCCluster", "profile", str)],
    "profile_dir": [("Controller", "profile_dir", str), ("Engine", "profile_dir", str),
                    ("HPCCluster", "profile_dir", str)],
    "cluster_id": [("Controller", "cluster_id", str), ("Engine", "cluster_id", str),
                   ("HPCCluster", "cluster_id", str)],
    "ip": [("Controller", "ip", str), ("HPCCluster", "controller_ip", str)],
    "location": [("Controller", "location", str), ("HPCCluster", "controller_location", str)],
    "ports": [("Controller", "ports", lambda s: [int(x) for x in s.split(",")])],
    "reuse": [("Controller", "reuse", bool)],
    "new_key": [("Controller", "new_key", bool)],
    "curve": [("Controller", "curve", bool), ("HPCCluster", "curve", bool)],
    "shm": [("Controller", "shm", bool)],
    "ipc": [("Controller", "ipc", bool)],
    "db": [("Controller", "db_class", str)],
    "db_file": [("Controller", "db_file", str)],
    "direct": [("Engine", "direct", bool)],
    "file": [("Engine", "file", str)],
    "work_dir": [("Engine", "work_dir", str)],
    "startup_script": [("Engine", "startup_script", str)],
    "startup_command": [("Engine", "startup_command", str)],
    "mpi": [("Engine", "mpi", lambda v: "mpi4py" if v is True else str(v))],
    "wait_for_file": [("Engine", "wait_for_file", float)],
    "controller_timeout": [("Engine", "controller_timeout", float)],
    "engine_id": [("Engine", "engine_id", int)],
    "ssh": [("Engine", "sshserver", str)],
    "sshkey": [("Engine", "sshkey", str)],
    "engine_walltime": [("Engine", "walltime", lambda v: float(parse_walltime(v)))],
    "enginessh": [("Controller", "enginessh", str)],
    "n": [("HPCCluster", "n", int)],
    "engines": [("HPCCluster", "engines", str)],
    "scheduler": [("HPCCluster", "scheduler", str)],
    "controller": [("HPCCluster", "controller", str)],
    **resource_flag_traits(),
    "template": [("HPCCluster", "batch_template_file", str)],
    "max_array_size": [("HPCCluster", "max_array_size", int)],
    "held_grace": [("HPCCluster", "held_grace", float)],
    "adapt": [("HPCCluster", "adapt_range", str)],
}


TRISTATE = {"curve", "shm", "ipc", "direct"}  # --x / --no-x: False is a choice, not an absent flag


def flag_values(ns: argparse.Namespace, classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """{Class: {trait: value}} of the flags given, for the configurable classes `classes`."""
    cfg: dict[str, dict[str, Any]] = {}
    for dest, targets in FLAG_TRAITS.items():
        v = getattr(ns, dest, None)
        if v is None or (v is False and dest not in TRISTATE):
            continue
        for cls, trait, conv in targets:
            if cls in classes:
                try:
                    cfg.setdefault(cls, {})[trait] = conv(v)
                except ValueError as e:
                    raise UserError(f"--{dest.replace('engine_', '').replace('_', '-')}: {e}") from None
    return cfg


def to_config(ns: argparse.Namespace, extra: list[str], classes: tuple[str, ...]) -> Config:
    """The traitlets configuration of the flags and of the `--Class.trait=value` arguments (these win)."""
    from traitlets.config import Config
    cfg = Config(flag_values(ns, classes))
    cfg.merge(Config(parse_kv_args(extra)))
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ipphpc", description="Parallel Python on HPC clusters.")
    parser.add_argument("--version", action="version", version=f"ipphpc {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("controller", help="run a controller in the foreground")
    _common(p)
    p.add_argument("--ip", default=None, help="interface to listen on ('*' for all); default 127.0.0.1")
    p.add_argument("--location", default=None, help="address engines and clients should use to reach it")
    p.add_argument("--ports", default=None, type=ports,
                   help="client,engine,hb_ping,hb_pong ports (default: random free)")
    p.add_argument("--reuse", action="store_true", help="reuse ports and key from existing connection files")
    p.add_argument("--new-key", action="store_true", help="with --reuse: keep the ports, make a new key (rotation: "
                   "holders of the old connection files can no longer connect)")
    _curve_flag(p)
    p.add_argument("--shm", action=argparse.BooleanOptionalAction, default=None,
                   help="pass frames of 1 MiB or more between processes of this host through /dev/shm (default: on)")
    p.add_argument("--ipc", action=argparse.BooleanOptionalAction, default=None,
                   help="also listen on Unix sockets, which engines and clients of this host use instead of TCP "
                        "(default: on)")
    p.add_argument("--enginessh", default=None, metavar="[USER@]HOST[:PORT]",
                   help="ssh server engines tunnel through (written into the engine connection file)")
    _db_flags(p)
    p.add_argument("--log-to-stderr", action="store_true")

    p = sub.add_parser("engine", help="run engine(s) that join a cluster")
    _common(p)
    p.add_argument("-n", "--n", type=int, default=1, dest="nproc",
                   help="engines to start in this process group (one import, then fork)")
    p.add_argument("--file", default=None, help="engine connection file (default: by profile and cluster id)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--startup-script", default=None)
    p.add_argument("--startup-command", default=None)
    p.add_argument("--mpi", nargs="?", const=True, default=None, help="initialize MPI with mpi4py")
    p.add_argument("--direct", action=argparse.BooleanOptionalAction, default=None,
                   help="listen for clients that send frames of 1 MiB or more straight to the engine, and answer "
                        "them the same way (default: on; off: every frame goes through the controller)")
    p.add_argument("--engine-id", type=int, default=None)
    p.add_argument("--wait-for-file", type=float, default=None, help="seconds to wait for the connection file")
    p.add_argument("--controller-timeout", type=float, default=None,
                   help="exit after this many seconds without word from the controller")
    p.add_argument("--ssh", default=None, metavar="[USER@]HOST[:PORT]",
                   help="reach the controller through an ssh tunnel via this server")
    p.add_argument("--sshkey", default=None, help="private key file for the ssh tunnel")
    p.add_argument("--walltime", dest="engine_walltime", default=None, metavar="TIME",
                   help="how long this engine may live (e.g. 1:00:00): it stops taking tasks a margin before")
    p.add_argument("--log-to-stderr", action="store_true")

    p = sub.add_parser("submit", help="start a cluster (controller + engines) in the background")
    _common(p)
    p.add_argument("-n", "--n", type=int, default=None, help="number of engines")
    p.add_argument("--engines", default=None, help="where engines run: local (default), mpi, ssh, sshproxy, "
                   "or a scheduler: slurm, pbs, torque, sge, lsf, htcondor")
    p.add_argument("--scheduler", default=None, help="batch scheduler for the engines (job arrays)")
    p.add_argument("--controller", default=None, choices=["local", "batch"],
                   help="run the controller here (default) or as a batch job of the same scheduler")
    add_resource_arguments(p)
    p.add_argument("--template", default=None, help="batch template file (Jinja2 or IPython Parallel style)")
    p.add_argument("--max-array-size", type=int, default=None)
    p.add_argument("--ip", default=None, help="controller interface ('*' for all)")
    _curve_flag(p)
    p.add_argument("--location", default=None)
    _db_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the scripts and exact commands; submit nothing")
    p.add_argument("--wait", action="store_true", help="show progress until the engines registered "
                   "(the default for local engines)")
    p.add_argument("--no-wait", action="store_true", help="return once started, without waiting for engines")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the engines")
    p.add_argument("--held-grace", type=float, default=None, metavar="SECONDS",
                   help="give up waiting once the scheduler has held a job this long (default 15; "
                   "c.HPCCluster.held_grace)")
    p.add_argument("--adapt", default=None, metavar="MIN:MAX[:IDLE]",
                   help="adapt the number of engines to the tasks waiting: more while tasks wait (up to MAX), "
                   "fewer once engines have been idle IDLE seconds (default 300; down to MIN); -n engines start")

    p = sub.add_parser("keep", help="keep a submitted cluster: replace lost elements, adapt its size "
                       "(`ipphpc submit` starts it; `ipphpc stop` ends it)")
    _common(p)
    p.add_argument("cluster", help="cluster id")

    p = sub.add_parser("status", help="jobs, array elements, their states and reasons, and their engines")
    _common(p)
    p.add_argument("cluster", nargs="?", default=None, help="cluster id (default: the newest)")

    p = sub.add_parser("list", help="clusters of a profile: id, controller alive, engines")
    _common(p)

    p = sub.add_parser("stop", help="stop a cluster (the newest by default) and every process it started")
    _common(p)
    p.add_argument("cluster", nargs="?", default=None, help="cluster id (default: the newest)")
    p.add_argument("--all", action="store_true", help="stop every cluster of the profile")

    p = sub.add_parser("scale", help="grow or shrink a running cluster to N engines (shrinking waits for "
                       "engines to finish their tasks)")
    _common(p)
    p.add_argument("cluster", help="cluster id")
    p.add_argument("engines", type=int, metavar="N", help="number of engines")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for engines to finish and leave")

    p = sub.add_parser("restart", help="restart a cluster's engines in place (same ids, fresh interpreters)")
    _common(p)
    p.add_argument("cluster", nargs="?", default=None, help="cluster id (default: the newest)")
    p.add_argument("--engine", type=int, action="append", default=None, dest="restart_ids", metavar="ID",
                   help="restart this engine only (repeat for more)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for them to register again")

    p = sub.add_parser("logs", help="controller log, engine logs and job outputs of a cluster")
    _common(p)
    p.add_argument("cluster", nargs="?", default=None, help="cluster id (default: the newest)")
    p.add_argument("which", nargs="?", default=None, metavar="ELEMENT|ENGINE",
                   help="an array element (its index) or an engine (e<ID>, e.g. e3); default: everything")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended, until Ctrl-C")
    p.add_argument("--tail", type=positive, default=None, metavar="N", help="the last N lines of each file")

    p = sub.add_parser("profile", help="create, list or locate profiles")
    p.add_argument("action", choices=["create", "list", "locate"])
    p.add_argument("name", nargs="?", default="default")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a mistake of the user's ends in one line and exit status 2, a bug in a traceback."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if not ns.cmd:
        parser.print_help()
        return 1
    check_extra(parser.subparser(ns.cmd), extra)
    del parser  # an engine or a controller runs inside this call for days: not with every command's flags alive
    prog = f"ipphpc {ns.cmd}"
    ns.argv = list(sys.argv[1:] if argv is None else argv)  # an engine restarts itself with them
    try:
        check_settings(ns.cmd, parse_kv_args(extra))
        return _run(ns, extra)
    except (UserError, *_trait_errors()) as e:
        return fail(prog, str(e))
    except KeyboardInterrupt:
        return 130


def _trait_errors() -> tuple[type[Exception], ...]:
    """traitlets' TraitError when traitlets was imported (an engine with no configuration never imports it)."""
    traitlets = sys.modules.get("traitlets")
    return (traitlets.TraitError,) if traitlets is not None else ()


def _run(ns: argparse.Namespace, extra: list[str]) -> int:
    paths.check_ipphpc_dir()
    # a misspelt name must not quietly start a new profile; engines are exempt: they wait for the
    # controller's connection file, and on a shared filesystem may start before it made the profile
    if getattr(ns, "profile", None) and not ns.profile_dir and ns.cmd not in ("submit", "engine"):
        paths.require_profile(ns.profile)
    if ns.cmd in ("controller", "engine"):
        from ..lazyssl import import_asyncio
        import_asyncio()  # before anything imports asyncio: these long-lived processes never open TLS streams
    if ns.cmd == "controller":
        from ..controller.main import run_controller
        return run_controller(to_config(ns, extra, ("Controller",)), ns.log_to_stderr, ns.log_level)
    if ns.cmd == "engine":
        from ..engine.main import run_engines
        return run_engines(flag_values(ns, ("Engine",)), parse_kv_args(extra), ns.nproc, ns.log_to_stderr,
                           ns.log_level, argv=ns.argv)
    from . import commands
    return getattr(commands, ns.cmd)(ns, to_config(ns, extra, ("HPCCluster", "Controller", "Engine")))


if __name__ == "__main__":
    sys.exit(main())
