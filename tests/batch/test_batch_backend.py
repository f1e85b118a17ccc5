import pytest

from ipphpc.batch.backend import expand_index_list, int_or_none, split_array
from ipphpc.batch.registry import get_backend


@pytest.mark.parametrize(
    "expr, indices",
    [
        ("0-2", [0, 1, 2]),
        ("[0-2]", [0, 1, 2]),
        ("[0-2,5,7-9%2]", [0, 1, 2, 5, 7, 8, 9]),
        ("2-5%2", [2, 3, 4, 5]),
        ("1-3:1", [1, 2, 3]),
        ("3-6:1", [3, 4, 5, 6]),
        ("1-10:3", [1, 4, 7, 10]),
        ("7", [7]),
        ("1,4-5", [1, 4, 5]),
    ],
)
def test_expand_index_list(expr, indices):
    assert expand_index_list(expr) == indices


def test_expand_index_list_rejects_garbage():
    with pytest.raises(ValueError):
        expand_index_list("a-b")


@pytest.mark.parametrize(
    "total, size, chunks",
    [
        (10, 4, [(0, 4), (4, 4), (8, 2)]),
        (8, 4, [(0, 4), (4, 4)]),
        (3, 1001, [(0, 3)]),
        (1, 1, [(0, 1)]),
        (0, 5, []),
    ],
)
def test_split_array(total, size, chunks):
    assert split_array(total, size) == chunks
    assert sum(s for _, s in chunks) == total


def test_split_array_rejects_bad_limits():
    with pytest.raises(ValueError):
        split_array(5, 0)
    with pytest.raises(ValueError):
        split_array(-1, 5)


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("-11", -11),
        ("137 (Killed)", 137),
        ("-", None),
        ("N/A", None),
        ("undefined", None),
        (None, None),
    ],
)
def test_int_or_none(text, value):
    assert int_or_none(text) == value


@pytest.mark.parametrize(
    "name, index, element",
    [
        ("slurm", 0, 0),
        ("slurm", 5, 5),
        ("sge", 1, 0),
        ("sge", 4, 3),
        ("lsf", 1, 0),
        ("htcondor", 2, 2),
        ("pbspro", None, 0),
    ],
)
def test_element_index_respects_the_index_base(name, index, element):
    assert get_backend(name).element_index(index) == element


def test_backend_data_is_read_only():
    backend = get_backend("slurm")
    with pytest.raises(TypeError):
        backend.state_map["RUNNING"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        backend.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "name, path",
    [
        ("slurm", "slurm/squeue-unknown-id.stderr.txt"),
        ("sge", "sge/qstat-j-finished.stderr.txt"),
        ("sge", "sge/qacct-j-never-started.stderr.txt"),
        ("pbspro", "pbs/qstat-pbspro-unknown.stderr.txt"),
        ("lsf", "lsf/bjobs-not-found.stderr.txt"),
    ],
)
def test_unknown_job_errors_are_recognised(sample, name, path):
    assert get_backend(name).is_unknown_job_error(sample(path))


def test_other_errors_are_not_taken_for_unknown_jobs(sample):
    assert not get_backend("slurm").is_unknown_job_error(sample("slurm/squeue-controller-down.stderr.txt"))
