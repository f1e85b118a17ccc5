"""The cluster file of a controller started by hand, so that `ipphpc list`, `status` and `stop` see it.

A controller started by `ipphpc submit` or HPCCluster already has a cluster file, written by
whoever started it; this one only claims the name when nobody has, and the claim is atomic
(a hard link fails when the file exists), so a cluster's own file always wins.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .. import paths

#: marks a record written by the controller itself
BY_HAND = "by_hand"


def claim(pdir: Path, cluster_id: str, ip: str) -> Path | None:
    """Write `security/cluster-<id>.json` describing this process, unless it exists; the path if written."""
    if not cluster_id:
        return None  # HPCCluster gives a cluster without an id a new one: such a record could not be found again
    if os.environ.get("IPPHPC_CLUSTER_ID") == cluster_id:
        return None  # a cluster's own batch script started it (on another host, maybe): its file is the cluster's
    path = paths.cluster_file(pdir, cluster_id)
    record = {"cluster": {"cluster_id": cluster_id, "profile_dir": str(pdir), "n": 0, "engines": "local",
                          "controller": "local", "controller_ip": ip, "created": time.time(), BY_HAND: True},
              "controller": {"kind": "local", "role": "controller", "n": 1, "pid": os.getpid(),
                             "cmd": [sys.executable, *sys.argv]},
              "engine_sets": []}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def release(path: Path | None) -> None:
    """Remove the record written by `claim`, if it still describes this process."""
    if path is None:
        return
    try:
        record = json.loads(path.read_text())
        if record["cluster"].get(BY_HAND) and record["controller"]["pid"] == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
