"""Objects to frames: interactive functions travel, large buffers go out of band."""
from __future__ import annotations

import numpy as np

from ipphpc import serialize

OOB = serialize.OOB_THRESHOLD


def test_lambda_and_closure_roundtrip_locally():
    """Lambdas and closures defined inside a function survive dumps/loads with their captured values."""
    k = 7

    def outer(a):
        def inner(b):
            return a * b + k
        return inner

    f = outer(3)
    g = lambda x, y=2: (x + k) * y  # noqa: E731
    f2, g2 = serialize.loads(serialize.dumps((f, g)))
    assert f2(5) == 22
    assert g2(1) == 16 and g2(1, y=3) == 24


def test_lambda_and_closure_run_on_engine(rc):
    """A closure and a lambda defined in this test run on an engine with what they captured."""
    offset = 100
    table = {"a": 1, "b": 2}

    def lookup(key):
        return table[key] + offset

    assert rc[0].apply_sync(lookup, "b") == 102
    assert rc[0].apply_sync(lambda x, y=1: (x + offset) * y, 2, y=3) == 306
    assert rc[:].apply_sync(lambda: offset) == [100, 100]


def test_large_array_goes_out_of_band_without_copy():
    """An array of at least 64 KiB is its own frame, sharing memory with the array; smaller ones stay inline."""
    big = np.arange(OOB // 8, dtype=np.float64)  # exactly 64 KiB
    assert big.nbytes == OOB
    frames = serialize.dumps({"a": big, "n": 1})
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == big.nbytes
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.uint8), big)
    back = serialize.loads([bytes(frames[0]), bytes(frames[1])])
    assert np.array_equal(back["a"], big) and back["a"].dtype == big.dtype and back["n"] == 1

    small = np.arange(OOB // 8 - 1, dtype=np.float64)
    assert len(serialize.dumps(small)) == 1

    two = serialize.dumps([big, big + 1, small])
    assert len(two) == 3
    a, b, c = serialize.loads(two)
    assert np.array_equal(a, big) and np.array_equal(b, big + 1) and np.array_equal(c, small)


def test_multidimensional_and_fortran_arrays_roundtrip():
    """2-D arrays in C and Fortran order come back equal, with their shape and order."""
    c = np.random.default_rng(0).random((300, 100))
    f = np.asfortranarray(c)
    frames = serialize.dumps((c, f))
    assert len(frames) == 3
    c2, f2 = serialize.loads(frames)
    assert np.array_equal(c2, c) and np.array_equal(f2, f)
    assert c2.flags.c_contiguous and f2.flags.f_contiguous


def test_large_array_roundtrip_through_engine(rc):
    """A >= 64 KiB array goes to an engine and a computed one comes back equal."""
    a = np.random.default_rng(1).random(50_000)
    assert a.nbytes >= OOB
    out = rc[0].apply_sync(lambda x: x * 2, a)
    assert isinstance(out, np.ndarray) and np.array_equal(out, a * 2)
    made = rc[1].apply_sync(lambda n: np.arange(n, dtype=np.int64), 20_000)
    assert np.array_equal(made, np.arange(20_000))


def _module_function(x: int = 1) -> int:
    return x + 1


def test_plain_messages_skip_cloudpickle_and_pickle_to_the_same_bytes(monkeypatch):
    """A module's function with a few numbers (most task messages) is pickled by plain pickle, byte for byte
    what cloudpickle writes; anything cloudpickle would carry by value still goes through it."""
    import os

    import cloudpickle

    plain = [(_module_function, (1, 2.5, "s", b"b", None, True, 3j), {"k": 1}), (os.getpid, (), {}), None, 42,
             ("nested", [1, [2, 3]], {"a": {"b": None}}), (len, ([1, 2],), {})]
    for obj in plain:
        assert serialize._plain(obj), obj
        assert serialize.dumps(obj) == [cloudpickle.dumps(obj, protocol=5)]
        assert serialize.loads(serialize.dumps(obj)) == obj

    def local(x):
        return x

    class Mine(int):
        pass

    k = 3
    by_value = [(local, (), {}), (lambda: k, (), {}), (_module_function, (Mine(1),), {}), ([].append, (), {}),
                (_module_function, (list(range(17)),), {}), ([[[[1]]]],), (_module_function, (), {1: 2}),
                np.arange(3), (Mine,)]
    for obj in by_value:
        assert not serialize._plain(obj), obj
    # a function of this test would pickle by name, wrongly (and fail): it goes by value
    f2, _, _ = serialize.loads(serialize.dumps((local, (), {})))
    assert f2(5) == 5 and f2 is not local

    # a module registered to travel by value is not pickled by name either
    import tests.core.test_serialize as me
    cloudpickle.register_pickle_by_value(me)
    try:
        assert not serialize._plain((_module_function, (), {}))
    finally:
        cloudpickle.unregister_pickle_by_value(me)
    assert serialize._plain((_module_function, (), {}))


def _main_function(src: str, name: str, **globs):
    """A function as a notebook or a script's __main__ defines it (cloudpickle sends those by value)."""
    ns = {"__name__": "__main__", **globs}
    exec(src, ns)
    return ns[name], ns


def test_a_function_pickled_by_value_is_pickled_once_while_nothing_it_uses_changes(monkeypatch):
    import cloudpickle

    made = []
    real = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda *a, **kw: made.append(a[0]) or real(*a, **kw))
    f, ns = _main_function("import math\nk = 3\ndef helper(x):\n    return x * k\n"
                           "def f(x, y=2):\n    return helper(x) + math.floor(y) + (f(0) if x else 0)\n", "f")
    first = serialize.dumps((f, (1,), {}))
    assert serialize.dumps((f, (1,), {})) == first and made == [f]  # the second call reused the bytes
    g, args, kw = serialize.loads(first)
    assert g is not f and g(*args, **kw) == f(1) == 7
    chunk = serialize.dumps((_module_function, (f, [1, 2]), {}))  # a map chunk carries the function inside
    assert made == [f] and serialize.loads(chunk)[1][0](2) == f(2)

    ns["k"] = 10  # a global it uses, through a helper, is another object now: pickled again
    g, args, _ = serialize.loads(serialize.dumps((f, (1,), {})))
    assert g(*args) == f(1) == 14 and made == [f, f]
    f.__defaults__ = (7,)
    assert serialize.loads(serialize.dumps((f, (1,), {})))[0](1) == f(1) == 24 and len(made) == 3

    later, ns = _main_function("def later():\n    return defined_later\n", "later")  # a global not there yet
    assert type(serialize._pickled_function(later)) is serialize._Pickled
    ns["defined_later"] = 5
    assert serialize.loads(serialize.dumps((later, (), {})))[0]() == 5


def test_a_function_using_something_that_can_change_in_place_is_pickled_every_time(monkeypatch):
    import cloudpickle

    made = []
    real = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda *a, **kw: made.append(a[0]) or real(*a, **kw))
    uses_list, ns = _main_function("seen = [1]\ndef f():\n    return len(seen)\n", "f")
    default_list, _ = _main_function("def f(acc=[]):\n    return len(acc)\n", "f")
    closure, _ = _main_function("def outer():\n    box = {'n': 1}\n    return lambda: box['n']\nf = outer()\n", "f")
    mains_class, _ = _main_function("class C:\n    n = 1\ndef f():\n    return C.n\n", "f")
    for f in (uses_list, default_list, closure, mains_class):
        assert type(serialize._pickled_function(f)) is not serialize._Pickled, f
    ns["seen"].append(2)
    assert serialize.loads(serialize.dumps((uses_list, (), {})))[0]() == 2  # the list as it is now
    uses_list.extra = 1  # a function's own attribute travels with it: not taken from an earlier pickle
    assert type(serialize._pickled_function(uses_list)) is not serialize._Pickled

    counter, _ = _main_function("def outer():\n    n = 1\n    def f():\n        return n\n"
                                "    def bump():\n        nonlocal n\n        n += 1\n    return f, bump\n"
                                "f, bump = outer()\n", "f")
    assert serialize.loads(serialize.dumps((counter, (), {})))[0]() == 1
    counter.__closure__[0].cell_contents = 5  # a cell given another object: pickled again
    assert serialize.loads(serialize.dumps((counter, (), {})))[0]() == 5


def test_a_functions_pickle_made_once_goes_with_the_function():
    import gc
    import weakref

    f, ns = _main_function("def helper():\n    return f\ndef f():\n    return helper() is f\n", "f")
    assert type(serialize._pickled_function(f)) is serialize._Pickled and f in serialize._by_value
    assert serialize.loads(serialize.dumps((f, (), {})))[0]()
    gone = weakref.ref(f)
    del f, ns
    gc.collect()
    assert gone() is None  # the cache held neither it nor (through its helper's globals) a cycle back to it
