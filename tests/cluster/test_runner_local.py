"""The in-process runner and its workload generator."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from cluster.scenario import WorkloadSpec, load_scenario
from cluster.summary import TIMED_FIELDS
from cluster.workload import AccessPattern, Proc, Shadow


# -- access patterns (no model needed) -------------------------------------------

def spec(**kw) -> WorkloadSpec:
    base = {"node": 0, "pages": 100}
    base.update(kw)
    return WorkloadSpec.model_validate(base)


def test_sequential_walks_and_wraps():
    pat = AccessPattern(spec(pattern="sequential", batch=30))
    rng = np.random.default_rng(0)
    cursor, seen = 0, []
    for _ in range(5):
        acc = pat.next(rng, cursor)
        seen.append((acc.start, acc.npages))
        cursor = acc.start + acc.npages
    assert seen == [(0, 30), (30, 30), (60, 30), (90, 10), (0, 30)]


def test_batches_are_clipped_to_the_mapping():
    pat = AccessPattern(spec(pattern="uniform", batch=1000, pages=50))
    rng = np.random.default_rng(1)
    for _ in range(200):
        acc = pat.next(rng, 0)
        assert 0 <= acc.start < 50 and 1 <= acc.npages and acc.start + acc.npages <= 50
    assert pat.batch == 50


def test_zipf_favours_the_first_pages_and_uniform_does_not():
    rng = np.random.default_rng(2)
    zipf = AccessPattern(spec(pattern="zipf", zipf_s=1.5, pages=1000, batch=1))
    uni = AccessPattern(spec(pattern="uniform", pages=1000, batch=1))
    z = np.array([zipf.start(rng, 0) for _ in range(5000)])
    u = np.array([uni.start(rng, 0) for _ in range(5000)])
    assert z.min() >= 0 and z.max() < 1000
    assert (z < 10).mean() > 0.5          # sum_{k<=10} k^-1.5 / zeta(1.5) ~ 0.7
    assert 0.0 < (u < 10).mean() < 0.03   # ~ 1%


def test_write_ratio():
    rng = np.random.default_rng(3)
    for ratio, lo, hi in ((0.0, 0, 0), (1.0, 1000, 1000), (0.25, 200, 300)):
        pat = AccessPattern(spec(write_ratio=ratio))
        writes = sum(pat.next(rng, 0).write for _ in range(1000))
        assert lo <= writes <= hi


def test_same_seed_same_accesses():
    def draws(seed):
        rng = np.random.default_rng(seed)
        pat = AccessPattern(spec(pattern="zipf"))
        return [(a.start, a.npages, a.write) for a in (pat.next(rng, 0) for _ in range(50))]
    assert draws(7) == draws(7) and draws(7) != draws(8)


def test_shadow_tracks_writes_and_forgets_failed_ones():
    sh = Shadow.zeros(8)
    sh.record(2, np.array([11, 12, 13]))
    assert sh.mismatches(np.array([0, 0, 11, 12, 13, 0, 0, 0])).tolist() == []
    assert sh.mismatches(np.array([0, 5, 11, 12, 99, 0, 0, 0])).tolist() == [1, 4]
    sh.forget(4, 2)
    assert sh.mismatches(np.array([0, 0, 11, 12, 99, 77, 0, 0])).tolist() == []


def test_round_robin_targets():
    p = Proc(pid=1, workload=0, home=1, addr=4096, pages=4, shadow=Shadow.zeros(4), flags=2)
    assert [p.next_target(3) for _ in range(4)] == [(1, 2), (2, 0), (0, 1), (1, 2)]


# -- runs on the model ---------------------------------------------------------------

SCENARIO = """\
[machine]
nodes = 3
frames_per_node = 512
swap_pages = 1024
policy = "{policy}"
payload = "{payload}"
page_size = 256

[[workload]]
node = 0
processes = 2
pages = 96
pattern = "uniform"
write_ratio = 0.6
batch = 16

[[workload]]
node = 2
processes = 3
pages = 64
shared = {shared}
pattern = "zipf"
batch = 8

[migration]
every = {every}
mode = "{mode}"

[run]
operations = {ops}
seed = {seed}
"""


def scenario(tmp_path, policy="migentry", payload="token", every=10, mode="move_pages", ops=300, seed=5,
             shared=False, fork_every=0):
    path = tmp_path / f"{policy}-{payload}-{mode}-{seed}-{shared}-{fork_every}.toml"
    text = SCENARIO.format(policy=policy, payload=payload, every=every, mode=mode, ops=ops, seed=seed,
                           shared=str(shared).lower())
    if fork_every:
        text = text.replace("batch = 16\n", f"batch = 16\nfork_every = {fork_every}\n")
        text = text.replace("batch = 8\n", f"batch = 8\nfork_every = {fork_every}\n")
    path.write_text(textwrap.dedent(text))
    return load_scenario(path)


def strip(summary):
    summary = dict(summary)
    summary.pop("elapsed_s")
    summary.pop("latency")    # wall-clock timings
    summary.pop("timeline")   # its "t" is wall-clock too
    summary["nodes"] = [{k: v for k, v in e.items() if k not in TIMED_FIELDS} for e in summary["nodes"]]
    summary["totals"] = {k: v for k, v in summary["totals"].items() if k not in TIMED_FIELDS}
    return summary


@pytest.mark.parametrize("policy", ["swapcache", "migcache", "migentry"])
@pytest.mark.parametrize("payload", ["token", "bytes"])
@pytest.mark.parametrize("mode", ["move_pages", "migrate_pages"])
def test_every_policy_payload_and_mode_runs_clean(tmp_path, policy, payload, mode):
    from cluster.runner_local import run_local

    s = run_local(scenario(tmp_path, policy, payload, mode=mode))
    assert s["violations"] == 0, s["violation_details"]
    assert s["errors"] == {}
    assert s["processes"] == 5 and s["migration_events"] == 30
    assert s["totals"]["pgmigrate_success"] > 0
    assert s["totals"]["migrations_in"] == s["totals"]["migrations_out"] > 0
    assert s["totals"]["pgfault"] > 0
    for n in s["nodes"]:
        assert n["used"] + n["free"] == n["frames"] == 512


@pytest.mark.parametrize("policy", ["swapcache", "migcache", "migentry"])
@pytest.mark.parametrize("mode", ["move_pages", "migrate_pages"])
def test_shared_workload_processes_see_each_others_writes(tmp_path, policy, mode):
    """Three processes share one mapping (mmap shared, then fork before any
    page is touched): whichever process writes a page, all of them read it
    back, through migrations with MPOL_MF_MOVE_ALL."""
    from cluster.runner_local import LocalRun

    run = LocalRun(scenario(tmp_path, policy, mode=mode, shared=True))
    s = run.run()
    assert s["violations"] == 0, s["violation_details"]
    sharers = [p for p in run.procs if p.workload == 1]
    assert len(sharers) == 3 and len({id(p.shadow) for p in sharers}) == 1
    tokens = [run.m.read_tokens(p.pid, p.addr, p.pages).tolist() for p in sharers]
    assert tokens[0] == tokens[1] == tokens[2] and any(tokens[0])
    assert s["totals"]["pgmigrate_success"] > 0


def test_runs_are_deterministic(tmp_path):
    from cluster.runner_local import run_local

    a = run_local(scenario(tmp_path, seed=11))
    b = run_local(scenario(tmp_path, seed=11))
    c = run_local(scenario(tmp_path, seed=12))
    assert strip(a) == strip(b)
    assert strip(a)["nodes"] != strip(c)["nodes"]


def test_no_migration_when_every_is_zero(tmp_path):
    from cluster.runner_local import run_local

    s = run_local(scenario(tmp_path, every=0))
    assert s["migration_events"] == 0
    assert s["totals"]["pgmigrate_success"] == 0
    assert s["totals"]["migrations_in"] == 0
    # first touch is local: each workload's pages are on its node
    used = [n["used"] for n in s["nodes"]]
    assert used[1] == 0 and used[0] > 0 and used[2] > 0


def test_migrate_pages_moves_the_whole_process(tmp_path):
    from cluster.runner_local import LocalRun

    run = LocalRun(scenario(tmp_path, mode="migrate_pages", every=0, ops=60))
    run.run()
    proc = run.procs[0]                    # private, home node 0
    addrs = proc.page_addrs(np.arange(proc.pages), run.page_size)
    before = status(run, proc, addrs)
    assert set(before[before >= 0].tolist()) == {0}
    run.migrate()                          # event 0 -> procs[0], node 0 -> 1
    after = status(run, proc, addrs)
    assert set(after[after >= 0].tolist()) == {1}
    assert (after >= 0).sum() == (before >= 0).sum()
    vm = [run.m.vmstat(node=n) for n in range(3)]
    assert vm[1]["migrate_in"] == vm[0]["migrate_out"] == vm[0]["pgmigrate_success"] == (before >= 0).sum()
    assert vm[0]["migrate_in"] == vm[1]["pgmigrate_success"] == vm[2]["migrate_in"] == 0
    assert run.verify() == 0


THREADED = """
[machine]
nodes = 3
frames_per_node = 256
swap_pages = 64
policy = "migentry"
payload = "token"

[[workload]]
node = 0
processes = 2
pages = 24
threads = 3
pattern = "sequential"
batch = 8
write_ratio = 1.0

[migration]
every = 0
mode = "{mode}"
{target}

[run]
operations = 30
seed = 3
"""


def threaded(tmp_path, mode, target=None):
    from cluster.runner_local import LocalRun

    path = tmp_path / f"threaded-{mode}-{target}.toml"
    path.write_text(THREADED.format(mode=mode, target="" if target is None else f"target = {target}"))
    run = LocalRun(load_scenario(path))
    run.run()
    return run


def status(run, proc, addrs) -> np.ndarray:
    """Each page's node (or -errno): move_pages' query."""
    return np.asarray(run.m.move_pages(proc.pid, addrs, None), dtype=np.int64)


def where(run, pid):
    mover = next(p for p in run.movers if p.pid == pid)
    st = status(run, mover, mover.page_addrs(np.arange(mover.pages), run.page_size))
    return st[st >= 0].tolist()


def test_migrations_take_turns_per_process_not_per_thread(tmp_path):
    """Two processes of three threads each: events 0 and 1 move the two
    processes (all 24 pages each, node 0 -> 1), event 2 moves the first again
    (1 -> 2); the summary counts every page moved, on both of its nodes."""
    run = threaded(tmp_path, "migrate_pages")
    pids = [m.pid for m in run.movers]
    assert len(run.procs) == 6 and len(pids) == 2 and all(m.pages == 24 for m in run.movers)
    base = run.m.vmstat()["pgmigrate_success"]
    run.migrate()
    run.migrate()
    assert where(run, pids[0]) == where(run, pids[1]) == [1] * 24
    run.migrate()
    assert where(run, pids[0]) == [2] * 24 and where(run, pids[1]) == [1] * 24
    moved = run.m.vmstat()["pgmigrate_success"] - base
    assert moved == 72
    vm = [run.m.vmstat(node=n) for n in range(3)]
    assert [v["migrate_in"] for v in vm] == [0, 48, 24]
    assert [v["migrate_out"] for v in vm] == [48, 24, 0]
    assert [v["pgmigrate_success"] for v in vm] == [48, 24, 0]
    assert run.verify() == 0


@pytest.mark.parametrize("mode", ["migrate_pages", "move_pages", "hot"])
def test_a_migration_target_takes_pages_from_every_other_node(tmp_path, mode):
    """[migration] target: every event moves towards the target, wherever
    the process's pages are now (migrate_pages moves from every other node)."""
    run = threaded(tmp_path, mode, target=2)
    pid = run.movers[0].pid
    run.m.migrate_pages(pid, [0], [1])            # part of it elsewhere first: node 1
    for _ in range(40):
        run.migrate()                             # both processes take turns (move_pages: 8 random pages)
    assert where(run, pid) == [2] * 24
    assert run.verify() == 0


def test_verification_catches_a_lost_write(tmp_path):
    from cluster.runner_local import LocalRun

    run = LocalRun(scenario(tmp_path, ops=100))
    run.run()
    assert run.verify() == 0
    proc = run.procs[0]
    written = np.flatnonzero(proc.shadow.tokens)
    assert len(written) > 0
    proc.shadow.tokens[written[0]] += 1    # the writer "remembers" something else
    assert run.verify() == 1
    assert f"pid {proc.pid} page {written[0]}" in run.details[-1]


@pytest.mark.parametrize("policy", ["swapcache", "migcache", "migentry"])
@pytest.mark.parametrize("shared", [False, True])
def test_fork_cycles_copy_on_write_and_share(tmp_path, policy, shared):
    """Children read their parent's pages, write them and exit: private pages
    are copied (the parents' pages keep their tokens), shared ones are not
    (the parents see the children's tokens); both are verified."""
    from cluster.runner_local import LocalRun

    run = LocalRun(scenario(tmp_path, policy=policy, shared=shared, fork_every=3, ops=240))
    s = run.run()
    assert s["violations"] == 0, s["violation_details"]
    assert s["forks"] == 5 * (240 // 5 // 3)     # 5 processes take turns; each forks every third access
    assert s["errors"] == {}
    assert run.m.processes() == sorted({p.pid for p in run.procs})      # the children are gone


def test_forks_do_not_change_the_accesses(tmp_path):
    """A fork cycle draws nothing: the same pages are written with or without."""
    from cluster.runner_local import LocalRun

    runs = [LocalRun(scenario(tmp_path, fork_every=f, ops=150)) for f in (0, 5)]
    a, b = (r.run() for r in runs)
    assert b["forks"] > 0 and a["forks"] == 0
    for p, q in zip(*(r.procs for r in runs)):
        assert np.array_equal(np.flatnonzero(p.shadow.tokens), np.flatnonzero(q.shadow.tokens))
    assert a["migration_events"] == b["migration_events"]


def test_a_fork_cycle_catches_a_child_that_reads_the_wrong_data(tmp_path):
    """Not a check that cannot fail: the parent's record says something else
    than memory holds, and the child's read is reported with its pid and page."""
    from cluster.runner_local import LocalRun
    from cluster.workload import Access, fork_cycle

    run = LocalRun(scenario(tmp_path, ops=100))
    run.run()
    proc = run.procs[0]
    page = int(np.flatnonzero(proc.shadow.tokens)[0])
    proc.shadow.tokens[page] += 1
    res = fork_cycle(run.m, proc, Access(page, 2, True), run.page_size, shared=False)
    assert res.checked == 4 and len(res.bad) == 1
    assert f"of pid {proc.pid} page {page} " in res.bad[0] and "the parent's, copied at fork" in res.bad[0]
    assert run.m.processes() == sorted({p.pid for p in run.procs})      # the child exited


@pytest.mark.parametrize("policy", ["swapcache", "migcache", "migentry"])
def test_swapoff_cycles_bring_every_page_back_and_lose_nothing(tmp_path, policy):
    """Reclaim pushes pages out, each swapoff brings every one back (the
    device is empty right after it), swapon again; migrations in between.
    Every page is verified at the end."""
    from cluster.runner_local import LocalRun

    text = SCENARIO.format(policy=policy, payload="token", every=7, mode="move_pages", ops=300, seed=3,
                           shared="true").replace("frames_per_node = 512", "frames_per_node = 200")
    path = tmp_path / "swapoff.toml"
    path.write_text(textwrap.dedent(text) + "\n[reclaim]\nevery = 5\npages = 64\n\n[swapoff]\nevery = 40\n")
    run = LocalRun(load_scenario(path))
    m, real = run.m, run.m.swapoff
    back = []

    def swapoff():
        used, pswpin = m.swap_info()["used"], m.vmstat()["pswpin"]
        real()
        assert m.swap_info()["used"] == 0 and not m.swap_info()["on"]
        back.append((used, m.vmstat()["pswpin"] - pswpin))

    m.swapoff = swapoff
    s = run.run()
    assert s["violations"] == 0, s["violation_details"]
    assert s["errors"] == {}
    assert s["swapoff_events"] == len(back) == 300 // 40
    assert all(n > 0 for _, n in back)            # each brought pages back in
    assert m.swap_info()["on"]


def test_a_failed_swapoff_leaves_swap_on_and_is_counted(tmp_path):
    """Memory cannot take the swapped pages back: ENOMEM, the device stays
    on (mm/swapfile.c), no swapon, and the run goes on."""
    from cluster.runner_local import LocalRun

    text = SCENARIO.format(policy="migcache", payload="token", every=0, mode="move_pages", ops=120, seed=3,
                           shared="false").replace("frames_per_node = 512", "frames_per_node = 60")
    path = tmp_path / "enomem.toml"
    path.write_text(textwrap.dedent(text) + "\n[swapoff]\nevery = 60\n")
    s = LocalRun(load_scenario(path)).run()
    assert s["errors"].get("swapoff:ENOMEM") == 2 and "swapon:EBUSY" not in s["errors"]
    assert s["swap"]["on"] and s["violations"] == 0


FULL_TARGET = """
[machine]
nodes = 2
frames_per_node = 128
swap_pages = 0
policy = "migentry"

[[workload]]
node = 0
pages = 100
pattern = "uniform"
write_ratio = 1.0
batch = 16

[[workload]]
node = 1
pages = 122
pattern = "sequential"
write_ratio = 1.0
batch = 122

[migration]
every = 5
mode = "{mode}"
target = 1

[run]
operations = 200
seed = 7
"""


@pytest.mark.parametrize("mode", ["move_pages", "hot", "migrate_pages"])
def test_a_migration_that_runs_out_of_memory_is_counted_and_the_run_goes_on(tmp_path, mode):
    """Upstream migration (migentry) with no swap: node 1 fills up, and each
    migration there then fails as a whole with ENOMEM, after moving what
    fitted. The run counts the failed calls, goes on, and still tallies every
    page that moved (as pgmigrate_success counts them)."""
    from cluster.runner_local import run_local

    path = tmp_path / f"full-{mode}.toml"
    path.write_text(FULL_TARGET.format(mode=mode))
    s = run_local(load_scenario(path))
    assert s["violations"] == 0, s["violation_details"]
    assert s["operations_done"] == 200
    assert s["errors"].get(f"{mode}:ENOMEM", 0) > 0
    t = s["totals"]
    assert t["pgmigrate_success"] > 0
    assert t["migrations_in"] == t["migrations_out"] == t["pgmigrate_success"]
