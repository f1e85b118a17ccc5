"""Large frames through shared memory when sender, receiver and controller share a host.

A frame of `SHM_MIN` bytes or more is written once into a file in /dev/shm (mode 0600, created
exclusively under a name nobody can guess) and travels as a small descriptor frame; the header's
`sh` lists which payload frames are descriptors. The receiver maps the file read-only, so the arrays
it reads are the file's own pages: no socket copies, and the signed digest covers the descriptor, not
the bulk (only the file's owner, the same user, can have written it).

Who removes a file: the controller removes a task's files once every engine it went to has answered
(the engines mapped them before running it); the client removes a result's files once it mapped them.
The controller also sweeps its cluster's prefix when it stops, for senders that died in between.

`host_tag()` names this host's /dev/shm as this user sees it: processes with equal tags can open each
other's files (a container with its own /dev/shm, or another user, gets another tag).
"""
from __future__ import annotations

import glob
import mmap
import os
import re
import stat
import sys
from typing import Any, Sequence

from blake3 import blake3

from .wire import raw

SHM_DIR = "/dev/shm"
#: frames from this size on go through shared memory: below it a socket copy costs less than a file
SHM_MIN = 1 << 20
_NAME = re.compile(r"ipphpc-[0-9a-f]{12}-[0-9a-f]{32}")
_tag: list[str | None] = []


class SharedMemoryError(RuntimeError):
    """A frame's shared-memory file could not be mapped (removed, or not this user's)."""


def host_tag() -> str | None:
    """This host's /dev/shm for this user, as 16 hex digits; None when it cannot be used."""
    if not _tag:
        _tag.append(_probe())
    return _tag[0]


def _probe() -> str | None:
    if not sys.platform.startswith("linux") or os.environ.get("IPPHPC_NO_SHM"):
        return None
    try:
        st = os.stat(SHM_DIR)
        if not os.access(SHM_DIR, os.W_OK | os.X_OK):
            return None
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        return None
    ident = f"{boot}:{st.st_dev}:{st.st_ino}:{os.getuid()}"
    return blake3(ident.encode()).hexdigest()[:16]


def prefix(key: str | bytes) -> str:
    """File name prefix of one cluster's frames (from its key, so `ipphpc stop` can sweep them too)."""
    kb = key.encode() if isinstance(key, str) else key
    return "ipphpc-" + blake3(b"shm:" + kb).hexdigest()[:12]


def export(frames: Sequence[Any], pfx: str, mapped: list | None = None) -> tuple[list[Any], list[int]]:
    """`frames` with each large one written to a new file and replaced by its descriptor; and the
    indices replaced. A frame that is a view of a file this process mapped (`mapped`, from `attach`)
    gets a new name for the same file instead of a copy. Any failure (e.g. /dev/shm full) leaves that
    frame in the message as it was."""
    out = list(frames)
    idx: list[int] = []
    for i, f in enumerate(out):
        if f.__class__ is bytes and len(f) < SHM_MIN:  # most frames of most messages
            continue
        mv = f if isinstance(f, memoryview) else memoryview(raw(f))
        if mv.nbytes < SHM_MIN:
            continue
        try:
            desc = (_relink(mv, pfx, mapped) if mapped else None) or _write(mv, pfx)
        except OSError:
            continue
        out[i] = desc
        idx.append(i)
    return out, idx


def _new_name(pfx: str) -> str:
    return f"{pfx}-{os.urandom(16).hex()}"


def _write(mv: memoryview, pfx: str) -> bytes:
    name = _new_name(pfx)
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        b = mv.cast("B") if mv.contiguous else memoryview(bytes(mv))
        n, total = 0, b.nbytes
        while n < total:
            n += os.write(fd, b[n:n + (1 << 30)])
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return f"{name}:0:{total}".encode()


def _address(obj: Any) -> int | None:
    np = sys.modules.get("numpy")
    if np is None:
        return None
    try:
        return int(np.frombuffer(obj, dtype=np.uint8).ctypes.data)
    except (TypeError, ValueError):
        return None


def _relink(mv: memoryview, pfx: str, mapped: list) -> bytes | None:
    """A descriptor for a view of a mapped file: a second name (hard link) for that file, no copy."""
    if not mv.contiguous:
        return None
    start = _address(mv)
    if start is None:
        return None
    for name, m, base in mapped:
        b = base if base is not None else _address(m)
        if b is not None and b <= start and start + mv.nbytes <= b + len(m):
            new = _new_name(pfx)
            os.link(os.path.join(SHM_DIR, name), os.path.join(SHM_DIR, new))
            return f"{new}:{start - b}:{mv.nbytes}".encode()
    return None


def attach(desc: Any, populate: bool = True) -> tuple[memoryview, str, mmap.mmap]:
    """(a read-only view of the frame a descriptor names, the file's name, the mapping). `populate` maps
    every page at once (one call instead of a fault per page), for a reader that will read them all."""
    text = bytes(raw(desc)).decode("ascii", "replace")
    name, _, rest = text.partition(":")
    off_s, _, len_s = rest.partition(":")
    if not _NAME.fullmatch(name) or not off_s.isdigit() or not len_s.isdigit():
        raise SharedMemoryError(f"not a shared-memory frame descriptor: {text[:80]!r}")
    off, length = int(off_s), int(len_s)
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SharedMemoryError(f"the shared-memory file {path} of this message is gone ({e.strerror}): "
                                f"its sender or the controller removed it before it was read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise SharedMemoryError(f"{path} is not a private file of this user: refused")
        if st.st_size < off + length:
            raise SharedMemoryError(f"{path} holds {st.st_size} bytes, the message says {off + length}")
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        m = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ, flags=flags)
    finally:
        os.close(fd)
    view = memoryview(m)
    return (view[off:off + length] if (off or length != st.st_size) else view), name, m


def resolve(h: dict, payload: list, unlink: bool = False, mapped: list | None = None,
            populate: bool = True) -> list:
    """`payload` with the descriptors `h["sh"]` lists replaced by the frames they name. `unlink` removes
    each file once mapped (the reader is its last); `mapped` collects (name, mapping, None) for `export`."""
    idx = h.get("sh")
    if not idx:
        return payload
    out = list(payload)
    for i in idx:
        if not isinstance(i, int) or not 0 <= i < len(out):
            raise SharedMemoryError(f"bad shared-memory frame index {i!r}")
        out[i], name, m = attach(out[i], populate)
        if mapped is not None:
            mapped.append((name, m, None))
        if unlink:
            remove([name])
    return out


def names(h: dict, payload: Sequence[Any]) -> list[str]:
    """The file names a message's descriptors hold (for whoever removes them)."""
    out = []
    for i in h.get("sh") or ():
        if isinstance(i, int) and 0 <= i < len(payload):
            f = payload[i]
            name = bytes(raw(f)[:120]).decode("ascii", "replace").partition(":")[0]
            if _NAME.fullmatch(name):
                out.append(name)
    return out


def remove(file_names: Sequence[str]) -> None:
    for name in file_names:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            pass


def sweep(pfx: str) -> int:
    """Remove every file of one cluster's prefix; how many there were."""
    found = glob.glob(os.path.join(SHM_DIR, glob.escape(pfx) + "-*"))
    for path in found:
        try:
            os.unlink(path)
        except OSError:
            pass
    return len(found)
