"""Objects to frames and back.

cloudpickle carries functions, lambdas and closures defined interactively; pickle
protocol 5 moves large buffers (numpy arrays, bytes-likes) out of band as their own
frames, which zmq sends without copying.
"""
from __future__ import annotations

import pickle
from typing import Any, Sequence

import cloudpickle

from .wire import raw as _buf

# buffers smaller than this stay inside the pickle: a frame of its own costs more than a copy
OOB_THRESHOLD = 64 * 1024

#: the pickler objects go through: cloudpickle (functions by value), or plain pickle, or dill
_pickler: Any = cloudpickle
_PICKLERS = ("cloudpickle", "pickle", "dill")


def use(name: str) -> None:
    """Choose how objects are pickled in this process: 'cloudpickle' (default), 'pickle' or 'dill'."""
    global _pickler
    if name not in _PICKLERS:
        raise ValueError(f"unknown pickler {name!r}; use one of {', '.join(_PICKLERS)}")
    if name == "dill":
        try:
            import dill
        except ImportError:
            raise ImportError("use_dill() needs dill: pip install dill (on the client and the engines)") from None
        _pickler = dill
    else:
        _pickler = cloudpickle if name == "cloudpickle" else pickle


def dumps(obj: Any) -> list[Any]:
    """[pickle bytes, out-of-band buffer, ...]"""
    bufs: list[Any] = []

    def keep(pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True
        bufs.append(raw)
        return False

    data = _pickler.dumps(obj, protocol=5, buffer_callback=keep)
    return [data, *bufs]


def loads(frames: Sequence[Any]) -> Any:
    buffers = [_buf(f) for f in frames[1:]]
    return _pickler.loads(_buf(frames[0]), buffers=buffers)




def serialize_object(obj: Any, buffer_threshold: int = OOB_THRESHOLD, item_threshold: int = 64) -> list[Any]:
    """IPython Parallel's name for dumps: an object as a list of buffers (for code that sends objects
    over its own sockets)."""
    return dumps(obj)


def deserialize_object(buffers: Sequence[Any], g: dict | None = None) -> tuple[Any, list[Any]]:
    """IPython Parallel's name for loads: (the object, the buffers left over) from what serialize_object
    made; one object takes all the buffers given."""
    return loads(buffers), []
