"""The Ray backend on one Ray instance: node actors, the coordinator, the data
plane, stress mode, a node actor killed mid-run, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from cluster.dataplane import RemoteRows, copy_batch, payload_shape
from cluster.node import NodeActor
from cluster.runner_ray import RayRun, RunnerError, wait_for_hosts
from cluster.scenario import load_scenario
from emulator import InvariantViolation, Machine
from emulator.frames import copy_rows

REPO = Path(__file__).resolve().parents[2]


def scenario(tmp_path: Path, *, nodes: int = 2, frames: int = 512, swap: int = 1024, policy: str = "migcache",
             payload: str = "token", operations: int = 300, every: int = 20, mode: str = "move_pages",
             pages: int = 160, shared: bool = False, name: str = "s.toml", fork_every: int = 0,
             threads: int = 1) -> Path:
    text = textwrap.dedent(f"""
        [machine]
        nodes = {nodes}
        frames_per_node = {frames}
        swap_pages = {swap}
        page_size = 4096
        policy = "{policy}"
        payload = "{payload}"

        [[workload]]
        node = 0
        processes = 2
        pages = {pages}
        pattern = "uniform"
        write_ratio = 0.7
        batch = 16
        shared = {str(shared).lower()}
        fork_every = {fork_every}
        threads = {threads}

        [[workload]]
        node = {nodes - 1}
        processes = 1
        pages = {pages}
        pattern = "sequential"
        write_ratio = 0.5
        batch = 32

        [migration]
        every = {every}
        mode = "{mode}"

        [run]
        operations = {operations}
        seed = 7
        """)
    path = tmp_path / name
    path.write_text(text)
    return path


def run(path: Path, progress=None, **kw) -> tuple[dict, RayRun]:
    r = RayRun(load_scenario(path), **kw)
    try:
        return r.run(progress), r
    finally:
        r.close()


# -- the data plane ---------------------------------------------------------------

@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_remote_rows_index_like_the_numpy_array_they_stand_for(ray_session, payload):
    """A node actor's payload reached through actor calls (the path between
    hosts) reads and writes exactly as the local array would."""
    ray = ray_session
    node = ray.remote(NodeActor).options(num_cpus=0).remote(0, 64, 64, payload, f"t{payload}")
    try:
        shape, dtype = payload_shape(64, 64, payload)
        remote = RemoteRows(node, shape, dtype)
        local = np.zeros(shape, dtype=dtype)
        rng = np.random.default_rng(3)
        for target in (local, remote):
            rows = np.array([3, 4, 5, 9, 17], dtype=np.int64)
            if payload == "token":
                target[rows] = np.arange(5) + 100
                target[20:24] = 7
            else:
                target[rows] = rng.integers(0, 256, (5, 64), dtype=np.uint8) if target is local else \
                    np.asarray(local[rows])
                target.view(np.int64)[rows, 0] = np.arange(5) + 100
                target[20:24] = 7
            rng = np.random.default_rng(3)
        np.testing.assert_array_equal(np.asarray(remote), local)
        np.testing.assert_array_equal(remote[np.array([9, 3])], local[np.array([9, 3])])
        if payload == "bytes":
            np.testing.assert_array_equal(remote.view(np.int64)[np.array([4, 5]), 0],
                                          local.view(np.int64)[np.array([4, 5]), 0])
        # a migration from a local array to the remote one and back: one batch each way
        dst = np.arange(30, 35)
        copy_rows(local, np.array([3, 4, 5, 9, 17]), remote, dst)
        back = np.zeros_like(local)
        copy_rows(remote, dst, back, np.arange(5))
        np.testing.assert_array_equal(back[:5], local[[3, 4, 5, 9, 17]])
        assert remote.tobytes() == np.asarray(remote).tobytes()
        # between two remote node actors: the second pulls the batch from the first
        other = ray.remote(NodeActor).options(num_cpus=0).remote(1, 64, 64, payload, f"t{payload}")
        try:
            remote2 = RemoteRows(other, shape, dtype)
            copy_batch(remote, dst, remote2, np.arange(40, 45))
            np.testing.assert_array_equal(remote2[np.arange(40, 45)], local[[3, 4, 5, 9, 17]])
            np.testing.assert_array_equal(remote2[np.arange(0, 40)], np.zeros_like(local[:40]))
        finally:
            ray.get(other.close.remote())
            ray.kill(other)
    finally:
        ray.get(node.close.remote())
        ray.kill(node)


# -- runs -------------------------------------------------------------------------

@pytest.mark.parametrize("policy,payload,mode", [("migcache", "token", "move_pages"),
                                                 ("swapcache", "bytes", "migrate_pages"),
                                                 ("migentry", "token", "move_pages")])
def test_a_run_on_ray_verifies_every_page_and_the_oracle(ray_session, tmp_path, policy, payload, mode):
    from cluster.dataplane import shm_dir
    r = RayRun(load_scenario(scenario(tmp_path, policy=policy, payload=payload, mode=mode)))
    names = []
    # the coordinator's lock the node actors walk under, and its frame tables they fault in
    mine = [Path(r.info["steps"]), Path(r.info["frames"]["path"])]
    try:   # the payload is mapped, its name already gone: a crash leaves nothing in /dev/shm
        summary = r.run(lambda done: names.extend(list(shm_dir().glob(f"numaemu-{r.run_id}-*")) +
                                                  [p for p in mine if p.exists()]))
        accounted = ray_session.get(r.coord.stats.remote())["local_faults"]
    finally:
        r.close()
    assert names == []
    # the coordinator accounted every fault a node actor ran itself
    assert accounted == {n: c for n, c in summary["tlb"]["local_faults_by_node"].items() if c}
    assert summary["backend"] == "ray"
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["operations_done"] == 300
    # every access ran in its node actor (a hit, a page walk, a local fault) or faulted through the coordinator
    tlb = summary["tlb"]
    assert tlb["hits"] + tlb["walks"] + tlb["local_faults"] + tlb["misses"] == 300 and tlb["hits"] > 0
    assert tlb["local_faults"] > 0      # writes to untouched or reusable pages, under the default policy
    if policy == "migentry":   # migrated pages come back present: their next miss is walked, not faulted
        assert tlb["walks"] > 0, tlb
    assert summary["migration_events"] == 15
    assert 0 <= summary["schedule_late_ops"] <= 20 + 2     # one period, and a share's rounding per node
    assert summary["latency"]["fault_us"]["count"] == tlb["misses"]     # one per fault batch
    assert tlb["shootdowns"] > 0                                        # migrations took cached pages
    from cluster.report import node_table
    table = node_table(summary)                 # the text report's per-node table has them
    row = list(table.columns[0]._cells).index("TLB hits")
    assert [c._cells[row] for c in table.columns[1:]] == \
        [str(tlb["hits_by_node"].get(str(n), 0)) for n in range(len(summary["nodes"]))] + [str(tlb["hits"])]
    assert [c._cells[row + 1] for c in table.columns[1:]] == \
        [str(tlb["walks_by_node"].get(str(n), 0)) for n in range(len(summary["nodes"]))] + [str(tlb["walks"])]
    assert summary["latency"]["migration_us"]["count"] == 300 // 20
    tl = summary["timeline"]
    assert tl[0]["operations"] == 0 and tl[-1]["operations"] == 300
    assert [s["nodes"][n]["used"] for n in range(2) for s in tl[-1:]] == [n["used"] for n in summary["nodes"]]
    # every page the workloads wrote was read back through the coordinator
    assert summary["verified_pages"] >= 160
    assert summary["migration_events"] == 300 // 20
    tot = summary["totals"]
    assert tot["pgmigrate_success"] > 0 and tot["pgfault"] > 0
    # all node actors on this one host: their payload is mapped, not called
    assert summary["remote_nodes"] == []
    assert len({h["host"] for h in summary["hosts"]}) == 1
    # so every call to the coordinator came through the same-host channel, none as a Ray actor call
    assert summary["coordinator_calls"]["actor"] == 0
    assert summary["warnings"] == []            # a few MB of payload: no shared-memory warning
    assert summary["coordinator_calls"]["channel"] >= tlb["misses"] + summary["migration_events"]
    from rich.console import Console
    from cluster.report import print_summary
    con = Console(record=True, width=200)
    print_summary(summary, con)
    assert (f"coordinator calls: {summary['coordinator_calls']['channel']} over the same-host channel, "
            "0 as Ray actor calls") in con.export_text()
    # the counters come from the same machine the node actors fed
    assert tot["vmstat"]["pgmigrate_success"] == tot["pgmigrate_success"]


def test_the_coordinator_publishes_where_a_node_may_fault_locally(ray_session, tmp_path):
    """After every call that changes a process's policy or mappings, in the
    node's shared file (here mapped by the test, as by a node actor)."""
    from cluster.tlb import NodeTLB
    from emulator.mm import MPOL_INTERLEAVE
    r = RayRun(load_scenario(scenario(tmp_path)))
    try:
        r.local.setup()
        p = next(p for p in r.local.procs if p.home == 0)
        slices = [(p.pid, p.addr, p.pages)]
        node = NodeTLB(0, 12, {0: np.zeros(1, dtype=np.int64)}, slices, tmp_path / "tlb", r.info["steps"], r.info["frames"])
        ray_session.get(r.coord.tlb_register.remote(0, slices, node.shared()))
        ids = node.tables[p.pid].ids
        assert (ids >= 0).all()                       # private, default policy, homed on node 0
        r.m.set_mempolicy(p.pid, MPOL_INTERLEAVE, [0, 1])
        assert (ids == -1).all()
        r.m.set_mempolicy(p.pid, "default")
        assert (ids >= 0).all()
        r.m.mbind(p.pid, p.addr, 2, MPOL_INTERLEAVE, [0, 1])
        assert (ids[:2] == -1).all() and (ids[2:] >= 0).all()
        r.m.exit(p.pid)
        assert (ids == -1).all()
        node.close()
    finally:
        r.close()


def _coordinator_here(ray_session, tmp_path):
    """A Coordinator in this process, with node 0's TLB, which caches one
    process's 16 pages: (coordinator, node, pid, addr)."""
    from cluster.coordinator import Coordinator
    from cluster.dataplane import attach_payload, create_payload, payload_shape
    from cluster.tlb import NodeTLB
    host = ray_session.get_runtime_context().get_node_id()
    shape, dtype = payload_shape(64, 4096, "token")
    descs = []
    for i in range(2):
        create_payload(tmp_path / f"node{i}", shape, dtype)
        descs.append({"host": host, "path": str(tmp_path / f"node{i}"), "shape": list(shape),
                      "dtype": dtype.str, "handle": None})
    sc = load_scenario(scenario(tmp_path, frames=64, swap=64))
    c = Coordinator(sc.machine.config(), descs, record=True)
    try:
        pid = c.call("spawn", 0)[1]
        addr = c.call("mmap", pid, 16)[1]
        node = NodeTLB(0, 12, {0: attach_payload(descs[0]["path"], shape, dtype)}, [(pid, addr, 16)],
                       tmp_path / "tlb", c.steps.path, c.frames)
        c.tlb_register(0, [(pid, addr, 16)], node.shared())
    except BaseException:
        c.forget_paths()
        raise
    return c, node, pid, addr


def test_no_local_fault_while_a_call_changes_the_process(ray_session, tmp_path, monkeypatch):
    """A fork drops the coordinator's lock between its steps; meanwhile its
    parent may not fault locally (the kernel's faults wait on mmap_lock),
    and once it is done it may again. The coordinator here runs in-process,
    so that a step of the fork can look at what the node sees."""
    import emulator.process as proc
    c, node, pid, addr = _coordinator_here(ray_session, tmp_path)
    try:
        ids = node.tables[pid].ids
        assert (ids >= 0).all()
        seen = []
        step = proc.copy_page_range_step
        monkeypatch.setattr(proc, "copy_page_range_step",
                            lambda k, pv, cv: (seen.append(ids.copy()), step(k, pv, cv)))
        ok, child, _ = c.call("fork", pid)
        assert ok and seen and all((s == -1).all() for s in seen)
        assert (ids >= 0).all()
        assert node.access(pid, addr, 4, True, thread=1) is not None and node.local_faults == 1
        assert c.call("exit", child)[0] and c.call("touch", pid, addr + 4 * 4096, 4)[0]
        assert c.m.k.mms[pid].rss == 8 and c.local_faults == {0: 1}
        # logged, before the calls after it, as the touch of the thread that made it (a dump replays it)
        ev = [(e["caller"], e["op"], e["args"], e["kw"]) for e in c.events]
        assert ev[-3:] == [("node0-t1", "touch", [pid, addr, 4], {"write": True}),
                           ("", "exit", [child], {}), ("", "touch", [pid, addr + 4 * 4096, 4], {})]
        assert c.check() is None
    finally:
        c.forget_paths()


def test_the_coordinator_counts_a_local_copys_flush_as_its_own_shootdown(ray_session, tmp_path):
    """A write to pages a child shares, copied on the node, flushes the old
    entries from the node's TLB; the coordinator counts that flush when it
    reads the ring, so the fills it hands out afterwards are installed (one
    read before would not be), and the child still reads what was there."""
    c, node, pid, addr = _coordinator_here(ray_session, tmp_path)
    try:
        ok, (before, fill), _ = c.call("touch", pid, addr, 16, write=True, _fill=0)
        node.install(pid, fill)
        ok, child, _ = c.call("fork", pid)
        assert ok and node.access(pid, addr, 16, False) is not None     # read-only entries, hit
        stale = c.tlb.fill(c.m.k.mms[pid], c.m._range(c.m.k.mms[pid], addr, 16), 0, addr >> 12)
        wrote = node.access(pid, addr, 16, True, thread=1)
        assert wrote is not None and node.local_faults == 1 and node.misses == 0
        ok, (_, fill), _ = c.call("touch", pid, addr, 16, write=False, _fill=0)
        assert ok and c.tlb.epoch[pid] == node.tlb.procs[pid].gen[0] == stale[0] + 1
        assert not node.tlb.install(pid, stale) and node.tlb.install(pid, fill)
        assert c.local_faults == {0: 1}
        np.testing.assert_array_equal(c.call("read_tokens", child, addr, 16)[1], before)
        np.testing.assert_array_equal(c.call("read_tokens", pid, addr, 16)[1], wrote)
        assert c.check() is None
    finally:
        c.forget_paths()


def test_migrations_keep_their_schedule_however_fast_the_drivers_run(ray_session, tmp_path):
    """A migration every 2 operations: the drivers run many operations per
    poll of the runner, so without the gate most migrations would fire after
    the last access instead of between them."""
    summary, _ = run(scenario(tmp_path, every=2, operations=200, policy="migentry"))
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["operations_done"] == 200 and summary["migration_events"] == 100
    assert 0 <= summary["schedule_late_ops"] <= 2 + 2
    assert summary["tlb"]["walks"] > 0, summary["tlb"]     # the migrations interleaved with the accesses


def test_shared_mappings_under_concurrent_faults(ray_session, tmp_path):
    summary, _ = run(scenario(tmp_path, shared=True, policy="swapcache", operations=200, every=10))
    assert summary["violations"] == 0, summary["violation_details"]


@pytest.mark.parametrize("shared", [False, True])
def test_stress_mode_checks_quiescent_points_and_finds_nothing_wrong(ray_session, tmp_path, shared):
    """Faults on two node actors, forks whose children read, write and exit,
    migrations, reclaim and swapoff, all at once; the oracle and every page
    at each quiescent point."""
    # two threads of each process fork: with a shared mapping, one child exits while another is forked
    path = scenario(tmp_path, frames=256, operations=400, every=10, fork_every=3, shared=shared, threads=2)
    path.write_text(path.read_text() + "\n[reclaim]\nevery = 25\npages = 32\n\n[swapoff]\nevery = 70\n")
    summary, _ = run(path, stress=True, check_every=50, dump_dir=str(tmp_path))
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["quiescent_checks"] >= 5
    assert summary["forks"] > 20 and summary["reclaim_events"] > 5 and summary["swapoff_events"] == 400 // 70
    assert "dump" not in summary
    # accesses ran in the node actors (TLB hits) while the coordinator took their pages away (shootdowns)
    tlb = summary["tlb"]
    assert tlb["hits"] > 0 and tlb["shootdowns"] > 0, tlb
    assert tlb["hits"] + tlb["walks"] + tlb["local_faults"] + tlb["misses"] == summary["operations_done"]


@pytest.mark.parametrize("policy", ["migentry", "swapcache"])
def test_stress_mode_with_migrations_whose_copies_land_after_their_call(ray_session, tmp_path, policy):
    """migrate_pages of 1200-page processes (4.7 MiB copies, on the copier
    thread) beside faults from two threads a process, forks and reclaim, in
    bytes: calls answer while their copy still runs, the next ones step
    beside it, and at every quiescent point the oracle and every page find
    nothing wrong."""
    path = tmp_path / "flights.toml"
    path.write_text(textwrap.dedent(f"""
        [machine]
        nodes = 3
        frames_per_node = 4096
        swap_pages = 2048
        policy = "{policy}"
        payload = "bytes"

        [[workload]]
        node = 0
        processes = 2
        pages = 1200
        threads = 2
        pattern = "sequential"
        write_ratio = 0.6
        batch = 64
        fork_every = 9

        [[workload]]
        node = 1
        processes = 1
        pages = 1200
        pattern = "uniform"
        batch = 32

        [migration]
        every = 6
        mode = "migrate_pages"

        [reclaim]
        every = 40
        pages = 128

        [run]
        operations = 400
        seed = 3
        """))
    summary, _ = run(path, stress=True, check_every=80, dump_dir=str(tmp_path))
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["quiescent_checks"] >= 4 and summary["verified_pages"] > 0
    assert summary["answered_before_copy"] > 0, summary["answered_before_copy"]
    from rich.console import Console
    from cluster.report import print_summary
    con = Console(record=True, width=200)
    print_summary(summary, con)
    assert f"migrations: {summary['answered_before_copy']} answered while their copy still ran" in con.export_text()
    assert summary["totals"]["pgmigrate_success"] > 1200


def test_checkpoints_and_the_schedules_gate_never_wait_on_each_other(ray_session, tmp_path):
    """A migration every 3 operations, reclaim every 5 and a checkpoint every
    7: a node's drivers can stop at their checkpoint while another's wait at
    the gate for a migration that needs the first node's operations. The
    check runs once every driver is parked, whatever it waits for, and the
    run ends (timing decides whether that case comes up in a given run)."""
    import threading
    path = scenario(tmp_path, operations=210, every=3)
    path.write_text(path.read_text() + "\n[reclaim]\nevery = 5\npages = 16\n")
    r = RayRun(load_scenario(path), stress=True, check_every=7, dump_dir=str(tmp_path))
    out: list = []
    t = threading.Thread(target=lambda: out.append(r.run()), daemon=True)
    try:
        t.start()
        t.join(120)
        assert not t.is_alive(), "the run hung"
    finally:
        r.close()
    summary = out[0]
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["migration_events"] == 70 and summary["reclaim_events"] == 42
    # about one check per 7 operations in all: each driver stops every 4 (node 0) or 2 (node 1) of
    # its own, and a check runs at the stop nearest each multiple of 7
    assert 210 // 7 - 4 <= summary["quiescent_checks"] <= 210 // 7 - 1
    assert 0 <= summary["schedule_late_ops"] <= 3 + 2


def test_stress_mode_catches_memory_changed_behind_the_model(ray_session, tmp_path):
    """Not a test that cannot fail: frames overwritten in the node's shared
    memory (a stray DMA) are caught at the next quiescent point, the run stops
    and leaves a dump that holds the snapshot and the event log."""
    box = {}

    def progress(done):
        if done >= 60 and not box:     # a stray DMA on node 0: its owner writes behind the model
            r = box["run"] = run_holder[0]
            ray_session.get(r.nodes[0].rows_set.remote(slice(None), np.int64(-12345)))

    run_holder = []
    r = RayRun(load_scenario(scenario(tmp_path, operations=5000, every=0, fork_every=2)), stress=True,
               check_every=100, dump_dir=str(tmp_path))
    run_holder.append(r)
    try:
        summary = r.run(progress)
    finally:
        r.close()
    assert summary["violations"] > 0
    assert any("expected token" in d and "read -12345" in d for d in summary["violation_details"])
    assert summary["operations_done"] < 5000          # stopped at the violation
    dump = msgpack.unpackb(Path(summary["dump"]).read_bytes(), raw=False)
    assert dump["format"] == "numaemu-dump/1"
    # the calls since the last checkpoint that passed, in full
    ev = dump["events"]
    assert ev and all(e["seq"] > dump["checkpoint"]["seq"] for e in ev)
    touch = next(e for e in ev if e["op"] == "touch")
    assert all(isinstance(a, int) for a in touch["args"][:3])     # pid, addr, npages
    assert any(e["op"] == "fork" and isinstance(e["result"], int) for e in ev)   # the child's pid
    good = Machine.restore(dump["checkpoint"]["snapshot"])         # the checkpoint passes the oracle
    good.check()
    # numaemu explore takes it: the last calls as tasks; memory written behind the
    # model is no race of the model, so their interleavings are clean
    from emulator import explore as X
    from emulator.races import load
    sc = load(f"{summary['dump']}#8")     # forks among them: a child's calls join its fork's task
    assert 1 <= len(sc.tasks) <= 8
    out, st = X.explore_dfs(sc, [], bound=1, max_schedules=300)
    assert out is None and st.schedules > 1
    with pytest.raises(ValueError, match="invariant 1"):
        Machine.restore(dump["snapshot"])     # the dumped state is the violating one
    restored = Machine.restore(dump["snapshot"], checked=False)
    with pytest.raises(InvariantViolation):
        restored.check()


def test_a_deadlock_of_the_model_comes_back_to_its_caller_as_one(ray_session, tmp_path, monkeypatch):
    """The coordinator gives up on an operation that waited too long (a
    bug of the model): the caller gets emulator.sched.Deadlock, not an
    error of the coordinator, and the call is logged with that outcome."""
    from cluster.coordinator import CoordMachine
    from emulator.sched import Deadlock
    c, node, pid, addr = _coordinator_here(ray_session, tmp_path)
    try:
        def blocked(*a, **kw):
            raise Deadlock("operation blocked on node0:wait(lock_page) for 60 s")
        monkeypatch.setattr(c.m, "swapoff", blocked)
        m = CoordMachine(None, c.info(), caller="runner")
        with pytest.raises(Deadlock, match="lock_page"):
            m.swapoff()
        assert c.events[-1]["op"] == "swapoff" and c.events[-1]["outcome"].startswith("Deadlock: ")
        assert m.touch(pid, addr, 4) is not None      # the coordinator goes on answering
    finally:
        c.forget_paths()


def test_a_deadlock_ends_a_stress_run_as_a_violation_with_a_dump(ray_session, tmp_path, monkeypatch):
    """An event of the runner's that the model deadlocks in (here its fifth
    migration, made to raise as the coordinator does after its timeout)
    stops the run: a violation, described, with a dump of the calls since
    the last checkpoint that numaemu explore loads."""
    from cluster.runner_local import LocalRun
    from emulator.races import load
    from emulator.sched import Deadlock
    migrate, calls = LocalRun.migrate, []

    def deadlocks(self):
        calls.append(1)
        if len(calls) == 5:
            raise Deadlock("operation blocked on node1:wait(lock_page) for 60 s")
        migrate(self)
    monkeypatch.setattr(LocalRun, "migrate", deadlocks)
    summary, _ = run(scenario(tmp_path, operations=2000, every=20, fork_every=4), stress=True, check_every=40,
                     dump_dir=str(tmp_path))
    assert summary["violations"] == 1 and len(calls) == 5
    assert summary["violation_details"] == ["deadlock: runner: operation blocked on node1:wait(lock_page) for 60 s"]
    assert summary["operations_done"] < 2000 and summary["migration_events"] == 4
    dump = msgpack.unpackb(Path(summary["dump"]).read_bytes(), raw=False)
    assert dump["violations"] == summary["violation_details"] and dump["bugs"] == []
    assert all(e["seq"] > dump["checkpoint"]["seq"] for e in dump["events"])
    assert load(f"{summary['dump']}#4").tasks


def with_stuck_faults():
    """A coordinator whose model deadlocks in its third fault batch (a run
    of the scenario below makes 11-14), as the coordinator's own timeout
    reports it; everything after that raise is the real coordinator's,
    driver's and runner's."""
    from cluster.coordinator import Coordinator
    from emulator.sched import Deadlock

    class Stuck(Coordinator):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            touch, self.faults = self.m.touch, 0

            def stuck(*a, **kw):
                self.faults += 1
                if self.faults == 3:
                    raise Deadlock("operation blocked on node0:wait(lock_page) for 60 s")
                return touch(*a, **kw)
            self.m.touch = stuck
    return Stuck


def test_a_deadlock_in_a_workload_drivers_fault_ends_the_run_as_a_violation(ray_session, tmp_path, monkeypatch):
    """The driver whose fault batch the model deadlocked in stops; the runner
    sees it at its next poll and ends the run: a violation, with a dump."""
    import ray.cloudpickle
    import cluster.runner_ray as rr
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this file
    try:
        monkeypatch.setattr(rr, "Coordinator", with_stuck_faults())
        summary, _ = run(scenario(tmp_path, operations=2000, every=20), stress=True, check_every=500,
                         dump_dir=str(tmp_path))
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert summary["violations"] == 1, (summary["tlb"], summary["violation_details"])
    assert summary["violation_details"][0].startswith("deadlock: node ")
    assert summary["violation_details"][0].endswith(": operation blocked on node0:wait(lock_page) for 60 s")
    assert summary["operations_done"] < 2000 and "dump" in summary


def kill_after(ray, ops: int, actor):
    """A progress callback that kills actor() once, when ops operations are done."""
    def progress(done):
        if done >= ops and not getattr(progress, "fired", False):
            progress.fired = True
            ray.kill(actor(), no_restart=True)
    return progress


def test_a_node_actor_killed_mid_run_ends_it_with_what_was_lost(ray_session, tmp_path):
    r = RayRun(load_scenario(scenario(tmp_path, operations=4000, every=25)))
    try:
        summary = r.run(kill_after(ray_session, 100, lambda: r.nodes[1]))
    finally:
        r.close()
    lost = summary["lost"]
    assert list(lost["nodes"]) == ["1"]
    # lost: every page mapped on node 1 when the run stopped (private pages: one pte each);
    # the process homed on node 1 had faulted its pages there. A node killed in the middle of
    # its own fault (cluster/local_fault.py) leaves that fault's frames taken but not mapped:
    # at most one access's pages (batch 32)
    mapped = summary["nodes"][1]["vmstat"]["nr_anon_pages"]
    assert 0 < lost["pages"] <= mapped <= lost["pages"] + 32
    assert sum(lost["pages_by_pid"].values()) == lost["pages"]
    # the processes homed on node 0 were read back, except what was on node 1
    assert lost["verified_intact"]["processes"] == 2
    assert lost["verified_intact"]["pages"] > 0
    assert summary["violations"] == 0, summary["violation_details"]
    assert summary["operations_done"] < 4000


def test_a_coordinator_killed_mid_run_ends_it_with_an_error_naming_it(ray_session, tmp_path):
    from cluster.runner_ray import RunnerError
    r = RayRun(load_scenario(scenario(tmp_path, operations=4000, every=25)))
    try:
        with pytest.raises(RunnerError, match="coordinator"):
            r.run(kill_after(ray_session, 100, lambda: r.coord))
    finally:
        r.close()


def test_a_coordinator_dead_before_the_run_leaves_nothing_in_dev_shm(ray_session, tmp_path):
    r = RayRun(load_scenario(scenario(tmp_path)))
    mine = [Path(r.info["steps"]), Path(r.info["frames"]["path"])]
    assert all(p.exists() for p in mine)
    ray_session.kill(r.coord)       # before the node actors opened them: their names are still there
    r.close()
    assert not any(p.exists() for p in mine)


class FailingCoordinator:
    """A coordinator whose start fails once its files exist (as one that
    finds no room for its frame tables does)."""

    def __new__(cls):
        from cluster.coordinator import Coordinator

        class Failing(Coordinator):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                raise OSError(28, "no room in /dev/shm (a test)")
        return Failing


def test_a_start_that_fails_says_why_in_one_line_and_leaves_nothing_behind(ray_session, tmp_path, monkeypatch):
    import ray.cloudpickle
    import cluster.runner_ray as rr
    from cluster.dataplane import shm_dir
    before = set(shm_dir().glob("numaemu-*"))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this file
    try:
        monkeypatch.setattr(rr, "Coordinator", FailingCoordinator())
        with pytest.raises(rr.RunnerError) as info:
            RayRun(load_scenario(scenario(tmp_path)))
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert str(info.value).startswith("the run could not start: The actor died because of an error raised "
                                      "in its creation task: OSError: [Errno 28] no room in /dev/shm (a test)")
    assert set(shm_dir().glob("numaemu-*")) == before
    assert not [a for a in ray_session.util.list_named_actors() if a.startswith("numaemu-")]


class NodeDyingInItsCheck:
    """Node actor 1 dies the first time a quiescent check reads its pages back."""

    def __new__(cls):
        class Dying(NodeActor):
            def verify(self, *a, **kw):
                if self.node == 1:
                    import os
                    os._exit(1)
                return super().verify(*a, **kw)
        return Dying


def test_a_node_actor_dying_in_a_quiescent_check_is_lost_not_the_coordinator(ray_session, tmp_path, monkeypatch):
    import ray.cloudpickle
    import cluster.runner_ray as rr
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        monkeypatch.setattr(rr, "NodeActor", NodeDyingInItsCheck())
        summary, _ = run(scenario(tmp_path, operations=2000, every=25), stress=True, check_every=400)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert list(summary["lost"]["nodes"]) == ["1"]
    assert summary["lost"]["pages"] > 0
    assert summary["lost"]["verified_intact"]["pages"] > 0
    assert summary["violations"] == 0, summary["violation_details"]


# -- the command line ----------------------------------------------------------------

def numaemu(*args, **kw):
    script = Path(sys.executable).with_name("numaemu")
    return subprocess.Popen([str(script), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_ctrl_c_stops_cleanly_and_writes_the_partial_summary(tmp_path):
    out = tmp_path / "partial.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    proc = numaemu("run", str(scenario(tmp_path, operations=10_000_000, every=50)), "--json", str(out), env=env)
    before = []
    try:
        for line in proc.stderr:       # the run announces itself once its drivers run
            if "running" in line:
                break
            before.append(line)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not [ln for ln in before if "WARNING" in ln], before      # the embedded Ray starts quietly
    summary = json.loads(out.read_text())
    assert summary["interrupted"] is True
    assert 0 < summary["operations_done"] < 10_000_000
    assert summary["violations"] == 0
    assert "node 0" in stdout


def test_the_cli_rejects_an_address_with_the_local_backend(tmp_path):
    proc = numaemu("run", str(scenario(tmp_path)), "--backend", "local", "--address", "auto")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == "error: --address needs --backend ray"


def test_an_address_nobody_answers_at_is_an_error_not_a_wait(tmp_path):
    import socket
    with socket.socket() as sock:       # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = numaemu("run", str(scenario(tmp_path)), "--address", f"127.0.0.1:{port}")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.startswith("error: ") and \
        f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused" in err, err
    assert "Traceback" not in err


def test_bug_injections_reach_the_coordinators_model(ray_session, tmp_path):
    r = RayRun(load_scenario(scenario(tmp_path, operations=40)), bugs=("r1-no-pte-recheck",))
    try:
        summary = r.run()
        bugs = ray_session.get(r.coord.__ray_call__.remote(lambda self: sorted(self.m.k.bugs)))
    finally:
        r.close()
    assert bugs == ["r1-no-pte-recheck"] == summary["bugs"]


def test_run_names_an_unknown_bug(tmp_path):
    proc = numaemu("run", str(scenario(tmp_path)), "--bug", "r9-nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("error: --bug r9-nope: unknown bug injection (known: r1-no-pte-recheck, ")


def _posting_coordinator(ray_session, tmp_path, policy: str):
    """A Coordinator in this process on two bytes-mode payloads in tmp_path,
    with room for a migration large enough for its copy to run on the
    copier thread: (coordinator, that many pages, page size)."""
    import cluster.dataplane as D
    from cluster.coordinator import Coordinator
    page = 4096
    n = D.PARALLEL_MIN_BYTES // page + 64
    shape, dtype = payload_shape(n + 256, page, "bytes")
    host = ray_session.get_runtime_context().get_node_id()
    descs = []
    for i in range(2):
        D.create_payload(tmp_path / f"node{i}", shape, dtype)
        descs.append({"host": host, "path": str(tmp_path / f"node{i}"), "shape": list(shape),
                      "dtype": dtype.str, "handle": None})
    c = Coordinator({"nodes": 2, "frames_per_node": n + 256, "swap_pages": n, "page_size": page,
                     "policy": policy, "payload": "bytes"}, descs)
    return c, n, page


def _written(c, n: int, page: int, seed: int) -> tuple[int, int, bytes]:
    """A process on node 0 with n pages of random bytes written through c:
    (pid, address, the bytes)."""
    data = np.random.default_rng(seed).integers(0, 256, n * page, dtype=np.uint8).tobytes()
    pid = c.call("spawn", 0)[1]
    addr = c.call("mmap", pid, n)[1]
    assert c.call("write", pid, addr, data)[0]
    return pid, addr, data


@pytest.mark.parametrize("policy, syscall", [("migentry", "move_pages"), ("migcache", "move_pages"),
                                             ("swapcache", "move_pages"), ("migentry", "migrate_pages")])
def test_a_migration_answers_while_its_copy_ends_and_the_lock_waits_for_it(ray_session, tmp_path, held_copier,
                                                                           policy, syscall):
    """The coordinator answers a move_pages or migrate_pages whose copy still
    runs (a copier thread, held mid-copy here): its outcome is final. Calls
    that look at no contents go on meanwhile, as other CPUs do while
    folio_copy() runs; until the copy lands the node actors' page-walk
    lock stays held, and a read waits, then reads every byte as written."""
    import fcntl
    import os

    c, n, page = _posting_coordinator(ray_session, tmp_path, policy)
    in_copy, go = held_copier
    try:
        pid, addr, data = _written(c, n, page, seed=5)
        out: dict[str, object] = {}
        args = (pid, [addr + i * page for i in range(n)], [1] * n) if syscall == "move_pages" else (pid, [0], [1])
        a = threading.Thread(target=lambda: out.update(move=c.call(syscall, *args)))
        a.start()
        assert in_copy.wait(30), "the copy did not run on a copier thread"
        a.join(30)
        assert "move" in out, "move_pages did not answer before its copy was done"
        ok, status, _ = out["move"]
        assert ok and (list(status) == [1] * n if syscall == "move_pages" else status == 0)
        ok, where, _ = c.call("move_pages", pid, [addr + i * page for i in range(n)])
        assert ok and list(where) == [1] * n
        other = c.call("spawn", 1)[1]
        assert c.call("mmap", other, 4)[0] and c.call("vmstat", 1)[0]
        assert not go.is_set() and c.m.flight is not None and not c.m.flight.done()
        fd = os.open(c.steps.path, os.O_RDWR)
        try:        # a node actor's page walk: LOCK_SH without waiting
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        b = threading.Thread(target=lambda: out.update(read=c.call("read", pid, addr, n * page)))
        b.start()
        b.join(2.0)
        assert "read" not in out, "a read got in while the copy was still running"
        go.set()
        b.join(30)
        ok, got, _ = out["read"]
        assert ok and got == data
        assert c.m.flight is None and c.check() is None
        ok, status, _ = c.call("move_pages", pid, [addr + i * page for i in range(n)], [0] * n)
        assert ok and list(status) == [0] * n and c.call("read", pid, addr, n * page)[1] == data
    finally:
        go.set()
        c.forget_paths()


@pytest.mark.parametrize("policy", ["migentry", "migcache", "swapcache"])
def test_a_migration_of_pages_whose_copy_still_lands_copies_only_after_it(ray_session, tmp_path, held_copier,
                                                                          policy):
    """A caller that moves the same pages straight back while their last
    copy lands (the copier held mid-copy): the second move_pages takes its
    steps up to its own copy and waits there, as copies land in the order
    they were asked for; once the first lands, the pages are back where
    they started with every byte as written, and the oracle passes."""
    c, n, page = _posting_coordinator(ray_session, tmp_path, policy)
    in_copy, go = held_copier
    try:
        pid, addr, data = _written(c, n, page, seed=6)
        addrs = [addr + i * page for i in range(n)]
        ok, status, _ = c.call("move_pages", pid, addrs, [1] * n)
        assert ok and list(status) == [1] * n
        assert in_copy.wait(30), "the copy did not run on a copier thread"
        assert not c.m.flight.done()
        first = c.m.flight
        out: dict[str, object] = {}
        b = threading.Thread(target=lambda: out.update(back=c.call("move_pages", pid, addrs, [0] * n)))
        b.start()
        b.join(2.0)
        assert "back" not in out, "the second copy did not wait for the first to land"
        assert c.m.flight is first
        go.set()
        b.join(30)
        ok, status, _ = out["back"]
        assert ok and list(status) == [0] * n
        assert c.call("read", pid, addr, n * page)[1] == data
        assert c.m.flight is None and c.check() is None
        vm = c.call("vmstat")[1]
        assert vm["pgmigrate_success"] == 2 * n
    finally:
        go.set()
        c.forget_paths()


@pytest.mark.parametrize("policy", ["migentry", "migcache", "swapcache"])
@pytest.mark.parametrize("fault", ["first touch", "write"])
def test_faults_that_write_payloads_wait_for_the_copy_still_landing(ray_session, tmp_path, held_copier, policy,
                                                                    fault):
    """While a move_pages' copy lands (the copier held mid-copy), a fault
    that writes a payload waits for it (Frames.landing): a first touch on
    the source node, which takes the frames the migration just freed and
    zero-fills them (else the zeroes would reach the copy's source), or a
    write to the moved pages (else the copy would land over it). Then every
    byte reads as written."""
    c, n, page = _posting_coordinator(ray_session, tmp_path, policy)
    in_copy, go = held_copier
    try:
        pid, addr, data = _written(c, n, page, seed=8)
        other = c.call("spawn", 0)[1]
        oaddr = c.call("mmap", other, 64)[1]
        ok, status, _ = c.call("move_pages", pid, [addr + i * page for i in range(n)], [1] * n)
        assert ok and list(status) == [1] * n
        assert in_copy.wait(30), "the copy did not run on a copier thread"
        out: dict[str, object] = {}
        target = (other, oaddr, 64) if fault == "first touch" else (pid, addr + 5 * page, 64)
        t = threading.Thread(target=lambda: out.update(fault=c.call("touch", *target, write=True)))
        t.start()
        t.join(2.0)
        assert "fault" not in out, f"a {fault} wrote a payload while a copy still ran"
        go.set()
        t.join(30)
        ok, toks, _ = out["fault"]
        assert ok

        def written(base: bytes, first: int) -> bytes:     # a write stores its token in a page's first 8 bytes
            b = bytearray(base)
            for i, tok in enumerate(toks):
                b[(first + i) * page:(first + i) * page + 8] = int(tok).to_bytes(8, "little", signed=True)
            return bytes(b)

        if fault == "first touch":
            assert c.call("read", pid, addr, n * page)[1] == data
            assert c.call("read", other, oaddr, 64 * page)[1] == written(bytes(64 * page), 0)
        else:
            assert c.call("read", pid, addr, n * page)[1] == written(data, 5)
        assert c.check() is None
    finally:
        go.set()
        c.forget_paths()


def test_a_copy_is_pinned_once_by_its_own_call_not_by_one_that_waited_beside_it(ray_session, tmp_path,
                                                                                held_copier):
    """A read that waits with the lock dropped (for a copy running beside
    other operations: ``copying`` stands for one here) while another call's
    migration answers and leaves its copy landing: the read does not take
    that copy for its own, so once it lands no pin is left and the node
    actors' page walks get in again."""
    import fcntl
    import os

    c, n, page = _posting_coordinator(ray_session, tmp_path, "migentry")
    in_copy, go = held_copier
    try:
        pid = c.call("spawn", 0)[1]
        addr = c.call("mmap", pid, n)[1]
        assert c.call("touch", pid, addr, n, write=True)[0]
        other = c.call("spawn", 0)[1]
        oaddr = c.call("mmap", other, 4)[1]         # untouched: the read looks at no payload
        with c.cond:
            c.m.copying = 1
        out: dict[str, object] = {}
        reader = threading.Thread(target=lambda: out.update(read=c.call("read_tokens", other, oaddr, 4)))
        reader.start()
        reader.join(1.0)
        assert reader.is_alive(), "the read did not wait for the copy running beside it"
        ok, _, _ = c.call("move_pages", pid, [addr + i * page for i in range(n)], [1] * n)
        assert ok and in_copy.wait(30)
        flight = c.m.flight
        assert flight is not None and c.steps.pins == 1
        with c.cond:
            c.m.copying = 0
            c.cond.notify_all()
        reader.join(30)
        assert out["read"][0] and c.steps.pins == 1
        go.set()
        flight.wait()
        assert c.steps.pins == 0 and c.stats()["answered_before_copy"] == 1
        fd = os.open(c.steps.path, os.O_RDWR)
        try:        # a node actor's page walk gets in
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        go.set()
        c.forget_paths()


def test_a_posted_copy_that_fails_lets_go_of_the_lock_and_fails_the_calls_after(ray_session, tmp_path,
                                                                                 monkeypatch):
    """A chunk of a posted copy that raises (a bug: the call has answered)
    does not keep the machine lock, nor the node actors' page-walk lock:
    the other chunks are copied, the lock goes, and every call after, and
    the oracle, fail naming the copy."""
    import fcntl
    import os

    import cluster.dataplane as D
    c, n, page = _posting_coordinator(ray_session, tmp_path, "migentry")
    try:
        pid = c.call("spawn", 0)[1]
        addr = c.call("mmap", pid, n)[1]
        assert c.call("touch", pid, addr, n, write=True)[0]
        real = D.copy_rows
        failed, answered = threading.Event(), threading.Event()

        def broken(*args):      # the copier's first chunk fails, once the call has answered
            if threading.current_thread().name.startswith("migrate-copy") and not failed.is_set():
                failed.set()
                assert answered.wait(30), "move_pages did not answer before its copy was done"
                raise MemoryError("a chunk that could not be copied")
            real(*args)

        monkeypatch.setattr(D, "copy_rows", broken)
        ok, status, _ = c.call("move_pages", pid, [addr + i * page for i in range(n)], [1] * n)
        answered.set()
        assert ok and list(status) == [1] * n
        seen: list[BaseException] = []

        def check():    # the oracle helps no copy: the copier alone ends it, and lets go of the lock
            try:
                c.check()
            except BaseException as exc:  # noqa: BLE001
                seen.append(exc)

        t = threading.Thread(target=check, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the oracle waited for a lock the failed copy kept"
        assert len(seen) == 1 and isinstance(seen[0], RuntimeError)
        assert re.search("(?s)a migration's copy failed.*MemoryError: a chunk", str(seen[0]))
        with pytest.raises(RuntimeError, match="a migration's copy failed"):
            c.call("vmstat")
        assert failed.is_set() and (c.m.flight is None or c.m.flight.done())
        fd = os.open(c.steps.path, os.O_RDWR)
        try:        # a node actor's page walk gets in again
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        c.forget_paths()


def test_waiting_for_hosts_that_never_join_ends_naming_how_many_did(ray_session):
    """--hosts on a cluster that stays short (one host here): a clear error
    once the wait is over, not a hang; and no wait when they are there."""
    said: list[str] = []
    assert len(wait_for_hosts(1, said.append, timeout=0.0)) == 1 and said == []
    with pytest.raises(RunnerError, match=r"only 1 of the 2 hosts asked for \(--hosts\) joined"):
        wait_for_hosts(2, said.append, timeout=0.0)
    assert said == ["waiting for 2 hosts in the Ray cluster: 1 so far"]
