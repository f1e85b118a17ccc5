"""Read a zmq socket from an asyncio loop without a Future per message.

zmq.asyncio creates and resolves a Future for every receive; on the routing hot path that
costs more than the routing itself. A Pump registers the socket's file descriptor with
the loop once and drains every queued message in one callback. The descriptor is
edge-triggered (it signals changes, not levels), and a send can consume a pending edge,
so every send through the Pump checks for messages that arrived meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import zmq

log = logging.getLogger("ipphpc.pump")

#: bytes shorter than this are copied into the message; longer ones and received frames go zero-copy
COPY_BELOW = 65536

# pyzmq's constants are enums: `|`, `&` and getsockopt on them run Python-level enum code (about a
# microsecond each, a tenth of the controller's time per message); the hot path uses their values
_SNDMORE, _NOBLOCK, _EVENTS, _POLLIN = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)


def send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """send_multipart, minus its per-call checks, copying small frames (a zero-copy send of a
    small buffer costs more than the copy) and passing large buffers and received frames by reference."""
    send, more = sock.send, _SNDMORE | int(flags)
    last = len(frames) - 1
    for i, f in enumerate(frames):
        send(f, more if i < last else flags, copy=f.__class__ is bytes and len(f) < COPY_BELOW)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """recv_multipart(copy=False) without its option lookup per frame: each received Frame says whether
    more follow (the rest of a message is there once its first frame is)."""
    recv = sock.recv
    f = recv(flags, copy=False)
    frames = [f]
    while f.more:
        f = recv(flags, copy=False)
        frames.append(f)
    return frames


class Pump:
    """`handler(frames)` for every message, and `after()` (if given) once the messages there were are read:
    what the handler queued to send can leave then, in the same turn of the loop."""

    def __init__(self, sock: zmq.Socket, handler: Callable[[list], Any], batch: int = 256,
                 after: Callable[[], Any] | None = None):
        self.sock = sock
        self.handler = handler
        self.batch = batch
        self.after = after
        self.loop = asyncio.get_running_loop()
        self._scheduled = False
        self._fd = sock.getsockopt(zmq.FD)
        self.loop.add_reader(self._fd, self._drain)
        self.kick()

    def kick(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        sock, handler = self.sock, self.handler
        try:
            for _ in range(self.batch):
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    return
                frames = recv_frames(sock, _NOBLOCK)
                try:
                    handler(frames)
                except Exception:
                    log.exception("error handling a message")
            self.kick()  # more may be queued: let other sockets and timers run first
        finally:
            if self.after is not None:
                self.after()

    def send(self, frames: list) -> None:
        sock = self.sock
        send_frames(sock, frames)
        # reading EVENTS re-arms the descriptor: only an already queued message needs a drain scheduled
        if sock.getsockopt(_EVENTS) & _POLLIN:
            self.kick()

    def close(self) -> None:
        try:
            self.loop.remove_reader(self._fd)
        except (ValueError, OSError):
            pass
