"""An engine behind a login node: SSH tunnel set-up and registration, beside a direct connection.

    .venv/bin/python bench/tunnel_bench.py              # 7 runs of each, about 10 s
    .venv/bin/python bench/tunnel_bench.py --runs 3 --json out.json

Runs on the network-namespace hosts of .ci/services/netns.sh (root needed for
``ip netns exec``): the controller on ``ctl`` (10.201.1.1), an engine on
``compute``, which reaches ctl only through ssh via ``login``, and an engine
on ``login``, which reaches ctl directly.  Timed:

* ``ipphpc engine --ssh=login`` on compute: from starting the command until
  its log says it registered, and the tunnel set-up the engine itself logs
  (``ssh -N -L`` started -> forwards accept -> the controller answered);
* ``ipphpc engine`` on login, no tunnel: from start until registered;
* on compute, inside one Python process (no interpreter start in the
  figure): a bare ``ssh -N -L`` until its local port accepts and until the
  controller's first byte comes through it, and ipphpc's ``open_tunnel``.

The engines alternate (tunnel, direct, tunnel, ...); each is stopped, and its
ssh gone, before the next starts.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from hpc_common import (  # noqa: E402 - found through the path set above
    bench_env,
    fmt,
    header,
    median,
    progress,
    ratio,
    reap,
    render_table,
    stop_group,
    tagged_pids,
    wait_until,
    write_json,
)

NODES = {"ctl": "ipp-ctl", "login": "ipp-login", "compute": "ipp-compute"}
CTL_ADDR = os.environ.get("IPPHPC_NETNS_CTL_ADDR", "10.201.1.1")
REGISTERED = re.compile(r"registered as engine (\d+)")
TUNNEL_UP = re.compile(r"through \S+ \(ssh pid (\d+), up in ([\d.]+) s\)")

# runs on compute: bare ssh -N -L, then ipphpc's open_tunnel, `reps` times each
HELPER = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    from ipphpc.ssh.tunnel import free_ports, open_tunnel
    host, port, server, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    out = {"bare_accept_s": [], "bare_first_byte_s": [], "ipphpc_open_s": [], "ipphpc_setup_time_s": []}
    for _ in range(reps):
        lp = free_ports(1)[0]
        t0 = time.perf_counter()
        p = subprocess.Popen(["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{lp}:{host}:{port}",
                              server], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                if p.poll() is not None:
                    raise SystemExit(f"ssh exited {p.returncode}")
                try:
                    s = socket.create_connection(("127.0.0.1", lp), timeout=1)
                    break
                except OSError:
                    if time.perf_counter() - t0 > 20:
                        raise SystemExit("ssh -N -L did not listen within 20 s")
                    time.sleep(0.002)
            out["bare_accept_s"].append(time.perf_counter() - t0)
            s.settimeout(10)
            if not s.recv(1):
                raise SystemExit("the tunnel closed without a byte from the controller")
            out["bare_first_byte_s"].append(time.perf_counter() - t0)
            s.close()
        finally:
            p.terminate()
            p.wait(10)
        t0 = time.perf_counter()
        t = open_tunnel(server, [(host, port)])
        out["ipphpc_open_s"].append(time.perf_counter() - t0)
        out["ipphpc_setup_time_s"].append(t.setup_time)
        t.close()
    print(json.dumps(out))
""")


class Hosts:
    """Processes on the namespace hosts, each in a session of its own, with output in files."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self._n = 0

    def start(self, node: str, argv: list[str], name: str) -> subprocess.Popen:
        self._n += 1
        err = self.root / f"{name}-{self._n}.err"
        with open(self.root / f"{name}-{self._n}.out", "wb") as o, open(err, "wb") as e:
            p = subprocess.Popen(["ip", "netns", "exec", NODES[node], *argv], stdin=subprocess.DEVNULL, stdout=o,
                                 stderr=e, env=self.env, start_new_session=True)
        p.err_path = err  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def run(self, node: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", NODES[node], *argv], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, env=self.env, check=False)

    @staticmethod
    def text(p: subprocess.Popen) -> str:
        return p.err_path.read_text(errors="replace")  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for p in self.procs:
            stop_group(p, 5.0)


def controller(hosts: Hosts, pdir: Path, cid: str) -> tuple[subprocess.Popen, dict[str, Any]]:
    from ipphpc import connection, paths

    p = hosts.start("ctl", [sys.executable, "-m", "ipphpc", "controller", "--profile-dir", str(pdir),
                            "--cluster-id", cid, "--ip=*", f"--location={CTL_ADDR}", "--log-to-stderr"], "controller")
    efile = paths.connection_file(pdir, "engine", cid)

    def ready() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"the controller exited {p.returncode}:\n{hosts.text(p)[-2000:]}")
        return efile.exists() and paths.connection_file(pdir, "client", cid).exists()

    wait_until(ready, 30, "the controller's connection files")
    return p, connection.read(efile)


def engine_run(hosts: Hosts, node: str, pdir: Path, cid: str, ssh: str, others: set[int]) -> dict[str, Any]:
    """Start one engine, time it until registered, stop it and wait until it (and its ssh) are gone."""
    argv = [sys.executable, "-m", "ipphpc", "engine", "--profile-dir", str(pdir), "--cluster-id", cid,
            "--log-to-stderr", "--Engine.register_timeout=20"] + ([f"--ssh={ssh}"] if ssh else [])
    t0 = time.perf_counter()
    p = hosts.start(node, argv, f"engine-{node}")

    def registered() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"the engine on {node} exited {p.returncode}:\n{hosts.text(p)[-2000:]}")
        return bool(REGISTERED.search(hosts.text(p)))

    try:
        wait_until(registered, 30, f"the engine on {node} to register", 0.002)
        out: dict[str, Any] = {"registered_s": time.perf_counter() - t0}
        m = TUNNEL_UP.search(hosts.text(p))
        if m:
            out["tunnel_logged_s"] = float(m.group(2))
        elif ssh:
            raise RuntimeError(f"the engine on {node} logged no tunnel:\n{hosts.text(p)[-2000:]}")
    finally:
        code = stop_group(p, 10.0)
        wait_until(lambda: not (set(tagged_pids(hosts.env["IPPHPC_BENCH_TAG"])) - others), 10,
                   "the engine and its ssh to exit", 0.02)
    out["exit_code"] = code
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="SSH tunnel set-up and engine registration through a login node.")
    ap.add_argument("--runs", type=int, default=7, help="runs of each measurement (7)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw samples as JSON")
    args = ap.parse_args(argv)
    missing = [ns for ns in NODES.values() if not Path(f"/run/netns/{ns}").exists()]
    ssh_bin = os.environ.get("IPPHPC_SSH_BIN")
    if missing or not ssh_bin:
        print(f"tunnel_bench: needs the netns and sshd services (.ci/services/all.sh) and "
              f"`. .ci/services/env.sh`; missing: {missing or 'IPPHPC_SSH_BIN'}", file=sys.stderr)
        return 2
    info = header("ipphpc SSH tunnel benchmark (network-namespace hosts)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="ipphpc-tunnel-bench-", dir="/tmp"))
    tag = uuid.uuid4().hex
    env = bench_env(root, tag, PATH=f"{ssh_bin}:{os.environ['PATH']}")
    env.pop("IPPHPC_SSH", None)
    env.pop("IPPHPC_SSH_PASSWORD", None)
    hosts = Hosts(root, env)
    pdir = root / "profile"
    pdir.mkdir()
    result: dict[str, Any] = {"tunnel": [], "direct": []}
    try:
        ctl, einfo = controller(hosts, pdir, "tb")
        base = set(tagged_pids(tag))
        progress("warm-up: one engine of each kind, unrecorded")
        engine_run(hosts, "compute", pdir, "tb", "login", base)
        engine_run(hosts, "login", pdir, "tb", "", base)
        for i in range(args.runs):
            progress(f"run {i + 1}/{args.runs}: engine on compute through login, then engine on login")
            result["tunnel"].append(engine_run(hosts, "compute", pdir, "tb", "login", base))
            result["direct"].append(engine_run(hosts, "login", pdir, "tb", "", base))
        progress(f"bare ssh -N -L and ipphpc open_tunnel on compute, {args.runs} each")
        script = root / "tunnel_helper.py"
        script.write_text(HELPER)
        r = hosts.run("compute", [sys.executable, str(script), CTL_ADDR, str(einfo["ports"]["engine"]), "login",
                                  str(args.runs)], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"the tunnel helper on compute failed:\n{r.stdout}\n{r.stderr}")
        result["helper"] = json.loads(r.stdout.strip().splitlines()[-1])
        stop_group(ctl, 10.0)
    finally:
        hosts.stop_all()
        left = reap(tag)
        shutil.rmtree(root, ignore_errors=True)

    tun = [r["registered_s"] for r in result["tunnel"]]
    dir_ = [r["registered_s"] for r in result["direct"]]
    logged = [r["tunnel_logged_s"] for r in result["tunnel"]]
    h = result["helper"]
    n = args.runs
    rows = [
        [f"engine start -> registered, median of {n}", "s", fmt(median(tun)), fmt(median(dir_)),
         ratio(median(tun), median(dir_))],
        [f"engine start -> registered, best of {n}", "s", fmt(min(tun)), fmt(min(dir_)), ratio(min(tun), min(dir_))],
        ["of which: the tunnel, as the engine logs it (median)", "s", fmt(median(logged)), "-", "-"],
        ["the rest: interpreter, imports, registration (median)", "s",
         fmt(median([a - b for a, b in zip(tun, logged)])), fmt(median(dir_)),
         ratio(median([a - b for a, b in zip(tun, logged)]), median(dir_))],
    ]
    print(f"\nResults ({info['date'][:10]}, {info['cores']} cores, load average at the end "
          f"{[round(x, 2) for x in os.getloadavg()]})\n")
    print(render_table(["figure", "unit", "compute via ssh login", "login, direct", "tunnel/direct"], rows))
    print()
    rows = [
        ["bare ssh -N -L: start -> local port accepts", "s", fmt(median(h["bare_accept_s"])),
         fmt(min(h["bare_accept_s"]))],
        ["bare ssh -N -L: start -> controller's first byte through it", "s", fmt(median(h["bare_first_byte_s"])),
         fmt(min(h["bare_first_byte_s"]))],
        ["ipphpc open_tunnel (same, plus free ports and the far-end probe)", "s", fmt(median(h["ipphpc_open_s"])),
         fmt(min(h["ipphpc_open_s"]))],
    ]
    print(render_table([f"tunnel set-up on compute, {n} runs", "unit", "median", "best"], rows))
    print()
    codes = {r.get("exit_code") for r in result["tunnel"] + result["direct"]}
    print(f"note: engine exit codes after SIGTERM: {sorted(codes, key=str)}")
    if left:
        print(f"note: {len(left)} leftover process(es) had to be terminated: {left[:3]}")
    print("note: raw samples, s: tunnel " + str([round(x, 3) for x in tun]) + "; direct "
          + str([round(x, 3) for x in dir_]) + "; logged tunnel " + str(logged))
    if args.json:
        write_json(args.json, {"machine": info, "args": vars(args), "result": result, "leftovers": left})
        print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
