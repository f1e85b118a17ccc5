"""Large frames straight between a client and an engine, sealed with AES-256-GCM.

Through the controller a large frame crosses four sockets on its way there and back and is hashed at
every end; here it crosses one TCP connection each way. A client opens one connection to each engine it
sends large frames to; a frame of `BULK_MIN` bytes or more then travels on it as a *transfer*, and the
message (still through the controller, signed, in order) carries a small descriptor instead: the
transfer's id. The header's `bk` lists which payload frames are descriptors. The engine answers with
large result frames on the same connection.

A transfer is a 25-byte header (kind, 16-byte id, length) and chunks of up to `CHUNK` bytes, each sealed
with AES-256-GCM: the key is derived from the cluster key, the kind and the id, the nonce is the chunk's
index and the header is its associated data. So only holders of the cluster key can write a transfer
anyone accepts, a chunk cannot be reordered, cut or moved to another transfer, and what crosses the
network is encrypted whether or not the controller's sockets use CurveZMQ. With AES instructions this
costs less than hashing the frame would (about 10 GB/s here), which is why it is not optional.

Every connection starts with a challenge: the engine sends a fresh random nonce, the client's hello (kind
H, id: the client's token) carries a nonce of its own and is sealed under a key bound to the engine's, and
the engine's answer (kind h, the engine's id as payload) under a key bound to the client's. So neither side
talks to a peer without the cluster key, and a hello or answer recorded on the network is worth nothing
on another connection.
Received frames land in fresh anonymous memory with transparent huge pages asked for, so that a 100 MB
array costs 50 page faults instead of 25,000, and become the arrays the receiver deserializes.
"""
from __future__ import annotations

import mmap
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Sequence

from blake3 import blake3

from .logflood import FloodLog
from .wire import raw

#: frames from this size on take the direct path: below it a hop through the controller costs less
BULK_MIN = 1 << 20
CHUNK = 1 << 20
HDR = struct.Struct("!c16sQ")
#: the most one transfer may claim (a bigger length in a header is refused before anything is allocated)
MAX_TRANSFER = 1 << 40
_HUGE = 2 << 20
_DATA, _HELLO, _ANSWER, _CANCEL, ROUTE = b"D", b"H", b"h", b"X", b"R"
# an engine asks the client for a transfer it holds (a load-balanced task's frame); the client has none by that id
GET, _NONE = b"G", b"N"
_KINDS = (_DATA, _HELLO, _ANSWER, _CANCEL, ROUTE, GET, _NONE)
#: the most a route (the part of a relay tree below one engine, see `ipphpc.relay`) may claim
MAX_ROUTE = 1 << 24
MAGIC = b"ipphpc-direct-1\n"
#: connections at most that may be between accept and a valid hello at once (each holds a thread)
MAX_GREETING = 64


class BulkError(RuntimeError):
    """A direct transfer failed: its connection closed, stalled, or carried something not sealed with the key."""


class Keys:
    """Per-transfer AES keys, derived from the cluster key (never sent anywhere)."""

    def __init__(self, cluster_key: str | bytes):
        kb = cluster_key.encode() if isinstance(cluster_key, str) else cluster_key
        self._base = blake3(b"ipphpc direct transfer keys v1\0" + kb).digest()

    def key(self, kind: bytes, tid: bytes, salt: bytes = b"") -> bytes:
        return blake3(kind + tid + salt, key=self._base).digest()


def _aes():
    # imported on first use: an engine that never receives a large frame does not pay its memory
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    return Cipher, algorithms.AES, modes.GCM


def new_buffer(n: int) -> tuple[mmap.mmap, memoryview]:
    """Writable memory for a frame of `n` bytes, with 32 bytes of slack (the cipher writes past the end
    of a chunk by up to a block) and huge pages asked for when it is large."""
    # private: shared anonymous memory is shmem, which gets huge pages only where the administrator allowed it
    m = mmap.mmap(-1, n + 32, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if n >= _HUGE and hasattr(m, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return m, memoryview(m)[:n]


def new_id() -> bytes:
    return os.urandom(16)


def descriptor(tid: bytes) -> bytes:
    return tid.hex().encode()


def descriptor_id(frame: Any) -> bytes:
    text = bytes(raw(frame)[:40])
    try:
        tid = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        tid = b""
    if len(tid) != 16:
        raise BulkError(f"not a direct-transfer descriptor: {text[:40]!r}")
    return tid


def descriptor_ids(idx: Sequence[Any], payload: Sequence[Any]) -> list[bytes]:
    """The transfer ids the descriptors at `idx` of a message's payload name; BulkError for a bad index."""
    for i in idx:
        if not isinstance(i, int) or not 0 <= i < len(payload):
            raise BulkError(f"bad direct-transfer frame index {i!r}")
    return [descriptor_id(payload[i]) for i in idx]


def large(payload: Sequence[Any]) -> list[int]:
    """Indices of the frames that take the direct path."""
    return [i for i, f in enumerate(payload) if memoryview(raw(f)).nbytes >= BULK_MIN]


class Channel:
    """One TCP connection carrying transfers both ways. A thread reads what arrives into a table the other
    side's messages then claim by id (`take`); `send` writes from any thread, one transfer at a time."""

    def __init__(self, sock: socket.socket, keys: Keys, name: str):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.keys = keys
        self.name = name
        self.closed: str | None = None  # why, once closed
        self.closed_at = 0.0
        self._wlock = threading.Lock()
        self._cond = threading.Condition()
        self._arrived: dict[bytes, memoryview] = {}
        self._progress = time.monotonic()  # when the reader last got a chunk
        self._out = bytearray(CHUNK + 48)
        self._reader: threading.Thread | None = None
        self.sent = 0  # bytes written, transfers' headers and seals included
        #: an engine's relay (`ipphpc.relay.Relay`): routes arrive here and data is passed on down its tree
        self.relay: Any = None
        #: a client's `serve(channel, id)`, called when the engine asks for a transfer the client holds
        self.server: Callable[["Channel", bytes], None] | None = None
        self._missing: set[bytes] = set()  # asked for, and the other side has none by that id

    # -- writing ------------------------------------------------------------------------------
    def send(self, tid: bytes, frame: Any, kind: bytes = _DATA, salt: bytes = b"") -> None:
        if send_all([self], tid, frame, kind, salt):
            raise BulkError(f"the direct connection {self.name} failed while sending: {self.closed}")

    def cancel(self, tid: bytes) -> None:
        """Tell the other side to forget transfer `tid` (its message went another way)."""
        try:
            self.send(tid, b"", _CANCEL)
        except BulkError:
            pass

    # -- reading ------------------------------------------------------------------------------
    def _recv_into(self, view: memoryview) -> None:
        got, n = 0, view.nbytes
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError("the other side closed the connection")
            got += k

    def read_transfer(self, expect: bytes | None = None, salt: bytes = b"",
                      tee: "Callable[[bytes], Sequence[Channel]] | None" = None) -> tuple[bytes, bytes, memoryview]:
        """The next transfer: (kind, id, its bytes); BulkError when it is not sealed with the key. `tee`:
        `tee(id)` names the channels a data transfer's sealed chunks are also written to as they arrive: a relay
        passes them on as they are (the key depends only on the kind and id), without sealing them again."""
        hdr = bytearray(HDR.size)
        self._recv_into(memoryview(hdr))
        kind, tid, n = HDR.unpack(hdr)
        hdr = bytes(hdr)
        if kind not in _KINDS or (expect is not None and kind not in expect):
            raise BulkError(f"a transfer of unknown kind {kind!r}")
        if n > {_DATA: MAX_TRANSFER, ROUTE: MAX_ROUTE}.get(kind, 4096):
            raise BulkError(f"a transfer claims {n} bytes")
        Cipher, AES, GCM = _aes()
        key = AES(self.keys.key(kind, tid, salt))
        m, dest = new_buffer(n)
        full = memoryview(m)
        scratch = memoryview(bytearray(min(max(n, 1), CHUNK) + 16))
        from cryptography.exceptions import InvalidTag
        outs = _Tee(tee(tid) if tee is not None and kind == _DATA else (), hdr)
        try:
            for i, off in enumerate(range(0, max(n, 1), CHUNK)):
                ln = min(CHUNK, n - off)
                self._recv_into(scratch[:ln + 16])
                outs.write(scratch[:ln + 16])
                dec = Cipher(key, GCM(i.to_bytes(12, "big"), bytes(scratch[ln:ln + 16]))).decryptor()
                dec.authenticate_additional_data(hdr)
                dec.update_into(scratch[:ln], full[off:])
                try:
                    dec.finalize()
                except InvalidTag:
                    raise BulkError("a transfer that is not sealed with this cluster's key") from None
                self._progress = time.monotonic()
        except BaseException:
            outs.abort()  # a receiver of half a transfer would read the next one's header in its bytes
            raise
        finally:
            outs.release()
        return kind, tid, dest

    def start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name=f"ipphpc-direct-{self.name}", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        why = "closed"
        try:
            while True:
                relay = self.relay
                if self.server is not None:
                    kind, tid, data = self.read_transfer(_DATA + _CANCEL + GET)
                    if kind == GET:
                        self.server(self, tid)
                        continue
                elif relay is None:
                    kind, tid, data = self.read_transfer(_DATA + _CANCEL + _NONE)
                else:
                    kind, tid, data = self.read_transfer(_DATA + _CANCEL + ROUTE + _NONE, tee=relay.children)
                    if kind == ROUTE:
                        relay.route(self, tid, data)
                        continue
                    if kind == _CANCEL:
                        relay.cancel(tid)
                with self._cond:
                    if kind == _CANCEL:
                        self._arrived.pop(tid, None)
                    elif kind == _NONE:
                        self._missing.add(tid)
                    else:
                        self._arrived[tid] = data
                    self._cond.notify_all()
        except (EOFError, OSError, BulkError, ValueError, OverflowError, MemoryError) as e:
            why = str(e) or type(e).__name__
        self._closed(why)

    def _closed(self, why: str) -> None:
        with self._cond:
            if self.closed is None:
                self.closed = why
                self.closed_at = time.monotonic()
            self._cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def take(self, tids: Sequence[bytes], stall: float = 60.0) -> list[memoryview]:
        """The frames of transfers `tids`, once every one has arrived. BulkError when the connection closes
        first, or nothing arrived on it for `stall` seconds."""
        with self._cond:
            while True:
                if all(t in self._arrived for t in tids):
                    return [self._arrived.pop(t) for t in tids]
                gone = self._missing.intersection(tids)
                if gone:
                    self._missing.difference_update(tids)
                    raise BulkError(f"the sender on the direct connection {self.name} no longer holds "
                                    f"{len(gone)} of the message's large frames")
                if self.closed is not None:
                    raise BulkError(f"the direct connection {self.name} closed before the message's large "
                                    f"frames arrived ({self.closed})")
                quiet = time.monotonic() - self._progress
                if quiet >= stall:
                    raise BulkError(f"the large frames of a message did not arrive on the direct connection "
                                    f"{self.name} ({quiet:.0f} s without a byte)")
                self._cond.wait(min(1.0, stall - quiet))

    def none(self, tid: bytes) -> None:
        """Answer a request for a transfer this side does not hold."""
        try:
            self.send(tid, b"", _NONE)
        except BulkError:
            pass

    def inherit(self, old: "Channel") -> None:
        """Take over from an earlier connection of the same client: it is closed, and the frames that arrived
        whole on it and were not claimed are claimed here."""
        old._closed("the client connected again")
        if old._reader is not None:
            old._reader.join(5.0)
        with old._cond:
            left, old._arrived = old._arrived, {}
        with self._cond:
            self._arrived.update(left)

    def drop(self, idx: Sequence[Any], payload: Sequence[Any]) -> None:
        """Forget the transfers the descriptors at `idx` name: nobody will read that message (a task
        aborted before it started, a result nobody waits for). A bad descriptor names nothing."""
        with self._cond:
            for i in idx:
                try:
                    self._arrived.pop(descriptor_id(payload[i]), None)
                except (BulkError, TypeError, IndexError):
                    pass

    def unclaimed(self) -> int:
        with self._cond:
            return len(self._arrived)

    def close(self) -> None:
        self._closed("closed by this side")
        self.sock.close()

    # -- frames of a message -----------------------------------------------------------------------
    def export(self, payload: Sequence[Any], idx: Sequence[int]) -> list[Any]:
        """`payload` with frames `idx` sent as transfers and replaced by their descriptors."""
        out = list(payload)
        for i in idx:
            tid = new_id()
            self.send(tid, out[i])
            out[i] = descriptor(tid)
        return out

    def resolve(self, idx: Sequence[Any], payload: Sequence[Any], stall: float = 60.0, ask: bool = False
                ) -> list[Any]:
        """`payload` with the descriptors at `idx` replaced by the frames they name. `ask`: ask the other side
        for them first, which holds them (a load-balanced task's large arguments, sent only to the engine
        that runs it)."""
        out = list(payload)
        tids = descriptor_ids(idx, out)
        for tid in tids if ask else ():
            self.send(tid, b"", GET)
        for i, frame in zip(idx, self.take(tids, stall)):
            out[i] = frame
        return out


class _Tee:
    """The channels one transfer is written to (sent, or passed on while it is read): their write locks are
    held from its header to its last chunk, and a channel whose write fails is closed and left out of the rest."""

    def __init__(self, chans: Sequence[Channel], hdr: bytes, doing: str = "passing a transfer on"):
        self.doing = doing
        self.held = sorted(chans, key=id)  # every writer takes the locks in one order
        for ch in self.held:
            ch._wlock.acquire()
        self.live = [ch for ch in chans if ch.closed is None]
        if self.live:
            self.write(hdr)

    def write(self, data: Any) -> None:
        for ch in list(self.live):
            try:
                ch.sock.sendall(data)
                ch.sent += len(data)
            except OSError as e:
                ch._closed(f"{self.doing} failed: {e}")
                self.live.remove(ch)

    def abort(self) -> None:
        for ch in self.live:
            ch._closed("the transfer it was passing on broke off")
        self.live = []

    def release(self) -> None:
        for ch in self.held:
            ch._wlock.release()
        self.held = []


def _view(frame: Any) -> memoryview:
    mv = memoryview(raw(frame))
    if not mv.contiguous:
        mv = memoryview(mv.tobytes())
    return mv.cast("B") if mv.ndim != 1 or mv.format != "B" else mv


def send_all(chans: Sequence[Channel], tid: bytes, frame: Any, kind: bytes = _DATA, salt: bytes = b""
             ) -> list[Channel]:
    """Send one transfer on every channel: each chunk is sealed once and written to each in turn, so the
    receivers read at the same time. Returns the channels it failed on (closed); the others got it whole."""
    mv = _view(frame)
    n = mv.nbytes
    hdr = HDR.pack(kind, tid, n)
    Cipher, AES, GCM = _aes()
    key = AES(chans[0].keys.key(kind, tid, salt))
    out = memoryview(chans[0]._out)
    tee = _Tee(chans, hdr, "sending")
    try:
        for i, off in enumerate(range(0, max(n, 1), CHUNK)):
            if not tee.live:
                break
            enc = Cipher(key, GCM(i.to_bytes(12, "big"))).encryptor()
            enc.authenticate_additional_data(hdr)
            w = enc.update_into(mv[off:off + CHUNK], out)
            enc.finalize()
            out[w:w + 16] = enc.tag
            tee.write(out[:w + 16])
        return [ch for ch in chans if ch not in tee.live]
    finally:
        tee.release()


def connect(address: str, keys: Keys, token: bytes, ident: str, timeout: float = 3.0,
            server: Callable[[Channel, bytes], None] | None = None) -> Channel:
    """A channel to the engine listening at `address` ("ip:port") whose id is `ident`: the hello is
    answered, sealed, by that engine or the connection is refused. Raises OSError or BulkError. `server`
    answers the engine's requests for transfers (see `Channel.resolve` with `ask`)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    ch = Channel(sock, keys, address)
    try:
        challenge = bytearray(len(MAGIC) + 16)
        ch._recv_into(memoryview(challenge))
        if not challenge.startswith(MAGIC):
            raise BulkError(f"{address} is not an engine's port for direct transfers")
        mine = os.urandom(16)
        ch.send(token, mine, _HELLO, salt=bytes(challenge[len(MAGIC):]))
        kind, tid, answer = ch.read_transfer(_ANSWER, salt=mine)
        if tid != token or bytes(answer) != ident.encode():
            raise BulkError(f"{address} answered as another engine")
    except (OSError, EOFError, BulkError) as e:
        sock.close()
        raise BulkError(f"no direct connection to {address}: {e}") from None
    sock.settimeout(None)
    ch.server = server
    ch.start_reader()
    return ch


class Listener:
    """An engine's port for direct connections: each must open with a sealed hello; its channel is then
    known by the client's token (one per token: a new one takes over from the one before)."""

    def __init__(self, keys: Keys, ip: str, ident: str, log: Any = None):
        self.keys = keys
        self.ident = ident
        self.log = log
        self.sock = socket.create_server((ip, 0), backlog=128)
        self.address = f"{ip}:{self.sock.getsockname()[1]}"
        self.channels: dict[bytes, Channel] = {}
        self.relay: Any = None  # set by an engine that passes transfers on (`ipphpc.relay.Relay`)
        self.refused = 0
        self._lock = threading.Lock()
        self._greeting = threading.BoundedSemaphore(MAX_GREETING)
        self._refusals = FloodLog(log, "direct connections refused")
        self._stopped = False
        threading.Thread(target=self._accept_loop, name="ipphpc-direct-listener", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                sock, peer = self.sock.accept()
            except OSError:
                return
            if not self._greeting.acquire(blocking=False):
                self._refuse(sock, peer, "too many connections waiting for their hello")
                continue
            threading.Thread(target=self._greet, args=(sock, peer), name="ipphpc-direct-hello", daemon=True).start()

    def _refuse(self, sock: socket.socket, peer: Any, why: Any) -> None:
        with self._lock:
            self.refused += 1
        self._refusals.warning("refused a direct connection from %s: %s", peer[0], why)
        sock.close()

    def _greet(self, sock: socket.socket, peer: Any) -> None:
        try:
            sock.settimeout(10.0)
            ch = Channel(sock, self.keys, f"from {peer[0]}:{peer[1]}")
            challenge = os.urandom(16)
            sock.sendall(MAGIC + challenge)
            kind, token, theirs = ch.read_transfer(_HELLO, salt=challenge)
            if len(theirs) != 16:
                raise BulkError("a hello without the client's nonce")
            with self._lock:
                old = self.channels.get(token)
                self.channels[token] = ch
            if old is not None:  # the client connects again (a hello is proof: it answered this challenge)
                ch.inherit(old)
            ch.send(token, self.ident.encode(), _ANSWER, salt=bytes(theirs))
            sock.settimeout(None)
            ch.relay = self.relay
        except (OSError, EOFError, BulkError, ValueError) as e:  # (closed under it, when the engine stops)
            self._refuse(sock, peer, e)
            return
        finally:
            self._greeting.release()
        ch.start_reader()
        self._prune()

    def _prune(self, keep: float = 600.0) -> None:
        """Forget channels closed `keep` seconds ago (their unclaimed frames with them)."""
        now = time.monotonic()
        with self._lock:
            for token, ch in list(self.channels.items()):
                if ch.closed is not None and now - ch.closed_at > keep:
                    del self.channels[token]

    def channel(self, token_hex: Any) -> Channel | None:
        try:
            token = bytes.fromhex(token_hex)
        except (TypeError, ValueError):
            return None
        with self._lock:
            return self.channels.get(token)

    def close(self) -> None:
        self._stopped = True
        try:  # shut down first: closing alone leaves a thread blocked in accept() listening, and answering
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            for ch in self.channels.values():
                ch.close()
        if self.relay is not None:
            self.relay.close()


def local_ip_towards(host: str, fallback: str = "127.0.0.1") -> str:
    """The address of this host's interface that routes to `host` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return fallback


