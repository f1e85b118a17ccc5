import pytest

from ipphpc.batch.backend import BatchOutputError
from ipphpc.batch.sge import BACKEND, map_state, parse_qacct, parse_qstat_xml
from ipphpc.batch.states import State


def by_key(records):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a task was reported twice"
    return {r.key: r for r in records}


@pytest.mark.parametrize(
    "path, job_id",
    [
        ("sge/qsub-terse.txt", "5"),
        ("sge/qsub-terse-array.txt", "2"),
        ("sge/qsub-plain-array.txt", "4"),
        ("sge/qsub-plain.txt", "12"),
    ],
)
def test_parse_submit(sample, path, job_id):
    assert BACKEND.parse_submit(sample(path)) == job_id


def test_parse_submit_error():
    with pytest.raises(BatchOutputError):
        BACKEND.parse_submit("Unable to run job: Error reading answer list from qmaster\nExiting.\n")


def test_commands():
    assert BACKEND.submit_command("/tmp/e.sge") == ["qsub", "-terse", "/tmp/e.sge"]
    assert BACKEND.status_command(["4", "5"]) == ["qstat", "-xml"]
    assert BACKEND.accounting_command(["4"]) == ["qacct", "-j", "4"]
    assert BACKEND.accounting_command(["4", "5"], owner="alice") == ["qacct", "-o", "alice", "-j"]
    assert BACKEND.cancel_command(["4", "5"]) == ["qdel", "4", "5"]
    # SGE arrays are 1-based
    assert BACKEND.array_directive(4, "x") == "#$ -t 1-4"
    assert BACKEND.array_index_base == 1


def test_qstat_xml_capture(sample):
    records = by_key(parse_qstat_xml(sample("sge/qstat-xml.xml")))
    summary = {k: (r.state, r.native_state) for k, r in records.items()}
    running = (State.RUNNING, "r")
    assert summary == {
        ("4", 1): running,
        ("4", 2): running,
        ("4", 3): running,
        ("4", 4): running,
        ("5", None): running,
        ("9", None): running,
        ("10", 1): running,
        ("10", 2): running,
        ("10", 3): running,
        ("10", 4): running,
        ("11", None): (State.FAILED, "Eqw"),
        ("6", None): (State.HELD, "hqw"),
        # a pending range is expanded into its tasks
        ("7", 1): (State.HELD, "hqw"),
        ("7", 2): (State.HELD, "hqw"),
        ("7", 3): (State.HELD, "hqw"),
    }
    assert records[("4", 2)].host == "vm"
    assert records[("6", None)].host is None
    assert "error" in records[("11", None)].reason


def test_qstat_xml_nothing_queued():
    assert parse_qstat_xml("") == []
    empty = (
        "<?xml version='1.0'?>\n<job_info>\n  <queue_info>\n  </queue_info>\n"
        "  <job_info>\n  </job_info>\n</job_info>\n"
    )
    assert parse_qstat_xml(empty) == []


def test_qstat_xml_garbage_raises():
    with pytest.raises(BatchOutputError):
        parse_qstat_xml("error: commlib error: got select error (Connection refused)")


@pytest.mark.parametrize(
    "native, state",
    [
        ("qw", State.PENDING),
        ("hqw", State.HELD),
        ("hRwq", State.HELD),
        ("r", State.RUNNING),
        ("t", State.RUNNING),
        ("Rr", State.RUNNING),
        ("s", State.RUNNING),
        ("Eqw", State.FAILED),
        ("Ehqw", State.FAILED),
        # deleted while running: still running until execd kills it
        ("dr", State.RUNNING),
        ("dt", State.RUNNING),
        # deleted before it started: leaves no accounting record
        ("dqw", State.CANCELLED),
        ("dhqw", State.CANCELLED),
        ("z", State.LOST),
        ("??", State.LOST),
    ],
)
def test_state_letters(native, state):
    assert map_state(native)[0] is state


def test_qacct_completed_array(sample):
    records = by_key(parse_qacct(sample("sge/qacct-j-array-completed.txt")))
    assert sorted(records) == [("4", 1), ("4", 2), ("4", 3), ("4", 4)]
    assert {(r.state, r.exit_code, r.host) for r in records.values()} == {(State.COMPLETED, 0, "vm")}


def test_qacct_non_zero_exit(sample):
    (record,) = parse_qacct(sample("sge/qacct-j-exit3.txt"))
    assert (record.key, record.state, record.exit_code, record.signal) == (("8", None), State.FAILED, 3, None)


def test_qacct_h_rt_limit_is_timeout(sample):
    (record,) = parse_qacct(sample("sge/qacct-j-h_rt.txt"))
    assert (record.key, record.state, record.exit_code, record.signal) == (("9", None), State.TIMEOUT, 137, 9)
    assert record.reason == "qmaster enforced h_rt, h_cpu, or h_vmem limit"


def test_qacct_qdel_is_cancelled(sample):
    records = by_key(parse_qacct(sample("sge/qacct-j-qdel-grep.txt")))
    assert sorted(records) == [("10", 1), ("10", 2), ("10", 3), ("10", 4)]
    assert {(r.state, r.exit_code, r.signal) for r in records.values()} == {(State.CANCELLED, 137, 9)}


def test_qacct_unwritable_output_is_failed(sample):
    (record,) = parse_qacct(sample("sge/qacct-j-bad-output-grep.txt"))
    assert record.state is State.FAILED
    assert record.exit_code == 0
    assert record.reason == "failed 26: opening input/output file"


def test_qacct_keeps_the_last_record_of_a_retried_task():
    text = (
        "==============================================================\n"
        "jobnumber    12\ntaskid       1\nfailed       11  : before job\nexit_status  0\n"
        "==============================================================\n"
        "jobnumber    12\ntaskid       1\nfailed       0    \nexit_status  0\n"
    )
    (record,) = parse_qacct(text)
    assert record.state is State.COMPLETED


def test_qacct_unknown_job_prints_nothing_to_parse(sample):
    assert parse_qacct(sample("sge/qacct-j-never-started.stderr.txt")) == []


def test_array_directive_detection():
    assert BACKEND.has_array_directive("#!/bin/bash\n#$ -t 1-10\n")
    assert not BACKEND.has_array_directive("#!/bin/bash\n#$ -N x\n")
