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


ROOT = Path(__file__).resolve().parents[2]


def _set(*path_and_value):
    """A change to a dump's document: the keys to follow, then the new value."""
    *keys, value = path_and_value

    def change(doc):
        d = doc
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return change


A = 0x10000000              # the fixture's mapping (MMAP_BASE_VPN << 12)
BAD_DUMPS = [
    # (change to the fixture's document, what the error names)
    (_set("events", [1]), "events[0]: must be a table (one logged call), got 1"),
    (_set("events", 3, "seq", "x"), "events[3].seq: must be an integer, got 'x'"),
    (_set("events", 1, "args", 5), "events[seq 5].args: must be a list, got 5"),
    (_set("events", 1, "kw", 5), "events[seq 5].kw: must be a table, got 5"),
    (_set("events", 1, "kw", [1, 2]), "events[seq 5].kw: must be a table, got [1, 2]"),
    (_set("events", 1, "kw", {1: 2}), "events[seq 5].kw: 1: keyword names are strings"),
    (_set("events", 1, "kw", {"bogus": 1}), "events[seq 5]: touch: arguments [1, 268435456, 1], {'bogus': 1}: "
                                            "got an unexpected keyword argument 'bogus'"),
    (_set("events", 1, "args", [1]), "events[seq 5]: touch: arguments [1], {'write': False}: "
                                     "missing a required argument: 'addr'"),
    (_set("events", 1, "caller", [1]), "events[seq 5].caller: must be a string, got [1]"),
    (_set("violations", 5), "violations: must be a list of strings (what the run saw), got 5"),
    (_set("violations", [5]), "violations: must be a list of strings (what the run saw), got [5]"),
    (_set("bugs", [1]), "bugs: must be a list of bug injection names, got [1]"),
    (_set("events", 1, "args", ["1", A, 1]), "events[seq 5]: touch: pid: must be an integer, got '1'"),
    (_set("events", 1, "args", [1, A, 10**6]), "events[seq 5]: touch: npages: 1000000 pages from 0x10000000 run "
                                               "past pid 1's mapping at the checkpoint (address 0x10002000"),
    (_set("events", 1, "args", [1, A, 2**64 - 1]), "events[seq 5]: touch: npages: must be in 0..2147483648, "
                                                   "got 18446744073709551615"),
    (_set("events", 1, "args", [1, A + (1 << 40), 1]), "events[seq 5]: touch: addr: pid 1 address 0x10010000000 "
                                                       "is not mapped at the checkpoint"),
    (_set("events", 1, "kw", {"write": "yes"}), "events[seq 5]: touch: write: must be true or false, got 'yes'"),
    (_set("events", 0, "args", [9, 2]), "events[seq 4]: reclaim: node: must be in 0..1, got 9"),
    (_set("events", 0, "args", [0, -1]), "events[seq 4]: reclaim: nr_pages: must be a 64-bit integer >= 0, got -1"),
    (_set("events", 3, "args", [1, [A, A + 4096], [9, 9], 0]), "events[seq 7]: move_pages: nodes[0]: must be in "
                                                               "0..1, got 9"),
    (_set("events", 3, "args", [1, [A, A + 4096], [1], 0]), "events[seq 7]: move_pages: nodes: 1 nodes for 2 pages"),
    (_set("events", 3, "args", [1, [A, A + (1 << 40)], [1, 1], 0]), "events[seq 7]: move_pages: pages[1]: pid 1 "
                                                                    "address 0x10010000000 is not mapped"),
    (_set("events", 3, ev(7, "migrate_pages", 1, [0], [9])), "events[seq 7]: migrate_pages: new_nodes[0]: "
                                                              "must be in 0..1, got 9"),
    (_set("events", 3, {**ev(7, "fork", 1), "result": 1}), "events[seq 7]: fork: result: 1 cannot be a new "
                                                           "process's pid"),
    (_set("events", 3, ev(7, "swapoff", 1)), "events[seq 7]: swapoff: arguments [1], {}: too many positional"),
]


@pytest.mark.parametrize("change, message", BAD_DUMPS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in
                                                             enumerate(BAD_DUMPS)])
def test_a_malformed_dump_is_an_error_naming_the_event_and_field(tmp_path, dump, change, message):
    """Before, each of these was a traceback (or, for the reclaim of node 9, a
    'VIOLATION operation failed: IndexError' of the explored run)."""
    doc = msgpack.unpackb(dump.read_bytes(), raw=False, strict_map_key=False)
    change(doc)
    path = tmp_path / "bad.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ScenarioError) as e:
        load(f"{path}#4")
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert str(e.value).count(str(path)) == 1, str(e.value)      # one prefix: not wrapped again


def test_a_bad_call_replayed_before_the_explored_ones_is_refused_too(tmp_path, dump):
    """A reclaim of node 9 in the setup (the calls before the last N) is a
    load error, not a crash of the build."""
    doc = msgpack.unpackb(dump.read_bytes(), raw=False, strict_map_key=False)
    doc["events"][0]["args"] = [9, 2]
    path = tmp_path / "bad.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(ScenarioError, match=r"events\[seq 4\]: reclaim: node: must be in 0\.\.1, got 9"):
        load(f"{path}#2")


@pytest.mark.parametrize("n", ["²", "0", "-1", "x", "9" * 5000, ""])
def test_the_number_after_the_hash_is_a_positive_ascii_integer(dump, n):
    with pytest.raises(ScenarioError, match="the number of calls to explore must be a positive integer"):
        load(f"{dump}#{n}")


@pytest.mark.parametrize("i", [0, 2, 8, 9, 13, 17, 19])
def test_numaemu_explore_exits_2_on_a_malformed_dump_without_a_traceback(tmp_path, dump, i):
    change, message = BAD_DUMPS[i]
    doc = msgpack.unpackb(dump.read_bytes(), raw=False, strict_map_key=False)
    change(doc)
    path = tmp_path / "bad.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    for arg in (f"{path}#4", f"{path}#²"):
        r = subprocess.run([sys.executable, "-m", "cluster.cli", "explore", arg, "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and r.stderr.startswith(f"error: {path}"), r.stderr
    assert message in subprocess.run([sys.executable, "-m", "cluster.cli", "explore", f"{path}#4", "--quiet"],
                                     cwd=ROOT, capture_output=True, text=True, timeout=120).stderr


def test_a_touch_across_vmas_split_since_its_mmap_is_a_fault_in_each(tmp_path):
    """An mbind before the checkpoint split the mapping: a touch of all of it
    crosses three vmas, as Machine.touch walks them (one op of npages=3 on
    the first vma ran past its end: an IndexError the explorer called a
    violation)."""
    m = Machine.from_config({"nodes": 2, "frames_per_node": 8, "swap_pages": 8, "policy": "migcache"})
    pid = m.spawn(0)
    a = m.mmap(pid, 3)
    m.touch(pid, a, 3)
    m.mbind(pid, a + m.page_size, 1, "bind", [1])
    assert len(m.k.mms[pid].vmas) == 3
    path = swapoff_dump(tmp_path, m, [ev(4, "touch", pid, a, 3, write=True), ev(5, "reclaim", 0, 2),
                                      ev(6, "touch", pid, a + m.page_size, 0)], "split.msgpack")
    sc = load_dump(f"{path}#3")
    # the touch of no page (npages 0) touches nothing, as Machine.touch: no task of its own
    assert [[op.kind for op in t.ops] for t in sc.tasks] == [["fault", "fault", "fault"], ["reclaim"]]
    assert [(op.args["mapping"], op.args["page"], op.args["npages"]) for op in sc.tasks[0].ops] == \
        [(0, 0, 1), (1, 0, 1), (2, 0, 1)]
    out, st = X.explore_dfs(sc, [], bound=2)
    assert out is None, out and (out.violation, out.detail)


def test_a_checkpoint_in_an_impossible_state_is_named(tmp_path, dump):
    """A checkpoint whose next_pid is an existing process's (a fork in the
    explored calls would replace it) is refused as the checkpoint's error,
    with the snapshot's field."""
    import hashlib

    from emulator.snapshot import MAGIC
    doc = msgpack.unpackb(dump.read_bytes(), raw=False, strict_map_key=False)
    blob = doc["checkpoint"]["snapshot"]
    body = msgpack.unpackb(blob[len(MAGIC) + 32:], raw=False, strict_map_key=False)
    body["next_pid"] = 1
    packed = msgpack.packb(body, use_bin_type=True)
    doc["checkpoint"]["snapshot"] = MAGIC + hashlib.sha256(packed).digest() + packed
    path = tmp_path / "cp.msgpack"
    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "explore", f"{path}#2", "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {path}#2: checkpoint: snapshot: next_pid: 1, but pid 1 exists"), r.stderr
