"""The %px magics in a real IPython shell, against the shared cluster's real engines."""
from __future__ import annotations

import _thread
import io
import re
import sys
import threading
import time

import pytest
from IPython.core.error import UsageError

import ipphpc as ipp
from ipphpc.client import magics, pxargs


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """One InteractiveShell for the module (IPython allows one per process), its history in memory."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ours = not InteractiveShell.initialized()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        yield InteractiveShell.instance(config=config)
    if ours:
        InteractiveShell.clear_instance()


@pytest.fixture
def ip(shell, rc):
    """The shell, with every engine knowing its position as `rank`; no %autopx is left on afterwards."""
    for rank, eid in enumerate(rc.ids):
        rc[eid]["rank"] = rank
    yield shell
    for m in list(magics._ACTIVE.values()):
        if m._autopx:
            m._disable_autopx()


@pytest.fixture
def px(ip, rc):
    """The magics of a fresh blocking view of every engine (no suffix)."""
    view = rc.direct_view("all", block=True)
    return magics.activate(view)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- %px and %%px --------------------------------------------------------------------------------
def test_px_runs_on_every_engine_and_shows_their_stdout(ip, px, rc, capsys):
    ip.run_line_magic("px", "a = 5")
    assert rc[:]["a"] == [5, 5]
    ip.run_line_magic("px", "print(a * 2, rank)")
    out = capsys.readouterr().out
    for rank, eid in enumerate(rc.ids):
        assert f"[stdout:{eid}]" in out
        assert f"10 {rank}" in out


def test_px_line_is_not_expanded_but_the_cell_line_is(ip, px, rc):
    ip.user_ns["where"] = "client"
    ip.user_ns["out_name"] = "kept_result"
    rc[:]["where"] = "engine"
    ip.run_line_magic("px", 'seen = f"{where}"')
    assert rc[:]["seen"] == ["engine", "engine"]
    ip.run_cell('%%px -o {out_name}\nseen2 = f"{where}"')
    assert isinstance(ip.user_ns["kept_result"], ipp.AsyncResult)
    assert rc[:]["seen2"] == ["engine", "engine"]


def test_last_expression_is_shown_as_out_per_engine(ip, px, rc, capsys):
    ip.run_line_magic("px", "6 * 7 + rank")
    out = capsys.readouterr().out
    for rank, eid in enumerate(rc.ids):
        assert re.search(rf"Out\[{eid}:\d+\]: {42 + rank}\b", out), out


def test_noblock_returns_the_result_and_pxresult_shows_it(ip, rc, capsys):
    m = magics.activate(rc.direct_view("all", block=True), "_nb")
    with pytest.raises(UsageError):
        ip.run_line_magic("pxresult_nb", "")
    ar = ip.run_cell_magic("px_nb", "--noblock", "import time\ntime.sleep(0.3)\nprint('late', rank)\nrank * 100")
    assert isinstance(ar, ipp.AsyncResult)
    assert m.last_result is ar
    assert capsys.readouterr().out == ""  # nothing shown before %pxresult
    ip.run_line_magic("pxresult_nb", "")
    out = capsys.readouterr().out
    for rank, eid in enumerate(rc.ids):
        assert f"[stdout:{eid}]" in out and f"late {rank}" in out
        assert re.search(rf"Out\[{eid}:\d+\]: {rank * 100}\b", out)
    ip.run_line_magic("pxresult_nb", "-o again")
    assert ip.user_ns["again"] is ar


def test_block_and_noblock_flags_leave_the_default(ip, rc, capsys):
    view = rc.direct_view("all", block=False)
    magics.activate(view, "_bl")
    ip.run_line_magic("pxconfig_bl", "--verbose")
    assert ip.run_cell_magic("px_bl", "--block", "1") is None
    assert "Parallel execution on engine(s): all" in capsys.readouterr().out
    assert isinstance(ip.run_cell_magic("px_bl", "", "1"), ipp.AsyncResult)
    assert "Async parallel execution" in capsys.readouterr().out
    view.block = True
    assert isinstance(ip.run_cell_magic("px_bl", "-a", "1"), ipp.AsyncResult)
    assert view.block is True


def test_targets_flag_runs_on_those_engines_only(ip, px, rc, capsys):
    first, second = rc.ids[:2]
    ip.run_cell_magic("px", f"--targets {second}", "print('picked')")
    out = capsys.readouterr().out
    assert f"[stdout:{second}]" in out and f"[stdout:{first}]" not in out
    ip.run_cell_magic("px", "-t ::2", "print('even')")
    out = capsys.readouterr().out
    assert f"[stdout:{first}]" in out and f"[stdout:{second}]" not in out
    assert px.view.targets == "all"
    ip.run_cell_magic("px", "", "print('everyone')")
    out = capsys.readouterr().out
    assert f"[stdout:{first}]" in out and f"[stdout:{second}]" in out


@pytest.mark.parametrize("flags, grouped", [("--group-outputs=type", "type"), ("--group-outputs=engine", "engine"),
                                            ("-e", "engine"), ("--group-outputs=order", "type"), ("-r", "type")])
def test_group_outputs(ip, px, rc, capsys, flags, grouped):
    ip.run_cell_magic("px", f"{flags} --no-stream", "import time\ntime.sleep(0.2 * rank)\nprint('said', rank)\nrank")
    got = [line for line in lines(capsys.readouterr().out) if line.startswith(("[stdout:", "Out["))]
    e0, e1 = rc.ids[:2]
    if grouped == "type":
        want = [f"[stdout:{e0}]", f"[stdout:{e1}]", f"Out[{e0}:", f"Out[{e1}:"]
    else:
        want = [f"[stdout:{e0}]", f"Out[{e0}:", f"[stdout:{e1}]", f"Out[{e1}:"]
    assert [g[:len(w)] for g, w in zip(got, want)] == want, got


def test_bad_group_outputs_is_refused(ip, px):
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_cell_magic("px", "--group-outputs=sideways", "pass")


def test_local_runs_here_and_on_the_engines(ip, px, rc, capsys):
    ip.user_ns.pop("both_places", None)
    ip.run_cell_magic("px", "--local", "both_places = 7 * 6\nprint('ran')")
    assert ip.user_ns["both_places"] == 42
    assert rc[:]["both_places"] == [42, 42]
    out = capsys.readouterr().out
    assert all(f"[stdout:{eid}]" in out for eid in rc.ids[:2])


def test_save_name_keeps_the_async_result(ip, px, rc):
    for flag in ("-o", "--out", "--save-name"):
        ip.user_ns.pop("saved", None)
        ip.run_cell_magic("px", f"{flag} saved", "rank + 1")
        ar = ip.user_ns["saved"]
        assert isinstance(ar, ipp.AsyncResult)
        ar.wait(10)
        assert [m["execute_result"]["data"]["text/plain"] for m in ar.metadata] == ["1", "2"]


# -- %pxconfig ---------------------------------------------------------------------------------
def test_pxconfig_sets_defaults(ip, rc, capsys):
    view = rc.activate("all", "_cfg")
    first, second = rc.ids[:2]
    assert view.block is True
    ip.run_line_magic("pxconfig_cfg", f"--targets {second}")
    assert view.targets == second
    ip.run_line_magic("px_cfg", "print('only one')")
    out = capsys.readouterr().out
    assert f"[stdout:{second}]" in out and f"[stdout:{first}]" not in out
    ip.run_line_magic("pxconfig_cfg", "-t :")
    assert view.targets == rc.ids
    ip.run_line_magic("pxconfig_cfg", "-t 1::2")
    assert view.targets == rc.ids[1::2]
    ip.run_line_magic("pxconfig_cfg", f"-t {first},{second}")
    assert view.targets == [first, second]
    ip.run_line_magic("pxconfig_cfg", "--noblock")
    assert view.block is False
    assert isinstance(ip.run_line_magic("px_cfg", "1"), ipp.AsyncResult)
    ip.run_line_magic("pxconfig_cfg", "--block --targets all")
    assert view.block is True and view.targets == "all"
    config = magics._ACTIVE["_cfg"]
    ip.run_line_magic("pxconfig_cfg", "--signal-on-interrupt SIGKILL --progress-after 7 --no-stream --verbose")
    assert (config.signal_on_interrupt, config.progress_after_seconds) == (9, 7.0)
    assert (config.stream_output, config.verbose) == (False, True)
    ip.run_line_magic("pxconfig_cfg", "--signal-on-interrupt 2 --stream --no-verbose")
    assert (config.signal_on_interrupt, config.stream_output, config.verbose) == (2, True, False)


@pytest.mark.parametrize("after, shown", [("0", True), ("-1", False)])
def test_progress_bar(ip, px, capsys, after, shown):
    ip.run_cell_magic("px", f"--progress-after {after}", "import time\ntime.sleep(0.5)")
    err = capsys.readouterr().err
    assert ("2/2" in err and "%px" in err) is shown, err


# -- errors ------------------------------------------------------------------------------------
def test_errors_are_shown_per_engine_as_remote_tracebacks(ip, px, rc, capsys):
    result = ip.run_cell("%%px --no-stream\ndef inner():\n    raise ValueError(f'bad {rank}')\ninner()")
    assert isinstance(result.error_in_exec, ipp.CompositeError)
    out = capsys.readouterr().out
    for rank, eid in enumerate(rc.ids[:2]):
        assert f"[engine {eid}] ValueError: bad {rank}" in out
    assert "in inner" in out  # the engines' own traceback
    assert "magics.py" not in out and "interactiveshell.py" not in out  # not the local one


def test_streamed_errors_show_as_each_engine_fails(ip, px, rc, capsys, monkeypatch):
    err = TimedWrites()
    monkeypatch.setattr(sys, "stderr", err)
    result = ip.run_cell("%%px --stream\nimport time\ndef inner():\n    raise ValueError(f'bad {rank}')\n"
                         "time.sleep(1.5 * rank)\ninner()")
    end = time.monotonic()
    e0, e1 = rc.ids[:2]
    assert end - err.when(f"[engine {e0}] ValueError: bad 0") > 0.7  # while engine 1 still ran
    assert f"[engine {e1}] ValueError: bad 1" in err.getvalue() and "in inner" in err.getvalue()
    error = result.error_in_exec
    assert isinstance(error, ipp.RemoteError) and isinstance(error.original_error, ipp.CompositeError)
    assert error.render_traceback() == ["2 errors on the engines (tracebacks above)"]
    out = capsys.readouterr().out
    assert "2 errors on the engines" in out and "in inner" not in out  # not shown twice


def test_error_on_one_engine(ip, rc, capsys):
    view = rc[rc.ids[0]]
    view.block = True
    view.activate("_one")
    result = ip.run_cell("%px_one 1 / 0")
    assert isinstance(result.error_in_exec, ipp.RemoteError)
    captured = capsys.readouterr()
    assert f"[engine {rc.ids[0]}] ZeroDivisionError" in captured.err
    assert "1 error on the engines" in captured.out and "magics.py" not in captured.out
    ip.run_line_magic("pxconfig_one", "--no-stream")
    result = ip.run_cell("%px_one 1 / 0")
    assert isinstance(result.error_in_exec, ipp.RemoteError)
    captured = capsys.readouterr()
    assert f"[engine {rc.ids[0]}] ZeroDivisionError" in captured.out and "magics.py" not in captured.out


def test_unknown_flag_lists_the_valid_ones_on_one_line(ip, px):
    with pytest.raises(UsageError) as info:
        ip.run_cell_magic("px", "--targets all --colour", "pass")
    message = str(info.value)
    assert "\n" not in message
    assert "--colour" in message
    for flag in ("-t/--targets", "-b/--block", "-a/--noblock", "--stream", "--no-stream", "--local",
                 "-o/--out/--save-name", "--group-outputs={engine,order,type}", "-e", "--signal-on-interrupt"):
        assert flag in message, flag
    with pytest.raises(UsageError, match="valid flags: .*--progress-after"):
        ip.run_line_magic("pxconfig", "--loud")


# -- streaming ---------------------------------------------------------------------------------
class TimedWrites(io.StringIO):
    """A stdout that remembers when each piece was written."""

    def __init__(self):
        super().__init__()
        self.times: list[tuple[float, str]] = []

    def write(self, s: str) -> int:
        self.times.append((time.monotonic(), s))
        return super().write(s)

    def when(self, text: str) -> float:
        return next(t for t, s in self.times if text in s)


def test_stream_shows_output_as_it_is_printed(ip, px, rc, monkeypatch):
    out = TimedWrites()
    monkeypatch.setattr(sys, "stdout", out)
    ip.run_cell_magic("px", "--stream", "import time\nprint('early', rank)\ntime.sleep(1 + rank)\nprint('late', rank)")
    end = time.monotonic()
    text = out.getvalue()
    e0, e1 = rc.ids[:2]
    # each early line was on screen while the engines still slept
    assert out.when("early 0") < out.when("late 0") - 0.5, out.times
    assert out.when("early 1") < out.when("late 1") - 1.0, out.times
    assert out.when("late 0") < out.when("late 1") - 0.5 < end
    # a heading each time the output switches engine
    late0, late1 = text.index("late 0"), text.index("late 1")
    assert text.startswith("[stdout:")
    assert text.rindex("[stdout:", 0, late0) == text.rindex(f"[stdout:{e0}]", 0, late0)
    assert late0 < text.rindex(f"[stdout:{e1}]", 0, late1)
    assert text.count("late 0") == text.count("late 1") == 1  # nothing shown twice


def test_no_stream_shows_output_at_the_end(ip, px, rc, monkeypatch):
    out = TimedWrites()
    monkeypatch.setattr(sys, "stdout", out)
    ip.run_cell_magic("px", "--no-stream", "import time\nprint('early', rank)\ntime.sleep(0.8)\nprint('late', rank)")
    assert out.when("early 0") >= out.when("late 0") - 0.05 or out.when("early 0") == out.when("late 0")
    assert out.getvalue().count("[stdout:") == 2


# -- Ctrl-C ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_ctrl_c_interrupts_the_engines(ip, px, rc, capsys, stream):
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    start = time.monotonic()
    try:
        ip.run_cell_magic("px", stream, "import time\nprint('started', flush=True)\ntime.sleep(60)\nprint('never')")
    finally:
        timer.cancel()
    took = time.monotonic() - start
    captured = capsys.readouterr()
    assert took < 10, took
    assert "sending SIGINT" in captured.err
    ar = px.last_result
    assert ar.done()
    errors = ar.get(return_exceptions=True)
    assert [e.ename for e in errors] == ["KeyboardInterrupt"] * 2
    assert "started" in captured.out and "never" not in captured.out
    for eid in rc.ids[:2]:
        assert captured.err.count(f"[engine {eid}] KeyboardInterrupt") == 1, captured.err
    # the engines serve on, their namespace intact
    assert rc[:].apply_sync(lambda: 1) == [1, 1]
    assert rc[:]["rank"] == [0, 1]


def test_signal_zero_on_ctrl_c_leaves_the_engines_running(ip, px, rc, capsys, monkeypatch):
    monkeypatch.setattr(px, "interrupt_wait", 0.3)
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        ip.run_cell_magic("px", "--signal-on-interrupt=0 --no-stream", "import time\ntime.sleep(2)\nprint('finished')")
    finally:
        timer.cancel()
    err = capsys.readouterr().err
    assert "sending 0 to engine(s)" in err and "still running" in err
    ar = px.last_result
    ar.get(timeout=10)  # signal 0 stopped nothing: the tasks end normally
    assert ar.stdout == ["finished\n", "finished\n"]


# -- %autopx -------------------------------------------------------------------------------------
def test_autopx_sends_every_cell_until_toggled_off(ip, px, rc, capsys):
    ip.user_ns.pop("auto_b", None)
    ip.run_line_magic("autopx", "")
    ip.run_cell("auto_b = 21")
    ip.run_cell("for i in range(2):\n    auto_b += 0\nauto_b * 2")
    ip.run_cell("print('from', rank)")
    failed = ip.run_cell("auto_b / 0")
    ip.run_cell("%autopx")
    captured = capsys.readouterr()
    out = captured.out
    assert out.startswith("%autopx enabled") and out.rstrip().endswith("%autopx disabled")
    assert "auto_b" not in ip.user_ns
    assert rc[:]["auto_b"] == [21, 21]
    assert all(re.search(rf"Out\[{eid}:\d+\]: 42", out) for eid in rc.ids[:2]), out
    assert "[stdout:" in out and "from 1" in out
    assert isinstance(failed.error_in_exec, ipp.RemoteError)
    assert "ZeroDivisionError" in captured.err  # streamed as the engines failed
    ip.run_cell("after_autopx = 1")
    assert ip.user_ns["after_autopx"] == 1


def test_autopx_keeps_multiline_input_open(ip, px):
    ip.run_line_magic("autopx", "")
    try:
        assert ip.check_complete("for i in range(3):\n")[0] == "incomplete"
    finally:
        ip.run_line_magic("autopx", "")


# -- suffixes and activation ---------------------------------------------------------------------
def test_suffixed_magics_run_on_their_own_view(ip, px, rc, capsys):
    first, second = rc.ids[:2]
    view = rc[first]
    view.block = True
    view.activate("_a")
    ip.run_line_magic("px_a", "print('suffixed')")
    out = capsys.readouterr().out
    assert f"[stdout:{first}]" in out and f"[stdout:{second}]" not in out
    ip.run_cell_magic("px_a", "", "print('cell')\n'value'")
    out = capsys.readouterr().out
    assert f"[stdout:{first}]" in out and re.search(rf"Out\[{first}:\d+\]: 'value'", out)
    ip.run_line_magic("px", "print('plain')")
    out = capsys.readouterr().out
    assert f"[stdout:{first}]" in out and f"[stdout:{second}]" in out
    ip.run_line_magic("autopx_a", "")
    ip.run_cell("only_first = True")
    ip.run_cell("%autopx_a")
    assert rc[first]["only_first"] is True
    with pytest.raises(ipp.RemoteError):
        rc[second]["only_first"]


def test_load_ext_uses_the_latest_client(ip, rc, capsys, monkeypatch):
    from ipphpc.client.client import Client
    monkeypatch.setattr(Client, "_latest", rc)
    monkeypatch.delitem(magics._ACTIVE, "", raising=False)
    ip.extension_manager.loaded.discard("ipphpc")
    ip.run_line_magic("load_ext", "ipphpc")
    ip.run_line_magic("px", "print('loaded')")
    out = capsys.readouterr().out
    assert all(f"[stdout:{eid}]" in out for eid in rc.ids[:2])
    loaded = magics._ACTIVE[""]
    assert loaded.view.client is rc and loaded.view.block is True
    ip.run_line_magic("pxconfig", f"--targets {rc.ids[1]}")
    newer = Client(url_file=rc.url_file)
    try:
        view = loaded.view
        assert view.client is newer and view.targets == rc.ids[1]  # the newest client, the same settings
        ip.run_line_magic("px", "print('newer')")
        assert f"[stdout:{rc.ids[1]}]" in capsys.readouterr().out
    finally:
        newer.close()
    with pytest.raises(UsageError, match="no ipphpc client"):
        ip.run_line_magic("px", "1")


def test_a_new_client_brings_the_magics_only_when_there_are_none(ip, rc, monkeypatch):
    from ipphpc.client.client import Client
    monkeypatch.setattr(Client, "_latest", rc)
    table = ip.magics_manager.magics
    monkeypatch.delitem(table["line"], "px")
    monkeypatch.delitem(table["cell"], "px")
    monkeypatch.delitem(magics._ACTIVE, "", raising=False)
    magics.register_for_client(rc)
    registered = magics._ACTIVE[""]
    assert table["line"]["px"] == registered.px and registered.view.client is rc
    magics.register_for_client(rc)
    assert magics._ACTIVE[""] is registered


def test_activate_outside_ipython_warns(rc, monkeypatch):
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    with pytest.warns(UserWarning, match="only inside IPython"):
        rc[:].activate()


# -- flag values -------------------------------------------------------------------------------
def test_target_and_signal_values():
    ids = [0, 1, 2, 3, 4]
    assert pxargs.targets("all", ids) == "all"
    assert pxargs.targets("::2", ids) == [0, 2, 4]
    assert pxargs.targets("1:3", ids) == [1, 2]
    assert pxargs.targets("-2:", ids) == [3, 4]
    assert pxargs.targets("3", ids) == 3
    assert pxargs.targets("1,3", ids) == [1, 3]
    assert pxargs.targets("[0, 4]", ids) == [0, 4]
    for bad in ("os.system('x')", "1:2:3:4", "a:b", "'zero'"):
        with pytest.raises(UsageError):
            pxargs.targets(bad, ids)
    assert pxargs.signal_number("SIGKILL") == 9
    assert pxargs.signal_number("int") == 2
    assert pxargs.signal_number("9") == 9
    assert pxargs.signal_number("0") == 0
    with pytest.raises(UsageError):
        pxargs.signal_number("SIGNOPE")
