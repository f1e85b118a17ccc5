"""Unix-domain sockets for the engines and clients on the controller's own host.

Over TCP loopback every message goes through the kernel's whole TCP stack twice; over a Unix
socket it is one copy between two buffers. The controller listens on both; a process takes the
Unix socket only when it shares the controller's host, boot, network and mount namespaces and
user (the socket lives in a 0700 directory of that user, so nobody else can even connect).
Anything else (another node, a container, a network namespace standing in for a host, an SSH
tunnel) connects over TCP as before.

A socket's name is made of the host, the network namespace and the TCP address and port it shadows,
so a controller restarted with `--reuse` listens at the same path and connected peers find it again.
"""
from __future__ import annotations

import functools
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from blake3 import blake3

_MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def _namespaces() -> tuple[int, int] | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino, os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return None


@functools.cache
def host_tag() -> str | None:
    """What a peer must match to use this host's sockets (host, boot, namespaces, user); None off Linux."""
    ns = _namespaces()
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    if not ns or not boot:
        return None
    return blake3(f"{socket.gethostname()}:{boot}:{ns}:{os.getuid()}".encode()).hexdigest()[:16]


def socket_dir() -> Path | None:
    """This user's private directory for the sockets (created 0700); None if it is not private or not ours."""
    import tempfile  # only controllers make sockets; an engine does not pay for tempfile's imports
    path = Path(tempfile.gettempdir()) / f"ipphpc-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


def socket_path(port: int, ip: str = "") -> str | None:
    """Where the controller listening on TCP `ip`:`port` also listens on this host; None when it cannot."""
    d, ns = socket_dir(), _namespaces()
    if d is None or ns is None:
        return None
    where = blake3(f"{socket.gethostname()}:{ns[0]}:{ip}:{port}".encode()).hexdigest()[:12]
    path = str(d / f"{where}-{port}")
    return path if len(path.encode()) <= _MAX_PATH else None


def in_use(path: str) -> bool:
    """Something listens at `path` now (another controller): binding there would take its peers' way in."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def sweep(older_than: float = 60.0) -> int:
    """Remove the sockets of controllers that were killed (nobody listens at them any more); their number.
    A socket made in the last `older_than` seconds is left: its controller may be between bind and listen."""
    d = socket_dir()
    if d is None:
        return 0
    gone = 0
    now = time.time()
    with os.scandir(d) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISSOCK(st.st_mode) and now - st.st_mtime > older_than and not in_use(entry.path):
                    os.unlink(entry.path)
                    gone += 1
            except OSError:
                pass
    return gone


def url(info: dict[str, Any], port_name: str) -> str | None:
    """The ipc:// address of `port_name` when the controller of `info` is on this host and listens there."""
    local = info.get("ipc")
    if not local or local.get("tag") != host_tag():
        return None
    path = local.get("paths", {}).get(port_name)
    try:
        if not path or not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    return f"ipc://{path}"
