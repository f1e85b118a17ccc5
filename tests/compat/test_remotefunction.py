"""@remote, @parallel and view.remote()/view.parallel() on two real engines."""
from __future__ import annotations

import os

import numpy as np
import pytest

import ipphpc as ipp
from ipphpc.client.asyncresult import AsyncMapResult, AsyncResult
from ipphpc.client.remotefunction import ParallelFunction, RemoteFunction
from tests.core.helpers import ship_by_value

ship_by_value(__name__)


def where(x: int = 0) -> tuple[int, int]:
    return os.getpid(), x


def double_all(seq: list) -> list:
    """Double every element."""
    return [2 * x for x in seq]


def piece(seq: list) -> list:
    return [list(seq)]


def boom_on(x: int, bad: int = 2) -> int:
    if x == bad:
        raise ValueError(f"bad {x}")
    return x


@pytest.fixture
def pids(rc) -> dict[int, int]:
    return dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))


def test_remote_calls_apply_on_the_view(rc, pids):
    e0 = rc.ids[0]

    @ipp.remote(rc[e0], block=True)
    def mul(x, y=5):
        """multiply x * y"""
        return x * y, os.getpid()

    assert isinstance(mul, RemoteFunction)
    assert mul.__name__ == "mul"
    assert "RemoteFunction" in mul.__doc__ and "multiply x" in mul.__doc__
    assert str(mul.__signature__) == "(x, y=5)"
    assert mul(5) == (25, pids[e0])
    assert mul(2, 3)[0] == 6
    assert mul(x=5, y=2)[0] == 10


def test_remote_block_none_follows_the_view_at_call_time(rc):
    view = rc.load_balanced_view()
    f = ipp.remote(view)(where)
    view.block = False
    ar = f(3)
    assert isinstance(ar, AsyncResult)
    assert ar.get(10)[1] == 3
    view.block = True
    assert f(4)[1] == 4
    assert view.block is True  # the call's flags are put back


def test_remote_on_a_direct_view_of_all_engines(rc, pids):
    f = rc[:].remote(block=True)(where)
    assert sorted(p for p, _ in f(1)) == sorted(pids.values())


def test_remote_flags_apply_for_the_call_only(rc):
    view = rc.load_balanced_view()
    f = view.remote(block=True, retries=2)(where)
    assert f(1)[1] == 1
    assert view.retries == 0
    with pytest.raises(KeyError, match="no flag"):
        view.remote(block=True, not_a_flag=1)(where)(1)


def test_parallel_splits_contiguously_over_a_direct_view(rc, pids):
    dv = rc[:]

    @ipp.parallel(dv, block=True)
    def pieces(seq):
        """which piece"""
        return [list(seq)]

    assert isinstance(pieces, ParallelFunction)
    assert "ParallelFunction" in pieces.__doc__ and "which piece" in pieces.__doc__
    assert pieces(list(range(5))) == [[0, 1, 2], [3, 4]]
    assert ipp.parallel(dv, block=True)(double_all)([1, 2, 3, 4]) == [2, 4, 6, 8]
    # one piece per engine, run on that engine
    wpids = ipp.parallel(dv, block=True)(lambda seq: [os.getpid()] * len(seq))(range(4))
    assert wpids == [pids[rc.ids[0]]] * 2 + [pids[rc.ids[1]]] * 2


def test_parallel_round_robin(rc):
    dv = rc[:]
    assert dv.parallel(dist="r", block=True)(piece)(list(range(5))) == [[0, 2, 4], [1, 3]]
    assert dv.parallel(dist="r", block=True)(double_all)(list(range(5))) == [0, 2, 4, 6, 8]


def test_parallel_numpy_arrays_join_as_arrays(rc):
    a = np.arange(10.0)
    out = rc[:].parallel(block=True)(lambda x: x * 2)(a)
    assert isinstance(out, np.ndarray) and np.array_equal(out, a * 2)
    out = rc[:].parallel(dist="r", block=True)(lambda x: x + 1)(a)
    assert np.array_equal(out, a + 1)


def test_parallel_several_sequences_and_scalars(rc):
    add = rc[:].parallel(block=True)(lambda xs, ys: [x + y for x, y in zip(xs, ys)])
    assert add([1, 2, 3, 4], [10, 20, 30, 40]) == [11, 22, 33, 44]
    # a scalar result per piece: the pieces' results, not flattened
    assert rc[:].parallel(block=True)(sum)(range(10)) == [sum(range(5)), sum(range(5, 10))]
    with pytest.raises(ValueError, match=r"same length, but have \[2, 3\]"):
        add([1, 2], [1, 2, 3])


def test_parallel_on_a_load_balanced_view_gets_one_element_lists(rc):
    lv = rc.load_balanced_view()
    assert lv.parallel(block=True)(piece)([1, 2, 3]) == [[1], [2], [3]]
    pf = ParallelFunction(lv, piece, chunksize=2, block=True)
    assert pf([1, 2, 3, 4, 5]) == [[1, 2], [3, 4], [5]]


def test_parallel_map_is_builtin_map(rc):
    for view in (rc[:], rc.load_balanced_view()):
        mul = view.parallel(block=True)(lambda x, y=5: x * y)
        assert mul.map([1, 2, 3]) == [5, 10, 15]
        assert mul.map([1, 2, 3], [1, 2, 3]) == [1, 4, 9]
        assert mul.map(range(7), iter([1] * 5)) == list(map(lambda x, y: x * y, range(7), [1] * 5))
        assert view.parallel(dist="r", block=True)(lambda x: -x).map(range(9)) == [-x for x in range(9)]


def test_parallel_nonblocking_returns_an_async_map_result(rc):
    pf = rc.load_balanced_view().parallel(block=False)(lambda x: x * x)
    amr = pf.map(range(6))
    assert isinstance(amr, AsyncMapResult)
    assert amr.get(10) == [x * x for x in range(6)]
    assert list(amr) == [x * x for x in range(6)]
    assert len(amr.msg_ids) == 6 and all(amr.msg_ids)
    assert all(m["engine_id"] in rc.ids for m in amr.metadata)


def test_parallel_on_empty_input_is_an_empty_list(rc):
    assert rc[:].parallel(block=True)(piece)([]) == []
    assert rc[:].parallel(block=False)(piece).map([]) == []


def test_parallel_errors(rc):
    pf = rc.load_balanced_view().parallel(block=True)(boom_on)
    with pytest.raises(ipp.CompositeError) as e:
        pf.map(range(4))
    assert e.value.elist[0].ename == "ValueError"
    out = ParallelFunction(rc.load_balanced_view(), boom_on, block=True, return_exceptions=True).map(range(4))
    assert out[:2] == [0, 1] and out[3] == 3 and isinstance(out[2], ipp.RemoteError)
    with pytest.raises(ValueError, match="dist='x'.*'b'.*'r'"):
        ipp.parallel(rc[:], dist="x")(piece)
    with pytest.raises(TypeError, match="at least one sequence"):
        rc[:].parallel(block=True)(piece)()


def test_parallel_function_sees_the_engine_namespace(rc):
    rc[:].push({"offset": 100}, block=True)

    def shifted(x):
        return x + offset  # noqa: F821 - pushed to the engines

    lv = rc.load_balanced_view()
    assert lv.parallel(block=True)(shifted).map([1, 2]) == [101, 102]


def test_view_methods_resolve_to_this_module(rc):
    assert isinstance(rc[:].remote()(where), RemoteFunction)
    assert isinstance(rc[:].parallel()(where), ParallelFunction)


# -- IPython Parallel as the oracle ------------------------------------------------------------

@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    """A client of a two-engine IPython Parallel cluster (skips when ipyparallel is not installed)."""
    ipyparallel = pytest.importorskip("ipyparallel")
    cluster = ipyparallel.Cluster(n=2, profile_dir=str(tmp_path_factory.mktemp("ipp-profile")), log_level=40)
    try:
        client = cluster.start_and_connect_sync(activate=False)
        client.wait_for_engines(2, timeout=60)
        yield client
    finally:
        cluster.stop_cluster_sync()


ORACLE_CASES = [
    # (view kind, dist, function, sequences, via map?)
    ("direct", "b", lambda seq: [list(seq)], ([0, 1, 2, 3, 4],), False),
    ("direct", "r", lambda seq: [list(seq)], ([0, 1, 2, 3, 4],), False),
    ("direct", "b", sum, (list(range(10)),), False),
    ("direct", "r", lambda seq: [2 * x for x in seq], (list(range(7)),), False),
    ("direct", "b", lambda a, b: [x * y for x, y in zip(a, b)], ([1, 2, 3], [4, 5, 6]), False),
    ("direct", "b", lambda seq: [list(seq)], ([7],), False),
    ("direct", "b", lambda x, y: x - y, (list(range(5)), list(range(5, 10))), True),
    ("direct", "r", lambda x: -x, (list(range(9)),), True),
    ("balanced", "b", lambda seq: [list(seq)], ([1, 2, 3],), False),
    ("balanced", "b", lambda seq: list(seq) * 2, ([1, 2, 3],), False),
    ("balanced", "b", lambda x, y=5: x * y, ([1, 2, 3],), True),
    ("balanced", "r", lambda x: x + 1, (list(range(6)),), True),
]


@pytest.mark.parametrize("kind, dist, f, seqs, mapping", ORACLE_CASES)
def test_parallel_answers_as_ipyparallel_does(rc, peer, kind, dist, f, seqs, mapping):
    import ipyparallel

    def run(module, client):
        view = client[:] if kind == "direct" else client.load_balanced_view()
        pf = module.parallel(view, dist=dist, block=True)(f)
        return pf.map(*seqs) if mapping else pf(*seqs)

    assert run(ipp, rc) == run(ipyparallel, peer)


def test_remote_answers_as_ipyparallel_does(rc, peer):
    import ipyparallel

    def run(module, client):
        e0 = client.ids[0]
        one = module.remote(client[e0], block=True)(lambda x, y=5: (x * y, type(x).__name__))
        every = module.remote(client[:], block=True)(lambda: "each")
        return one(3), one(2, y=4), every()

    assert run(ipp, rc) == run(ipyparallel, peer)
