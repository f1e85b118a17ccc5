import pytest

from ipphpc.batch.states import (
    JobRecord,
    State,
    exit_file_path,
    parse_exit_text,
    read_exit_file,
    short_job_id,
    state_from_exit_code,
)


def test_state_values_are_their_names():
    assert [s.value for s in State] == [
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "HELD",
        "LOST",
    ]
    assert State("TIMEOUT") is State.TIMEOUT
    assert State.HELD == "HELD"


@pytest.mark.parametrize(
    "state, finished, active",
    [
        (State.PENDING, False, True),
        (State.RUNNING, False, True),
        (State.HELD, False, True),
        (State.COMPLETED, True, False),
        (State.FAILED, True, False),
        (State.CANCELLED, True, False),
        (State.TIMEOUT, True, False),
        (State.LOST, True, False),
    ],
)
def test_finished_and_active_partition_the_states(state, finished, active):
    assert state.finished is finished
    assert state.active is active


def test_only_completed_succeeded():
    assert [s for s in State if s.succeeded] == [State.COMPLETED]


def test_record_key_and_finished():
    record = JobRecord("57", 3, State.TIMEOUT, "TIMEOUT")
    assert record.key == ("57", 3)
    assert record.finished
    assert record.reason == "" and record.exit_code is None and record.host is None


@pytest.mark.parametrize(
    "job_id, short",
    [
        ("57", "57"),
        ("57;cluster2", "57"),
        ("1234[].pbs01", "1234"),
        ("1234[3].pbs01.example.org", "1234"),
        ("1234-3.torque01", "1234"),
        ("1240.pbs01", "1240"),
    ],
)
def test_short_job_id(job_id, short):
    assert short_job_id(job_id) == short


def test_exit_file_path_convention(tmp_path):
    assert exit_file_path(tmp_path, "c1", "1234[].pbs01", 3) == tmp_path / "log" / "c1" / "exit-1234-3"
    assert exit_file_path(tmp_path, "c1", "58") == tmp_path / "log" / "c1" / "exit-58"


def test_read_exit_file(tmp_path):
    path = tmp_path / "exit-57-0"
    assert read_exit_file(path) is None
    path.write_text("143\n")
    assert read_exit_file(path) == 143
    path.write_text("")
    assert read_exit_file(path) is None


@pytest.mark.parametrize("text, code", [("0\n", 0), (" 3 ", 3), ("-1", -1), ("", None), ("1x", None)])
def test_parse_exit_text(text, code):
    assert parse_exit_text(text) == code


def test_state_from_exit_code():
    assert state_from_exit_code(0) is State.COMPLETED
    assert state_from_exit_code(1) is State.FAILED
    assert state_from_exit_code(143) is State.FAILED
