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
    import pickle

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
    # nothing of these goes through plain pickle: a function of this test would pickle by name, wrongly
    calls = []
    real = pickle.dumps
    monkeypatch.setattr(pickle, "dumps", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    f2, _, _ = serialize.loads(serialize.dumps((local, (), {})))
    assert calls == [] and f2(5) == 5 and f2 is not local

    # a module registered to travel by value is not pickled by name either
    import tests.core.test_serialize as me
    cloudpickle.register_pickle_by_value(me)
    try:
        assert not serialize._plain((_module_function, (), {}))
    finally:
        cloudpickle.unregister_pickle_by_value(me)
    assert serialize._plain((_module_function, (), {}))
