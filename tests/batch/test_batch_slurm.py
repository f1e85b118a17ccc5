import pytest

from ipphpc.batch.backend import BatchOutputError
from ipphpc.batch.slurm import (
    BACKEND,
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    map_state,
    parse_exit_code,
    parse_sacct,
    parse_squeue,
    split_job_id,
)
from ipphpc.batch.states import State

R, P, H = State.RUNNING, State.PENDING, State.HELD


def by_key(records):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "a task was reported twice"
    return {r.key: r for r in records}


def test_parse_submit_parsable_and_plain(sample):
    assert BACKEND.parse_submit(sample("slurm/sbatch-parsable.txt")) == "58"
    assert BACKEND.parse_submit(sample("slurm/sbatch-plain.txt")) == "57"
    assert BACKEND.parse_submit("123;clusterA\n") == "123"


def test_parse_submit_failure_raises_with_output():
    with pytest.raises(BatchOutputError, match="Unable to contact"):
        BACKEND.parse_submit(
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"
        )


def test_commands():
    assert BACKEND.submit_command("/tmp/e.sbatch") == ["sbatch", "--parsable", "/tmp/e.sbatch"]
    assert BACKEND.status_command(["57", "58"]) == [
        "squeue",
        "--noheader",
        "--array",
        "--states=all",
        "--jobs=57,58",
        "--format=%F|%K|%A|%T|%r|%N",
    ]
    assert BACKEND.accounting_command(["57", "58"]) == [
        "sacct",
        "--noheader",
        "--parsable2",
        "--allocations",
        "--jobs=57,58",
        "--format=JobID,JobIDRaw,State,ExitCode,NodeList",
    ]
    assert BACKEND.cancel_command(["57", "58"]) == ["scancel", "57", "58"]
    assert BACKEND.array_directive(4, "x") == "#SBATCH --array=0-3"


def test_squeue_unfolded_capture(sample):
    records = by_key(
        parse_squeue(
            sample("slurm/squeue-r-i-A-a-F-K-T-r.txt"), ("%i", "%A", "%a", "%F", "%K", "%T", "%r"), sep=None
        )
    )
    assert {k: (r.state, r.reason) for k, r in records.items()} == {
        ("60", 0): (P, "Dependency"),
        ("60", 1): (P, "Dependency"),
        ("60", 2): (P, "Dependency"),
        ("59", None): (H, "JobHeldUser"),
        ("57", 0): (R, ""),
        ("57", 1): (R, ""),
        ("57", 2): (R, ""),
        ("57", 3): (R, ""),
        ("58", None): (R, ""),
        ("62", None): (R, ""),
        ("63", 0): (R, ""),
        ("63", 1): (R, ""),
        ("63", 2): (R, ""),
        ("63", 3): (R, ""),
    }
    # each task keeps its own Slurm job id; the highest index reuses the array's id
    assert [records[("57", i)].native_id for i in range(4)] == ["64", "65", "66", "57"]
    assert records[("59", None)].native_state == "PENDING"


def test_squeue_finished_jobs_and_folded_pending_array(sample):
    records = by_key(
        parse_squeue(sample("slurm/squeue-t-all-i-T-r-M-l.txt"), ("%i", "%T", "%r", "%M", "%l"), sep=None)
    )
    states = {k: r.state for k, r in records.items()}
    assert states == {
        ("63", 0): State.CANCELLED,
        ("63", 1): State.CANCELLED,
        ("63", 2): State.CANCELLED,
        ("63", 3): State.CANCELLED,
        ("57", 0): State.COMPLETED,
        ("57", 1): State.COMPLETED,
        ("57", 2): State.COMPLETED,
        ("57", 3): State.COMPLETED,
        ("58", None): State.COMPLETED,
        ("61", None): State.FAILED,
        ("60", 0): P,
        ("60", 1): P,
        ("60", 2): P,
        ("59", None): H,
        ("62", None): State.TIMEOUT,
    }
    assert records[("62", None)].reason == "TimeLimit"
    assert records[("61", None)].reason == "NonZeroExitCode"


def test_squeue_concurrency_limited_array(sample):
    folded = parse_squeue(sample("slurm/squeue-array-limit-i-T-r.txt"), ("%i", "%T", "%r"), sep=None)
    unfolded = parse_squeue(sample("slurm/squeue-array-limit-r-i-T-r.txt"), ("%i", "%T", "%r"), sep=None)
    assert sorted((r.key, r.state, r.reason) for r in folded) == sorted(
        (r.key, r.state, r.reason) for r in unfolded
    )
    assert sorted(r.array_index for r in folded if r.state is P) == [2, 3, 4, 5]
    assert {r.reason for r in folded if r.state is P} == {"JobArrayTaskLimit"}


def test_squeue_single_cancelled_task(sample):
    records = by_key(
        parse_squeue(sample("slurm/squeue-one-task-cancelled-i-T-r.txt"), ("%i", "%T", "%r"), sep=None)
    )
    assert records[("63", 1)].state is State.CANCELLED
    assert [records[("63", i)].state for i in (0, 2, 3)] == [R, R, R]


def test_squeue_jobs_cancelled_while_pending(sample):
    records = by_key(
        parse_squeue(sample("slurm/squeue-cancelled-pending-i-T-r.txt"), ("%i", "%T", "%r"), sep=None)
    )
    assert sorted(records) == [("59", None), ("60", 0), ("60", 1), ("60", 2)]
    assert {r.state for r in records.values()} == {State.CANCELLED}


def test_squeue_default_format_round_trip():
    text = "57|0|64|RUNNING|None|node01\n57|1|65|PENDING|JobHeldAdmin|\n58|N/A|58|COMPLETING|None|node02\n"
    records = parse_squeue(text)
    assert [(r.key, r.state, r.native_id, r.host) for r in records] == [
        (("57", 0), R, "64", "node01"),
        (("57", 1), H, "65", None),
        (("58", None), R, "58", "node02"),
    ]
    assert SQUEUE_FIELDS == ("%F", "%K", "%A", "%T", "%r", "%N")


def test_sacct_while_running(sample):
    fields = ("JobID", "JobIDRaw", "JobName", "State", "ExitCode", "Reason")
    records = by_key(parse_sacct(sample("slurm/sacct-running.txt"), fields))
    assert records[("59", None)].state is H
    assert records[("61", None)].state is State.FAILED and records[("61", None)].exit_code == 3
    assert [records[("60", i)].state for i in range(3)] == [P, P, P]
    assert records[("60", 1)].reason == "Dependency"
    assert records[("57", 3)].native_id == "57" and records[("57", 0)].native_id == "64"
    assert records[("57", 0)].exit_code is None  # a running job has no exit code yet


def test_sacct_after_the_end(sample):
    fields = (
        "JobID",
        "JobIDRaw",
        "JobName",
        "State",
        "ExitCode",
        "Start",
        "End",
        "Elapsed",
        "Timelimit",
        "NodeList",
    )
    records = by_key(parse_sacct(sample("slurm/sacct-finished.txt"), fields))
    summary = {k: (r.state, r.exit_code) for k, r in records.items()}
    assert summary == {
        ("58", None): (State.COMPLETED, 0),
        ("59", None): (P, None),
        ("61", None): (State.FAILED, 3),
        ("62", None): (State.TIMEOUT, 0),
        ("57", 0): (State.COMPLETED, 0),
        ("57", 1): (State.COMPLETED, 0),
        ("57", 2): (State.COMPLETED, 0),
        ("57", 3): (State.COMPLETED, 0),
        ("60", 0): (P, None),
        ("60", 1): (P, None),
        ("60", 2): (P, None),
        ("63", 0): (State.CANCELLED, 0),
        ("63", 1): (State.CANCELLED, 0),
        ("63", 2): (State.CANCELLED, 0),
        ("63", 3): (State.CANCELLED, 0),
    }
    assert records[("63", 2)].native_state == "CANCELLED"
    assert records[("63", 2)].reason == "CANCELLED by 0"
    assert records[("58", None)].host == "vm"
    assert records[("60", 0)].host is None  # "None assigned"


def test_sacct_jobs_cancelled_while_pending(sample):
    records = parse_sacct(
        sample("slurm/sacct-cancelled-pending.txt"),
        ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "End"),
    )
    assert sorted(r.key for r in records) == [("59", None), ("60", 0), ("60", 1), ("60", 2)]
    assert {r.state for r in records} == {State.CANCELLED}


def test_sacct_skips_steps(sample):
    records = parse_sacct(sample("slurm/sacct-steps.txt"), ("JobID", "State", "ExitCode", "DerivedExitCode"))
    assert [(r.key, r.state, r.exit_code) for r in records] == [
        (("61", None), State.FAILED, 3),
        (("62", None), State.TIMEOUT, 0),
    ]


def test_sacct_default_fields():
    assert SACCT_FIELDS == ("JobID", "JobIDRaw", "State", "ExitCode", "NodeList")
    records = parse_sacct("57_1|65|OUT_OF_MEMORY|0:125|node01\n57_2|66|CANCELLED+|0:15|node01\n")
    assert [(r.key, r.state, r.native_state, r.exit_code, r.signal) for r in records] == [
        (("57", 1), State.FAILED, "OUT_OF_MEMORY", 128 + 125, 125),
        (("57", 2), State.CANCELLED, "CANCELLED", 143, 15),
    ]


@pytest.mark.parametrize(
    "native, reason, state",
    [
        ("PENDING", "JobHeldUser", State.HELD),
        ("PENDING", "JobHeldAdmin", State.HELD),
        ("PENDING", "Priority", State.PENDING),
        ("COMPLETING", "", State.RUNNING),
        ("NODE_FAIL", "", State.FAILED),
        ("BOOT_FAIL", "", State.FAILED),
        ("OUT_OF_MEMORY", "", State.FAILED),
        ("PREEMPTED", "", State.CANCELLED),
        ("TIMEOUT", "", State.TIMEOUT),
        ("REQUEUE_HOLD", "", State.HELD),
        ("PD", "", State.PENDING),
        ("CG", "", State.RUNNING),
        ("SOMETHING_NEW", "", State.LOST),
    ],
)
def test_state_map(native, reason, state):
    assert map_state(native, reason) is state


@pytest.mark.parametrize(
    "text, result", [("3:0", (3, None)), ("0:15", (143, 15)), ("0:0", (0, None)), ("", (None, None))]
)
def test_parse_exit_code(text, result):
    assert parse_exit_code(text) == result


def test_split_job_id():
    assert split_job_id("57_3") == ("57", [3])
    assert split_job_id("60_[0-2]") == ("60", [0, 1, 2])
    assert split_job_id("58") == ("58", [None])


def test_array_directive_detection():
    assert BACKEND.has_array_directive("#!/bin/bash\n#SBATCH --array=0-9\n")
    assert BACKEND.has_array_directive("#!/bin/bash\n#SBATCH -a 0-9\n")
    assert not BACKEND.has_array_directive("#!/bin/bash\n#SBATCH --account=x\n# --array=0-9\n")
