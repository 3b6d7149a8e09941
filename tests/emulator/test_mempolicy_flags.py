"""The mode flags and MPOL_PREFERRED_MANY of set_mempolicy(2) and mbind(2), as
Linux 6.1's mm/mempolicy.c has them.

- sanitize_mpol_flags(): the flags are or'ed into the mode; a mode past
  MPOL_PREFERRED_MANY, MPOL_F_STATIC_NODES with MPOL_F_RELATIVE_NODES, and
  MPOL_F_NUMA_BALANCING with any mode but MPOL_BIND are EINVAL.
- mpol_new(): default with a node is EINVAL, but takes any flag (no policy is
  made); local with a node, STATIC or RELATIVE is EINVAL; preferred with no
  node is local, but EINVAL with STATIC or RELATIVE; the others need a node.
- mpol_set_nodemask(), every online node allowed: RELATIVE folds the
  caller's node n onto the (n mod online)-th node; STATIC (and no flag)
  keeps the caller's online nodes; none left is EINVAL.
- alloc_pages_preferred_many(): the preferred nodes in the CPU's zonelist
  order, down to the min watermark and without reclaim, then any node by
  the CPU's zonelist.
"""
from __future__ import annotations

import errno

import pytest

from emu_support import ev, free, make, numa, numa_delta, pages_of, raises_errno, where
from emulator import (MPOL_BIND, MPOL_DEFAULT, MPOL_F_NUMA_BALANCING, MPOL_F_RELATIVE_NODES, MPOL_F_STATIC_NODES,
                      MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_MF_MOVE, MPOL_PREFERRED, MPOL_PREFERRED_MANY, Machine)

STATIC, RELATIVE, BALANCING = MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES, MPOL_F_NUMA_BALANCING
# node 0's zonelist: 0, 1 (20), 3 (30), 2 (40)
DIST = [[10, 20, 40, 30], [20, 10, 30, 40], [40, 30, 10, 20], [30, 40, 20, 10]]


def test_the_constants_are_the_uapi_ones():
    assert (MPOL_PREFERRED_MANY, STATIC, RELATIVE, BALANCING) == (5, 1 << 15, 1 << 14, 1 << 13)


def to_min(m, frames, *nodes):
    """Take each node's free frames down to its min watermark (frames // 128)
    with pages of a process bound there, with no swap on meanwhile (kswapd
    would reclaim them back up; swapoff brings back what it reclaimed)."""
    m.swapoff()
    for node in nodes:
        n = free(m, node) - frames // 128
        if n > 0:
            hog = m.spawn(node)
            m.set_mempolicy(hog, "bind", [node])
            m.touch(hog, m.mmap(hog, n), n)
        assert free(m, node) == frames // 128
    m.swapon()


# ------------------------------------------------------------------ MPOL_PREFERRED_MANY


def test_preferred_many_takes_the_nearest_preferred_node_then_the_next_then_any():
    m = make(nodes=4, frames=256, swap=256, distances=DIST)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_PREFERRED_MANY, [2, 3])
    a = m.mmap(pid, 12)
    before = numa(m)
    m.touch(pid, a, 4)
    # node 3 (30) before node 2 (40); never node 1, nearer but not preferred
    assert where(m, pid, a, 4) == [3] * 4
    d = numa_delta(numa(m), before)
    assert d[3]["numa_hit"] == 4 and d[3]["numa_other"] == 4 and d[3]["numa_miss"] == 0
    # node 3 at min: the other preferred node, a miss there counted against node 3
    to_min(m, 256, 3)
    before = numa(m)
    m.touch(pid, a + 4 * m.page_size, 4)
    assert where(m, pid, a + 4 * m.page_size, 4) == [2] * 4
    d = numa_delta(numa(m), before)
    assert d[2]["numa_miss"] == 4 and d[3]["numa_foreign"] == 4 and d[2]["numa_hit"] == 0
    # both at min: the CPU's zonelist, with no nodemask (its preferred zone the CPU's: a hit);
    # the preferred nodes' pages, reclaimable, are not reclaimed by the allocation
    to_min(m, 256, 2, 3)
    before, steal = numa(m), [ev(m, "pgsteal_direct", n) for n in range(4)]
    m.touch(pid, a + 8 * m.page_size, 4)
    assert where(m, pid, a + 8 * m.page_size, 4) == [0] * 4
    d = numa_delta(numa(m), before)
    assert d[0]["numa_hit"] == 4 and d[0]["numa_local"] == 4
    assert [ev(m, "pgsteal_direct", n) for n in range(4)] == steal
    m.check()


def test_bind_to_the_same_full_nodes_reclaims_them_where_preferred_many_falls_back():
    """The contrast: in the same state, bound to the preferred nodes, the
    allocation reclaims there (direct reclaim) and stays there."""
    for mode, nodes, steal in ((MPOL_PREFERRED_MANY, {0}, False), (MPOL_BIND, {1, 2}, True)):
        m = make(nodes=3, frames=256, swap=256)
        to_min(m, 256, 1, 2)
        pid = m.spawn(0)
        m.set_mempolicy(pid, mode, [1, 2])
        a = m.mmap(pid, 4)
        m.touch(pid, a, 4)
        assert set(where(m, pid, a, 4)) <= nodes
        assert (ev(m, "pgsteal_direct") >= 4) == steal and ev(m, "pgsteal_direct", 0) == 0
        m.check()


def test_bind_walks_the_cpus_zonelist_within_the_bound_nodes():
    """MPOL_BIND allocates from the CPU's node's zonelist limited to the bound
    nodes (policy_node() keeps the local node, policy_nodemask() gives the
    mask), not from the zonelist of the nearest bound node: from node 0,
    bound to 1, 2 and 3, the order is 1, 3 (30 from node 0), 2 (40), where
    node 1's own zonelist would have 2 (30 from node 1) before 3."""
    m = make(nodes=4, frames=256, swap=256, distances=DIST)
    to_min(m, 256, 1)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_BIND, [1, 2, 3])
    a = m.mmap(pid, 4)
    before = numa(m)
    m.touch(pid, a, 4)
    assert where(m, pid, a, 4) == [3] * 4
    d = numa_delta(numa(m), before)
    assert d[3]["numa_miss"] == 4 and d[1]["numa_foreign"] == 4      # the preferred zone: node 1's
    m.check()


def test_preferred_many_goes_down_to_min_on_the_preferred_nodes_first():
    """The first pass's slow path (no reclaim) takes the preferred nodes to
    min before the second pass looks at any other node; MPOL_PREFERRED walks
    the preferred node's zonelist to every node's low watermark first."""
    placed = {}
    for mode in (MPOL_PREFERRED_MANY, MPOL_PREFERRED):
        m = make(nodes=2, frames=256)          # min 2, low 4
        pid = m.spawn(0)
        m.set_mempolicy(pid, mode, [1])
        a = m.mmap(pid, 256)
        m.touch(pid, a, 256)
        loc = where(m, pid, a, 256)
        placed[mode] = (loc.count(1), loc.count(0))
        m.check()
    assert placed == {MPOL_PREFERRED_MANY: (254, 2), MPOL_PREFERRED: (252, 4)}


def test_a_local_preferred_node_is_the_nearest():
    m = make(nodes=3, frames=64)
    pid = m.spawn(2)
    m.set_mempolicy(pid, "preferred_many", [0, 2])
    a = m.mmap(pid, 3)
    m.touch(pid, a, 3)
    assert where(m, pid, a, 3) == [2] * 3


def test_mbind_preferred_many_moves_pages_in_address_order_by_the_policy():
    """new_page() page by page in address order: the nearest preferred node to
    its low watermark, then the next preferred one (the first pass's fast
    path), counted against the nearest."""
    m = make(nodes=4, frames=64, distances=DIST)        # min 0, low 1
    pid = m.spawn(0)
    a = m.mmap(pid, 40)
    m.touch(pid, a, 40)
    hog = m.spawn(3)
    m.touch(hog, m.mmap(hog, 44), 44)                    # node 3: 20 free
    before = numa(m)
    m.mbind(pid, a, 40, MPOL_PREFERRED_MANY, [2, 3], MPOL_MF_MOVE)
    assert where(m, pid, a, 40) == [3] * 19 + [2] * 21
    d = numa_delta(numa(m), before)
    assert d[3]["numa_hit"] == 19 and d[2]["numa_miss"] == 21 and d[3]["numa_foreign"] == 21
    assert ev(m, "pgmigrate_success") == 40
    m.check()


def test_mbind_preferred_many_falls_back_to_the_cpu_zonelist_when_the_preferred_are_full():
    m = make(nodes=3, frames=64)
    pid = m.spawn(1)
    a = m.mmap(pid, 20)
    m.touch(pid, a, 20)                                  # on node 1
    hog = m.spawn(2)
    m.touch(hog, m.mmap(hog, 54), 54)                    # node 2: 10 free, min 0
    before = numa(m)
    m.mbind(pid, a, 20, MPOL_PREFERRED_MANY, [2], MPOL_MF_MOVE)
    # node 2 to min (low, then min: the first pass), then the CPU's node, 1, first
    assert where(m, pid, a, 20) == [2] * 10 + [1] * 10
    d = numa_delta(numa(m), before)
    assert d[2]["numa_hit"] == 10 and d[1]["numa_hit"] == 10 and d[1]["numa_local"] == 10
    assert sum(d[n]["numa_miss"] for n in range(3)) == 0
    m.check()


def test_a_forked_child_allocates_by_its_parents_preferred_many_policy():
    m = make(nodes=4, frames=64, distances=DIST)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_PREFERRED_MANY | STATIC, [2, 3, 9])
    child = m.fork(pid)
    a = m.mmap(child, 2)
    m.touch(child, a, 2)
    assert where(m, child, a, 2) == [3, 3]


# ------------------------------------------------------------------ STATIC and RELATIVE


@pytest.mark.parametrize("mode,nodes,expect", [
    (MPOL_BIND | RELATIVE, [4], [1] * 6),                 # 4 mod 3
    ("bind=relative", [5], [2] * 6),
    (MPOL_PREFERRED | RELATIVE, [7, 3], [0] * 6),         # {1, 0}: the first, 0
    (MPOL_PREFERRED_MANY | RELATIVE, [4, 5], [1] * 6),    # {1, 2}: the nearer to node 0, 1
    (MPOL_INTERLEAVE | RELATIVE, [3, 4, 5], [0, 1, 2, 0, 1, 2]),
    ("interleave=relative", [0, 3], [0] * 6),             # folded onto one node
])
def test_relative_nodes_fold_onto_the_online_nodes(mode, nodes, expect):
    m = make(nodes=3, frames=64)
    pid = m.spawn(0)
    m.set_mempolicy(pid, mode, nodes)
    a = m.mmap(pid, 6)
    m.touch(pid, a, 6)
    b = m.mmap(pid, 6)
    m.mbind(pid, b, 6, mode, nodes)
    m.touch(pid, b, 6)
    if mode in (MPOL_INTERLEAVE | RELATIVE,):             # by offset: both are a rotation
        assert sorted(where(m, pid, a, 6)) == sorted(expect) == sorted(where(m, pid, b, 6))
    else:
        assert where(m, pid, a, 6) == expect == where(m, pid, b, 6)
    m.check()


def test_static_keeps_the_online_nodes_given_where_relative_folds_them():
    m = make(nodes=3, frames=64)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_BIND | STATIC, [2, 9])
    a = m.mmap(pid, 2)
    m.touch(pid, a, 2)
    assert where(m, pid, a, 2) == [2, 2]
    raises_errno(errno.EINVAL, m.set_mempolicy, pid, MPOL_BIND | STATIC, [9])
    m.set_mempolicy(pid, "bind=relative", [9])          # 9 mod 3
    b = m.mmap(pid, 2)
    m.touch(pid, b, 2)
    assert where(m, pid, b, 2) == [0, 0]


def test_mbind_relative_moves_the_pages_outside_the_nodemask_as_given():
    """do_mbind() queues the pages on no node of the caller's nodemask, not of
    the folded one: a page already on node 1, where {4} folds to, is outside
    {4} and migrates too (to a new page on node 1)."""
    m = make(nodes=3, frames=64)
    pid = m.spawn(0)
    a = m.mmap(pid, 4)
    m.touch(pid, a, 4)
    m.move_pages(pid, pages_of(m, a, 2), [1, 1], MPOL_MF_MOVE)
    before = ev(m, "pgmigrate_success")
    m.mbind(pid, a, 4, MPOL_BIND | RELATIVE, [4], MPOL_MF_MOVE)
    assert where(m, pid, a, 4) == [1] * 4
    assert ev(m, "pgmigrate_success") - before == 4
    m.check()


def test_numa_balancing_is_bind_with_nothing_more():
    m = make(nodes=2, frames=64)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_BIND | BALANCING, [1])
    a = m.mmap(pid, 3)
    m.touch(pid, a, 3)
    b = m.mmap(pid, 3)
    m.mbind(pid, b, 3, MPOL_BIND | BALANCING, [0])
    m.touch(pid, b, 3)
    assert where(m, pid, a, 3) == [1] * 3 and where(m, pid, b, 3) == [0] * 3
    m.check()


# ------------------------------------------------------------------ EINVAL, and where it stops
# (refused, accepted): the refused call, and the nearest call 6.1 takes
PAIRS = {
    "static with relative": ((MPOL_BIND | STATIC | RELATIVE, [1]), (MPOL_BIND | STATIC, [1])),
    "balancing with interleave": ((MPOL_INTERLEAVE | BALANCING, [0, 1]), (MPOL_BIND | BALANCING, [0, 1])),
    "balancing with preferred_many": ((MPOL_PREFERRED_MANY | BALANCING, [1]), (MPOL_PREFERRED_MANY, [1])),
    "balancing with preferred": ((MPOL_PREFERRED | BALANCING, [1]), (MPOL_PREFERRED | STATIC, [1])),
    "balancing with local": ((MPOL_LOCAL | BALANCING, []), (MPOL_BIND | BALANCING, [1])),
    "balancing with default": ((MPOL_DEFAULT | BALANCING, []), (MPOL_DEFAULT | STATIC, [])),
    # mpol_new() returns no policy for default before it looks at the flags
    "local with static": ((MPOL_LOCAL | STATIC, []), (MPOL_DEFAULT | STATIC, [])),
    "local with relative": ((MPOL_LOCAL | RELATIVE, []), (MPOL_DEFAULT | RELATIVE, [])),
    "default|static with a node": ((MPOL_DEFAULT | STATIC, [0]), (MPOL_DEFAULT | STATIC, [])),
    "preferred with no node and static": ((MPOL_PREFERRED | STATIC, []), (MPOL_PREFERRED | STATIC, [1])),
    "preferred with no node and relative": ((MPOL_PREFERRED | RELATIVE, []), (MPOL_PREFERRED | RELATIVE, [4])),
    "preferred_many with no node": ((MPOL_PREFERRED_MANY, []), (MPOL_PREFERRED_MANY, [1])),
    "preferred_many with no online node": ((MPOL_PREFERRED_MANY, [7]), (MPOL_PREFERRED_MANY | RELATIVE, [7])),
    "static with no online node": ((MPOL_BIND | STATIC, [7]), (MPOL_BIND | RELATIVE, [7])),
    "the mode after preferred_many": ((MPOL_PREFERRED_MANY + 1, [0]), (MPOL_PREFERRED_MANY, [0])),
    "a bit below the flags": ((MPOL_BIND | 1 << 12, [0]), (MPOL_BIND | 1 << 13, [0])),
    "a name with an unknown flag": (("bind=balancing", [0]), ("bind=static", [0])),
    "a name with two flags": (("bind=static=relative", [0]), ("preferred_many=static", [0])),
}
CALLS = {
    "set_mempolicy": lambda m, pid, a, mode, nodes: m.set_mempolicy(pid, mode, nodes),
    "mbind": lambda m, pid, a, mode, nodes: m.mbind(pid, a, 2, mode, nodes, MPOL_MF_MOVE),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("case", sorted(PAIRS))
def test_einval_changes_nothing_and_the_nearest_call_is_taken(case, call):
    m = make(nodes=2, frames=64)
    pid = m.spawn(0)
    a = m.mmap(pid, 2)
    m.touch(pid, a, 2)
    refused, accepted = PAIRS[case]
    before = m.snapshot()
    raises_errno(errno.EINVAL, CALLS[call], m, pid, a, *refused)
    assert m.snapshot() == before
    CALLS[call](m, pid, a, *accepted)
    m.check()


# ------------------------------------------------------------------ snapshots


def test_a_policy_with_flags_or_preferred_many_survives_a_snapshot():
    m = make(nodes=4, frames=64, distances=DIST)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_PREFERRED_MANY | RELATIVE, [6, 7])      # {2, 3}
    a = m.mmap(pid, 8)
    m.mbind(pid, a + 4 * m.page_size, 4, MPOL_BIND | BALANCING, [1])
    m.mbind(pid, a, 2, "interleave=static", [0, 1, 9])
    blob = m.snapshot()
    m2 = Machine.restore(blob)
    assert m2.snapshot() == blob        # every policy, with its flags, read back as it was
    for x in (m, m2):
        x.touch(pid, a, 8)
        loc = where(x, pid, a, 8)
        assert sorted(loc[:2]) == [0, 1] and loc[2:4] == [3, 3] and loc[4:] == [1] * 4
    assert m2.snapshot() == m.snapshot()
    m2.check()


def test_numa_balancing_keeps_the_nodes_given_in_a_snapshot():
    """A bind|NUMA_BALANCING policy keeps the nodes given (6.1's
    mpol_store_user_nodemask() is any mode flag): a snapshot records them; a
    record without them, as written before, takes its nodes as given."""
    import hashlib

    import msgpack

    from emulator.snapshot import MAGIC
    m = make(nodes=2, frames=64)
    pid = m.spawn(0)
    m.set_mempolicy(pid, MPOL_BIND | BALANCING, [1, 5])
    body = msgpack.unpackb(m.snapshot()[len(MAGIC) + 32:], raw=False, strict_map_key=False)
    assert body["mms"][0]["policy"] == [MPOL_BIND | BALANCING, [1], [1, 5]]
    body["mms"][0]["policy"] = [MPOL_BIND | BALANCING, [1]]
    packed = msgpack.packb(body, use_bin_type=True)
    m2 = Machine.restore(MAGIC + hashlib.sha256(packed).digest() + packed)
    a = m2.mmap(pid, 2)
    m2.mbind(pid, a, 2, MPOL_BIND | BALANCING, [1])
    m2.touch(pid, a, 2)
    assert where(m2, pid, a, 2) == [1, 1]
    m2.check()
