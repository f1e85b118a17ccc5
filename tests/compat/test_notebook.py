"""A notebook using the %px magics, run by nbclient in a real ipykernel against the shared cluster."""
from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow


def _cell(source: str, raises: bool = False) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if raises:
        cell.metadata["tags"] = ["raises-exception"]
    return cell


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell showed, as text: streams, displays, results and error tracebacks."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def notebook(cluster, tmp_path_factory):
    """Run the notebook once; the tests look at its cells' outputs."""
    url_file = str(cluster.client.url_file)
    cells = {
        "connect": _cell(f"import ipphpc as ipp\nrc = ipp.Client(url_file={url_file!r})\n"
                         "rc.wait_for_engines(2, timeout=30)\ndv = rc[:]\n"
                         "dv.scatter('rank', list(range(len(rc.ids))), flatten=True, block=True)\nlen(rc.ids)"),
        "load": _cell("%load_ext ipphpc"),
        "assign": _cell("%px nb_a = 5"),
        "print": _cell("%%px\nprint('hello', nb_a, rank)"),
        "expr": _cell("%px nb_a * 2 + rank"),
        "noblock": _cell("%%px --noblock\nimport time\ntime.sleep(0.2)\nprint('later', rank)\nrank + 100"),
        "result": _cell("%pxresult"),
        "targets": _cell("%%px --targets 1\nprint('one only')"),
        "stream": _cell("%%px --stream\nimport time\nprint('first', rank, flush=True)\ntime.sleep(0.5)\n"
                        "print('second', rank)"),
        "error": _cell("%%px\nimport time\ntime.sleep(0.3 * rank)\nraise RuntimeError(f'failed on {rank}')",
                       raises=True),
        "error_at_end": _cell("%%px --no-stream\nraise RuntimeError(f'ended on {rank}')", raises=True),
        "badflag": _cell("%%px --no-such-flag\npass", raises=True),
        "autopx_on": _cell("%autopx"),
        "autopx_cell": _cell("nb_c = 3\nnb_c * 5 + rank"),
        "autopx_off": _cell("%autopx"),
        "local_after": _cell("'nb_c' in globals()"),
        "after": _cell("rc[:]['nb_a']"),
    }
    nb = nbformat.v4.new_notebook(cells=list(cells.values()))
    client = NotebookClient(nb, timeout=60, startup_timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}})
    client.execute()
    return {name: _text(cell) for name, cell in cells.items()}, cells


def test_connects_and_loads(notebook):
    text, _ = notebook
    assert "2" in text["connect"]
    assert text["load"].strip() == ""
    assert text["assign"].strip() == ""
    assert text["after"].strip() == "[5, 5]"


def test_stdout_of_each_engine(notebook, rc):
    text, _ = notebook
    for rank, eid in enumerate(rc.ids):
        assert f"[stdout:{eid}]" in text["print"] and f"hello 5 {rank}" in text["print"]


def test_execute_results(notebook, rc):
    text, _ = notebook
    for rank, eid in enumerate(rc.ids):
        assert re.search(rf"Out\[{eid}:\d+\]: {10 + rank}\b", text["expr"]), text["expr"]


def test_noblock_then_pxresult(notebook, rc):
    text, _ = notebook
    assert "<AsyncResult(%px)" in text["noblock"] and "later" not in text["noblock"]
    for rank, eid in enumerate(rc.ids):
        assert f"later {rank}" in text["result"]
        assert re.search(rf"Out\[{eid}:\d+\]: {100 + rank}\b", text["result"]), text["result"]


def test_targets_and_stream(notebook, rc):
    text, _ = notebook
    assert f"[stdout:{rc.ids[1]}]" in text["targets"] and f"[stdout:{rc.ids[0]}]" not in text["targets"]
    for rank in range(2):
        assert text["stream"].index(f"first {rank}") < text["stream"].index(f"second {rank}")


def test_errors_show_each_engines_traceback(notebook, rc):
    text, cells = notebook
    # streamed: each engine's traceback as it fails, then a one-line error that stops the notebook
    error = next(o for o in cells["error"].outputs if o.output_type == "error")
    assert error.ename == "AlreadyDisplayedError" and error.traceback == ["2 errors on the engines (tracebacks above)"]
    streamed = "".join(o.text for o in cells["error"].outputs if o.output_type == "stream" and o.name == "stderr")
    for rank, eid in enumerate(rc.ids):
        assert f"[engine {eid}] RuntimeError: failed on {rank}" in streamed
    # not streamed: the CompositeError's own rendering, every engine's traceback
    error = next(o for o in cells["error_at_end"].outputs if o.output_type == "error")
    assert error.ename == "CompositeError"
    for rank, eid in enumerate(rc.ids):
        assert f"[engine {eid}] RuntimeError: ended on {rank}" in "\n".join(error.traceback)
    assert "magics.py" not in text["error"] + text["error_at_end"]


def test_bad_flag_lists_the_valid_ones(notebook):
    text, _ = notebook
    # IPython shows a UsageError as one stderr line, not a traceback
    usage = [line for line in text["badflag"].splitlines() if line.startswith("UsageError")]
    assert len(usage) == 1, text["badflag"]
    assert "--no-such-flag" in usage[0] and "-t/--targets=TARGETS" in usage[0] and "--local" in usage[0]


def test_autopx_sends_cells_to_the_engines(notebook, rc):
    text, _ = notebook
    assert "%autopx enabled" in text["autopx_on"] and "%autopx disabled" in text["autopx_off"]
    for rank, eid in enumerate(rc.ids):
        assert re.search(rf"Out\[{eid}:\d+\]: {15 + rank}\b", text["autopx_cell"]), text["autopx_cell"]
    assert text["local_after"].strip() == "False"
