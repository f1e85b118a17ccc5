import pytest

from ipphpc.batch.backend import BatchOutputError
from ipphpc.batch.lsf import BACKEND, BJOBS_FIELDS, first_host, map_state, parse_bjobs
from ipphpc.batch.states import State


def by_key(records):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "an element was reported twice"
    return {r.key: r for r in records}


def test_parse_submit(sample):
    assert BACKEND.parse_submit(sample("lsf/bsub.txt")) == "3100"
    assert BACKEND.parse_submit(sample("lsf/bsub-queue.txt")) == "3101"
    with pytest.raises(BatchOutputError, match="Job not submitted"):
        BACKEND.parse_submit(sample("lsf/bsub-rejected.txt"))


def test_commands():
    # bsub reads #BSUB lines only from standard input
    assert BACKEND.submit_via_stdin
    assert BACKEND.submit_command("/tmp/e.lsf") == ["bsub"]
    fmt = "jobid jobindex stat exit_code exec_host exit_reason pend_reason delimiter='|'"
    assert BACKEND.status_command(["3100", "3101"]) == ["bjobs", "-a", "-noheader", "-o", fmt, "3100", "3101"]
    assert BACKEND.accounting_command(["3100"]) == ["bjobs", "-d", "-noheader", "-o", fmt, "3100"]
    assert BACKEND.cancel_command(["3100"]) == ["bkill", "3100"]
    assert BACKEND.array_directive(4, "ipphpc-engines") == '#BSUB -J "ipphpc-engines[1-4]"'
    assert BACKEND.array_index_base == 1
    assert BJOBS_FIELDS[0] == "jobid"


def test_bjobs_delimited(sample):
    records = by_key(parse_bjobs(sample("lsf/bjobs-o-delimiter.txt")))
    summary = {k: (r.state, r.native_state, r.exit_code, r.host) for k, r in records.items()}
    assert summary == {
        ("3100", 1): (State.RUNNING, "RUN", None, "node01"),
        ("3100", 2): (State.RUNNING, "RUN", None, "node02"),
        ("3100", 3): (State.PENDING, "PEND", None, None),
        ("3100", 4): (State.HELD, "PSUSP", None, None),
        ("3102", None): (State.COMPLETED, "DONE", 0, "node04"),
        ("3103", None): (State.FAILED, "EXIT", 3, "node04"),
        ("3104", 1): (State.CANCELLED, "EXIT", 130, "node05"),
        ("3104", 2): (State.TIMEOUT, "EXIT", 140, "node05"),
        ("3104", 3): (State.RUNNING, "USUSP", None, "node06"),
        ("3105", None): (State.LOST, "UNKWN", None, "node07"),
    }
    assert records[("3100", 3)].reason == "New job is waiting for scheduling"
    assert records[("3104", 2)].reason.startswith("TERM_RUNLIMIT")
    assert records[("3100", 2)].native_id == "3100[2]"


def test_bjobs_json(sample):
    records = by_key(parse_bjobs(sample("lsf/bjobs-json.json")))
    # the ERROR record (an unknown id) is not a job
    assert sorted(records) == [("3100", 1), ("3100", 3), ("3102", None), ("3104", 2)]
    assert records[("3100", 1)].state is State.RUNNING and records[("3100", 1)].host == "node01"
    assert records[("3102", None)].state is State.COMPLETED and records[("3102", None)].exit_code == 0
    assert records[("3104", 2)].state is State.TIMEOUT and records[("3104", 2)].exit_code == 140


def test_bjobs_text_and_json_agree(sample):
    text = by_key(parse_bjobs(sample("lsf/bjobs-o-delimiter.txt")))
    json_records = parse_bjobs(sample("lsf/bjobs-json.json"))
    for record in json_records:
        assert text[record.key] == record


def test_not_found_is_not_a_record(sample):
    assert parse_bjobs(sample("lsf/bjobs-not-found.stderr.txt")) == []


@pytest.mark.parametrize(
    "native, reason, state",
    [
        ("PEND", "", State.PENDING),
        ("PSUSP", "", State.HELD),
        ("SSUSP", "", State.RUNNING),
        ("DONE", "", State.COMPLETED),
        ("EXIT", "", State.FAILED),
        ("EXIT", "TERM_RUNLIMIT: job killed after reaching LSF run time limit", State.TIMEOUT),
        ("EXIT", "TERM_OWNER: job killed by owner", State.CANCELLED),
        ("EXIT", "TERM_ADMIN: job killed by root or LSF administrator", State.CANCELLED),
        ("EXIT", "TERM_MEMLIMIT: job killed after reaching LSF memory usage limit", State.FAILED),
        ("ZOMBI", "", State.CANCELLED),
        ("UNKWN", "", State.LOST),
    ],
)
def test_state_map(native, reason, state):
    assert map_state(native, reason) is state


@pytest.mark.parametrize(
    "text, host", [("8*node01", "node01"), ("4*a:4*b", "a"), ("node04", "node04"), ("", None)]
)
def test_first_host(text, host):
    assert first_host(text) == host


def test_array_directive_detection():
    assert BACKEND.has_array_directive('#BSUB -J "engines[1-10]"\n')
    assert BACKEND.has_array_directive("#BSUB -J engines[1-10]\n")
    assert not BACKEND.has_array_directive("#BSUB -J engines\n")
