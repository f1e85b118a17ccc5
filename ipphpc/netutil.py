"""Addresses of this host, for connection files that explain where the controller listens."""
from __future__ import annotations

import errno
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


def is_loopback(ip: str) -> bool:
    """True for an interface only this host can reach: traffic on it never leaves the host."""
    import ipaddress
    if ip in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return False


def advertised_addresses(ip: str, location: str = "") -> list[str]:
    """What to write into connection files for a controller bound to `ip`."""
    if is_wildcard(ip):
        addrs = local_addresses()
        if location:
            addrs = [location] + [a for a in addrs if a != location]
        return addrs
    return [location, ip] if location and location != ip else [ip]


class Unreachable(ConnectionError):
    """None of a controller's addresses answered; the message lists them and why."""


async def _try(addr: str, port: int, timeout: float) -> str:
    import asyncio
    _, writer = await asyncio.wait_for(asyncio.open_connection(addr, port), timeout)
    writer.close()
    return addr


def _stale(owner: tuple[str | None, int | None]) -> int | None:
    """The pid of a controller that wrote the file on this host and is no longer running, else None."""
    import os
    host, pid = owner
    if not host or not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None
    return None


def pick_address(addrs: list[str], port: int, timeout: float = 10.0, what: str = "controller",
                 owner: tuple[str | None, int | None] = (None, None)) -> str:
    """Try every address at once; return the first that accepts a TCP connection.

    Retries until `timeout` (the controller may be restarting), then raises Unreachable
    naming each address, why it failed, and the likely fix.
    """
    import asyncio
    import time

    async def race() -> tuple[str | None, dict[str, str]]:
        errors: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            attempt = min(2.0, max(0.1, deadline - time.monotonic()))
            tasks = {asyncio.ensure_future(_try(a, port, attempt)): a for a in addrs}
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t.exception() is None:
                        for p in pending:
                            p.cancel()
                        await asyncio.gather(*pending, return_exceptions=True)
                        for other in done:  # a loser that failed in the same turn: its error is read, not
                            other.exception()  # left to be reported as "never retrieved"
                        return t.result(), errors
                    exc = t.exception()
                    errors[tasks[t]] = ("timed out" if isinstance(exc, asyncio.TimeoutError)
                                        else "connection refused: nothing listens there"
                                        if getattr(exc, "errno", None) == errno.ECONNREFUSED
                                        else getattr(exc, "strerror", None) or str(exc))
            if time.monotonic() + delay > deadline:
                return None, errors
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    found, errors = asyncio.run(race()) if not _loop_running() else _in_thread(race)
    if found is not None:
        return found
    tried = "; ".join(f"{a}:{port} ({errors.get(a, 'no answer')})" for a in addrs)
    hint = ""
    dead = _stale(owner)
    if dead is not None:
        hint = (f" The {what} that wrote this connection file (pid {dead} on this host) is no longer running: "
                f"the file is stale. `ipphpc list` shows the clusters that are; start a new one with `ipphpc submit`.")
    elif all(a in LOOPBACK or a.startswith("127.") for a in addrs):
        hint = (f" The {what} listens on loopback only, so only processes on its own host can reach it: "
                f"start it with --ip='*' (and --location=<host> if needed) when engines or clients run elsewhere.")
    else:
        hint = (f" Check that the {what} is running and that this host can route to one of those addresses; "
                f"if it cannot, reach it through an SSH tunnel (--ssh / sshserver=).")
    raise Unreachable(f"cannot reach the {what} at any of its addresses within {timeout:g} s: {tried}.{hint}")


def _loop_running() -> bool:
    import asyncio
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _in_thread(coro_fn):
    import asyncio
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()
