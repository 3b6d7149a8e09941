"""Scenario features beyond accesses: hot-page migration to a target node,
reclaim pressure, a time limit, stress mode; on the local backend, and the
same file on Ray."""

from __future__ import annotations

import textwrap

import pytest

from cluster.runner_local import run_local
from cluster.scenario import ScenarioError, load_scenario


def write(tmp_path, extra: str, operations: int = 400, name: str = "p.toml", swap: int = 4096):
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""
        [machine]
        nodes = 3
        frames_per_node = 1024
        swap_pages = {swap}
        policy = "migcache"

        [[workload]]
        node = 0
        processes = 2
        pages = 300
        pattern = "zipf"
        batch = 32

        [run]
        operations = {operations}
        seed = 5
        """) + textwrap.dedent(extra))
    return path


def test_hot_pages_go_to_the_target_node(tmp_path):
    s = run_local(load_scenario(write(tmp_path, """
        [migration]
        every = 20
        mode = "hot"
        target = 2
        """)))
    assert s["violations"] == 0, s["violation_details"]
    nodes = s["nodes"]
    assert nodes[2]["migrations_in"] > 0
    assert nodes[0]["migrations_in"] == nodes[1]["migrations_in"] == 0
    assert s["totals"]["pgmigrate_success"] == nodes[2]["migrations_in"]


def test_reclaim_pressure_swaps_out_on_the_named_node(tmp_path):
    s = run_local(load_scenario(write(tmp_path, """
        [reclaim]
        every = 25
        pages = 40
        node = 0
        """)))
    assert s["violations"] == 0, s["violation_details"]
    assert s["reclaim_events"] == 400 // 25
    assert s["nodes"][0]["pswpout"] > 0 and s["nodes"][1]["pswpout"] == 0


def test_a_time_limit_ends_the_run_early(tmp_path):
    path = write(tmp_path, "", operations=50_000_000)
    path.write_text(path.read_text().replace("seed = 5", "seed = 5\nseconds = 0.3"))
    s = run_local(load_scenario(path))
    assert 0 < s["operations_done"] < 50_000_000
    assert s["violations"] == 0


def test_stress_mode_checks_at_every_checkpoint(tmp_path):
    s = run_local(load_scenario(write(tmp_path, "")), stress=True, check_every=50)
    assert s["quiescent_checks"] == (400 - 1) // 50
    assert s["violations"] == 0


@pytest.mark.parametrize("extra,key,problem", [
    ("[reclaim]\nnode = 7\n", "reclaim.node", "node 7 does not exist"),
    ("[migration]\nmode = \"hot\"\ntarget = 3\n", "migration.target", "node 3 does not exist"),
    ("[reclaim]\npages = 0\n", "reclaim.pages", "must be >= 1"),
    ("[migration]\nmode = \"warm\"\n", "migration.mode", "must be one of move_pages, migrate_pages, hot"),
])
def test_bad_pressure_keys_name_the_key(tmp_path, extra, key, problem):
    path = write(tmp_path, extra)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert e.value.key == key
    assert problem in str(e.value)


def test_bad_run_keys(tmp_path):
    path = write(tmp_path, "")
    path.write_text(path.read_text().replace("seed = 5", "seed = 5\nseconds = -1\ncheck_every = 0"))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert "run.seconds: must be > 0" in str(e.value)
    assert "run.check_every: must be >= 1" in str(e.value)


def test_the_same_pressure_on_ray(ray_session, tmp_path):
    from cluster.runner_ray import run_ray
    s = run_ray(load_scenario(write(tmp_path, """
        [migration]
        every = 20
        mode = "hot"
        target = 1
        [reclaim]
        every = 25
        pages = 40
        node = 0
        """)), stress=True, check_every=100)
    assert s["violations"] == 0, s["violation_details"]
    assert s["reclaim_events"] == 400 // 25
    assert s["nodes"][1]["migrations_in"] > 0 and s["nodes"][2]["migrations_in"] == 0
    assert s["nodes"][0]["pswpout"] > 0
    assert s["quiescent_checks"] == (400 - 1) // 100     # as the local run's, whatever the drivers' rates


THREADS = """
[[workload]]
node = 1
processes = 2
pages = 101
pattern = "uniform"
batch = 8
threads = 3
shared = true
"""


def test_threads_work_on_disjoint_slices(tmp_path):
    from cluster.runner_local import LocalRun
    run = LocalRun(load_scenario(write(tmp_path, THREADS)))
    s = run.run()
    assert s["violations"] == 0, s["violation_details"]
    streams = [p for p in run.procs if p.workload == 1]
    assert len(streams) == 2 * 3 and s["processes"] == 4
    for pid in {p.pid for p in streams}:
        mine = sorted((p.addr, p.pages) for p in streams if p.pid == pid)
        assert [n for _, n in mine] == [33, 34, 34]
        assert all(a + n * 4096 == b for (a, n), (b, _) in zip(mine, mine[1:]))   # contiguous, disjoint


def test_threads_fault_concurrently_on_ray_with_checkpoints(ray_session, tmp_path):
    from cluster.runner_ray import run_ray
    s = run_ray(load_scenario(write(tmp_path, THREADS + """
        [migration]
        every = 15
        """)), stress=True, check_every=60)
    assert s["violations"] == 0, s["violation_details"]
    assert s["operations_done"] == 400
    assert s["quiescent_checks"] >= 4
    assert s["nodes"][1]["pgfault"] > 0


def test_local_runs_take_bug_injections(tmp_path):
    sc = load_scenario(write(tmp_path, ""))
    m = sc.take_machine()
    s = run_local(sc, machine=m, bugs=("no-refcount-freeze",))
    assert m.k.bugs == frozenset({"no-refcount-freeze"}) and s["bugs"] == ["no-refcount-freeze"]
