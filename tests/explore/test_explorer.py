"""The explorer's machinery: schedules are deterministic, preemptions are
counted as CHESS does, the state cache prunes, and scenario errors are clear."""
from __future__ import annotations

import errno

import textwrap

import pytest

from emulator import explore as X
from emulator.races import ScenarioError, load

R1 = """
[machine]
nodes = 2
frames_per_node = 8
swap_pages = 8
policy = "swapcache"
[[process]]
node = 0
mappings = [{pages = 2}]
[[setup]]
op = "reclaim"
node = 0
pages = 2
[[task]]
name = "A"
ops = [{op = "fault", pid = 1, page = 0}]
[[task]]
name = "B"
ops = [{op = "fault", pid = 1, page = 0}]
"""


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_same_schedule_same_run(tmp_path):
    sc = load(write(tmp_path, R1))
    sched = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    a, b = X.replay(sc, (), sched), X.replay(sc, (), sched)
    assert [str(s) for s in a.trace] == [str(s) for s in b.trace]
    assert a.violation is None


def test_preemptions_are_switches_away_from_an_enabled_task(tmp_path):
    sc = load(write(tmp_path, R1))
    serial = X.replay(sc, (), [0] * 40)
    assert serial.preemptions == 0
    once = X.replay(sc, (), [0, 0, 1] + [1] * 40)
    assert once.preemptions == 1
    assert X.replay(sc, (), [0, 1, 0] + [0] * 40).preemptions == 2


def test_bound_0_runs_the_serial_orders_only(tmp_path):
    sc = load(write(tmp_path, R1))
    out, st = X.explore_dfs(sc, (), bound=0)
    assert out is None
    assert st.schedules == 2          # A then B, B then A


def test_state_cache_prunes_without_losing_the_bug(tmp_path):
    sc = load(write(tmp_path, R1))
    out, st = X.explore_dfs(sc, (), bound=2)
    assert out is None and st.pruned > 0
    bug, _ = X.explore_dfs(sc, ["r1-no-pte-recheck"], bound=2)
    assert bug is not None


def test_budget_in_schedules_stops_the_search(tmp_path):
    sc = load(write(tmp_path, R1))
    out, st = X.explore_dfs(sc, (), bound=2, max_schedules=3)
    assert out is None and st.schedules == 3


def test_an_operation_failing_is_a_violation_unless_allowed(tmp_path):
    # no memory anywhere: the fault must fail with ENOMEM
    text = """
    [machine]
    nodes = 1
    frames_per_node = 2
    [[process]]
    node = 0
    mappings = [{pages = 2}, {pages = 1, touched = false}]
    [[task]]
    name = "A"
    ops = [{op = "fault", pid = 1, mapping = 1, page = 0, write = true}]
    """
    sc = load(write(tmp_path, text))
    out, _ = X.explore_dfs(sc, (), bound=0)
    assert out.violation == "operation failed" and "out of memory" in out.detail
    sc = load(write(tmp_path, text + '[expect]\nmay_fail = ["ENOMEM"]\n', "ok.toml"))
    assert X.explore_dfs(sc, (), bound=0)[0] is None


def test_token_rejects_garbage_and_changed_files(tmp_path):
    p = write(tmp_path, R1)
    sc = load(p)
    tok = X.make_token(sc, (), [0, 1])
    with pytest.raises(ValueError, match="not a numaemu replay token"):
        X.read_token("hello")
    with pytest.raises(ValueError, match="corrupted"):
        X.read_token(tok[:-6] + "AAAAAA")
    p.write_text(p.read_text() + "\n# changed\n")
    with pytest.raises(ValueError, match="has changed"):
        X.replay_token(tok)


@pytest.mark.parametrize("text, key", [
    ("[machine]\npolicy = 'nope'\n[[task]]\nops=[{op='swapon'}]\n", "machine.policy"),
    ("[machine]\n[[task]]\nops=[{op='teleport'}]\n", "task[0].ops[0].op"),
    ("[machine]\n[[task]]\nops=[{op='fault', pid=1}]\n", "task[0].ops[0].page"),
    ("[machine]\n[[task]]\nops=[{op='fault', pid='x', page=0}]\n", "task[0].ops[0].pid"),
    ("[machine]\nbogus = 1\n", "machine.bogus"),
    ("[machine]\n", "task"),
    ("[machine]\n[[task]]\nops=[{op='swapon'}]\n[expect]\nmay_fail=['ENOPE']\n", "expect.may_fail"),
    ("[machine]\n[[process]]\nmappings=[{pages=0}]\n[[task]]\nops=[{op='swapon'}]\n", "process[0].mappings[0]"),
    ("[machine\n", "not valid TOML"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='fault', pid=9, page=0}]\n", "task[0].ops[0].pid: no process 9"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='fork', pid=1}, {op='fault', pid=3, page=0}]\n", "task[0].ops[1].pid: no process 3"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='fault', pid=1, page=99}]\n", "task[0].ops[0].page: outside mapping 0"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='access', pid=1, page=2, npages=3}]\n", "task[0].ops[0].page: outside mapping 0"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='fault', pid=1, mapping=1, page=0}]\n", "task[0].ops[0].mapping"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[setup]]\nop='move_pages'\npid=1\npages=[0, -1]\nnode=1\n[[task]]\nops=[{op='swapon'}]\n",
     "setup[0].pages: outside mapping 0"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='reclaim', node=5, pages=1}]\n", "task[0].ops[0].node: no node 5"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='exit', pid=1}]\n"
     "[[task]]\nops=[{op='swapon'}, {op='fault', pid=1, page=0}]\n", "task[1].ops[1]: fault of process 1, which task[0] exits"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='munmap', pid=1}]\n"
     "[[task]]\nops=[{op='fork', pid=1}]\n", "task[1].ops[0]: fork of process 1, which task[0] unmaps"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='munmap', pid=1}]\n"
     "[[task]]\nops=[{op='migrate_pages', pid=1, from=[0], to=[1]}]\n",
     "task[1].ops[0]: migrate_pages of process 1, which task[0] unmaps"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='munmap', pid=1, mapping=2}]\n",
     "task[0].ops[0].mapping: process 1 has no mapping 2"),
    ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[task]]\nops=[{op='swapon'}]\n[expect]\nmay_fial=[]\n", "expect: the only key is may_fail"),
])
def test_scenario_errors_name_file_and_key(tmp_path, text, key):
    p = write(tmp_path, text, "bad.toml")
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert str(p) in str(e.value) and key in str(e.value)


def test_an_operation_on_a_process_gone_by_then_fails_as_the_kernel_would(tmp_path):
    """Not a scenario error: whether the process is there is the race's business."""
    text = ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[process]]\nmappings=[{pages=4}]\n"
            "[[setup]]\nop='exit'\npid=2\n[[task]]\nops=[{op='fault', pid=2, page=0}]\n"
            "[[task]]\nops=[{op='fault', pid=1, page=0, write=true}]\n")
    out, _ = X.explore_dfs(load(write(tmp_path, text, "gone.toml")), bound=1)
    assert out is not None and out.violation == "operation failed" and "no such process: 2" in out.detail
    clean, stats = X.explore_dfs(load(write(tmp_path, text + "[expect]\nmay_fail=['ESRCH']\n", "gone2.toml")),
                                 bound=1)
    assert clean is None and stats.schedules > 1


@pytest.mark.parametrize("op", ["{op='move_pages', pid=2, pages=[0], node=1}", "{op='migrate_pages', pid=2, from=[0], to=[1]}",
                                "{op='exit', pid=2}", "{op='fork', pid=2}", "{op='access', pid=2, page=0}"])
def test_every_operation_on_an_exited_process_is_esrch(tmp_path, op):
    text = ("[machine]\n[[process]]\nmappings=[{pages=4}]\n[[process]]\nmappings=[{pages=4}]\n"
            f"[[setup]]\nop='exit'\npid=2\n[[task]]\nops=[{op}]\n")
    out, _ = X.explore_dfs(load(write(tmp_path, text, "gone.toml")), bound=0)
    assert out is not None and out.violation == "operation failed" and "no such process: 2" in out.detail
    clean, _ = X.explore_dfs(load(write(tmp_path, text + "[expect]\nmay_fail=['ESRCH']\n", "ok.toml")), bound=0)
    assert clean is None


@pytest.mark.parametrize("op", ["{op='move_pages', pid=1, pages=[0, 1, 2], node=1}",
                                "{op='migrate_pages', pid=1, from=[0], to=[1]}"])
def test_an_exit_racing_a_migration_of_its_own_pages_waits_for_it(tmp_path, op):
    """The migration holds the mm (get_task_mm): in every interleaving each of
    its pages moves, and the exit's teardown happens when it lets go; an
    munmap (a thread of the process) does take the pages away under a
    move_pages."""
    text = ("[machine]\nnodes = 2\nframes_per_node = 8\npolicy = 'migcache'\n[[process]]\nmappings=[{pages=3}]\n"
            f"[[task]]\nops=[{op}]\n[[task]]\nops=[{{op='exit', pid=1}}]\n")
    sc = load(write(tmp_path, text, "race.toml"))
    results = []
    out, st = X.explore_dfs(sc, bound=2)
    assert out is None and st.schedules > 3
    for sched in range(3):      # the exit after the migration's first, second and third step
        w = sc.fresh()
        mig = w.start(sc.tasks[0].ops[0])
        value, n = None, 0
        while True:
            try:
                req = mig.send(value)
            except StopIteration as stop:
                results.append(stop.value)
                break
            value = req.fn(*req.args)
            n += 1
            if n == sched + 1:
                w.m._run(w.start(sc.tasks[1].ops[0]))
                assert 1 in w.m.k.mms and w.m.k.mms[1].exited       # gone, memory held
        assert 1 not in w.m.k.mms and [r["used"] for r in w.m.node_info()] == [0, 0]
        w.m.check()
    assert all((r.tolist() == [1, 1, 1]) if "move_pages" in op else r == 0 for r in results), results
    munmap = write(tmp_path, text.replace("op='exit', pid=1", "op='munmap', pid=1"), "munmap.toml")
    if "move_pages" in op:
        assert X.explore_dfs(load(munmap), bound=2)[0] is None
    else:                   # do_migrate_pages() holds mmap_lock: no munmap can come in
        with pytest.raises(ScenarioError, match="cannot race its munmap"):
            load(munmap)


def test_two_exits_of_one_process_leave_the_migration_its_hold():
    """Both exits found the task (each looked it up before either ran): the
    second finds none (ESRCH) and drops no reference of the migration's."""
    from emulator.races import Op, Scenario
    sc = Scenario("x", {"nodes": 2, "frames_per_node": 8, "policy": "migcache"}, [{"mappings": [{"pages": 3}]}],
                  [], [], frozenset())
    w = sc.fresh()
    mig = w.start(Op("move_pages", {"pid": 1, "pages": [0, 1, 2], "node": 1}))
    req = mig.send(None)
    exits = [w.start(Op("exit", {"pid": 1})) for _ in range(2)]     # both looked the task up
    value = req.fn(*req.args)                                       # the migration's first step
    w.m._run(exits[0])
    with pytest.raises(OSError) as e:
        w.m._run(exits[1])
    assert e.value.errno == errno.ESRCH and w.m.k.mms[1].users == 1
    while True:
        try:
            req = mig.send(value)
        except StopIteration as stop:
            assert stop.value.tolist() == [1, 1, 1]
            break
        value = req.fn(*req.args)
    assert 1 not in w.m.k.mms and [r["used"] for r in w.m.node_info()] == [0, 0]
    w.m.check()


@pytest.mark.parametrize("op", ["{op='exit', pid=2}", "{op='munmap', pid=2}",
                                "{op='move_pages', pid=2, pages=[0], node=1}"])
def test_a_child_is_found_by_its_pid_only_once_its_fork_returns(tmp_path, op):
    """copy_process() attaches the pid last: an operation on the child that
    starts while the fork still copies finds no process (ESRCH), whatever the
    interleaving; one that starts after it runs."""
    text = ("[machine]\nnodes = 2\nframes_per_node = 16\n[[process]]\nmappings=[{pages=2}, {pages=2}]\n"
            f"[[task]]\nops=[{{op='fork', pid=1}}]\n"
            # a first operation, so that the second may start while the fork copies
            f"[[task]]\nops=[{{op='move_pages', pid=1, pages=[0], node=1}}, {op}]\n[expect]\nmay_fail=['ESRCH']\n")
    out, st = X.explore_dfs(load(write(tmp_path, text, "halffork.toml")), bound=2)
    assert out is None and st.schedules > 2


def test_munmap_takes_every_piece_of_a_split_mapping():
    from emulator.process import split_vma
    from emulator.races import Op, Scenario
    sc = Scenario("x", {"nodes": 2, "frames_per_node": 16}, [{"mappings": [{"pages": 4}, {"pages": 2}]}], [], [],
                  frozenset())
    w = sc.fresh()
    mm = w.m.k.mms[1]
    split_vma(w.m.k, mm.vmas[0], 1)             # as an mbind of part of it would
    assert len(mm.vmas) == 3
    w.m._run(w.start(Op("munmap", {"pid": 1})))
    assert [v.npages for v in mm.vmas] == [2] and mm.rss == 2
    w.m.check()


def test_migrate_pages_to_a_node_not_online_is_einval_and_a_page_past_the_mapping_efault(tmp_path):
    text = ("[machine]\nnodes = 2\n[[process]]\nmappings=[{pages=2}]\n"
            "[[task]]\nops=[{op='migrate_pages', pid=1, from=[0], to=[5]}]\n"
            "[[task]]\nops=[{op='move_pages', pid=1, pages=[1, 9], node=1}]\n")
    out, _ = X.explore_dfs(load(write(tmp_path, text, "bad.toml")), bound=0)
    assert out is not None and out.violation == "operation failed" and "new_nodes: 5" in out.detail
    out, _ = X.explore_dfs(load(write(tmp_path, text.replace("to=[5]", "to=[]"), "none.toml")), bound=0)
    # kernel_migrate_pages(): no new node is EINVAL (nodes_empty(*new))
    assert out is not None and out.violation == "operation failed" and "new_nodes names no node" in out.detail
    sc = load(write(tmp_path, text.replace("from=[0], to=[5]", "from=[], to=[1]"), "empty.toml"))
    assert X.explore_dfs(sc, bound=1)[0] is None      # nothing to remap: 0 pages left, no error
    w = sc.fresh()
    assert w.m._run(w.start(sc.tasks[1].ops[0])).tolist() == [1, -errno.EFAULT]


def test_state_hash_sees_everything_the_oracle_and_the_future_read(tmp_path):
    from emulator.kernel import clone
    k = load(write(tmp_path, R1)).fresh(()).m.k
    h = X.state_hash(k)
    assert X.state_hash(clone(k)) == h
    mm = k.mms[1]
    changes = {
        "rss": lambda c: setattr(c.mms[1], "rss", c.mms[1].rss + 1),
        "tick": lambda c: setattr(c.nodes[0], "tick", c.nodes[0].tick + 1),
        "swap on": lambda c: setattr(c.swap, "on", not c.swap.on),
        "migcache entries": lambda c: setattr(c.migcache, "nr_entries", c.migcache.nr_entries + 1),
        "pin": lambda c: c.pins.update({0: 1}),
        "nr_free": lambda c: setattr(c.nodes[1], "nr_free", c.nodes[1].nr_free - 1),
        "refcount": lambda c: c.nodes[1].refcount.__setitem__(0, 7),
        "pte": lambda c: c.mms[1].vmas[0].pte.__setitem__(1, 0),
        "shadow": lambda c: c.mms[1].vmas[0].shadow.__setitem__(0, 99),
        "anon_vma pin": lambda c: setattr(c.anon_vmas[mm.vmas[0].anon_vma.id], "pins", 1),
    }
    for name, change in changes.items():
        c = clone(k)
        change(c)
        assert X.state_hash(c) != h, name
    assert X.state_hash(k) == h          # clones never share state with their source


def test_the_oracle_runs_once_on_each_state_a_search_reaches(tmp_path, monkeypatch):
    """Every state reached after a step is checked, with operations in flight, exactly
    once; every final state once more with none in flight (quiescence)."""
    sc = load(write(tmp_path, R1))
    hashed, checked = set(), []
    real_hash, real_check = X.state_hash, X.invariants.check

    def state_hash(k):
        h = real_hash(k)
        hashed.add(h)
        return h

    def check(k):
        checked.append((real_hash(k), k.inflight))
        return real_check(k)
    monkeypatch.setattr(X, "state_hash", state_hash)
    monkeypatch.setattr(X.invariants, "check", check)
    out, st = X.explore_dfs(sc, (), bound=2)
    assert out is None and st.schedules > 2
    assert len(checked) == len(set(checked))
    assert {h for h, inflight in checked if inflight} == hashed
    finals = {h for h, inflight in checked if not inflight}
    assert finals and finals <= hashed


@pytest.mark.parametrize("mode", ["dfs", "random"])
def test_a_search_reports_the_violating_run_with_its_trace(tmp_path, mode):
    sc = load(write(tmp_path, R1))
    bug = ["r1-no-pte-recheck"]
    if mode == "dfs":
        out, _ = X.explore_dfs(sc, bug, bound=2)
    else:
        out, _ = X.explore_random(sc, bug, seed=3, max_schedules=500)
    assert out is not None and out.violation
    assert len(out.trace) == len(out.schedule)
    again = X.replay(sc, bug, out.schedule)
    assert (again.violation, again.detail, again.preemptions) == (out.violation, out.detail, out.preemptions)
    assert [str(s) for s in again.trace] == [str(s) for s in out.trace]
    quiet, _ = X.run_schedule(sc, bug, lambda d, en, last: out.schedule[d] if d < len(out.schedule) else en[0],
                              trace=False)
    assert quiet.trace == [] and (quiet.schedule, quiet.violation, quiet.detail) == \
        (out.schedule, out.violation, out.detail)
