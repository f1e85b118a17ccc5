"""Controllers and engines start with glibc's huge-page tunable (large zmq messages arrive several times
faster), added to what GLIBC_TUNABLES already says, never overriding a choice the user made."""
from __future__ import annotations

import os
from pathlib import Path

import ipphpc
from ipphpc.launch.processes import HUGEPAGE_TUNABLE, child_env


def test_the_tunable_is_added_and_a_users_choice_kept():
    assert child_env({})["GLIBC_TUNABLES"] == HUGEPAGE_TUNABLE
    assert child_env({"GLIBC_TUNABLES": "glibc.malloc.check=3"})["GLIBC_TUNABLES"] == \
        f"glibc.malloc.check=3:{HUGEPAGE_TUNABLE}"
    assert child_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"
    assert child_env({"A": "1"})["A"] == "1"


def _tunables():
    import os
    return os.environ.get("GLIBC_TUNABLES")


def test_local_engines_run_with_it_and_the_controller_without(ipphpc_dir, monkeypatch):
    """Not the controller: with its heap on huge pages, freed records would not be given back."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    with ipphpc.Cluster(n=1, shutdown_atexit=False) as rc:
        assert rc[:].apply_sync(_tunables) == [HUGEPAGE_TUNABLE]
        ctl = rc._cluster.controller_launcher.pid
        raw = Path(f"/proc/{ctl}/environ").read_bytes()
        env = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
        assert b"GLIBC_TUNABLES" not in env
    assert "GLIBC_TUNABLES" not in os.environ  # this process is left as it was
