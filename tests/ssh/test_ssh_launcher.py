"""SSH launchers: the forms of `engines`, remote process groups, stop() leaving nothing behind.

The namespace tests run their launcher on ctl (a workstation that reaches login directly and
compute through `-J login`) and check afterwards that no engine or ssh process of the test is
left on any host.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from traitlets.config import Config

from ipphpc.launch.launchers import find_launcher, ipphpc_command, launcher_from_dict
from ipphpc.launch.ssh import (
    MARKER,
    RemoteSet,
    SSHControllerLauncher,
    SSHEngineSetLauncher,
    SSHLaunchError,
    SSHProxyEngineSetLauncher,
    split_command,
)

from .conftest import Hosts, alive, netns_inode, procs_matching, wait_until

ENGINE_CMD = ipphpc_command("engine", "--profile-dir", "/p", "--cluster-id", "x")


# -- configuration and command lines (no services) -------------------------------------------------
def test_engines_forms() -> None:
    L = SSHEngineSetLauncher("engines", 1, engines={
        "host1": 2,
        "host2": (4, ["--work-dir=/tmp"]),
        "u@host3:2200": {"n": 3, "engine_args": ["--mpi"], "engine_cmd": ["python3", "-m", "ipphpc", "engine"]},
        "host4": {"n": 1, "ssh_args": ["-J", "gw"]},
    }, engine_args=["--controller-timeout=60"])
    assert L.n == 10
    specs = L.host_specs()
    argv = {h: L._argv(ENGINE_CMD, s) for h, s in specs.items()}
    tail = ["--profile-dir", "/p", "--cluster-id", "x"]
    assert argv["host1"] == [*ENGINE_CMD[:4], *tail, "--controller-timeout=60", "-n", "2"]
    assert argv["host2"] == [*ENGINE_CMD[:4], *tail, "--work-dir=/tmp", "-n", "4"]
    assert argv["u@host3:2200"] == ["python3", "-m", "ipphpc", "engine", *tail, "--mpi", "-n", "3"]
    assert argv["host4"] == [*ENGINE_CMD[:4], *tail, "--controller-timeout=60"]
    assert specs["host4"]["ssh_args"] == ["-J", "gw"]
    ssh = L.ssh_argv("u@host3:2200", ["-J", "gw"])
    assert ssh[-2:] == ["--", "u@host3"] and ssh[ssh.index("-p") + 1] == "2200" and "BatchMode=yes" in ssh


@pytest.mark.parametrize("bad", [{"h": 0}, {"h": "two"}, {"h": {"n": 1, "cores": 4}}, {"h": (1, 2, 3)}])
def test_engines_bad_forms(bad: dict) -> None:
    with pytest.raises(ValueError, match="engines"):
        SSHEngineSetLauncher("engines", 1, engines=bad)


def test_configured_through_traitlets_config() -> None:
    c = Config()
    c.SSHEngineSetLauncher.engines = {"a": 2, "b": 3}
    c.SSHEngineSetLauncher.user = "alice"
    c.SSHProxyEngineSetLauncher.hostname = "login"
    L = SSHEngineSetLauncher("engines", 1, config=c)
    assert L.n == 5 and L.ssh_argv("a")[-1] == "alice@a" and L.ssh_argv("bob@b")[-1] == "bob@b"
    P = SSHProxyEngineSetLauncher("engines", 7, config=c)
    assert list(P.host_specs()) == ["login"] and P.host_specs()["login"]["n"] == 7


def test_configured_through_a_parent(tmp_path: Path) -> None:
    """What HPCCluster would pass: itself as parent, its (profile + command line) config inside."""
    from ipphpc import HPCCluster
    c = Config()
    c.SSHEngineSetLauncher.engines = {"n1": 3}
    c.SSHControllerLauncher.hostname = "head"
    cluster = HPCCluster(n=3, profile_dir=str(tmp_path / "p"), config=c, shutdown_atexit=False)
    ssh = find_launcher("ssh")
    assert ssh.configurable
    assert ssh("engines", 1, parent=cluster).n == 3
    assert ssh("controller", parent=cluster).hostname == "head"


def test_names_and_roles() -> None:
    ssh = find_launcher("ssh")
    assert isinstance(ssh("controller"), SSHControllerLauncher)
    assert isinstance(ssh("engines", 3), SSHEngineSetLauncher)
    assert find_launcher("SSHProxy") is SSHProxyEngineSetLauncher
    with pytest.raises(SSHLaunchError, match="SSHEngineSetLauncher.engines"):
        ssh("engines", 3).start(ENGINE_CMD, Path("/nonexistent/log"))


def test_persisted_state_round_trip() -> None:
    L = SSHEngineSetLauncher("engines", 3, ssh_cmd=["ssh", "-F", "/cfg"], user="alice")
    L.sets = [RemoteSet("h1", 3, ["python"], ["-J", "gw"], "tok-0", pid=11, remote_pid=22, remote_pgid=22)]
    d = json.loads(json.dumps(L.to_dict()))
    back = launcher_from_dict(d)
    assert type(back) is SSHEngineSetLauncher and back.sets == L.sets and back.n == 3
    assert back.ssh_argv("h1")[:3] == ["ssh", "-F", "/cfg"] and back.ssh_argv("h1")[-1] == "alice@h1"
    C = SSHControllerLauncher("controller", hostname="h")
    assert type(launcher_from_dict(C.to_dict())) is SSHControllerLauncher


def test_split_command() -> None:
    assert split_command(ENGINE_CMD, "engine") == (ENGINE_CMD[:4], ENGINE_CMD[4:])
    assert split_command(["/opt/bin/ipphpc", "engine", "-n", "2"], "engine") == (
        ["/opt/bin/ipphpc", "engine"], ["-n", "2"])


def test_unshared_filesystem_sends_the_engine_file() -> None:
    L = SSHEngineSetLauncher("engines", 1, shared_fs=False)
    files = L._connection_files(["--profile-dir", "/p", "--cluster-id", "x"], ["engine"])
    assert files == ["/p/security/ipcontroller-x-engine.json"]


def test_remote_script_reports_its_group(tmp_path: Path) -> None:
    """Run the remote script here: the marker names the shell's pid, which leads its group."""
    L = SSHEngineSetLauncher("engines", 1, remote_env={"GREETING": "it's me"}, work_dir=str(tmp_path))
    script = L.remote_script("tok-1", ["sh", "-c", 'echo "$GREETING from $$ in $(pwd) $GLIBC_TUNABLES"'])
    p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, start_new_session=True, timeout=10,
                       env={k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    first, second = p.stdout.splitlines()
    assert first.startswith(f"{MARKER} tok-1 pid=")
    pid = first.split("pid=")[1].split()[0]
    assert first.endswith(f"pgid={pid}")
    # the remote engine's large allocations go on huge pages (ipphpc.launch.processes.HUGEPAGE_TUNABLE)
    assert second == f"it's me from {pid} in {tmp_path} glibc.malloc.hugetlb=1"


# -- on the namespace hosts ------------------------------------------------------------------------
HEADER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from ipphpc import Client, paths
    from ipphpc.launch.launchers import LocalLauncher, find_launcher, ipphpc_command
    root = Path(sys.argv[1])
    pdir = paths.profile_dir(profile_dir=str(root / "profile"))
    SSH = ["ssh", "-F", os.environ["IPPHPC_SSH_CONFIG"]]

    def local_controller(cid):
        ctl = LocalLauncher("controller")
        ctl.start(ipphpc_command("controller", "--profile-dir", str(pdir), "--cluster-id", cid, "--ip=*",
                                 "--location=10.201.1.1"), root / "controller.out")
        return ctl

    def probe(rc):
        return rc[:].apply_sync(lambda: {"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(),
                                         "net": os.stat("/proc/self/ns/net").st_ino})
""")


def run_on_ctl(hosts: Hosts, body: str) -> dict:
    r = hosts.python("ctl", HEADER + textwrap.dedent(body), timeout=90)
    assert r.returncode == 0, f"script on ctl failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def assert_gone(hosts: Hosts, pids: list[int]) -> None:
    """None of `pids`, and no process of this test, remains on any namespace host."""
    wait_until(lambda: not any(alive(p) for p in pids), 5, f"processes {pids} to go")
    for ns in ("ipp-login", "ipp-compute", "ipp-ctl"):
        inside = set(subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split())
        assert not inside & {str(p) for p in pids}, f"left in {ns}: {inside & {str(p) for p in pids}}"
    assert not procs_matching(str(hosts.root))


@pytest.mark.ssh
def test_engine_sets_on_login_and_compute(hosts: Hosts) -> None:
    out = run_on_ctl(hosts, """
        ctl = local_controller("s1")
        L = find_launcher("ssh")("engines", 1, ssh_cmd=SSH, engine_args=["--work-dir=/var/tmp"], engines={
            "login": (2, ["--work-dir=/tmp"]),
            "root@login:22": 1,
            "compute": {"n": 1, "engine_args": ["--ssh=login-int"], "ssh_args": ["-J", "login"],
                        "engine_cmd": [sys.executable, "-m", "ipphpc", "engine"]},
        }, remote_env={"IPPHPC_SSH": " ".join(SSH)})
        t0 = time.monotonic()
        L.start(ipphpc_command("engine", "--profile-dir", str(pdir), "--cluster-id", "s1"), root / "engines.out")
        started = time.monotonic() - t0
        rc = Client(paths.connection_file(pdir, "client", "s1"), timeout=15)
        rc.wait_for_engines(L.n, timeout=30)
        up = time.monotonic() - t0
        engines = probe(rc)
        # a signal reaches engines over ssh through the engines themselves
        ar = rc[:].apply_async(time.sleep, 60)
        time.sleep(0.5)
        reached = rc.send_signal("SIGINT")
        try:
            ar.get(20)
            interrupted = []
        except Exception as e:
            interrupted = [x.ename for x in getattr(e, "elist", [e])]
        served = rc[:].apply_sync(lambda: 1)
        rc.close()
        sets = L.to_dict()["sets"]
        running = L.running
        t1 = time.monotonic()
        L.stop()
        stopped = time.monotonic() - t1
        ctl.stop()
        print(json.dumps({"n": L.n, "engines": engines, "sets": sets, "times": [started, up, stopped],
                          "signal": [reached, interrupted, served],
                          "running": [running, L.running], "exit_code": L.exit_code, "cwd": os.getcwd()}))
    """)
    assert out["n"] == 4 and len(out["engines"]) == 4
    reached, interrupted, served = out["signal"]
    assert len(reached) == 4 and interrupted == ["KeyboardInterrupt"] * 4 and served == [1] * 4
    login, compute = netns_inode("login"), netns_inode("compute")
    by_pgid = {s["remote_pgid"]: s for s in out["sets"]}
    assert all(s["remote_pgid"] == s["remote_pid"] for s in out["sets"])
    hosts_of = [by_pgid[e["pgid"]]["host"] for e in out["engines"]]
    assert sorted(zip(hosts_of, (e["cwd"] for e in out["engines"]))) == sorted(
        [("login", "/tmp"), ("login", "/tmp"), ("root@login:22", "/var/tmp"), ("compute", out["cwd"])])
    for host, e in zip(hosts_of, out["engines"]):
        assert e["net"] == (compute if host == "compute" else login), f"engine of {host} runs elsewhere"
    assert out["running"] == [True, False] and out["exit_code"] == 0
    print(f"\nssh engine sets: started {out['times'][0]:.2f} s, 4 engines up {out['times'][1]:.2f} s, "
          f"stopped {out['times'][2]:.2f} s")
    assert_gone(hosts, [e["pid"] for e in out["engines"]] + [s["pid"] for s in out["sets"]])


@pytest.mark.ssh
def test_stop_from_another_process_kills_remote_engines(hosts: Hosts) -> None:
    """HPCCluster with ssh engines; a second process, from the cluster file, kills them on login."""
    started = run_on_ctl(hosts, """
        from traitlets import Dict
        from ipphpc import HPCCluster
        from ipphpc.launch.ssh import SSHEngineSetLauncher

        class LoginEngines(SSHEngineSetLauncher):
            engines = Dict({"login": 2})
            ssh_cmd = SSH

        c = HPCCluster(n=2, profile_dir=str(pdir), engines="__main__:LoginEngines", controller_ip="*",
                       controller_location="10.201.1.1", shutdown_atexit=False)
        rc = c.start_and_connect_sync()
        engines = probe(rc)
        rc.close()
        print(json.dumps({"cluster_id": c.cluster_id, "engines": engines,
                          "ssh": [s["pid"] for s in c.engine_sets[0].to_dict()["sets"]]}))
    """)
    # the first process is gone; its engines and their ssh still run
    pids = [e["pid"] for e in started["engines"]]
    assert all(alive(p) for p in pids + started["ssh"])
    assert all(e["net"] == netns_inode("login") for e in started["engines"])
    stopped = run_on_ctl(hosts, f"""
        from ipphpc import HPCCluster
        c = HPCCluster.from_file("{started['cluster_id']}", profile_dir=str(pdir))
        eng = c.engine_sets[0]
        kind = type(eng).__name__
        eng.stop()

        def alive(pid):
            try:
                return open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False
        deadline = time.monotonic() + 3
        while any(alive(p) for p in {pids!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in {pids!r} if alive(p)]
        controller_up = c.controller_launcher.running
        c.stop_cluster_sync()
        print(json.dumps({{"kind": kind, "left_after_engine_stop": left, "controller_up": controller_up}}))
    """)
    assert stopped["kind"] == "SSHEngineSetLauncher"
    # gone through the remote kill, while the controller still ran (so not by its shutdown message)
    assert stopped["left_after_engine_stop"] == [] and stopped["controller_up"]
    assert_gone(hosts, pids + started["ssh"])


@pytest.mark.ssh
def test_sshproxy_runs_one_engine_set_remotely(hosts: Hosts) -> None:
    out = run_on_ctl(hosts, """
        ctl = local_controller("s3")
        L = find_launcher("sshproxy")("engines", 3, hostname="login", ssh_cmd=SSH)
        L.start(ipphpc_command("engine", "--profile-dir", str(pdir), "--cluster-id", "s3"), root / "engines.out")
        rc = Client(paths.connection_file(pdir, "client", "s3"), timeout=15)
        rc.wait_for_engines(3, timeout=30)
        engines = probe(rc)
        rc.close()
        sets = L.to_dict()["sets"]
        L.stop()
        ctl.stop()
        print(json.dumps({"engines": engines, "sets": sets}))
    """)
    (s,) = out["sets"]
    assert s["host"] == "login" and s["argv"][-2:] == ["-n", "3"]
    assert {e["pgid"] for e in out["engines"]} == {s["remote_pgid"]}
    assert_gone(hosts, [e["pid"] for e in out["engines"]] + [s["pid"]])


@pytest.mark.ssh
def test_remote_controller_with_fetched_and_sent_files(hosts: Hosts) -> None:
    """Controller on login, its files fetched by scp; engines on compute get the engine file by scp."""
    out = run_on_ctl(hosts, """
        from ipphpc.launch.ssh import SSHControllerLauncher, SSHEngineSetLauncher
        remote = paths.profile_dir(profile_dir=str(root / "on-login"))
        sent = root / "on-compute"
        r = {k: str(paths.connection_file(remote, k, "s4")) for k in ("engine", "client")}
        l = {k: str(paths.connection_file(pdir, k, "s4")) for k in ("engine", "client")}
        ctl = find_launcher("ssh")("controller", hostname="login", ssh_cmd=SSH, controller_args=["--ip=*"],
                                   to_fetch=[[r["engine"], l["engine"]], [r["client"], l["client"]]])
        t0 = time.monotonic()
        ctl.start(ipphpc_command("controller", "--profile-dir", str(remote), "--cluster-id", "s4"),
                  root / "controller.out")
        fetched = time.monotonic() - t0
        same = [open(r[k]).read() == open(l[k]).read() for k in r]
        eng = SSHEngineSetLauncher("engines", 1, ssh_cmd=SSH,
                                   engines={"compute": {"n": 2, "ssh_args": ["-J", "login"]}},
                                   to_send=[[l["engine"], str(paths.connection_file(sent, "engine", "s4"))]])
        eng.start(ipphpc_command("engine", "--profile-dir", str(sent), "--cluster-id", "s4"), root / "engines.out")
        rc = Client(l["client"], timeout=15)
        rc.wait_for_engines(2, timeout=30)
        engines = probe(rc)
        rc.close()
        sets = eng.to_dict()["sets"] + ctl.to_dict()["sets"]
        eng.stop()
        ctl.stop()
        print(json.dumps({"engines": engines, "sets": sets, "same": same, "fetched": fetched,
                          "sent_mode": oct(os.stat(paths.connection_file(sent, "engine", "s4")).st_mode & 0o777)}))
    """)
    assert out["same"] == [True, True] and out["sent_mode"] == "0o600"
    assert all(e["net"] == netns_inode("compute") for e in out["engines"]) and len(out["engines"]) == 2
    ctl_set = out["sets"][-1]
    assert ctl_set["host"] == "login" and "--ip=*" in ctl_set["argv"]
    print(f"\nremote controller up and files fetched in {out['fetched']:.2f} s")
    assert_gone(hosts, [e["pid"] for e in out["engines"]] + [s["pid"] for s in out["sets"]]
                + [s["remote_pid"] for s in out["sets"]])


@pytest.mark.ssh
def test_failed_host_is_reported_and_nothing_is_left(hosts: Hosts) -> None:
    out = run_on_ctl(hosts, """
        from ipphpc.launch.ssh import SSHLaunchError
        L = find_launcher("ssh")("engines", 1, ssh_cmd=SSH, start_timeout=10,
                                 engines={"login": 1, "no-such-host.invalid": 1})
        try:
            L.start(ipphpc_command("engine", "--profile-dir", str(pdir), "--cluster-id", "s5",
                                   "--wait-for-file=30"), root / "engines.out")
            err = None
        except SSHLaunchError as e:
            err = str(e)
        print(json.dumps({"err": err, "sets": L.to_dict()["sets"], "running": L.running}))
    """)
    assert out["err"] and "no-such-host.invalid" in out["err"] and "Could not resolve hostname" in out["err"]
    assert not out["running"]
    login = [s for s in out["sets"] if s["host"] == "login"][0]
    assert login["remote_pid"], "the engine set on login started and must have been killed there"
    assert_gone(hosts, [login["pid"]] + ([login["remote_pid"]] if login["remote_pid"] else []))


def test_ipython_parallels_ssh_section_is_read_before_the_launchers_own():
    c = Config()
    c.SSHLauncher.user = "bob"
    c.SSHLauncher.ssh_args = ["-o", "Port=2222"]
    c.SSHEngineSetLauncher.user = "alice"
    L = SSHEngineSetLauncher("engines", 1, config=c)
    assert (L.user, L.ssh_args) == ("alice", ["-o", "Port=2222"])
