"""Several hosts: a ``ray.cluster_utils.Cluster`` of four raylets, joined by
``numaemu run --address``. Node actors land on different hosts, so the
coordinator reaches most payloads through actor calls (Ray objects) and
migrations, reclaim, swapoff and forked children's faults cross hosts; every
page still reads back as written, at every quiescent point of a stress run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(3):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.mark.parametrize("payload", ["bytes", "token"])
def test_node_actors_spread_over_hosts_and_migrate_across_them(cluster, tmp_path, payload):
    scenario = tmp_path / "hosts.toml"
    scenario.write_text(textwrap.dedent(f"""
        [machine]
        nodes = 3
        frames_per_node = 256
        swap_pages = 512
        policy = "migcache"
        payload = "{payload}"

        [[workload]]
        node = 0
        processes = 1
        pages = 96
        pattern = "uniform"
        batch = 8
        fork_every = 5

        [[workload]]
        node = 2
        processes = 1
        pages = 96
        pattern = "sequential"
        batch = 16

        [migration]
        every = 10
        mode = "move_pages"

        [reclaim]
        every = 15
        pages = 32

        [swapoff]
        every = 50

        [run]
        operations = 120
        seed = 3
        stress = true
        check_every = 40
        """))
    out = tmp_path / "out.json"
    proc = subprocess.run([str(Path(sys.executable).with_name("numaemu")), "run", str(scenario),
                           "--address", cluster.address, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(out.read_text())
    hosts = [h["host"] for h in s["hosts"]]
    assert len(set(hosts)) == 3                      # one node actor per host
    assert s["remote_nodes"]                         # payload reached between hosts
    moved_remote = sum(s["nodes"][n]["migrations_in"] + s["nodes"][n]["migrations_out"]
                       for n in s["remote_nodes"])
    assert moved_remote > 0                          # and migrations crossed them
    # callers on the coordinator's host (the runner) use the same-host channel, the others Ray
    assert s["coordinator_calls"]["channel"] > 0 and s["coordinator_calls"]["actor"] > 0
    assert s["violations"] == 0, s["violation_details"]
    assert s["verified_pages"] > 0
    # forks, reclaim to the coordinator's swap device and swapoff back, all through remote payloads,
    # checked at quiescent points
    assert s["forks"] > 0 and s["swapoff_events"] == 2 and s["totals"]["pswpout"] > 0
    assert s["quiescent_checks"] >= 2


def test_a_run_waits_for_the_hosts_it_asks_for_then_spreads_over_them(cluster, tmp_path):
    """--hosts 5 on a cluster of four, as on a cluster whose workers are still
    starting (`ray up`): the run says it waits, a fifth host joins, and the
    five node actors land one per host. Last in this module: it adds a host."""
    import select

    scenario = tmp_path / "five.toml"
    scenario.write_text("[machine]\nnodes = 5\nframes_per_node = 128\n"
                        + "".join(f"[[workload]]\nnode = {n}\nprocesses = 1\npages = 16\n" for n in range(5))
                        + "[migration]\nevery = 10\n[run]\noperations = 100\n")
    out = tmp_path / "out.json"
    proc = subprocess.Popen([str(Path(sys.executable).with_name("numaemu")), "run", str(scenario),
                             "--address", cluster.address, "--hosts", "5", "--json", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stderr], [], [], 120)[0], "nothing said in 120 s"
        line = proc.stderr.readline()
        assert "waiting for 5 hosts in the Ray cluster: 4 so far" in line, line + proc.stderr.read()
        cluster.add_node(num_cpus=1)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    s = json.loads(out.read_text())
    assert s["violations"] == 0 and s["operations_done"] == 100
    assert len({h["host"] for h in s["hosts"]}) == 5      # one node actor per host: it waited for the fifth
