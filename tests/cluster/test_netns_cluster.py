"""A Ray cluster of three hosts that reach each other only over a network:
network namespaces on a bridge (root and iproute2), each with its own
address, Ray started on them as a person starts a cluster (``ray start
--head`` on one, ``ray start --address HEAD:6379`` on the others, token
authentication on), and ``numaemu run --address HEAD:6379`` from the head's
host: the README's real-cluster example. The node actors land one per host,
so migrations cross hosts as Ray objects (from a node actor on another host
to the coordinator's, and between two other hosts directly), and stress mode
checks the whole state at its quiescent points.

The namespaces share this machine's filesystem and kernel, not its network:
what crosses between hosts is what crosses a real network (TCP between
addresses, no shared memory channel: the abstract Unix sockets of
cluster/channel.py are per network namespace)."""
from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ray_procs import stop_ray

REPO = Path(__file__).resolve().parents[2]
HOSTS = 3
SUBNET = "10.77.0"          # host i is SUBNET.(11 + i); the bridge has no address of its own


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def _remove(bridge: str, names: list[str]) -> None:
    """The namespaces (their processes first: deleting a namespace leaves
    them running in it) and the bridge, whichever exist."""
    for ns in names:
        try:
            for pid in _ip("netns", "pids", ns).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            _ip("netns", "del", ns)
        except subprocess.CalledProcessError:
            pass
    try:
        _ip("link", "del", bridge)
    except subprocess.CalledProcessError:
        pass


_REACH = """import socket, sys
s = socket.socket(); s.settimeout(5)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    print("reached")            # the host answered: nothing listens there
except OSError as e:
    print(e)
"""


@pytest.fixture(scope="module")
def hosts():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("no ip command (Debian's iproute2)")
    tag = str(os.getpid() % 100000)
    bridge, names = f"nb{tag}", [f"nh{tag}-{i}" for i in range(HOSTS)]
    addrs = [f"{SUBNET}.{11 + i}" for i in range(HOSTS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               PATH=os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))))
    _remove(bridge, names)          # left by an earlier run of this pid that was killed
    try:
        # no iptables on bridged traffic (br_netfilter and a FORWARD policy of DROP would filter it)
        _ip("link", "add", "name", bridge, "type", "bridge", "nf_call_iptables", "0", "nf_call_ip6tables", "0")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot make network interfaces here (CAP_NET_ADMIN?): {e.stderr.strip()}")
    # short: the raylet's socket paths under the temp dir must fit in 107 bytes
    temps = [tempfile.mkdtemp(prefix=f"nmn{i}", dir="/tmp") for i in range(HOSTS)]
    try:
        _ip("link", "set", bridge, "up")
        for i, (ns, addr) in enumerate(zip(names, addrs)):
            _ip("netns", "add", ns)
            _ip("link", "add", f"nv{tag}-{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", f"nv{tag}-{i}", "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        on_head = ["ip", "netns", "exec", names[0]]
        for addr in addrs[1:]:
            seen = subprocess.run(on_head + [sys.executable, "-c", _REACH, addr], capture_output=True, text=True,
                                  timeout=60)
            assert seen.stdout.strip() == "reached", f"{addrs[0]} cannot reach {addr}: {seen.stdout}{seen.stderr}"
        for i, (ns, addr, temp) in enumerate(zip(names, addrs, temps)):
            role = ["--head", "--port=6379", "--include-dashboard=false"] if i == 0 else [f"--address={addrs[0]}:6379"]
            subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "ray.scripts.scripts", "start", *role,
                            f"--node-ip-address={addr}", "--num-cpus=1", "--object-store-memory=100000000",
                            f"--temp-dir={temp}", "--disable-usage-stats"],
                           env=env, check=True, capture_output=True, text=True, timeout=120)
        # every host registered before the run places its node actors
        count = ("import ray, sys, time\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
                 "end = time.time() + 60\n"
                 "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time() < end:\n"
                 "    time.sleep(0.5)\n"
                 "print(sum(n['Alive'] for n in ray.nodes()))\n")
        seen = subprocess.run(on_head + [sys.executable, "-c", count, f"{addrs[0]}:6379", str(HOSTS)],
                              env=env, check=True, capture_output=True, text=True, timeout=120)
        assert seen.stdout.split()[-1] == str(HOSTS), seen.stderr[-2000:]
        yield {"run": on_head + [sys.executable, "-m", "cluster.cli", "run"], "env": env,
               "address": f"{addrs[0]}:6379", "names": names}
    finally:
        for temp in temps:
            stop_ray(temp)
            shutil.rmtree(temp, ignore_errors=True)
        _remove(bridge, names)


def test_a_run_across_three_network_hosts_places_a_node_actor_on_each_and_verifies_every_page(hosts, tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run(hosts["run"] + ["examples/quickstart.toml", "--address", hosts["address"], "--stress",
                                          "--set", "machine.nodes=3", "--set", "run.operations=1000",
                                          "--json", str(out)],
                          cwd=REPO, env=hosts["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(out.read_text())
    assert (s["backend"], s["violations"], s["operations_done"]) == ("ray", 0, 1000), s["violation_details"]
    assert s["quiescent_checks"] > 0                            # the oracle ran across the hosts' actors
    assert len({h["host"] for h in s["hosts"]}) == 3            # one node actor per host
    assert sorted(s["remote_nodes"]) == [1, 2]                  # the coordinator is on node 0's host
    assert s["coordinator_calls"]["actor"] > 0                  # the other hosts' drivers call over the network
    assert s["verified_pages"] == 3 * 1024 + 2 * 1024           # every page read back as written
    assert all(n["migrations_in"] > 0 and n["migrations_out"] > 0 for n in s["nodes"]), \
        [(n["migrations_in"], n["migrations_out"]) for n in s["nodes"]]


def test_a_host_lost_mid_run_ends_it_with_a_report_not_a_hang(hosts, tmp_path):
    """Every Ray process of one worker host killed while the run goes on (its
    node actor, raylet and object store at once, as a machine that dies),
    under reclaim and stress checks: the run ends, exit 1, naming the node
    lost, the pages that were resident there and the pages verified intact
    elsewhere, with no false violation. Last in this module: the cluster is
    short of a host after it."""
    out = tmp_path / "summary.json"
    scenario = tmp_path / "three.toml"      # processes on every node: the host lost had pages
    scenario.write_text("[machine]\nnodes = 3\nframes_per_node = 2048\nswap_pages = 2048\n"
                        + "".join(f"[[workload]]\nnode = {n}\nprocesses = 2\npages = 256\n" for n in range(3))
                        + "[migration]\nevery = 50\n[reclaim]\nevery = 40\npages = 64\n"
                        + "[run]\noperations = 1000000\nstress = true\ncheck_every = 500\n")
    proc = subprocess.Popen(hosts["run"] + [str(scenario), "--address", hosts["address"], "--json", str(out)],
                            cwd=REPO, env=hosts["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first progress: the node actors are placed and running
        assert select.select([proc.stderr], [], [], 300)[0], "no progress in 300 s"
        line = proc.stderr.readline()
        assert "running 1000000 operations on Ray" in line, line + proc.stderr.read()
        victim = hosts["names"][2]
        for pid in _ip("netns", "pids", victim).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr[-3000:]
    assert "error: node actor(s) lost" in stderr and "Traceback" not in stderr, stderr[-3000:]
    s = json.loads(out.read_text())
    lost = s["lost"]
    assert len(lost["nodes"]) == 1 and lost["pages"] > 0, lost
    # the other hosts' four processes read back as written, but for pages whose contents the lost
    # host had (resident there, or migrated off it after it died): no data violation
    assert lost["verified_intact"]["processes"] == 4 and lost["verified_intact"]["pages"] > 0, lost
    assert s["violations"] == 0, s["violation_details"]
    assert s["operations_done"] < 1000000
