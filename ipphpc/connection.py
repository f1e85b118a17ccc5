"""Connection files: how engines and clients find a controller and prove they belong.

Two JSON files (mode 0600) in the profile's security folder, one for engines and one
for clients. Both carry the key; the engine file lists the engine-facing ports, the client
file the client-facing one. `addresses` lists every address the controller can be reached
at, most specific first. `curve`, when present, is the controller's CurveZMQ public key:
every connection is then encrypted, and a socket without that key cannot complete the handshake.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .error import ConnectionFileError
from .wire import SIGNATURE_SCHEME

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
            mode = os.fstat(f.fileno()).st_mode & 0o777
            info = json.load(f)
    except FileNotFoundError:
        raise ConnectionFileError(f"connection file {path} does not exist; is the controller running "
                                  f"for this profile and cluster id? (`ipphpc list` shows the clusters)") from None
    except (OSError, ValueError) as e:
        raise ConnectionFileError(f"connection file {path} is unreadable: {e}") from None
    for k in ("key", "addresses", "ports"):
        if k not in info:
            raise ConnectionFileError(f"connection file {path} lacks '{k}'; was it written by ipphpc?")
    scheme = info.get("signature_scheme", SIGNATURE_SCHEME)
    if scheme != SIGNATURE_SCHEME:
        raise ConnectionFileError(f"connection file {path} is of a controller that signs its messages with {scheme}, "
                                  f"and this ipphpc signs them with {SIGNATURE_SCHEME}: install the same ipphpc "
                                  f"version on both sides")
    if mode & 0o077 and not _warned.get(str(path)):
        _warned[str(path)] = True
        logging.getLogger("ipphpc").warning("connection file %s is readable by group or others (mode %o): whoever "
                                            "reads it can run code as you on the engines; chmod 600 %s", path,
                                            mode, path)
    return info


_warned: dict[str, bool] = {}


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


_keys: dict[int, tuple[bytes, bytes]] = {}


def curve_options(info: dict[str, Any]) -> list[tuple[int, bytes]]:
    """Socket options that make a connecting socket speak CurveZMQ to the controller of `info` (none when the
    controller does not encrypt). Each process has its own key pair, made on first use (after any fork)."""
    server = info.get("curve")
    if not server:
        return []
    import zmq
    if not zmq.has("curve"):
        raise ConnectionFileError("the controller encrypts its traffic with CurveZMQ, and this pyzmq/libzmq has no "
                                  "Curve support; install pyzmq from PyPI (its wheels include it)")
    pair = _keys.get(os.getpid())
    if pair is None:
        pair = _keys[os.getpid()] = zmq.curve_keypair()
    return [(zmq.CURVE_SERVERKEY, server.encode()), (zmq.CURVE_PUBLICKEY, pair[0]), (zmq.CURVE_SECRETKEY, pair[1])]


def secure(sock: Any, info: dict[str, Any]) -> Any:
    """Apply `curve_options` to a zmq socket before it connects; returns the socket."""
    for opt, value in curve_options(info):
        sock.setsockopt(opt, value)
    return sock


def urls(info: dict[str, Any], port_name: str) -> list[str]:
    port = info["ports"][port_name]
    return [f"tcp://{_host(a)}:{port}" for a in info["addresses"]]


def url(address: str, info: dict[str, Any], port_name: str) -> str:
    """Where to connect to `port_name`: the controller's Unix socket when it is on this host, else `address`."""
    from .localsock import url as local_url
    return local_url(info, port_name) or f"tcp://{_host(address)}:{info['ports'][port_name]}"


def reachable_address(info: dict[str, Any], port_name: str, timeout: float, what: str) -> str:
    """The first of the file's addresses that answers on `port_name` (all are tried at once)."""
    from .netutil import pick_address
    return pick_address(list(info["addresses"]), info["ports"][port_name], timeout, what,
                        owner=(info.get("host"), info.get("pid")))


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr
