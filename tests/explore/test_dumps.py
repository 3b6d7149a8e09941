"""A stress run's dump, explored in-process: the checkpoint it passed, the
calls before the last N replayed, the last N as concurrent tasks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from emulator import Machine
from emulator import explore as X
from emulator.dumps import load_dump
from emulator.races import ScenarioError, load


def ev(seq, op, *args, **kw):
    return {"seq": seq, "t": 0.0, "op": op, "args": list(args), "kw": kw, "outcome": "ok"}


@pytest.fixture
def dump(tmp_path) -> Path:
    """What a run leaves when two faults race on a page swapped out after the checkpoint."""
    m = Machine.from_config({"nodes": 2, "frames_per_node": 8, "swap_pages": 8, "policy": "migcache"})
    pid = m.spawn(0)
    a = m.mmap(pid, 2)
    m.touch(pid, a, 2)
    doc = {"format": "numaemu-dump/1", "scenario": "x.toml",
           "checkpoint": {"seq": 3, "snapshot": m.snapshot()},
           "events": [ev(4, "reclaim", 0, 2), ev(5, "touch", pid, a, 1, write=False),
                      ev(6, "touch", pid, a, 1, write=True), ev(7, "move_pages", pid, [a, a + 4096], None, 0)],
           "snapshot": m.snapshot(), "violations": ["data: ..."]}
    path = tmp_path / "run.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    return path


def test_the_last_calls_become_tasks_after_the_rest_replayed(dump):
    sc = load(f"{dump}#3")                      # races.load dispatches on .msgpack
    assert [op.kind for op in sc.setup] == ["reclaim"]
    assert [t.ops[0].kind for t in sc.tasks] == ["fault", "fault"]   # the query moved nothing
    assert sc.tasks[1].ops[0].args == {"pid": 1, "mapping": 0, "page": 0, "npages": 1, "write": True}
    w = sc.fresh()
    assert w.m.vmstat()["pswpout"] == 2         # the setup ran on the checkpoint


def test_the_explorer_finds_the_race_the_calls_ran_into(dump):
    sc = load_dump(f"{dump}#3")
    out, st = X.explore_dfs(sc, ["r1-no-pte-recheck"], bound=2)
    # the same race as the catalogue's R1 scenario, from the dump's state
    r1, _ = X.explore_dfs(load(Path(__file__).parents[2] / "examples/races/r1-no-pte-recheck.toml"),
                          ["r1-no-pte-recheck"], bound=2)
    assert out is not None and out.violation == r1.violation
    token = X.make_token(sc, ["r1-no-pte-recheck"], out.schedule)
    sc2, bugs, again = X.replay_token(token)
    assert again.violation == out.violation
    clean, st = X.explore_dfs(sc, [], bound=2)
    assert clean is None and st.schedules > 1


def test_bad_dumps_are_named(tmp_path, dump):
    (tmp_path / "junk.msgpack").write_bytes(b"\x00\x01 not msgpack")
    with pytest.raises(ScenarioError, match="junk.msgpack: "):
        load(str(tmp_path / "junk.msgpack"))
    with pytest.raises(ScenarioError, match="#0: the number of calls"):
        load(f"{dump}#0")
    doc = msgpack.unpackb(dump.read_bytes(), raw=False)
    doc["events"].append(ev(8, "mmap", 1, 4))
    (tmp_path / "mmap.msgpack").write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ScenarioError, match="mmap since the checkpoint cannot be explored"):
        load(str(tmp_path / "mmap.msgpack"))
    doc["events"][-1] = ev(8, "fork", 1)           # logged without the child's pid
    (tmp_path / "fork.msgpack").write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ScenarioError, match=r"events\[seq 8\]: fork: result: the child's pid is missing"):
        load(str(tmp_path / "fork.msgpack#1"))


def test_numaemu_explore_takes_a_dump(dump):
    exe = Path(sys.executable).with_name("numaemu")
    p = subprocess.run([str(exe), "explore", f"{dump}#3", "--bug", "r1-no-pte-recheck", "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "VIOLATION of invariant 2 (mapcount)" in p.stdout and "replay: numaemu replay nx1-" in p.stdout
    token = p.stdout.split("replay: numaemu replay ")[1].split()[0]
    r = subprocess.run([str(exe), "replay", token], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "VIOLATION of invariant 2 (mapcount)" in r.stdout


def test_exploring_a_dump_says_which_bugs_its_run_had_on(tmp_path, dump):
    doc = msgpack.unpackb(dump.read_bytes(), raw=False)
    doc["bugs"] = ["r1-no-pte-recheck"]
    path = tmp_path / "bugged.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    exe = Path(sys.executable).with_name("numaemu")
    p = subprocess.run([str(exe), "explore", f"{path}#3", "--quiet"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr          # without the bug, these calls are clean
    assert "note: the run that wrote this dump had r1-no-pte-recheck on; add --bug r1-no-pte-recheck" in p.stderr
    p = subprocess.run([str(exe), "explore", f"{path}#3", "--quiet", "--bug", "r1-no-pte-recheck"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "note:" not in p.stderr
    doc["bugs"] = "r1-no-pte-recheck"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ScenarioError, match="bugged.msgpack: bugs: must be a list"):
        load(str(path))


def fork_dump(tmp_path: Path, policy: str = "migentry") -> Path:
    """A stress run's fork cycle racing a migration of the parent's page:
    fork, the child's read and write (copy-on-write), its exit."""
    m = Machine.from_config({"nodes": 2, "frames_per_node": 8, "swap_pages": 0, "policy": policy})
    pid = m.spawn(0)
    a = m.mmap(pid, 1)
    m.touch(pid, a, 1)
    child = 7          # whatever pid the run gave it: the dump's later calls name it
    fork = ev(4, "fork", pid)
    fork["result"] = child
    events = [fork, ev(5, "move_pages", pid, [a], [1], 0), ev(6, "touch", child, a, 1, write=False),
              ev(7, "touch", child, a, 1, write=True), ev(8, "exit", child)]
    for e in events:   # the workload thread that forked, and the runner migrating
        e["caller"] = "runner" if e["op"] == "move_pages" else "node0-t0"
    doc = {"format": "numaemu-dump/1", "scenario": "x.toml",
           "checkpoint": {"seq": 3, "snapshot": m.snapshot()},
           "events": events,
           "snapshot": m.snapshot(), "violations": ["fork: ..."]}
    path = tmp_path / "fork.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    return path


def test_one_task_per_caller_with_a_forked_child_named_by_its_pid(tmp_path):
    """The calls of one workload thread stay in order (fork, the child's
    faults, its exit); the runner's migration races them."""
    sc = load_dump(f"{fork_dump(tmp_path)}#5")
    assert [t.name for t in sc.tasks] == ["node0-t0", "runner"]
    assert [[op.kind for op in t.ops] for t in sc.tasks] == [["fork", "fault", "fault", "exit"], ["move_pages"]]
    assert sc.tasks[0].ops[0].args == {"pid": 1, "child": 7}
    assert sc.tasks[0].ops[1].args["pid"] == 7 and sc.tasks[0].ops[1].args["mapping"] == 0
    # forked before the explored calls: replayed in the setup, named by the dump's pid
    sc = load_dump(f"{fork_dump(tmp_path)}#3")
    assert [op.kind for op in sc.setup] == ["fork", "move_pages"]
    w = sc.fresh()
    assert w.alias == {7: 2} and 2 in w.m.k.mms
    assert [op.args["pid"] for op in sc.tasks[0].ops] == [7, 7, 7]     # the child's calls, one thread


def test_the_explorer_finds_r3_in_a_dump_with_a_fork(tmp_path):
    """The fork-against-remap race (R3) from a dump: found with the bug, clean without."""
    sc = load_dump(f"{fork_dump(tmp_path)}#5")
    out, _ = X.explore_dfs(sc, ["r3-fork-links-at-head"], bound=2)
    assert out is not None, "R3 not found from the dump"
    token = X.make_token(sc, ["r3-fork-links-at-head"], out.schedule)
    assert X.replay_token(token)[2].violation == out.violation
    clean, st = X.explore_dfs(sc, [], bound=2)
    assert clean is None and st.schedules > 1


def swapoff_dump(tmp_path: Path, m: Machine, events: list[dict], name: str) -> Path:
    for e in events:
        e["caller"] = "node0-t0" if e["op"] == "touch" else "runner"
    doc = {"format": "numaemu-dump/1", "scenario": "x.toml", "checkpoint": {"seq": 3, "snapshot": m.snapshot()},
           "events": events, "snapshot": m.snapshot(), "violations": ["data: ..."]}
    path = tmp_path / name
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    return path


def test_swapoff_and_swapon_calls_are_explored(tmp_path):
    """The runner's swapoff cycle against a fault, explored clean."""
    m = Machine.from_config({"nodes": 2, "frames_per_node": 8, "swap_pages": 8, "policy": "migcache"})
    pid = m.spawn(0)
    a = m.mmap(pid, 3)
    m.touch(pid, a, 3)
    path = swapoff_dump(tmp_path, m, [ev(4, "reclaim", 0, 3), ev(5, "swapoff"), ev(6, "touch", pid, a, 2, write=True),
                                      ev(7, "swapon")], "swapoff.msgpack")
    sc = load_dump(f"{path}#3")
    assert [[op.kind for op in t.ops] for t in sc.tasks] == [["swapoff", "swapon"], ["fault"]]
    assert sc.fresh().m.vmstat()["pswpout"] == 3
    out, st = X.explore_dfs(sc, [], bound=2)
    assert out is None and st.schedules > 1


def test_a_swapoff_that_goes_otherwise_in_the_replay_leaves_swap_on(tmp_path):
    """A swapoff cycle ends with the device on, as in the run, whichever way
    the replayed swapoff goes: no false 'already on' / 'already off'."""
    # A: the run's swapoff worked; replayed here, memory is full and it fails: the swapon finds swap on
    m = Machine.from_config({"nodes": 1, "frames_per_node": 16, "swap_pages": 16, "policy": "migcache"})
    pid = m.spawn(0)
    a = m.mmap(pid, 24)
    m.touch(pid, a, 24)
    assert m.swap_info()["used"] > 0
    with pytest.raises(OSError):
        m.swapoff()
    path = swapoff_dump(tmp_path, m, [ev(4, "swapoff"), ev(5, "swapon")], "a.msgpack")
    out, st = X.explore_dfs(load_dump(f"{path}#1"), [], bound=2)
    assert out is None, out and out.violation
    # B: the run's swapoff failed (no swapon followed); replayed here it works: the device comes back on
    m = Machine.from_config({"nodes": 2, "frames_per_node": 16, "swap_pages": 8, "policy": "migcache"})
    pid = m.spawn(0)
    a = m.mmap(pid, 4)
    m.touch(pid, a, 4)
    failed = ev(5, "swapoff")
    failed["outcome"] = "OSError: [Errno 12] swapoff: 4 swapped pages but room for 2 only"
    path = swapoff_dump(tmp_path, m, [ev(4, "reclaim", 0, 4), failed, ev(6, "swapoff"), ev(7, "swapon"),
                                      ev(8, "touch", pid, a, 2, write=True)], "b.msgpack")
    sc = load_dump(f"{path}#3")
    assert [op.kind for op in sc.setup] == ["reclaim", "swapoff", "swapon"]
    assert sc.fresh().m.swap_info()["on"]
    out, st = X.explore_dfs(sc, [], bound=2)
    assert out is None, out and out.violation


def test_a_migration_that_outlived_an_exit_replays_without_a_false_violation(tmp_path):
    """A move_pages holds the mm through an exit, so the run logs it after the
    exit it started before: replayed after that exit (in the setup) it finds
    no process, which is the replay's order, not a failure of the run's."""
    m = Machine.from_config({"nodes": 2, "frames_per_node": 16, "swap_pages": 0, "policy": "migentry"})
    pid = m.spawn(0)
    a = m.mmap(pid, 2)
    m.touch(pid, a, 2)
    doc = {"format": "numaemu-dump/1", "scenario": "x.toml", "checkpoint": {"seq": 0, "snapshot": m.snapshot()},
           "events": [ev(2, "exit", pid), ev(1, "move_pages", pid, [a, a + m.page_size], [1, 1], 4)],
           "snapshot": m.snapshot(), "violations": ["synthetic"]}
    path = tmp_path / "exit.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    out, st = X.explore_dfs(load(f"{path}#1"), bound=2)
    assert out is None and st.schedules >= 1
