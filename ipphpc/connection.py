"""Connection files: how engines and clients find a controller and prove they belong.

Two JSON files (mode 0600) in the profile's security folder, one for engines and one
for clients. Both carry the key; the engine file lists the engine-facing ports, the client
file the client-facing one. `addresses` lists every address the controller can be reached
at, most specific first.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .error import ConnectionFileError

ENGINE_PORTS = ("engine", "hb_ping", "hb_pong")
CLIENT_PORTS = ("client",)


def write(path: Path, info: dict[str, Any]) -> None:
    """Write atomically with mode 0600, so a reader never sees half a file or a world-readable key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ConnectionFileError(f"connection file {path} does not exist; is the controller running "
                                  f"for this profile and cluster id? (`ipphpc list` shows the clusters)") from None
    except (OSError, ValueError) as e:
        raise ConnectionFileError(f"connection file {path} is unreadable: {e}") from None
    for k in ("key", "addresses", "ports"):
        if k not in info:
            raise ConnectionFileError(f"connection file {path} lacks '{k}'; was it written by ipphpc?")
    return info


def wait_for(path: Path, timeout: float, poll: float = 0.02) -> dict[str, Any]:
    """Wait for a connection file on a (possibly shared, slow) filesystem."""
    deadline = time.monotonic() + timeout
    delay = poll
    while True:
        if path.exists():
            try:
                return read(path)
            except ConnectionFileError:
                if time.monotonic() > deadline:
                    raise
        if time.monotonic() > deadline:
            raise ConnectionFileError(
                f"waited {timeout:g} s for connection file {path} and it did not appear; start the controller "
                f"(`ipphpc controller` or `ipphpc submit`) with the same profile and cluster id, or pass --file, "
                f"or wait longer (--wait-for-file)")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def urls(info: dict[str, Any], port_name: str) -> list[str]:
    port = info["ports"][port_name]
    return [f"tcp://{_host(a)}:{port}" for a in info["addresses"]]


def url(address: str, info: dict[str, Any], port_name: str) -> str:
    return f"tcp://{_host(address)}:{info['ports'][port_name]}"


def reachable_address(info: dict[str, Any], port_name: str, timeout: float, what: str) -> str:
    """The first of the file's addresses that answers on `port_name` (all are tried at once)."""
    from .netutil import pick_address
    return pick_address(list(info["addresses"]), info["ports"][port_name], timeout, what,
                        owner=(info.get("host"), info.get("pid")))


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
