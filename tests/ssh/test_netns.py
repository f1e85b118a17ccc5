"""Engines and clients through SSH tunnels, across the namespace hosts.

ctl (10.201.1.1) runs the controller; compute (10.201.2.2) has no route to it and must go
through the login node's sshd (login-int = 10.201.2.1 from compute). The filesystem is shared,
so every host reads the same connection files.
"""
from __future__ import annotations

import json
import re
import textwrap
import time

import pytest

from ipphpc import connection

from .conftest import CTL_ADDR, Hosts, alive, netns_inode, proc_netns, wait_until

pytestmark = pytest.mark.ssh

CLIENT = textwrap.dedent("""
    import json, os, sys
    import ipphpc
    from ipphpc import paths
    pdir = paths.profile_dir(profile_dir=sys.argv[1] + "/profile")
    kw = json.loads(os.environ.get("CLIENT_KW", "{{}}"))
    rc = ipphpc.Client(paths.connection_file(pdir, "client", "{cid}"), timeout=15, **kw)
    rc.wait_for_engines({n}, timeout=20)
    out = rc[:].apply_sync(lambda: (os.getpid(), 6 * 7))
    print(json.dumps({{"engines": out, "url": rc.url,
                       "tunnel": rc._tunnel.pid if rc._tunnel is not None else None}}))
    rc.close()
""")


def run_client(hosts: Hosts, node: str, cid: str, n: int = 1, **client_kw) -> dict:
    env = hosts.env(CLIENT_KW=json.dumps(client_kw))
    r = hosts.python(node, CLIENT.format(cid=cid, n=n), env=env)
    assert r.returncode == 0, f"client on {node} failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def tunnel_from_log(hosts: Hosts, p) -> tuple[int, float]:
    """The engine logs its tunnel: (ssh pid, set-up seconds)."""
    def found():
        return re.search(r"through \S+ \(ssh pid (\d+), up in ([\d.]+) s\)", hosts.output(p))
    m = wait_until(lambda: found() or (p.poll() is not None and
                                       pytest.fail(f"engine exited {p.returncode}:\n{hosts.output(p)}")),
                   20, "the engine's tunnel")
    return int(m.group(1)), float(m.group(2))


def test_engine_on_compute_tunnels_through_login(hosts: Hosts) -> None:
    ctl, einfo, _ = hosts.controller("c1")
    assert einfo["addresses"][0] == CTL_ADDR and "ssh" not in einfo
    eng = hosts.ipphpc("compute", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c1",
                       "--ssh=login-int", "--log-to-stderr", name="engine")
    ssh_pid, setup = tunnel_from_log(hosts, eng)
    print(f"\nengine tunnel compute -> login-int -> {CTL_ADDR}: set up in {setup:.3f} s")
    out = run_client(hosts, "ctl", "c1")
    (pid, answer), = out["engines"]
    assert answer == 42 and pid == eng.pid
    assert proc_netns(pid) == netns_inode("compute")
    # one ssh, in compute, forwarding the three engine ports to the controller's address
    assert proc_netns(ssh_pid) == netns_inode("compute")
    with open(f"/proc/{ssh_pid}/cmdline", "rb") as fh:
        args = fh.read().decode().split("\0")
    forwards = [args[i + 1] for i, a in enumerate(args) if a == "-L"]
    assert sorted(f.rsplit(":", 2)[1:] for f in forwards) == sorted(
        [CTL_ADDR, str(einfo["ports"][k])] for k in connection.ENGINE_PORTS)
    assert hosts.stop(eng) == 0
    wait_until(lambda: not alive(ssh_pid), 5, "the engine's ssh to go with it")
    hosts.stop(ctl)


def test_ssh_from_connection_files(hosts: Hosts) -> None:
    """`--enginessh` / `clientssh` in the files: engine and client on compute need no flag."""
    ctl, einfo, cinfo = hosts.controller("c2", "--enginessh=login-int", "--Controller.clientssh=login-int")
    assert einfo["ssh"] == "login-int" and cinfo["ssh"] == "login-int"
    eng = hosts.ipphpc("compute", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c2",
                       "--log-to-stderr", name="engine")
    ssh_pid, _ = tunnel_from_log(hosts, eng)
    out = run_client(hosts, "compute", "c2")
    assert out["engines"][0][1] == 42 and out["tunnel"] and out["url"].startswith("tcp://127.0.0.1:")
    wait_until(lambda: not alive(out["tunnel"]), 5, "the client's tunnel to close with the client")
    hosts.stop(eng)
    wait_until(lambda: not alive(ssh_pid), 5, "the engine's ssh to go")
    hosts.stop(ctl)


def test_client_sshserver_and_sshkey(hosts: Hosts) -> None:
    """A client on compute with `sshserver='root@login-int:22', sshkey=...` and no ssh configuration."""
    ctl, _, _ = hosts.controller("c3")
    eng = hosts.ipphpc("login", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c3", name="engine")
    bare = "/usr/bin/ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    env = hosts.env(IPPHPC_SSH=bare, CLIENT_KW=json.dumps({"sshserver": "root@login-int:22",
                                                           "sshkey": hosts.ssh.key}))
    r = hosts.python("compute", CLIENT.format(cid="c3", n=1), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["engines"][0] == [eng.pid, 42]
    # the same client without the key cannot log in, and says what to do
    env = hosts.env(IPPHPC_SSH=bare, CLIENT_KW=json.dumps({"sshserver": "root@login-int:22"}))
    r = hosts.python("compute", CLIENT.format(cid="c3", n=1), env=env)
    assert r.returncode != 0 and "Permission denied" in r.stderr and "--sshkey / sshkey=" in r.stderr
    hosts.stop(eng)
    hosts.stop(ctl)


def test_engine_without_ssh_fails_fast(hosts: Hosts) -> None:
    ctl, einfo, _ = hosts.controller("c4")
    t0 = time.monotonic()
    eng = hosts.ipphpc("compute", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c4",
                       "--Engine.register_timeout=3", name="engine")
    code = eng.wait(20)
    took = time.monotonic() - t0
    err = hosts.output(eng)
    assert code == 2, err
    assert "cannot reach the controller at any of its addresses" in err
    assert f"{CTL_ADDR}:{einfo['ports']['engine']}" in err
    assert "reach it through an SSH tunnel" in err
    assert took < 8, f"the engine took {took:.1f} s to give up"
    hosts.stop(ctl)


def test_engine_tunnel_to_a_closed_port_explains(hosts: Hosts) -> None:
    """The login node reaches the address but nothing listens there: the engine says so quickly."""
    ctl, einfo, _ = hosts.controller("c5")
    stale = hosts.root / "stale-engine.json"
    connection.write(stale, {**einfo, "ports": {"engine": 9, "hb_ping": 10, "hb_pong": 11}})
    t0 = time.monotonic()
    eng = hosts.ipphpc("compute", "engine", "--file", str(stale), "--ssh=login-int", "--Engine.register_timeout=2",
                       name="engine")
    assert eng.wait(20) == 2
    assert time.monotonic() - t0 < 8
    err = hosts.output(eng)
    assert f"ssh server login-int cannot connect to {CTL_ADDR}:9" in err and "--location" in err, err
    hosts.stop(ctl)


def test_engine_set_of_two_through_one_login(hosts: Hosts) -> None:
    """`ipphpc engine -n 2 --ssh=...`: each forked engine gets its tunnel; all go with the engines."""
    ctl, _, _ = hosts.controller("c6")
    eng = hosts.ipphpc("compute", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c6", "-n", "2",
                       "--ssh=login-int", "--log-to-stderr", name="engine")
    out = run_client(hosts, "ctl", "c6", n=2)
    pids = sorted(p for p, _ in out["engines"])
    assert len(pids) == 2 and all(proc_netns(p) == netns_inode("compute") for p in pids)
    ssh_pids = [int(m) for m in re.findall(r"ssh pid (\d+)", hosts.output(eng))]
    assert len(set(ssh_pids)) == 2
    assert hosts.stop(eng) == 0
    wait_until(lambda: not any(alive(p) for p in ssh_pids + pids), 5, "engines and tunnels to go")
    hosts.stop(ctl)


BULK_CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import ipphpc
    from ipphpc import paths
    pdir = paths.profile_dir(profile_dir=sys.argv[1] + "/profile")
    rc = ipphpc.Client(paths.connection_file(pdir, "client", "{cid}"), timeout=15)
    rc.wait_for_engines(2, timeout=20)
    a = np.arange(3 * 2**20 // 8, dtype=np.float64)
    out = {{}}
    for eid in rc.ids:
        host = rc.engines[eid]["direct"]["at"].rpartition(":")[0]
        ar = rc[eid].apply_async(lambda x: x * 2, a)
        ok = bool(np.array_equal(ar.get(timeout=30), a * 2))
        rec = rc.db_query({{"msg_id": ar.msg_ids[0]}}, keys=["header", "buffers"])[0]
        out[host] = {{"ok": ok, "straight": eid in rc._direct.links, "bk": rec["header"].get("bk"),
                     "stored": len(rec["buffers"][1])}}
    out["curve"] = "curve" in rc._info
    print(json.dumps(out))
    rc.close()
""")


def test_large_frames_go_straight_between_hosts(hosts: Hosts) -> None:
    """An engine on login (a route to ctl) gets a client's arrays straight from ctl, encrypted; one on compute
    (only an SSH tunnel to ctl) listens on the tunnel's loopback, which ctl cannot reach: through the controller."""
    ctl, _, _ = hosts.controller("c7", "--no-shm")  # the namespaces share this machine's /dev/shm; hosts would not
    engines = [hosts.ipphpc("login", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c7",
                            "--log-to-stderr", name="engine-login"),
               hosts.ipphpc("compute", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c7",
                            "--ssh=login-int", "--log-to-stderr", name="engine-compute")]
    r = hosts.python("ctl", BULK_CLIENT.format(cid="c7"), env=hosts.env())
    assert r.returncode == 0, f"client failed:\n{r.stdout}\n{r.stderr}\n" + "\n".join(map(hosts.output, engines))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out.pop("curve") is True  # the controller listens beyond loopback: every socket uses Curve
    assert out == {"10.201.1.2": {"ok": True, "straight": True, "bk": [1], "stored": 32},
                   "127.0.0.1": {"ok": True, "straight": False, "bk": None, "stored": 3 * 2**20}}
    for p in engines:
        assert hosts.stop(p) == 0
    hosts.stop(ctl)


MANY_CLIENT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import ipphpc
    from ipphpc import paths
    pdir = paths.profile_dir(profile_dir=sys.argv[1] + "/profile")
    rc = ipphpc.Client(paths.connection_file(pdir, "client", "{cid}"), timeout=15)
    rc.wait_for_engines({n}, timeout=30)
    a = np.random.default_rng(7).random(3 * 2**20 // 8)
    rc[:].push({{"a": a}}, block=True)
    sent = sum(ch.sent for ch in rc._direct.links.values())
    digest = lambda: __import__("hashlib").sha256(a.tobytes()).hexdigest()  # noqa: E731
    got = rc[:].apply_sync(digest)
    lb = rc.load_balanced_view().apply_async(lambda x: float(x.sum()), a)
    total = lb.get(timeout=30)
    rec = rc.db_query({{"msg_id": lb.msg_ids[0]}}, keys=["header", "buffers"])[0]
    print(json.dumps({{"copies": sent / a.nbytes, "links": len(rc._direct.links),
                      "equal": got == [hashlib.sha256(a.tobytes()).hexdigest()] * {n},
                      "hosts": sorted({{rc.engines[e]["direct"]["at"].rpartition(":")[0] for e in rc.ids}}),
                      "lb": [total == float(a.sum()), rec["header"].get("bp"), len(rec["buffers"][1])]}}))
    rc.close()
""")


def test_an_array_for_many_engines_crosses_to_their_host_twice(hosts: Hosts) -> None:
    """Four engines on login, the client on ctl: a push leaves ctl twice and the engines pass it on among
    themselves; a load-balanced task's large argument crosses once, asked for by the engine that got it."""
    ctl, _, _ = hosts.controller("c8", "--no-shm")
    eng = hosts.ipphpc("login", "engine", "--profile-dir", str(hosts.pdir), "--cluster-id", "c8", "-n", "4",
                       "--log-to-stderr", name="engines-login")
    r = hosts.python("ctl", MANY_CLIENT.format(cid="c8", n=4), env=hosts.env())
    assert r.returncode == 0, f"client failed:\n{r.stdout}\n{r.stderr}\n{hosts.output(eng)}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["hosts"] == ["10.201.1.2"] and out["equal"] is True
    assert out["links"] == 4  # to the two roots for the push, then to every engine for the load-balanced task
    assert 2.0 <= out["copies"] < 2.5  # 2 copies of the push (the routes and seals are small), not 4
    assert out["lb"] == [True, [1], 32]
    assert hosts.stop(eng) == 0
    hosts.stop(ctl)
