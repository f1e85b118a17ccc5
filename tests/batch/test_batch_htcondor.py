import pytest

from ipphpc.batch.backend import BatchOutputError
from ipphpc.batch.htcondor import (
    ATTRIBUTES,
    BACKEND,
    parse_autoformat,
    parse_autoformat_rows,
    parse_json,
    record_from_ad,
)
from ipphpc.batch.states import State


def test_parse_submit(sample):
    assert BACKEND.parse_submit(sample("htcondor/condor_submit-terse.txt")) == "2"
    assert BACKEND.parse_submit(sample("htcondor/condor_submit-plain.txt")) == "1"
    with pytest.raises(BatchOutputError, match="Cannot allocate a cluster id"):
        BACKEND.parse_submit(sample("htcondor/condor_submit-refused.txt"))


def test_commands():
    attrs = ",".join(ATTRIBUTES)
    assert BACKEND.submit_command("/tmp/e.sub") == ["condor_submit", "-terse", "/tmp/e.sub"]
    assert BACKEND.status_command(["3", "4"]) == ["condor_q", "-json", "-attributes", attrs, "3", "4"]
    assert BACKEND.accounting_command(["3"]) == ["condor_history", "-json", "-attributes", attrs, "3"]
    assert BACKEND.cancel_command(["3"]) == ["condor_rm", "3"]
    assert BACKEND.array_directive(4, "x") == "queue 4"
    assert {"ClusterId", "ProcId", "JobStatus", "ExitCode", "HoldReason", "RemoveReason"} <= set(ATTRIBUTES)


def test_condor_q_json_with_attributes(sample):
    records = parse_json(sample("htcondor/condor_q-json-attributes.json"))
    assert [(r.key, r.state, r.host, r.native_id) for r in records] == [
        (("3", i), State.RUNNING, "vm", f"3.{i}") for i in range(4)
    ]


def test_condor_q_json_full_ad(sample):
    (record,) = parse_json(sample("htcondor/condor_q-json-3.0.json"))
    # a job released after a hold and running again: its old hold reason is not current
    assert (record.key, record.state, record.native_state, record.reason) == (
        ("3", 0),
        State.RUNNING,
        "Running",
        "",
    )


def test_condor_history_json(sample):
    (record,) = parse_json(sample("htcondor/condor_history-json.json"))
    assert (record.key, record.state, record.exit_code, record.host) == (("3", 0), State.COMPLETED, 0, "vm")


def test_no_matching_job_prints_nothing():
    assert parse_json("") == []
    assert parse_json("\n") == []


def test_condor_q_autoformat(sample):
    records = parse_autoformat(
        sample("htcondor/condor_q-af-JobStatus-RemoteHost.txt"), ("JobStatus", "RemoteHost")
    )
    assert [(r.key, r.state, r.host) for r in records] == [(("3", i), State.RUNNING, "vm") for i in range(4)]


def test_condor_q_autoformat_undefined(sample):
    (record,) = parse_autoformat(
        sample("htcondor/condor_q-af-JobStatus-HoldReason.txt"), ("JobStatus", "HoldReason")
    )
    assert (record.key, record.state, record.reason) == (("2", 0), State.PENDING, "")


def test_condor_history_autoformat(sample):
    text = sample(
        "htcondor/condor_history-af-JobStatus-ExitCode-ExitBySignal-CompletionDate-RemoteWallClockTime.txt"
    )
    records = parse_autoformat(
        text, ("JobStatus", "ExitCode", "ExitBySignal", "CompletionDate", "RemoteWallClockTime")
    )
    summary = {r.key: (r.state, r.exit_code) for r in records}
    assert len(summary) == 12
    assert [summary[("3", i)] for i in range(4)] == [(State.COMPLETED, 0)] * 4
    assert {summary[(c, i)] for c in ("1", "2") for i in range(4)} == {(State.CANCELLED, None)}


def test_condor_history_remove_reason_with_spaces(sample):
    records = parse_autoformat(
        sample("htcondor/condor_history-removed-af-JobStatus-RemoveReason.txt"), ("JobStatus", "RemoveReason")
    )
    assert [(r.key, r.state, r.reason) for r in records] == [
        (("2", 1), State.CANCELLED, "via condor_rm (by user ipptest)"),
        (("2", 0), State.CANCELLED, "via condor_rm (by user ipptest)"),
    ]


def test_free_text_attribute_in_the_middle(sample):
    text = sample("htcondor/condor_q-hold-af-HoldReason-Code-SubCode.txt")
    (ad,) = parse_autoformat_rows(
        text, ("HoldReason", "HoldReasonCode", "HoldReasonSubCode"), free_text="HoldReason"
    )
    assert (ad["ClusterId"], ad["ProcId"], ad["HoldReasonCode"], ad["HoldReasonSubCode"]) == (3, 0, 6, 22)
    assert ad["HoldReason"].startswith("Error from slot1_1@vm: Failed to execute '/bin/sh'")
    assert ad["HoldReason"].endswith("(errno=22: 'Invalid argument')")


@pytest.mark.parametrize(
    "ad, state, exit_code, reason",
    [
        ({"JobStatus": 1}, State.PENDING, None, ""),
        ({"JobStatus": 2}, State.RUNNING, None, ""),
        ({"JobStatus": 4, "ExitCode": 0, "ExitBySignal": False}, State.COMPLETED, 0, ""),
        ({"JobStatus": 4, "ExitCode": 3, "ExitBySignal": False}, State.FAILED, 3, ""),
        ({"JobStatus": 4, "ExitBySignal": True, "ExitSignal": 9}, State.FAILED, 137, "killed by signal 9"),
        (
            {"JobStatus": 5, "HoldReason": "via condor_hold (by user ipptest)"},
            State.HELD,
            None,
            "via condor_hold (by user ipptest)",
        ),
        (
            {"JobStatus": 3, "RemoveReason": "via condor_rm (by user ipptest)"},
            State.CANCELLED,
            None,
            "via condor_rm (by user ipptest)",
        ),
        (
            {
                "JobStatus": 3,
                "IpphpcWalltime": 60,
                "RemoveReason": "The job attribute PeriodicRemove expression '(JobStatus == 2)' evaluated to TRUE",
            },
            State.TIMEOUT,
            None,
            "The job attribute PeriodicRemove expression '(JobStatus == 2)' evaluated to TRUE",
        ),
        ({"JobStatus": 6}, State.RUNNING, None, ""),
        ({"JobStatus": 7}, State.RUNNING, None, ""),
        ({"JobStatus": 9}, State.LOST, None, ""),
    ],
)
def test_job_status_codes(ad, state, exit_code, reason):
    record = record_from_ad({"ClusterId": 5, "ProcId": 1, **ad})
    assert (record.state, record.exit_code, record.reason) == (state, exit_code, reason)


def test_periodic_remove_without_our_walltime_is_a_cancel():
    record = record_from_ad(
        {
            "ClusterId": 5,
            "ProcId": 0,
            "JobStatus": 3,
            "RemoveReason": "The job attribute PeriodicRemove expression 'x' evaluated to TRUE",
        }
    )
    assert record.state is State.CANCELLED


def test_array_directive_detection():
    assert BACKEND.has_array_directive("executable = x\nqueue 10\n")
    assert not BACKEND.has_array_directive("executable = x\n# queue 10\n")
