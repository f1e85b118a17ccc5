import pytest

from ipphpc.batch.backend import BatchOutputError
from ipphpc.batch.pbs import (
    PBSPRO,
    TORQUE,
    loads_lenient,
    parse_qstat_full_text,
    parse_qstat_json,
    parse_torque_status,
    split_job_id,
)
from ipphpc.batch.states import State


def by_key(records):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a job was reported twice"
    return {r.key: r for r in records}


def test_parse_submit(sample):
    assert PBSPRO.parse_submit(sample("pbs/qsub-pbspro.txt")) == "1240.pbs01"
    assert PBSPRO.parse_submit(sample("pbs/qsub-pbspro-array.txt")) == "1234[].pbs01"
    assert TORQUE.parse_submit(sample("pbs/qsub-torque-array.txt")) == "2001[].torque01.cluster"
    with pytest.raises(BatchOutputError):
        PBSPRO.parse_submit("qsub: Unknown queue\n")


def test_commands():
    assert PBSPRO.submit_command("/tmp/e.pbs") == ["qsub", "/tmp/e.pbs"]
    assert PBSPRO.status_command(["1234[].pbs01", "1235.pbs01"]) == [
        "qstat",
        "-f",
        "-F",
        "json",
        "-t",
        "1234[].pbs01",
        "1235.pbs01",
    ]
    assert PBSPRO.accounting_command(["1234[].pbs01"]) == [
        "qstat",
        "-x",
        "-f",
        "-F",
        "json",
        "-t",
        "1234[].pbs01",
    ]
    assert TORQUE.status_command(["2001[].t"]) == ["qstat", "-f", "-1", "-t", "2001[].t"]
    assert TORQUE.accounting_command(["2001[].t"]) is None
    assert PBSPRO.cancel_command(["1234[].pbs01"]) == ["qdel", "1234[].pbs01"]


def test_array_directives_differ_by_flavour():
    assert PBSPRO.array_directive(4, "x") == "#PBS -J 0-3"
    assert TORQUE.array_directive(4, "x") == "#PBS -t 0-3"
    # PBS Pro refuses a one-index range, so one element is a plain job
    assert PBSPRO.array_directive(1, "x") == ""
    assert TORQUE.array_directive(1, "x") == "#PBS -t 0-0"
    assert (PBSPRO.array_index_var, TORQUE.array_index_var) == ("PBS_ARRAY_INDEX", "PBS_ARRAYID")
    assert PBSPRO.has_array_directive("#PBS -J 0-3\n") and not PBSPRO.has_array_directive("#PBS -t 0-3\n")
    assert TORQUE.has_array_directive("#PBS -t 0-3\n") and not TORQUE.has_array_directive("#PBS -J 0-3\n")


@pytest.mark.parametrize(
    "job_id, parts",
    [
        ("1234[3].pbs01", ("1234[].pbs01", 3, True)),
        ("1234[].pbs01", ("1234[].pbs01", None, True)),
        ("1234-3.torque01", ("1234[].torque01", 3, True)),
        ("1240.pbs01", ("1240.pbs01", None, False)),
    ],
)
def test_split_job_id(job_id, parts):
    assert split_job_id(job_id) == parts


def test_pbspro_status_of_a_running_array(sample):
    records = by_key(parse_qstat_json(sample("pbs/qstat-pbspro-json-t.json")))
    # the array parent is reported through its subjobs
    assert sorted(records) == [
        ("1234[].pbs01", 0),
        ("1234[].pbs01", 1),
        ("1234[].pbs01", 2),
        ("1234[].pbs01", 3),
        ("1235.pbs01", None),
    ]
    summary = {k: (r.state, r.native_state, r.host) for k, r in records.items()}
    assert summary[("1234[].pbs01", 0)] == (State.RUNNING, "R", "node01")
    assert summary[("1234[].pbs01", 1)] == (State.RUNNING, "R", "node02")
    assert summary[("1234[].pbs01", 2)] == (State.COMPLETED, "X", "node03")
    assert summary[("1234[].pbs01", 3)] == (State.PENDING, "Q", None)
    assert summary[("1235.pbs01", None)] == (State.HELD, "H", None)
    assert records[("1234[].pbs01", 3)].reason == "Not Running: Insufficient amount of resource: ncpus"
    assert records[("1234[].pbs01", 1)].native_id == "1234[1].pbs01"


def test_pbspro_history(sample):
    records = by_key(parse_qstat_json(sample("pbs/qstat-pbspro-json-x-t.json")))
    summary = {k: (r.state, r.exit_code, r.signal) for k, r in records.items()}
    assert summary == {
        ("1240[].pbs01", 0): (State.COMPLETED, 0, None),
        ("1240[].pbs01", 1): (State.CANCELLED, 143, 15),  # 271 = 256 + SIGTERM (qdel)
        ("1240[].pbs01", 2): (State.TIMEOUT, None, None),  # -29 = JOB_EXEC_KILL_WALLTIME
        ("1240[].pbs01", 3): (State.FAILED, 3, None),
        ("1241.pbs01", None): (State.CANCELLED, None, None),  # deleted before it ran
        ("1242.pbs01", None): (State.CANCELLED, 137, 9),  # 265 = 256 + SIGKILL
    }
    assert "JOB_EXEC_KILL_WALLTIME" in records[("1240[].pbs01", 2)].reason
    assert records[("1241.pbs01", None)].reason.startswith("ended without running")


def test_pbspro_no_matching_job(sample):
    assert parse_qstat_json(sample("pbs/qstat-pbspro-json-empty.json")) == []
    assert parse_qstat_json("") == []


def test_pbspro_array_parent_without_subjobs_stands_for_every_index():
    text = '{"Jobs":{"77[].s":{"job_state":"Q","array":"True","array_indices_submitted":"0-2"}}}'
    records = parse_qstat_json(text)
    assert [(r.key, r.state) for r in records] == [(("77[].s", i), State.PENDING) for i in range(3)]


def test_pbspro_walltime_named_in_comment_is_timeout():
    text = '{"Jobs":{"78.s":{"job_state":"F","Exit_status":271,"comment":"job killed: walltime 65 exceeded limit 60"}}}'
    (record,) = parse_qstat_json(text)
    assert record.state is State.TIMEOUT


def test_pbspro_broken_json_is_still_read(sample):
    text = sample("pbs/qstat-pbspro-json-bad-escapes.json")
    (record,) = parse_qstat_json(text)
    assert (record.key, record.state, record.host) == (("1250.pbs01", None), State.RUNNING, "node01")


def test_lenient_loader_repairs_escapes_and_leading_zeros():
    data = loads_lenient(r'{"a":"x\,y","b":005,"c":"\\,","d":"q\"q"}')
    assert data == {"a": "x\\,y", "b": "005", "c": "\\,", "d": 'q"q'}


def test_pbspro_hopeless_output_raises():
    with pytest.raises(BatchOutputError):
        parse_qstat_json("qstat: illegally formed job identifier: x")


@pytest.mark.parametrize("path", ["pbs/qstat-torque-f-t.txt", "pbs/qstat-torque-x-t.xml"])
def test_torque_status_text_and_xml(sample, path):
    records = by_key(parse_torque_status(sample(path)))
    summary = {k: (r.state, r.exit_code, r.host) for k, r in records.items()}
    parent = "2001[].torque01.cluster"
    assert summary == {
        (parent, 0): (State.RUNNING, None, "node01"),
        (parent, 1): (State.COMPLETED, 0, "node02"),
        (parent, 2): (State.TIMEOUT, None, "node03"),  # -11 = JOB_EXEC_OVERLIMIT_WT
        (parent, 3): (State.CANCELLED, 143, "node04"),  # 271 = ended by SIGTERM
        ("2002.torque01.cluster", None): (State.PENDING, None, None),
        ("2003.torque01.cluster", None): (State.HELD, None, None),
    }


def test_torque_text_joins_folded_values(sample):
    jobs = parse_qstat_full_text(sample("pbs/qstat-torque-f-t.txt"))
    variables = jobs["2001[0].torque01.cluster"]["Variable_List"]
    assert variables.endswith("PBS_O_WORKDIR=/home/alice/work,PBS_ARRAYID=0")
    assert "PBS_O_LOGNAME=alice,PBS_O_PATH=/usr/bin:/bin," in variables
    assert jobs["2001[0].torque01.cluster"]["resources_used.walltime"] == "00:01:10"


def test_torque_xml_garbage_raises():
    with pytest.raises(BatchOutputError):
        parse_torque_status("<Data><Job>")
