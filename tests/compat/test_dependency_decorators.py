"""Dependency (the scheduler's pure logic), and @depend / @require / dependent / @interactive on real engines."""
from __future__ import annotations

import json
import os
import pickle
import sys
import textwrap
import uuid

import pytest

import ipphpc as ipp
from ipphpc import Dependency, RemoteError, UnmetDependency, depend, dependent, interactive, require
from tests.core.helpers import ship_by_value

ship_by_value(__name__)

COMPLETED = {"c1", "c2"}
FAILED = {"f1", "f2"}

S, F, SF = dict(success=True, failure=False), dict(success=False, failure=True), dict(success=True, failure=True)


# (tasks depended on, which outcomes count, all?) -> (met?, unreachable?)
# c*: succeeded, f*: failed, p*: not finished yet
CASES = [
    ({"c1", "c2"}, S, True, True, False),
    ({"c1", "c2"}, S, False, True, False),
    ({"c1", "c2"}, F, True, False, True),
    ({"c1", "c2"}, F, False, False, True),
    ({"c1", "c2"}, SF, True, True, False),
    ({"c1", "c2"}, SF, False, True, False),
    ({"f1", "f2"}, S, True, False, True),
    ({"f1", "f2"}, S, False, False, True),
    ({"f1", "f2"}, F, True, True, False),
    ({"f1", "f2"}, F, False, True, False),
    ({"f1", "f2"}, SF, True, True, False),
    ({"c1", "f1"}, S, True, False, True),
    ({"c1", "f1"}, S, False, True, False),
    ({"c1", "f1"}, F, True, False, True),
    ({"c1", "f1"}, F, False, True, False),
    ({"c1", "f1"}, SF, True, True, False),
    ({"c1", "f1"}, SF, False, True, False),
    ({"c1", "p1"}, S, True, False, False),
    ({"c1", "p1"}, S, False, True, False),
    ({"c1", "p1"}, F, True, False, True),
    ({"c1", "p1"}, F, False, False, False),
    ({"c1", "p1"}, SF, True, False, False),
    ({"f1", "p1"}, S, True, False, True),
    ({"f1", "p1"}, S, False, False, False),
    ({"f1", "p1"}, F, False, True, False),
    ({"p1", "p2"}, S, True, False, False),
    ({"p1", "p2"}, F, False, False, False),
    (set(), S, True, True, False),
    (set(), F, False, True, False),
]


@pytest.mark.parametrize("ids, counts, all_, met, unreachable", CASES)
def test_check_and_unreachable(ids, counts, all_, met, unreachable):
    dep = Dependency(sorted(ids), all=all_, **counts)
    assert dep.check(COMPLETED, FAILED) is met
    assert dep.unreachable(COMPLETED, FAILED) is unreachable
    assert not (met and unreachable)


def test_flags_can_change_after_construction():
    dep = Dependency(["c1", "f1"])
    assert not dep.check(COMPLETED, FAILED) and dep.unreachable(COMPLETED, FAILED)
    dep.all = False
    assert dep.check(COMPLETED, FAILED) and not dep.unreachable(COMPLETED, FAILED)


def test_without_failed_set_only_successes_count():
    assert Dependency(["c1"]).check(COMPLETED)
    assert not Dependency(["f1"], success=False, failure=True).check(COMPLETED)
    assert not Dependency(["c1", "f1"]).unreachable(COMPLETED)


def test_defaults():
    dep = Dependency()
    assert len(dep) == 0 and dep.all and dep.success and not dep.failure
    assert dep.check(set(), set()) and not dep.unreachable(set(), set())


def test_built_from_ids_results_dependencies_and_nested_lists(rc):
    ar = rc[:].apply_async(os.getpid)
    ar.get(10)
    assert len(ar.msg_ids) == 2
    inner = Dependency(["a", "b"])
    dep = Dependency(["x", ar, inner, ("y", ["z"])])
    assert dep == {"x", "y", "z", "a", "b", *ar.msg_ids}
    assert Dependency("solo") == {"solo"}
    assert Dependency(ar) == set(ar.msg_ids)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="not int"):
        Dependency([1])
    with pytest.raises(TypeError, match="not bytes"):
        Dependency(b"abc")
    with pytest.raises(ValueError, match="can never be met"):
        Dependency(["a"], success=False, failure=False)


def test_as_dict_round_trips_through_json_and_pickle():
    dep = Dependency(["b", "a"], all=False, success=False, failure=True)
    d = json.loads(json.dumps(dep.as_dict()))
    assert d == {"dependencies": ["a", "b"], "all": False, "success": False, "failure": True}
    for back in (Dependency.from_dict(d), Dependency(d), pickle.loads(pickle.dumps(dep))):
        assert back == dep
        assert (back.all, back.success, back.failure) == (False, False, True)


# -- functional dependencies on engines ------------------------------------------------------

def on_pid(pid: int) -> bool:
    import os as _os
    return _os.getpid() == pid


def answer(x: int) -> tuple[int, int]:
    import os as _os
    return x * 2, _os.getpid()


def square(x: int) -> int:
    return x * x


@pytest.fixture
def engine_pids(rc) -> dict[int, int]:
    return dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))


def test_depend_runs_where_met_and_raises_unmet_elsewhere(rc, engine_pids):
    e0, e1 = rc.ids[:2]
    task = depend(on_pid, engine_pids[e0])(answer)
    assert isinstance(task, dependent) and task.__name__ == "answer"
    assert rc[e0].apply_sync(task, 21) == (42, engine_pids[e0])
    with pytest.raises(RemoteError) as e:
        rc[e1].apply_sync(task, 21)
    assert e.value.ename == "UnmetDependency"
    assert "on_pid returned False" in e.value.evalue


def test_dependent_built_directly_and_only_false_is_unmet(rc, engine_pids):
    e0 = rc.ids[0]
    assert rc[e0].apply_sync(dependent(answer, lambda: None), 1)[0] == 2  # None is not False: it runs
    assert rc[e0].apply_sync(dependent(answer, lambda k: k, k=0), 1)[0] == 2
    with pytest.raises(RemoteError, match="UnmetDependency"):
        rc[e0].apply_sync(dependent(answer, lambda k: k, k=False), 1)


def test_dependency_check_raising_unmet_is_unmet(rc):
    def refuse():
        raise UnmetDependency("not here")

    with pytest.raises(RemoteError) as e:
        rc[rc.ids[0]].apply_sync(depend(refuse)(answer), 1)
    assert e.value.ename == "UnmetDependency"


def test_depend_called_locally_checks_here():
    me = os.getpid()
    assert depend(on_pid, me)(answer)(3) == (6, me)
    with pytest.raises(UnmetDependency):
        depend(on_pid, -1)(answer)(3)


def test_require_imports_modules_into_the_engine_namespace(rc):
    @require("base64", "xml.dom")
    def encode(arg):
        return base64.b64encode(arg), xml.dom.__name__  # noqa: F821 - imported by @require

    e0 = rc.ids[0]
    assert rc[e0].apply_sync(encode, b"foo") == (b"Zm9v", "xml.dom")
    assert rc[e0].apply_sync(lambda: base64.__name__) == "base64"  # noqa: F821 - left in the namespace


def test_require_accepts_module_objects(rc):
    @require(json)
    def dumps(x):
        return json.dumps(x)

    assert rc[rc.ids[0]].apply_sync(dumps, [1]) == "[1]"


def test_require_missing_module_is_unmet(rc):
    @require("ipphpc_no_such_module_" + uuid.uuid4().hex[:8])
    def f():
        return 1

    with pytest.raises(RemoteError) as e:
        rc[rc.ids[0]].apply_sync(f)
    assert e.value.ename == "UnmetDependency"
    assert "cannot import ipphpc_no_such_module_" in e.value.evalue


def test_require_pushes_functions_and_objects(rc):
    name = "sq_" + uuid.uuid4().hex[:8]

    @interactive
    def uses_pushed(a):
        return globals()[name](a) + offset_k  # noqa: F821 - pushed by @require

    task = require(**{name: square, "offset_k": 1000})(uses_pushed)
    e0 = rc.ids[0]
    with pytest.raises(RemoteError, match="KeyError|NameError"):
        rc[e0].apply_sync(uses_pushed, 5)
    assert rc[e0].apply_sync(task, 5) == 1025
    assert rc[e0].pull(name, block=True)(3) == 9


def test_require_pushes_functions_by_name_and_nests(rc):
    def foo(a):
        return a * a

    @require(foo)
    def bar(b):
        return foo(b)

    @require(bar)
    def baz(c, d):
        return bar(c) - bar(d)

    assert rc.load_balanced_view().apply_sync(baz, 4, 5) == 16 - 25


def test_require_rejects_objects_without_names():
    with pytest.raises(TypeError, match=r"pass a int by keyword: require\(name=value\)"):
        require(3)


def test_depend_rejects_a_non_callable():
    with pytest.raises(TypeError, match="needs a callable"):
        depend("numpy")


# -- @interactive ------------------------------------------------------------------------------

def add_path(d: str) -> None:
    import sys as _sys
    _sys.path.insert(0, d)


def drop_path(d: str) -> None:
    import sys as _sys
    _sys.path.remove(d)

def test_interactive_runs_in_the_engine_namespace(rc, tmp_path):
    """A function from a module the engines can import runs with that module's globals, unless
    @interactive: then the engine namespace's."""
    mod = "ipphpc_compat_mod_" + uuid.uuid4().hex[:8]
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent("""
        token = "module"

        def plain():
            return token

        def get_token():
            return token
    """))
    sys.path.insert(0, str(tmp_path))
    dv = rc[:]
    try:
        module = __import__(mod)
        dv.apply_sync(add_path, str(tmp_path))
        dv.push({"token": "engine"}, block=True)
        assert dv.apply_sync(module.plain) == ["module", "module"]
        f = interactive(module.get_token)
        assert f.__module__ == "__main__" and f.__name__ == "get_token"
        assert dv.apply_sync(f) == ["engine", "engine"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(mod, None)
        dv.apply_sync(drop_path, str(tmp_path))


def test_interactive_keeps_defaults_and_uses_main_here():
    def f(a, b=2, *, c=3):
        return a + b + c

    g = interactive(f)
    assert g(1) == 6 and g(1, c=0) == 3
    assert g.__globals__ is sys.modules["__main__"].__dict__
    assert ipp.interactive is interactive


@pytest.mark.parametrize("ids, counts, all_, met, unreachable", CASES)
def test_dependency_answers_as_ipyparallel_does(ids, counts, all_, met, unreachable):
    ipyparallel = pytest.importorskip("ipyparallel")
    theirs = ipyparallel.Dependency(sorted(ids), all=all_, **counts)
    ours = Dependency(sorted(ids), all=all_, **counts)
    for completed, failed in ((COMPLETED, FAILED), (COMPLETED, None), (set(), FAILED)):
        assert ours.check(completed, failed) == theirs.check(completed, failed)
        assert ours.unreachable(completed, failed) == theirs.unreachable(completed, failed)
    assert ours.as_dict() == {**theirs.as_dict(), "dependencies": sorted(theirs)}
