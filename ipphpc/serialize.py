"""Objects to frames and back.

cloudpickle carries functions, lambdas and closures defined interactively; pickle
protocol 5 moves large buffers (numpy arrays, bytes-likes) out of band as their own
frames, which zmq sends without copying.
"""
from __future__ import annotations

import pickle
import types
import weakref
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


try:  # what cloudpickle itself asks before it pickles a function by name instead of by value, and which
    # globals it takes along with one pickled by value
    from cloudpickle.cloudpickle import _extract_code_globals as _code_globals
    from cloudpickle.cloudpickle import _should_pickle_by_reference as _by_name
except ImportError:  # another cloudpickle: every object goes through it
    _by_name = _code_globals = None

_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _module_builtin(f: types.BuiltinFunctionType) -> bool:
    """A module's built-in function (len, os.getpid, math.sqrt): pickled by name either way; a bound
    method of a built-in object ([].append) is not."""
    return isinstance(f.__self__, types.ModuleType)


class _Pickled:
    """A function as cloudpickle wrote it once: it pickles as a call of pickle.loads on those bytes, so the
    engine gets the very function cloudpickle would have sent."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple:
        return pickle.loads, (self.data,)


_MISSING = object()
# function -> (what its pickle depends on, the pickle); weak: a function's entry goes with it
_by_value: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _depends(obj: Any, out: list, depth: int, root: Any) -> bool:
    """Append to `out` every object a pickle of `obj` is made from, if none of them can change without
    becoming another object: scalars, tuples of them, modules, and classes and functions pickled by name.
    A function pickled by value counts when its code, defaults, closure and the globals it uses do.
    `root`, the function being pickled, is never appended: its cache entry must not keep it alive."""
    if obj is root and depth:
        return True
    t = type(obj)
    if depth:
        out.append(obj)
    if t in _SCALARS or obj is _MISSING:
        return True
    if t is tuple or t is frozenset:
        out[-1] = (t, len(obj))  # its items follow (a tuple may hold a function: never kept strongly)
        return len(obj) <= 16 and all(_depends(x, out, depth, root) for x in obj)
    if t is types.BuiltinFunctionType:
        return _module_builtin(obj)
    if t is types.ModuleType or isinstance(obj, type):
        return _by_name(obj)  # a module made at run time, or a class of __main__, is pickled by value
    if t is not types.FunctionType:
        return False
    if _by_name(obj):
        return True
    if depth > 4 or obj.__dict__ or obj.__kwdefaults__ or obj.__annotations__:
        return False
    out += (obj.__code__, obj.__name__, obj.__qualname__, obj.__module__, obj.__doc__)
    if obj.__defaults__ is not None and not _depends(obj.__defaults__, out, depth + 1, root):
        return False
    for cell in obj.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later in the enclosing function)
            value = _MISSING
        if value is not obj and not _depends(value, out, depth + 1, root):
            return False
    g = obj.__globals__
    for name in _code_globals(obj.__code__):  # one set per code object: the same order every time
        value = g.get(name, _MISSING)
        if value is not obj and not _depends(value, out, depth + 1, root):
            return False
    return True


def _pickled_function(f: types.FunctionType) -> Any:
    """`f`, or its cloudpickle bytes made once (a _Pickled) while nothing they were made from has changed: a
    function from a notebook or __main__ costs 30-100 µs to pickle by value, and a loop of apply_async sends
    it once per task."""
    if _by_name is None or _code_globals is None or _by_name(f):
        return f
    deps: list = []
    if not _depends(f, deps, 0, f):
        return f
    known = _by_value.get(f)
    if known is not None and len(known[0]) == len(deps) and all(map(_same, known[0], deps)):
        return known[1]
    done = _Pickled(cloudpickle.dumps(f, protocol=5))
    # functions, modules, classes and code held weakly: a helper's globals may hold `f`, and an entry that
    # kept `f` alive would never leave this weak-keyed cache
    _by_value[f] = ([d if type(d) in _SCALARS or type(d) is tuple or d is _MISSING else weakref.ref(d) for d in deps],
                    done)
    return done


def _same(kept: Any, now: Any) -> bool:
    t = type(kept)
    return kept() is now if t is weakref.ref else kept == now if t is tuple else kept is now


def _swap_functions(obj: Any) -> Any:
    """A task's `(f, args, kwargs)` (and a map chunk's `(map_chunk, (f, *chunks), {})`) with functions
    pickled by value replaced by their pickles made once."""
    if type(obj) is not tuple or not obj:
        return obj
    items = [_pickled_function(x) if type(x) is types.FunctionType
             else _swap_functions(x) if type(x) is tuple else x for x in obj]
    return tuple(items) if any(a is not b for a, b in zip(items, obj)) else obj


def _plain(obj: Any, depth: int = 0) -> bool:
    """True when plain pickle writes what cloudpickle would: built-in scalars, small tuples, lists and dicts of
    them, and functions cloudpickle pickles by name (importable, not from __main__). Most task messages are
    such (a module's function and a few numbers); pickle does them in a fifth of cloudpickle's time."""
    t = type(obj)
    if t in _SCALARS:
        return True
    if t is tuple or t is list:  # loops, not all() over a generator: this runs for every task sent
        if depth >= 3 or len(obj) > 16:
            return False
        for x in obj:
            if type(x) not in _SCALARS and not _plain(x, depth + 1):
                return False
        return True
    if t is dict:
        if depth >= 3 or len(obj) > 16:
            return False
        for k, v in obj.items():
            if type(k) is not str or (type(v) not in _SCALARS and not _plain(v, depth + 1)):
                return False
        return True
    if t is types.FunctionType:
        return _by_name is not None and _by_name(obj)
    if t is types.BuiltinFunctionType:
        return _module_builtin(obj)
    return t is _Pickled


def dumps(obj: Any) -> list[Any]:
    """[pickle bytes, out-of-band buffer, ...]"""
    if _pickler is cloudpickle:
        if _plain(obj):  # most messages: nothing to swap, so nothing else is walked
            return [pickle.dumps(obj, protocol=5)]
        obj = _swap_functions(obj)
        if type(obj) is tuple and _plain(obj):
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
