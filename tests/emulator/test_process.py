"""Processes: spawn, mmap/munmap, read/write/touch, fork with COW, exit, mempolicies,
and the NUMA allocation counters as mm/vmstat.c (zone_statistics) counts them."""
from __future__ import annotations

import errno
import random

import numpy as np
import pytest

from emu_support import (fill, free_all, make, numa, numa_delta, pattern, raises_errno,
                         step_through, unmapped_addr, where)

# --------------------------------------------------------------------------- spawn, mmap


def test_pids_start_at_one_and_are_distinct(payload):
    m = make(payload=payload)
    pids = [m.spawn(node=0), m.spawn(node=1), m.spawn(node=0)]
    assert pids[0] == 1
    assert len(set(pids)) == 3


def test_spawn_on_a_bad_node_is_rejected():
    m = make(nodes=2)
    for node in (-1, 2, 99):
        with pytest.raises((OSError, ValueError)):
            m.spawn(node=node)


def test_mmap_returns_page_aligned_disjoint_ranges(payload):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    ps = m.page_size
    ranges = []
    for n in (1, 3, 2):
        a = m.mmap(pid, n)
        assert a > 0 and a % ps == 0
        ranges.append((a, a + n * ps))
    ranges.sort()
    for (_, e), (s, _) in zip(ranges, ranges[1:]):
        assert e <= s


def test_mmap_does_not_allocate_frames():
    m = make(frames=16)
    pid = m.spawn(node=0)
    before = free_all(m)
    m.mmap(pid, 8)
    assert free_all(m) == before


def test_mmap_zero_pages_is_einval():
    m = make()
    pid = m.spawn(node=0)
    raises_errno(errno.EINVAL, m.mmap, pid, 0)


# --------------------------------------------------------------------------- read / write


def test_never_written_reads_zeros(payload):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    ps = m.page_size
    assert m.read(pid, a, 3 * ps) == bytes(3 * ps)
    assert m.read(pid, a + 5, 17) == bytes(17)
    assert list(m.read_tokens(pid, a, 3)) == [0, 0, 0]


def test_bytes_mode_arbitrary_data_across_page_boundaries():
    m = make(payload="bytes")
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 4)
    rng = random.Random(1)
    shadow = bytearray(4 * ps)
    for off, n in [(ps - 3, 7), (10, 2 * ps + 5), (3 * ps + 1, ps - 1), (0, 1), (ps, ps)]:
        data = rng.randbytes(n)
        m.write(pid, a + off, data)
        shadow[off:off + n] = data
        assert m.read(pid, a, 4 * ps) == bytes(shadow)
    # reads at odd offsets across boundaries
    for off, n in [(ps - 1, 2), (1, 3 * ps), (2 * ps + 7, ps + 9)]:
        assert m.read(pid, a + off, n) == bytes(shadow[off:off + n])
    # read_tokens: the first 8 bytes of each page, little endian
    want = [int.from_bytes(shadow[i * ps:i * ps + 8], "little", signed=True) for i in range(4)]
    assert [int(t) for t in m.read_tokens(pid, a, 4)] == want


def test_token_mode_whole_page_patterns_round_trip():
    m = make(payload="token")
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 3)
    pages = fill(m, pid, a, 3, base=0x1122334455)
    assert m.read(pid, a, 3 * ps) == b"".join(pages)
    assert [int(t) for t in m.read_tokens(pid, a, 3)] == [0x1122334455 + i for i in range(3)]
    # a partial read returns that slice of the repeated form, also across a boundary
    whole = b"".join(pages)
    assert m.read(pid, a + ps - 5, 13) == whole[ps - 5:ps + 8]
    # overwrite the middle page only
    m.write(pid, a + ps, pattern(m, 77))
    assert m.read(pid, a + ps, ps) == pattern(m, 77)
    assert m.read(pid, a, ps) == pages[0] and m.read(pid, a + 2 * ps, ps) == pages[2]


@pytest.mark.parametrize("case", ["partial", "unaligned", "not-a-pattern", "second-page-bad",
                                  "short-tail"])
def test_token_mode_rejects_non_pattern_writes_and_changes_nothing(case):
    m = make(payload="token")
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 3)
    pages = fill(m, pid, a, 3, base=500)
    before = (free_all(m), m.vmstat())
    rnd = random.Random(2).randbytes(ps)
    addr, data = {
        "partial": (a, pattern(m, 9)[:ps - 8]),
        "unaligned": (a + 8, pattern(m, 9)),
        "not-a-pattern": (a, rnd),
        "second-page-bad": (a, pattern(m, 9) + rnd),
        "short-tail": (a, pattern(m, 9) + pattern(m, 10)[:16]),
    }[case]
    with pytest.raises(OSError) as ei:
        m.write(pid, addr, data)
    assert ei.value.errno == errno.EINVAL
    assert m.read(pid, a, 3 * ps) == b"".join(pages)
    assert (free_all(m), m.vmstat()) == before
    m.check()


def test_token_mode_write_to_untouched_page_rejected_leaves_it_untouched():
    m = make(payload="token")
    pid = m.spawn(node=0)
    a = m.mmap(pid, 1)
    before = free_all(m)
    with pytest.raises(OSError) as ei:
        m.write(pid, a, b"\x01" * 7)
    assert ei.value.errno == errno.EINVAL
    assert free_all(m) == before
    assert where(m, pid, a) == [-errno.EFAULT]


@pytest.mark.parametrize("op", ["read", "write", "touch"])
def test_efault_outside_mappings(payload, op):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2)
    hole = unmapped_addr(m, pid)
    before = free_all(m)
    if op == "read":
        raises_errno(errno.EFAULT, m.read, pid, hole, 8)
        raises_errno(errno.EFAULT, m.read, pid, a + ps, 2 * ps)   # straddles the end
    elif op == "write":
        raises_errno(errno.EFAULT, m.write, pid, hole, pattern(m, 1))
        raises_errno(errno.EFAULT, m.write, pid, a + ps, pattern(m, 3) * 2)
    else:
        raises_errno(errno.EFAULT, m.touch, pid, hole, 1)
        raises_errno(errno.EFAULT, m.touch, pid, a, 3)
    # bad input never changes emulated state
    assert free_all(m) == before
    assert [int(t) for t in m.read_tokens(pid, a, 2)] == [0x1000, 0x1001]
    m.check()


def test_efault_on_address_zero():
    m = make()
    pid = m.spawn(node=0)
    m.mmap(pid, 1)
    raises_errno(errno.EFAULT, m.read, pid, 0, 8)


@pytest.mark.parametrize("op", ["mmap", "munmap", "read", "write", "touch", "fork", "exit",
                                "read_tokens", "set_mempolicy"])
def test_esrch_for_unknown_pid(op):
    m = make()
    pid = m.spawn(node=0)
    a = m.mmap(pid, 1)
    calls = {
        "mmap": lambda p: m.mmap(p, 1),
        "munmap": lambda p: m.munmap(p, a, 1),
        "read": lambda p: m.read(p, a, 8),
        "write": lambda p: m.write(p, a, pattern(m, 1)),
        "touch": lambda p: m.touch(p, a, 1),
        "fork": lambda p: m.fork(p),
        "exit": lambda p: m.exit(p),
        "read_tokens": lambda p: m.read_tokens(p, a, 1),
        "set_mempolicy": lambda p: m.set_mempolicy(p, "local"),
    }
    raises_errno(errno.ESRCH, calls[op], 4242)
    dead = m.spawn(node=1)
    m.exit(dead)
    raises_errno(errno.ESRCH, calls[op], dead)


# --------------------------------------------------------------------------- touch


def test_touch_write_returns_unique_tokens_and_read_tokens_sees_them(payload):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 8)
    toks = m.touch(pid, a, 8)
    assert isinstance(toks, np.ndarray) and toks.dtype == np.int64 and len(toks) == 8
    assert len(set(int(t) for t in toks)) == 8
    assert [int(t) for t in m.read_tokens(pid, a, 8)] == [int(t) for t in toks]
    assert where(m, pid, a, 8) == [0] * 8


def test_touch_given_tokens(payload):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 2)
    if payload == "bytes":
        m.write(pid, a, bytes(range(256)) * (2 * ps // 256))
    out = m.touch(pid, a, 2, tokens=np.array([11, -3], dtype=np.int64))
    assert [int(t) for t in out] == [11, -3]
    assert [int(t) for t in m.read_tokens(pid, a, 2)] == [11, -3]
    page1 = m.read(pid, a + ps, ps)
    if payload == "token":
        assert page1 == pattern(m, -3)
    else:  # bytes mode: the token lands in the first 8 bytes, the rest is untouched
        assert page1[:8] == (-3).to_bytes(8, "little", signed=True)
        assert page1[8:] == (bytes(range(256)) * (2 * ps // 256))[ps + 8:2 * ps]


def test_touch_read_faults_nothing_written_and_returns_none(payload):
    m = make(payload=payload)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2, base=40)
    assert m.touch(pid, a, 2, write=False) is None
    assert [int(t) for t in m.read_tokens(pid, a, 2)] == [40, 41]


def test_read_tokens_faults_nothing_in():
    m = make(frames=16)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    before = free_all(m)
    assert [int(t) for t in m.read_tokens(pid, a, 4)] == [0] * 4
    assert free_all(m) == before
    assert where(m, pid, a, 4) == [-errno.EFAULT] * 4


# --------------------------------------------------------------------------- munmap


def test_munmap_releases_frames_and_splits_the_mapping(payload):
    m = make(payload=payload, frames=16)
    pid = m.spawn(node=0)
    ps = m.page_size
    initial = free_all(m)
    a = m.mmap(pid, 4)
    pages = fill(m, pid, a, 4)
    assert free_all(m)[0] == initial[0] - 4
    m.munmap(pid, a + ps, 2)                       # the middle: the mapping splits
    assert free_all(m)[0] == initial[0] - 2
    raises_errno(errno.EFAULT, m.read, pid, a + ps, 8)
    raises_errno(errno.EFAULT, m.read, pid, a + 2 * ps, 8)
    assert m.read(pid, a, ps) == pages[0]
    assert m.read(pid, a + 3 * ps, ps) == pages[3]
    m.munmap(pid, a, 1)
    m.munmap(pid, a + 3 * ps, 1)
    assert free_all(m) == initial
    assert m.vmstat()["nr_anon_pages"] == 0
    m.check()


def test_munmap_of_a_hole_is_not_an_error():
    m = make()
    pid = m.spawn(node=0)
    hole = unmapped_addr(m, pid, 2)
    m.munmap(pid, hole, 2)          # the kernel returns 0 for a range with nothing mapped
    m.check()


def test_munmap_unaligned_is_einval():
    m = make()
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2)
    raises_errno(errno.EINVAL, m.munmap, pid, a + 1, 1)
    assert [int(t) for t in m.read_tokens(pid, a, 2)] == [0x1000, 0x1001]


# --------------------------------------------------------------------------- fork, exit


def test_fork_cow_private_pages_diverge(payload):
    m = make(payload=payload)
    ps = m.page_size
    parent = m.spawn(node=0)
    a = m.mmap(parent, 3)
    old = fill(m, parent, a, 3, base=100)
    child = m.fork(parent)
    assert child != parent
    assert m.read(child, a, 3 * ps) == b"".join(old)
    m.write(child, a, pattern(m, 200))
    m.write(parent, a + ps, pattern(m, 300))
    assert m.read(parent, a, ps) == old[0]
    assert m.read(child, a, ps) == pattern(m, 200)
    assert m.read(child, a + ps, ps) == old[1]
    assert m.read(parent, a + ps, ps) == pattern(m, 300)
    assert m.read(parent, a + 2 * ps, ps) == old[2] == m.read(child, a + 2 * ps, ps)
    m.check()


def test_fork_untouched_private_page_stays_private():
    m = make()
    parent = m.spawn(node=0)
    a = m.mmap(parent, 1)
    child = m.fork(parent)
    m.write(child, a, pattern(m, 5))
    assert m.read(parent, a, m.page_size) == bytes(m.page_size)
    assert m.read(child, a, m.page_size) == pattern(m, 5)


def test_fork_shared_mapping_stays_shared(payload):
    m = make(payload=payload)
    ps = m.page_size
    parent = m.spawn(node=0)
    a = m.mmap(parent, 2, shared=True)
    fill(m, parent, a, 1, base=1)            # page 0 touched before fork, page 1 not
    child = m.fork(parent)
    m.write(child, a, pattern(m, 42))
    m.write(child, a + ps, pattern(m, 43))
    assert m.read(parent, a, ps) == pattern(m, 42)
    assert m.read(parent, a + ps, ps) == pattern(m, 43)
    m.write(parent, a, pattern(m, 44))
    assert m.read(child, a, ps) == pattern(m, 44)
    # one frame per shared page, whoever touched it
    assert m.node_info()[0]["used"] == 2
    m.check()


def test_child_runs_on_parents_node():
    m = make(nodes=2)
    parent = m.spawn(node=1)
    child = m.fork(parent)
    b = m.mmap(child, 2)
    m.touch(child, b, 2)
    assert where(m, child, b, 2) == [1, 1]


def test_mapping_made_after_fork_is_not_in_the_other_process():
    m = make()
    parent = m.spawn(node=0)
    child = m.fork(parent)
    b = m.mmap(child, 1)
    fill(m, child, b, 1)
    raises_errno(errno.EFAULT, m.read, parent, b, 8)


def test_exit_releases_frames(payload):
    m = make(payload=payload, frames=16)
    initial = free_all(m)
    p = m.spawn(node=0)
    a = m.mmap(p, 5)
    s = m.mmap(p, 2, shared=True)
    fill(m, p, a, 5)
    fill(m, p, s, 2)
    c = m.fork(p)
    m.write(c, a, pattern(m, 9))              # a COW copy for the child
    assert sum(free_all(m)) < sum(initial)
    m.exit(p)
    m.check()
    assert m.read(c, s, 8) == pattern(m, 0x1000)[:8]
    m.exit(c)
    assert free_all(m) == initial
    assert m.vmstat()["nr_anon_pages"] == 0
    m.check()


# --------------------------------------------------------------------------- mempolicies


def test_local_first_touch_on_the_process_node():
    m = make(nodes=3, frames=16)
    for node in range(3):
        pid = m.spawn(node=node)
        a = m.mmap(pid, 3)
        before = numa(m)
        m.touch(pid, a, 3)
        assert where(m, pid, a, 3) == [node] * 3
        d = numa_delta(numa(m), before)
        for n in range(3):
            want = 3 if n == node else 0
            assert d[n] == {"numa_hit": want, "numa_miss": 0, "numa_foreign": 0,
                            "numa_local": want, "numa_other": 0, "numa_interleave": 0}, (n, d)


def test_local_falls_back_to_another_node_when_full_and_counts_miss_foreign():
    m = make(nodes=2, frames=8, swap=0, payload="token")
    pid = m.spawn(node=0)
    a = m.mmap(pid, 12)
    before = numa(m)
    for i in range(12):
        m.touch(pid, a + i * m.page_size, 1)
    loc = where(m, pid, a, 12)
    k0, k1 = loc.count(0), loc.count(1)
    assert k0 + k1 == 12 and 1 <= k0 <= 8 and k1 >= 4
    d = numa_delta(numa(m), before)
    assert d[0]["numa_hit"] == k0 and d[0]["numa_local"] == k0
    assert d[0]["numa_foreign"] == k1 and d[0]["numa_miss"] == 0 and d[0]["numa_other"] == 0
    assert d[1]["numa_miss"] == k1 and d[1]["numa_other"] == k1
    assert d[1]["numa_hit"] == 0 and d[1]["numa_foreign"] == 0 and d[1]["numa_local"] == 0
    m.check()


def test_bind_allocates_only_on_bound_nodes():
    from emulator import MPOL_BIND
    m = make(nodes=3, frames=16)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, MPOL_BIND, [2])
    a = m.mmap(pid, 4)
    before = numa(m)
    m.touch(pid, a, 4)
    assert where(m, pid, a, 4) == [2] * 4
    d = numa_delta(numa(m), before)
    # the intended node is the bound node: a hit there; the CPU is on node 0: other
    assert d[2]["numa_hit"] == 4 and d[2]["numa_other"] == 4
    assert d[2]["numa_miss"] == 0 and d[2]["numa_local"] == 0
    assert d[0] == d[1] == {k: 0 for k in d[0]}


def test_bind_by_name_and_multiple_nodes():
    m = make(nodes=3, frames=16)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, "bind", [1, 2])
    a = m.mmap(pid, 6)
    m.touch(pid, a, 6)
    assert set(where(m, pid, a, 6)) <= {1, 2}


def test_bind_enomem_when_bound_nodes_are_full_and_no_swap():
    m = make(nodes=2, frames=8, swap=0)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, "bind", [1])
    a = m.mmap(pid, 12)
    free0 = free_all(m)[0]
    done = 0
    with pytest.raises(OSError) as ei:
        for i in range(12):
            m.touch(pid, a + i * m.page_size, 1, tokens=np.array([1000 + i], dtype=np.int64))
            done += 1
    assert ei.value.errno == errno.ENOMEM
    assert 1 <= done <= 8
    assert free_all(m)[0] == free0                 # never spilled onto node 0
    assert where(m, pid, a, done) == [1] * done
    assert [int(t) for t in m.read_tokens(pid, a, done)] == [1000 + i for i in range(done)]
    m.check()
    # the process is still usable: pages already present can be rewritten
    m.write(pid, a, pattern(m, 5))
    assert m.read(pid, a, 8) == pattern(m, 5)[:8]


def test_preferred_then_fallback():
    from emulator import MPOL_PREFERRED
    m = make(nodes=2, frames=8, swap=0)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, MPOL_PREFERRED, [1])
    a = m.mmap(pid, 2)
    before = numa(m)
    m.touch(pid, a, 2)
    assert where(m, pid, a, 2) == [1, 1]
    d = numa_delta(numa(m), before)
    assert d[1]["numa_hit"] == 2 and d[1]["numa_other"] == 2 and d[1]["numa_local"] == 0
    # overfill the preferred node: the rest falls back (preferred never fails while memory
    # exists elsewhere): miss on the allocated node, foreign on the preferred one
    b = m.mmap(pid, 10)
    before = numa(m)
    for i in range(10):
        m.touch(pid, b + i * m.page_size, 1)
    loc = where(m, pid, b, 10)
    k1, k0 = loc.count(1), loc.count(0)
    assert k0 + k1 == 10 and k0 >= 4
    d = numa_delta(numa(m), before)
    assert d[1]["numa_hit"] == k1 and d[1]["numa_foreign"] == k0 and d[1]["numa_other"] == k1
    assert d[0]["numa_miss"] == k0 and d[0]["numa_local"] == k0 and d[0]["numa_hit"] == 0


def test_interleave_round_robin():
    from emulator import MPOL_INTERLEAVE
    m = make(nodes=3, frames=32)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, MPOL_INTERLEAVE, [0, 1, 2])
    a = m.mmap(pid, 9)
    before = numa(m)
    for i in range(9):
        m.touch(pid, a + i * m.page_size, 1)
    loc = where(m, pid, a, 9)
    assert sorted(loc) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(3, 9):
        assert loc[i] == loc[i - 3]             # round robin: period 3
    assert len(set(loc[:3])) == 3
    d = numa_delta(numa(m), before)
    for n in range(3):
        assert d[n]["numa_interleave"] == 3 and d[n]["numa_hit"] == 3
        assert d[n]["numa_miss"] == 0 and d[n]["numa_foreign"] == 0
    assert d[0]["numa_local"] == 3 and d[0]["numa_other"] == 0
    assert d[1]["numa_other"] == 3 and d[2]["numa_other"] == 3


def test_interleave_two_nodes_alternates_in_one_batch():
    m = make(nodes=2, frames=32)
    pid = m.spawn(node=1)
    m.set_mempolicy(pid, "interleave", [0, 1])
    a = m.mmap(pid, 8)
    m.touch(pid, a, 8)
    loc = where(m, pid, a, 8)
    assert loc.count(0) == 4 and loc.count(1) == 4
    assert all(x != y for x, y in zip(loc, loc[1:]))


def test_default_policy_restores_local():
    m = make(nodes=2, frames=16)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, "bind", [1])
    m.set_mempolicy(pid, "default")
    a = m.mmap(pid, 2)
    m.touch(pid, a, 2)
    assert where(m, pid, a, 2) == [0, 0]


def test_set_mempolicy_bad_arguments_einval():
    m = make(nodes=2)
    pid = m.spawn(node=0)
    for args in [("bind", []), ("bind", [5]), ("interleave", [-1]), ("nonsense", [0]), (99, [0])]:
        with pytest.raises((OSError, ValueError)) as ei:
            m.set_mempolicy(pid, *args)
        if isinstance(ei.value, OSError):
            assert ei.value.errno == errno.EINVAL


def test_mbind_range_policy_for_new_faults():
    m = make(nodes=2, frames=16)
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 4)
    m.mbind(pid, a + 2 * ps, 2, "bind", [1])
    m.touch(pid, a, 4)
    assert where(m, pid, a, 4) == [0, 0, 1, 1]


def test_mbind_move_moves_existing_pages(payload):
    from emulator import MPOL_MF_MOVE
    m = make(nodes=2, frames=16, payload=payload)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    pages = fill(m, pid, a, 3)
    m.mbind(pid, a, 3, "bind", [1], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 3) == [1, 1, 1]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(pages)
    m.check()


# ----------------------------------------------------- set_mempolicy/mbind nodemasks (6.1)


def test_preferred_with_no_node_is_local():
    """mpol_new(): MPOL_PREFERRED with an empty nodemask is MPOL_LOCAL."""
    from emulator import MPOL_PREFERRED
    m = make(nodes=2, frames=16)
    pid = m.spawn(node=1)
    m.set_mempolicy(pid, "bind", [0])
    m.set_mempolicy(pid, MPOL_PREFERRED, [])
    a = m.mmap(pid, 2)
    m.mbind(pid, a + m.page_size, 1, "preferred", None)
    m.touch(pid, a, 2)
    assert where(m, pid, a, 2) == [1, 1]


@pytest.mark.parametrize("mode,nodes,expect", [
    ("bind", [1, 5], [1, 1, 1, 1]),
    ("interleave", [0, 1, 7, 1023], None),
    ("preferred", [9, 1], [1, 1, 1, 1]),
])
def test_nodes_that_do_not_exist_are_dropped(mode, nodes, expect):
    """mpol_set_nodemask(): the nodemask is intersected with the nodes that have
    memory (and the cpuset's); only an empty result is EINVAL."""
    m = make(nodes=2, frames=16)
    pid = m.spawn(node=0)
    m.set_mempolicy(pid, mode, nodes)
    a = m.mmap(pid, 4)
    m.touch(pid, a, 4)
    b = m.mmap(pid, 4)
    m.mbind(pid, b, 4, mode, nodes)
    m.touch(pid, b, 4)
    for loc in (where(m, pid, a, 4), where(m, pid, b, 4)):
        if expect is None:      # interleave over the two real nodes
            assert sorted(loc) == [0, 0, 1, 1] and all(x != y for x, y in zip(loc, loc[1:]))
        else:
            assert loc == expect
    m.check()


@pytest.mark.parametrize("mode,nodes", [
    ("bind", [5]), ("preferred", [7]), ("interleave", [2, 3]),    # nothing left
    ("local", [5]), ("default", [0]),                              # no node allowed, existing or not
    ("bind", [0, 1024]), ("bind", [-1]),                           # outside any nodemask
])
def test_nodemasks_left_empty_or_not_allowed_are_einval(mode, nodes):
    m = make(nodes=2, frames=16)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 1)
    raises_errno(errno.EINVAL, m.set_mempolicy, pid, mode, nodes)
    raises_errno(errno.EINVAL, m.mbind, pid, a, 1, mode, nodes)
    m.touch(pid, a, 1)
    assert where(m, pid, a) == [0]


# ------------------------------------------------------------- mbind moving pages (6.1)


def test_mbind_move_interleaves_by_offset_and_counts_numa_interleave():
    """do_mbind() migrates with new_page(): each page where the new policy
    allocates it (interleave_nid(): the page's offset in the mapping), with
    alloc_page_interleave()'s numa_interleave on the node it meant."""
    from emulator import MPOL_MF_MOVE
    m = make(nodes=3, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 6)
    data = fill(m, pid, a, 6)
    ref = m.mmap(pid, 6)                    # where faults under the same policy land
    m.mbind(pid, ref, 6, "interleave", [1, 2])
    m.touch(pid, ref, 6)
    expect = [1 + (int(i) & 1) for i in np.arange(6) + (a >> m.k.page_shift)]
    assert where(m, pid, ref, 6) == [1 + (int(i) & 1) for i in np.arange(6) + (ref >> m.k.page_shift)]
    before = numa(m)
    m.mbind(pid, a, 6, "interleave", [1, 2], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 6) == expect
    d = numa_delta(numa(m), before)
    for n in (1, 2):
        assert d[n]["numa_interleave"] == d[n]["numa_hit"] == d[n]["numa_other"] == 3
    assert d[0]["numa_interleave"] == 0
    assert m.vmstat()["pgmigrate_success"] == 6
    assert m.read(pid, a, 6 * m.page_size) == b"".join(data)
    m.check()


def test_mbind_move_bind_goes_to_the_nearest_bound_node():
    """bind: the first bound node of the task's zonelist, as a fault allocates
    (policy_node(), policy_nodemask()), not the lowest bound node."""
    from emulator import MPOL_MF_MOVE
    m = make(nodes=3, frames=32)
    pid = m.spawn(node=2)
    m.set_mempolicy(pid, "bind", [0])
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    m.set_mempolicy(pid, "default")
    before = numa(m)
    m.mbind(pid, a, 3, "bind", [1, 2], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 3) == [2, 2, 2]
    d = numa_delta(numa(m), before)
    assert d[2]["numa_hit"] == d[2]["numa_local"] == 3 and d[2]["numa_interleave"] == 0
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    m.check()


def test_mbind_move_leaves_pages_on_any_node_of_the_mask():
    """queue_pages_required() tests the caller's nodemask, not the policy's
    nodes: preferred [0, 1] leaves a page on node 1 where it is."""
    from emulator import MPOL_MF_MOVE
    m = make(nodes=3, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    m.touch(pid, a, 3)
    m.move_pages(pid, [a + m.page_size, a + 2 * m.page_size], [1, 2])
    m.mbind(pid, a, 3, "preferred", [0, 1], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 3) == [0, 1, 0]
    m.check()


def test_mbind_default_and_local_move_every_page_by_the_policy_that_applies():
    """An empty nodemask (default, local) makes every page misplaced: the pages
    move as the range now allocates. Default drops the range's own policy, so
    the task's policy applies again, to faults and to the pages moved."""
    from emulator import MPOL_MF_MOVE
    m = make(nodes=2, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    m.set_mempolicy(pid, "bind", [1])
    m.mbind(pid, a, 4, "bind", [0])
    data = fill(m, pid, a, 2)
    assert where(m, pid, a, 2) == [0, 0]
    m.mbind(pid, a, 4, "default", flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 2) == [1, 1]            # the task's bind [1]
    m.touch(pid, a + 2 * m.page_size, 2)
    assert where(m, pid, a, 4) == [1, 1, 1, 1]
    m.mbind(pid, a, 2, "local", flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 4) == [0, 0, 1, 1]
    assert m.read(pid, a, 2 * m.page_size) == b"".join(data)
    m.check()


def test_mbind_default_accepts_a_range_with_holes():
    """MPOL_DEFAULT sets MPOL_MF_DISCONTIG_OK: holes are fine, unless nothing
    of the range is mapped; other modes are EFAULT for any hole."""
    m = make(nodes=2, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    m.munmap(pid, a + m.page_size, 1)
    raises_errno(errno.EFAULT, m.mbind, pid, a, 3, "bind", [1])
    m.mbind(pid, a, 3, "default")
    raises_errno(errno.EFAULT, m.mbind, pid, a + m.page_size, 1, "default")
    m.mbind(pid, a, 0, "bind", [7])                 # an empty range: no policy made (node 7: none here)
    raises_errno(errno.EINVAL, m.mbind, pid, a, 0, "bind", [-1])     # but the nodemask is read first
    raises_errno(errno.EINVAL, m.mbind, pid, a, 0, "bind", [5000])
    m.touch(pid, a, 1)
    assert where(m, pid, a) == [0]


def test_mbind_move_all_needs_privilege():
    """do_mbind(): MPOL_MF_MOVE_ALL without CAP_SYS_NICE is EPERM, after the
    mode and the nodemask (kernel_mbind() reads them first) and the flags'
    EINVAL, before the start's alignment and the range; nothing moves and the
    range keeps its policy. MPOL_MF_MOVE needs no privilege."""
    from emulator import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL
    m = make(nodes=2, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    m.touch(pid, a, 2)
    gone = unmapped_addr(m, pid, 2)

    def unprivileged(addr, mode="bind", nodes=(1,), flags=MPOL_MF_MOVE_ALL):
        m.mbind(pid, addr, 2, mode, list(nodes), flags=flags, privileged=False)
    raises_errno(errno.EPERM, unprivileged, a)
    raises_errno(errno.EPERM, unprivileged, a + 1)          # the alignment is checked after
    raises_errno(errno.EPERM, unprivileged, gone)           # and the range after that
    raises_errno(errno.EINVAL, unprivileged, a, flags=MPOL_MF_MOVE_ALL | 1 << 3)
    raises_errno(errno.EINVAL, unprivileged, a, mode="nope")
    raises_errno(errno.EINVAL, unprivileged, a, nodes=(-1,))
    assert where(m, pid, a, 2) == [0, 0]
    m.touch(pid, a + 2 * m.page_size, 1)
    assert where(m, pid, a + 2 * m.page_size) == [0]       # no policy: the new page went local
    unprivileged(a, flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 2) == [1, 1]
    m.mbind(pid, a, 3, "bind", [1], flags=MPOL_MF_MOVE_ALL, privileged=True)
    assert where(m, pid, a, 3) == [1, 1, 1]
    m.check()


def test_mbind_meets_a_hole_where_6_1s_walk_does():
    """queue_pages_test_walk() checks for a hole vma by vma, as the walk
    reaches each: one at the head is EFAULT before any page, one after a vma
    is EFAULT on reaching that vma, after the pages of the vmas before it
    were looked at (MPOL_MF_STRICT alone: a misplaced one there is EIO). With
    a move the pages queued before the hole are put back: nothing moves and
    the range keeps its policy. No page of the range mapped: EFAULT."""
    from emulator import MPOL_MF_MOVE, MPOL_MF_STRICT
    m = make(nodes=2, frames=32)
    ps = m.page_size
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)                              # a guard page after it: a hole at a + 3 pages
    m.touch(pid, a, 1)
    m.touch(pid, a + 2 * ps, 1)                     # pages 0 and 2 on node 0, page 1 not touched
    m.mbind(pid, a + 2 * ps, 1, "local")            # two vmas: [a, a+2) and [a+2, a+3)
    eio, efault = errno.EIO, errno.EFAULT
    raises_errno(eio, m.mbind, pid, a, 4, "bind", [1], flags=MPOL_MF_STRICT)    # page 0, before the hole
    raises_errno(efault, m.mbind, pid, a, 4, "bind", [0], flags=MPOL_MF_STRICT)  # none misplaced: the hole
    raises_errno(efault, m.mbind, pid, a + ps, 3, "bind", [1], flags=MPOL_MF_STRICT)
    raises_errno(efault, m.mbind, pid, a + 2 * ps, 2, "bind", [1], flags=MPOL_MF_STRICT)   # page 2's vma
    raises_errno(efault, m.mbind, pid, a - ps, 2, "bind", [1], flags=MPOL_MF_STRICT)       # at the head
    for mode, nodes in (("bind", [1]), ("default", None)):
        raises_errno(efault, m.mbind, pid, a + 3 * ps, 1, mode, nodes, flags=MPOL_MF_STRICT)
    for flags in (MPOL_MF_MOVE, MPOL_MF_MOVE | MPOL_MF_STRICT, 0):
        raises_errno(efault, m.mbind, pid, a, 4, "bind", [1], flags=flags)
        assert where(m, pid, a, 3)[::2] == [0, 0] and m.vmstat()["nr_isolated_anon"] == 0
    m.touch(pid, a + ps, 1)
    assert where(m, pid, a + ps) == [0]             # no policy set: the new page went local
    m.mbind(pid, a, 4, "default", flags=MPOL_MF_MOVE | MPOL_MF_STRICT)          # holes are fine there
    m.check()


def test_mbind_strict_move_stops_at_an_unmovable_page_before_the_hole():
    """MOVE|STRICT, a page of the first vma under another migration: the walk
    ends at the end of that page's page table (queue_pages_pte_range()
    returns 1), before the vma followed by the hole, so no EFAULT: the pages
    queued move, the whole range gets the policy and the call is EIO."""
    from emulator import MPOL_MF_MOVE, MPOL_MF_STRICT
    from emulator.move_pages import do_pages_move
    m = make(nodes=3, frames=32)
    ps = m.page_size
    pid = m.spawn(node=0)
    a = m.mmap(pid, 5)
    m.munmap(pid, a + 4 * ps, 1)                    # pages 0-3 left, a hole at page 4
    m.touch(pid, a, 1)
    m.touch(pid, a + 2 * ps, 1)                     # pages 0 and 2 on node 0; 1 and 3 not touched
    m.mbind(pid, a + 2 * ps, 2, "local")            # two vmas: [a, a+2) and [a+2, a+4)
    errs = []

    def mbind():
        try:
            m.mbind(pid, a, 5, "bind", [1], flags=MPOL_MF_MOVE | MPOL_MF_STRICT)
        except OSError as e:
            errs.append(e.errno)
    other = do_pages_move(m.k, m.k.mms[pid], np.array([a // ps]), np.array([2]), MPOL_MF_MOVE)
    assert step_through(other, mbind).tolist() == [2]
    assert errs == [errno.EIO]
    m.touch(pid, a + ps, 1)
    m.touch(pid, a + 3 * ps, 1)
    assert where(m, pid, a, 4) == [2, 1, 0, 1]      # page 2 comes after the walk ended; the policy is set
    m.check()


def test_mbind_strict_without_move_fails_on_a_misplaced_page():
    """MPOL_MF_STRICT alone: a page already on a node outside the mask is EIO,
    before the range gets the policy; none misplaced, it succeeds. Default
    ignores STRICT."""
    from emulator import MPOL_MF_STRICT
    m = make(nodes=2, frames=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    m.touch(pid, a, 1)
    raises_errno(errno.EIO, m.mbind, pid, a, 3, "bind", [1], flags=MPOL_MF_STRICT)
    m.touch(pid, a + m.page_size, 1)
    assert where(m, pid, a, 2) == [0, 0]            # no policy: the new page went local
    m.mbind(pid, a, 3, "bind", [0, 1], flags=MPOL_MF_STRICT)
    m.mbind(pid, a, 3, "default", flags=MPOL_MF_STRICT)
    raises_errno(errno.EIO, m.mbind, pid, a, 3, "local", flags=MPOL_MF_STRICT)
    raises_errno(errno.EINVAL, m.mbind, pid, a, 3, "bind", [1], flags=1 << 3)
    m.check()


def test_mbind_strict_move_fails_when_pages_did_not_move():
    """MOVE|STRICT: EIO when some page did not move (here migrate_pages()'s
    ENOMEM under migentry); MOVE alone succeeds whatever did not move. A page
    mapped twice is left where it is without MOVE_ALL, and no error."""
    from emulator import MPOL_MF_MOVE, MPOL_MF_STRICT
    m = make(policy="migentry", nodes=2, frames=16, swap=0)
    pid = m.spawn(node=0)
    s = m.mmap(pid, 1, shared=True)
    m.touch(pid, s, 1)
    m.fork(pid)                                     # s: mapped twice; a, mapped after: once
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    hog = m.spawn(node=1)
    m.set_mempolicy(hog, "bind", [1])
    h = m.mmap(hog, 16)
    m.touch(hog, h, 16)
    raises_errno(errno.EIO, m.mbind, pid, a, 3, "bind", [1], flags=MPOL_MF_MOVE | MPOL_MF_STRICT)
    assert where(m, pid, a, 3) == [0, 0, 0]
    m.mbind(pid, a, 3, "bind", [1], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 3) == [0, 0, 0] and m.vmstat()["nr_isolated_anon"] == 0
    m.exit(hog)
    m.mbind(pid, a, 3, "bind", [1], flags=MPOL_MF_MOVE | MPOL_MF_STRICT)
    m.mbind(pid, s, 1, "bind", [1], flags=MPOL_MF_MOVE | MPOL_MF_STRICT)
    assert where(m, pid, a, 3) == [1, 1, 1] and where(m, pid, s) == [0]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    m.check()


@pytest.mark.parametrize("strict", [True, False])
def test_mbind_strict_move_a_page_under_another_migration(strict):
    """A page another migration has isolated cannot be queued: without STRICT
    it is left alone; with STRICT the walk ends at the end of its page table
    (a page of 8-byte ptes), the pages queued so far move and mbind is EIO."""
    from emulator import MPOL_MF_MOVE, MPOL_MF_STRICT
    from emulator.move_pages import do_pages_move
    m = make(nodes=3, frames=128)
    pid = m.spawn(node=0)
    ptrs = m.page_size // 8                         # ptes per page table
    a = m.mmap(pid, 3 * ptrs)
    data = fill(m, pid, a, 3 * ptrs)
    vpn0 = a >> m.k.page_shift
    busy = (-vpn0) % ptrs + 3                       # a page 3 pages into a page table
    cut = busy - 3 + ptrs                           # where that page table ends
    errs = []

    def mbind():
        try:
            m.mbind(pid, a, 3 * ptrs, "bind", [1], flags=MPOL_MF_MOVE | (MPOL_MF_STRICT if strict else 0))
        except OSError as e:
            errs.append(e.errno)
    other = do_pages_move(m.k, m.k.mms[pid], np.array([vpn0 + busy]), np.array([2]), MPOL_MF_MOVE)
    assert step_through(other, mbind).tolist() == [2]
    loc = where(m, pid, a, 3 * ptrs)
    assert loc[busy] == 2
    if strict:
        assert errs == [errno.EIO]
        assert loc[:busy] + loc[busy + 1:cut] == [1] * (cut - 1) and loc[cut:] == [0] * (3 * ptrs - cut)
    else:
        assert errs == []
        assert loc[:busy] + loc[busy + 1:] == [1] * (3 * ptrs - 1)
    assert m.read(pid, a, 3 * ptrs * m.page_size) == b"".join(data)
    m.check()
