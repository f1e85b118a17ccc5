import dataclasses
import textwrap

import pytest

from ipphpc.batch import htcondor, lsf, pbs, sge, slurm
from ipphpc.batch.backend import Backend
from ipphpc.batch.registry import available_backends, get_backend


@pytest.mark.parametrize(
    "name, backend",
    [
        ("slurm", slurm.BACKEND),
        ("SLURM", slurm.BACKEND),
        (" Slurm ", slurm.BACKEND),
        ("pbs", pbs.PBSPRO),
        ("PBSPro", pbs.PBSPRO),
        ("openpbs", pbs.PBSPRO),
        ("torque", pbs.TORQUE),
        ("sge", sge.BACKEND),
        ("gridengine", sge.BACKEND),
        ("lsf", lsf.BACKEND),
        ("htcondor", htcondor.BACKEND),
        ("condor", htcondor.BACKEND),
        ("HTCondor", htcondor.BACKEND),
    ],
)
def test_short_names_and_aliases(name, backend):
    assert get_backend(name) is backend


def test_every_alias_a_backend_declares_resolves_to_it():
    for backend in (slurm.BACKEND, pbs.PBSPRO, pbs.TORQUE, sge.BACKEND, lsf.BACKEND, htcondor.BACKEND):
        for name in backend.names:
            assert get_backend(name) is backend, name


def test_a_backend_passes_through():
    assert get_backend(slurm.BACKEND) is slurm.BACKEND


@pytest.mark.parametrize(
    "target", ["ipphpc.batch.slurm:BACKEND", "ipphpc.batch.slurm.BACKEND", "ipphpc.batch.pbs:TORQUE"]
)
def test_import_strings(target):
    expected = pbs.TORQUE if target.endswith("TORQUE") else slurm.BACKEND
    assert get_backend(target) is expected


def _write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_custom_backend_from_import_string(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "site_sched",
        """
        import dataclasses
        from ipphpc.batch.slurm import BACKEND as _slurm
        CUSTOM = dataclasses.replace(_slurm, name="site-slurm", aliases=())
        def make():
            return CUSTOM
        NOT_A_BACKEND = 42
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backend = get_backend("site_sched:CUSTOM")
    assert backend.name == "site-slurm"
    assert get_backend("site_sched.make") is backend  # a factory is called
    with pytest.raises(TypeError, match="not an ipphpc Backend"):
        get_backend("site_sched:NOT_A_BACKEND")
    with pytest.raises(ValueError, match="cannot load"):
        get_backend("site_sched:MISSING")
    with pytest.raises(ValueError, match="cannot load"):
        get_backend("no_such_module_anywhere.thing")


def test_entry_point_plugins(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "ipphpc_fluxish",
        """
        import dataclasses
        from ipphpc.batch.slurm import BACKEND as _slurm
        BACKEND = dataclasses.replace(_slurm, name="fluxish", aliases=())
    """,
    )
    dist = tmp_path / "ipphpc_fluxish-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ipphpc-fluxish\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ipphpc.backends]\nFluxish = ipphpc_fluxish:BACKEND\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "fluxish" in available_backends()
    backend = get_backend("FLUXISH")
    assert isinstance(backend, Backend) and backend.name == "fluxish"


def test_unknown_name_lists_choices_and_suggests_the_closest():
    with pytest.raises(ValueError) as info:
        get_backend("slrum")
    message = str(info.value)
    assert "'slrum'" in message
    for name in ("slurm", "pbspro", "torque", "sge", "lsf", "htcondor", "condor"):
        assert name in message
    assert "did you mean 'slurm'?" in message


def test_unknown_name_without_close_match():
    with pytest.raises(ValueError) as info:
        get_backend("kubernetes")
    assert "did you mean" not in str(info.value)
    assert "valid names:" in str(info.value)


def test_backends_are_distinct_objects_with_their_own_names():
    names = [get_backend(n).name for n in ("slurm", "pbspro", "torque", "sge", "lsf", "htcondor")]
    assert names == ["slurm", "pbspro", "torque", "sge", "lsf", "htcondor"]
    assert dataclasses.replace(slurm.BACKEND, name="x").state_map == slurm.BACKEND.state_map
