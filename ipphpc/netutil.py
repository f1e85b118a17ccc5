"""Addresses of this host, for connection files that explain where the controller listens."""
from __future__ import annotations

import re
import socket
import subprocess

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def local_addresses() -> list[str]:
    """Every IPv4 address of this host, non-loopback first."""
    found: list[str] = []
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
        found = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    except (OSError, subprocess.SubprocessError):
        pass
    if not found:
        try:
            found = socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            found = []
    found = list(dict.fromkeys(found + ["127.0.0.1"]))
    return sorted(found, key=lambda a: a.startswith("127."))


def is_wildcard(ip: str) -> bool:
    return ip in ("*", "0.0.0.0", "")


def advertised_addresses(ip: str, location: str = "") -> list[str]:
    """What to write into connection files for a controller bound to `ip`."""
    if is_wildcard(ip):
        addrs = local_addresses()
        if location:
            addrs = [location] + [a for a in addrs if a != location]
        return addrs
    return [location, ip] if location and location != ip else [ip]
