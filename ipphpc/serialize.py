"""Objects to frames and back.

cloudpickle carries functions, lambdas and closures defined interactively; pickle
protocol 5 moves large buffers (numpy arrays, bytes-likes) out of band as their own
frames, which zmq sends without copying.
"""
from __future__ import annotations

import pickle
import types
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


try:  # what cloudpickle itself asks before it pickles a function by name instead of by value
    from cloudpickle.cloudpickle import _should_pickle_by_reference as _by_name
except ImportError:  # another cloudpickle: every object goes through it
    _by_name = None

_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _plain(obj: Any, depth: int = 0) -> bool:
    """True when plain pickle writes what cloudpickle would: built-in scalars, small tuples, lists and dicts of
    them, and functions cloudpickle pickles by name (importable, not from __main__). Most task messages are
    such (a module's function and a few numbers); pickle does them in a fifth of cloudpickle's time."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if t is tuple or t is list:
        return depth < 3 and len(obj) <= 16 and all(_plain(x, depth + 1) for x in obj)
    if t is dict:
        return depth < 3 and len(obj) <= 16 and all(type(k) is str and _plain(v, depth + 1) for k, v in obj.items())
    if t is types.FunctionType:
        return _by_name is not None and _by_name(obj)
    if t is types.BuiltinFunctionType:  # a module's (len, os.getpid): by name either way; a bound method is not
        return isinstance(obj.__self__, types.ModuleType)
    return False


def dumps(obj: Any) -> list[Any]:
    """[pickle bytes, out-of-band buffer, ...]"""
    if _pickler is cloudpickle and _plain(obj):
        return [pickle.dumps(obj, protocol=5)]
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
