"""get_mempolicy(2) as Linux 6.1's do_get_mempolicy() (mm/mempolicy.c):
the task's policy, or with MPOL_F_ADDR the policy at an address (a vma's own,
a shared memory object's at the page's offset; never the task's as a
fallback: MPOL_DEFAULT), the mode flags or'ed into the mode and the nodes as
given when the policy was made with one (w.user_nodemask); MPOL_F_NODE the
node of the page at the address, faulted in for a read (lookup_node():
get_user_pages without FOLL_WRITE), or the task's next interleave node;
MPOL_F_MEMS_ALLOWED the nodes the task may use. A refused call changes
nothing (the snapshot's bytes)."""
from __future__ import annotations

import errno

import pytest
from emu_support import ev, make, raises_errno, unmapped_addr, where

from emulator import (MPOL_BIND, MPOL_DEFAULT, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED, MPOL_F_NODE, MPOL_F_NUMA_BALANCING,
                      MPOL_F_RELATIVE_NODES, MPOL_F_STATIC_NODES, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_MF_MOVE,
                      MPOL_PREFERRED, MPOL_PREFERRED_MANY)

NODE_ADDR = MPOL_F_NODE | MPOL_F_ADDR


def test_the_flags_have_the_uapi_values():
    assert (MPOL_F_NODE, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED) == (1, 2, 4)


# (mode as set, nodes as set) -> what get_mempolicy() gives back, on 3 nodes
ROUND_TRIPS = [
    ("default", None, (MPOL_DEFAULT, [])),
    ("local", None, (MPOL_LOCAL, [])),
    ("preferred", None, (MPOL_LOCAL, [])),                  # mpol_new(): preferred with no node is local
    ("preferred", [2, 1], (MPOL_PREFERRED, [1])),           # mpol_new_preferred(): the first node
    ("bind", [2, 0], (MPOL_BIND, [0, 2])),
    ("bind", [1, 7], (MPOL_BIND, [1])),                     # a node not online is dropped
    ("interleave", [0, 1, 2], (MPOL_INTERLEAVE, [0, 1, 2])),
    ("preferred_many", [1, 2], (MPOL_PREFERRED_MANY, [1, 2])),
    # a mode flag: the nodes as given (mpol_store_user_nodemask() -> w.user_nodemask)
    (MPOL_BIND | MPOL_F_STATIC_NODES, [1, 7], (MPOL_BIND | MPOL_F_STATIC_NODES, [1, 7])),
    ("interleave=relative", [4], (MPOL_INTERLEAVE | MPOL_F_RELATIVE_NODES, [4])),
    (MPOL_PREFERRED | MPOL_F_STATIC_NODES, [2, 5], (MPOL_PREFERRED | MPOL_F_STATIC_NODES, [2, 5])),
    (MPOL_PREFERRED_MANY | MPOL_F_RELATIVE_NODES, [3, 4],
     (MPOL_PREFERRED_MANY | MPOL_F_RELATIVE_NODES, [3, 4])),
    (MPOL_BIND | MPOL_F_NUMA_BALANCING, [0, 2], (MPOL_BIND | MPOL_F_NUMA_BALANCING, [0, 2])),
    # copy_nodes_to_user() copies one long for 3 nodes: a given node past 63 is not seen
    (MPOL_BIND | MPOL_F_STATIC_NODES, [1, 70], (MPOL_BIND | MPOL_F_STATIC_NODES, [1])),
]


@pytest.mark.parametrize("mode, nodes, want", ROUND_TRIPS, ids=[f"{m}:{n}" for m, n, _ in ROUND_TRIPS])
def test_the_task_policy_round_trips(mode, nodes, want):
    m = make(nodes=3)
    p = m.spawn(0)
    m.set_mempolicy(p, "bind", [1])
    m.set_mempolicy(p, mode, nodes)
    assert m.get_mempolicy(p) == want
    assert m.get_mempolicy(p, None, 0) == want


@pytest.mark.parametrize("mode, nodes, want", ROUND_TRIPS, ids=[f"{m}:{n}" for m, n, _ in ROUND_TRIPS])
def test_a_private_ranges_policy_round_trips_and_the_task_policy_is_not_it(mode, nodes, want):
    m = make(nodes=3)
    p = m.spawn(0)
    m.set_mempolicy(p, "interleave", [0, 2])
    a = m.mmap(p, 4)
    ps = m.page_size
    m.mbind(p, a + ps, 2, mode, nodes)
    if want[0] == MPOL_DEFAULT:       # mbind(MPOL_DEFAULT) drops the range's policy: none there
        assert m.get_mempolicy(p, a + ps, MPOL_F_ADDR) == (MPOL_DEFAULT, [])
    else:
        assert m.get_mempolicy(p, a + ps, MPOL_F_ADDR) == want
        assert m.get_mempolicy(p, a + 3 * ps - 1, MPOL_F_ADDR) == want     # any byte of the page
    # "Do NOT fall back to task policy": the pages around it have none
    assert m.get_mempolicy(p, a, MPOL_F_ADDR) == (MPOL_DEFAULT, [])
    assert m.get_mempolicy(p, a + 3 * ps, MPOL_F_ADDR) == (MPOL_DEFAULT, [])
    assert m.get_mempolicy(p) == (MPOL_INTERLEAVE, [0, 2])


def test_mbind_default_drops_a_ranges_policy():
    m = make(nodes=3)
    p = m.spawn(0)
    a = m.mmap(p, 2)
    m.mbind(p, a, 2, "bind", [2])
    assert m.get_mempolicy(p, a, MPOL_F_ADDR) == (MPOL_BIND, [2])
    m.mbind(p, a, 2, "default")
    assert m.get_mempolicy(p, a, MPOL_F_ADDR) == (MPOL_DEFAULT, [])


def test_a_forked_child_has_the_parents_task_and_private_range_policies():
    m = make(nodes=3)
    p = m.spawn(0)
    a = m.mmap(p, 2)
    m.set_mempolicy(p, MPOL_INTERLEAVE | MPOL_F_STATIC_NODES, [2, 1])
    m.mbind(p, a, 1, "preferred", [2])
    c = m.fork(p)
    assert m.get_mempolicy(c) == (MPOL_INTERLEAVE | MPOL_F_STATIC_NODES, [1, 2])
    assert m.get_mempolicy(c, a, MPOL_F_ADDR) == (MPOL_PREFERRED, [2])
    m.mbind(p, a, 1, "bind", [0])               # the parent's vma, not the child's copy
    assert m.get_mempolicy(c, a, MPOL_F_ADDR) == (MPOL_PREFERRED, [2])


def shared(nodes=3):
    """A process on node 0 and its child sharing 6 pages of shared memory,
    the object's page 0 at an odd vpn (offsets and vpns differ in parity)."""
    m = make(nodes=nodes)
    p = m.spawn(0)
    m.mmap(p, 2)
    a = m.mmap(p, 6, shared=True)
    assert (a // m.page_size) % 2 == 1
    return m, p, m.fork(p), a


def test_a_shared_objects_policy_is_seen_from_every_process_mapping_it():
    """shmem_get_policy(): the object's policy at the page's offset, whoever
    set it; where it has none, MPOL_DEFAULT, not the task's policy."""
    m, p, c, a = shared()
    ps = m.page_size
    m.set_mempolicy(c, "bind", [2])
    m.mbind(p, a + 2 * ps, 2, MPOL_INTERLEAVE | MPOL_F_RELATIVE_NODES, [4, 5])
    want = (MPOL_INTERLEAVE | MPOL_F_RELATIVE_NODES, [4, 5])
    assert [m.get_mempolicy(c, a + i * ps, MPOL_F_ADDR) for i in range(6)] == \
        [(MPOL_DEFAULT, [])] * 2 + [want] * 2 + [(MPOL_DEFAULT, [])] * 2
    assert m.get_mempolicy(p, a + 3 * ps, MPOL_F_ADDR) == want
    m.mbind(c, a + 3 * ps, 1, MPOL_BIND | MPOL_F_STATIC_NODES, [0, 9])    # the child sets offset 3
    assert m.get_mempolicy(p, a + 3 * ps, MPOL_F_ADDR) == (MPOL_BIND | MPOL_F_STATIC_NODES, [0, 9])
    assert m.get_mempolicy(p, a + 2 * ps, MPOL_F_ADDR) == want
    m.exit(p)                                   # the object's policy outlives who set it
    assert m.get_mempolicy(c, a + 2 * ps, MPOL_F_ADDR) == want
    m.mbind(c, a, 6, "default")
    assert m.get_mempolicy(c, a + 2 * ps, MPOL_F_ADDR) == (MPOL_DEFAULT, [])
    m.check()


def test_a_shared_mappings_own_vma_policy_is_not_what_it_reports():
    """The vma keeps the policy mbind gave it, but get_policy is the object's:
    another mapper's mbind over the same offsets is what both see."""
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    m.mbind(c, a, 6, "preferred", [2])
    assert m.get_mempolicy(p, a, MPOL_F_ADDR) == (MPOL_PREFERRED, [2])


def test_node_of_an_untouched_shared_page_faults_it_in_by_the_objects_policy():
    """lookup_node(): get_user_pages() read-faults the page in; shmem allocates it
    by the object's policy at its offset (interleave: offset % nodes), counted
    in pgfault, and the nodemask is that policy's."""
    m, p, c, a = shared()
    ps = m.page_size
    m.mbind(p, a, 6, "interleave", [1, 2])
    before = ev(m, "pgfault")
    anon = m.vmstat()["nr_anon_pages"]
    assert m.get_mempolicy(c, a + 3 * ps, NODE_ADDR) == (2, [1, 2])      # offset 3: nodes[1]
    assert ev(m, "pgfault") == before + 1
    assert ev(m, "numa_interleave", 2) == 1
    assert m.vmstat()["nr_anon_pages"] == anon + 1
    assert where(m, c, a + 3 * ps) == [2]
    # the page is there now: the parent's lookup maps the same page (its own fault)
    assert m.get_mempolicy(p, a + 3 * ps, NODE_ADDR) == (2, [1, 2])
    assert ev(m, "pgfault") == before + 2
    assert m.vmstat()["nr_anon_pages"] == anon + 1
    # mapped here already: no fault
    assert m.get_mempolicy(p, a + 3 * ps, NODE_ADDR) == (2, [1, 2])
    assert ev(m, "pgfault") == before + 2
    # where the object has no policy, the task's places it; the mode reported is MPOL_DEFAULT's
    m.mbind(p, a, 1, "default")
    m.set_mempolicy(c, "preferred", [1])
    assert m.get_mempolicy(c, a, NODE_ADDR) == (1, [])
    m.check()


def test_node_of_a_present_page_is_where_it_is_now():
    m = make(nodes=3)
    p = m.spawn(0)
    a = m.mmap(p, 2)
    m.mbind(p, a, 2, "bind", [1])
    m.touch(p, a, 2)
    before = ev(m, "pgfault")
    assert m.get_mempolicy(p, a, NODE_ADDR) == (1, [1])
    assert m.move_pages(p, [a], [2], MPOL_MF_MOVE) == [2]
    assert m.get_mempolicy(p, a, NODE_ADDR) == (2, [1])     # the policy's nodes, the page's node
    assert ev(m, "pgfault") == before
    m.check()


def test_node_of_a_swapped_out_page_swaps_it_in():
    """get_user_pages() read-faults a swap pte in: do_swap_page (pgmajfault)."""
    m = make(nodes=2, swap=16)
    p = m.spawn(1)
    a = m.mmap(p, 2)
    tokens = m.touch(p, a, 2)
    assert m.reclaim(1, 2) == 2
    assert where(m, p, a, 2) == [-errno.ENOENT] * 2
    before, major = ev(m, "pgfault"), ev(m, "pgmajfault")
    assert m.get_mempolicy(p, a, NODE_ADDR) == (1, [])
    assert (ev(m, "pgfault"), ev(m, "pgmajfault")) == (before + 1, major + 1)
    assert where(m, p, a, 2) == [1, -errno.ENOENT]
    assert (m.read_tokens(p, a, 2) == tokens).all()
    m.check()


def test_node_of_an_untouched_private_page_is_the_zero_pages():
    """A read fault on a private anonymous page maps the zero page
    (do_anonymous_page without FAULT_FLAG_WRITE), which follow_page() hands
    back: its node (node 0's kernel image), whatever the range's policy;
    nothing is allocated."""
    m = make(nodes=3)
    p = m.spawn(2)
    a = m.mmap(p, 1)
    m.mbind(p, a, 1, "bind", [1])
    anon = m.vmstat()["nr_anon_pages"]
    assert m.get_mempolicy(p, a, NODE_ADDR) == (0, [1])
    assert m.vmstat()["nr_anon_pages"] == anon
    assert where(m, p, a) == [-errno.EFAULT]     # still no page (move_pages' query of an untouched one)
    m.touch(p, a, 1)                            # the first write allocates by the policy
    assert m.get_mempolicy(p, a, NODE_ADDR) == (1, [1])
    m.check()


@pytest.mark.parametrize("mode, nodes, want", [
    ("interleave", [2, 1], (1, [1, 2])),
    (MPOL_INTERLEAVE | MPOL_F_STATIC_NODES, [2, 6], (2, [2, 6])),
    (MPOL_INTERLEAVE | MPOL_F_RELATIVE_NODES, [4], (1, [4])),       # node 4 of 3: node 1
])
def test_node_without_an_address_is_the_next_interleave_node(mode, nodes, want):
    """next_node_in(current->il_prev, pol->nodes), il_prev set to MAX_NUMNODES-1 by
    set_mempolicy(): the policy's first node, as no allocation without a vma
    (interleave_nodes()) ever moves it here; vma faults interleave by offset."""
    m = make(nodes=3)
    p = m.spawn(0)
    m.set_mempolicy(p, mode, nodes)
    a = m.mmap(p, 4)
    m.touch(p, a, 4)
    assert m.get_mempolicy(p, flags=MPOL_F_NODE) == want
    assert m.get_mempolicy(p, flags=MPOL_F_NODE) == want


def test_mems_allowed_is_every_node_whatever_the_policy_and_address():
    m = make(nodes=3)
    p = m.spawn(1)
    m.set_mempolicy(p, "bind", [2])
    assert m.get_mempolicy(p, flags=MPOL_F_MEMS_ALLOWED) == (0, [0, 1, 2])
    assert m.get_mempolicy(p, 12345, MPOL_F_MEMS_ALLOWED) == (0, [0, 1, 2])     # addr is not looked at


@pytest.fixture
def world():
    m = make(nodes=3, swap=8)
    p = m.spawn(0)
    a = m.mmap(p, 4)
    s = m.mmap(p, 2, shared=True)
    m.touch(p, a, 2)
    m.set_mempolicy(p, "bind", [1])
    m.mbind(p, s, 2, "interleave", [0, 2])
    gone = unmapped_addr(m, p)
    exited = m.fork(p)
    m.exit(exited)
    return m, p, a, s, gone, exited


REFUSED = {
    # do_get_mempolicy()'s order: unknown flags, MEMS_ALLOWED with others, the vma, addr without ADDR, NODE
    "a flag bit beyond the three": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, None, 8)),
    "a mode flag as a flag": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, a, MPOL_F_STATIC_NODES)),
    "every bit (-1)": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, a, -1)),
    "unknown bits with a good address": (errno.EINVAL,
                                         lambda m, p, a, s, g, x: m.get_mempolicy(p, a, MPOL_F_ADDR | 16)),
    "MEMS_ALLOWED with NODE": (errno.EINVAL,
                               lambda m, p, a, s, g, x: m.get_mempolicy(p, None, MPOL_F_MEMS_ALLOWED | MPOL_F_NODE)),
    "MEMS_ALLOWED with ADDR": (errno.EINVAL,
                               lambda m, p, a, s, g, x: m.get_mempolicy(p, a, MPOL_F_MEMS_ALLOWED | MPOL_F_ADDR)),
    "an address without MPOL_F_ADDR": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, a)),
    "an address with NODE only": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, a, MPOL_F_NODE)),
    "NODE without ADDR, bind task policy": (errno.EINVAL,
                                            lambda m, p, a, s, g, x: m.get_mempolicy(p, None, MPOL_F_NODE)),
    "NODE without ADDR, default task policy": (errno.EINVAL,      # the task's policy set to default first
                                               lambda m, p, a, s, g, x: m.get_mempolicy(p, None, MPOL_F_NODE)),
    "ADDR with NULL": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, None, MPOL_F_ADDR)),
    "ADDR with 0": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, 0, MPOL_F_ADDR)),
    "ADDR unmapped": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, g, MPOL_F_ADDR)),
    "NODE|ADDR unmapped": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, g, NODE_ADDR)),
    "ADDR just past a mapping": (errno.EFAULT,
                                 lambda m, p, a, s, g, x: m.get_mempolicy(p, s + 2 * m.page_size, NODE_ADDR)),
    "ADDR negative": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, -m.page_size, MPOL_F_ADDR)),
    "ADDR beyond 64 bits": (errno.EFAULT, lambda m, p, a, s, g, x: m.get_mempolicy(p, 1 << 70, NODE_ADDR)),
    "pid 0": (errno.ESRCH, lambda m, p, a, s, g, x: m.get_mempolicy(0)),
    "no such pid": (errno.ESRCH, lambda m, p, a, s, g, x: m.get_mempolicy(999, a, NODE_ADDR)),
    "an exited process": (errno.ESRCH, lambda m, p, a, s, g, x: m.get_mempolicy(x, s, NODE_ADDR)),
    "a float address": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, float(s), NODE_ADDR)),
    "a string address": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, str(s), MPOL_F_ADDR)),
    "True for flags": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, None, True)),
    "a float flag": (errno.EINVAL, lambda m, p, a, s, g, x: m.get_mempolicy(p, s, 3.0)),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_call_is_the_kernels_errno_and_changes_nothing(world, case):
    m, p, a, s, gone, exited = world
    code, call = REFUSED[case]
    if case.startswith("NODE without ADDR, default"):
        m.set_mempolicy(p, "default")
    before = m.snapshot()
    raises_errno(code, call, m, p, a, s, gone, exited)
    assert m.snapshot() == before
    m.check()


def test_a_query_without_node_changes_nothing(world):
    m, p, a, s, gone, exited = world
    before = m.snapshot()
    assert m.get_mempolicy(p) == (MPOL_BIND, [1])
    assert m.get_mempolicy(p, s + m.page_size, MPOL_F_ADDR) == (MPOL_INTERLEAVE, [0, 2])
    assert m.get_mempolicy(p, a + 3 * m.page_size, MPOL_F_ADDR) == (MPOL_DEFAULT, [])
    assert m.get_mempolicy(p, a, NODE_ADDR) == (0, [])              # present: no fault
    assert m.get_mempolicy(p, a + 3 * m.page_size, NODE_ADDR) == (0, [])     # the zero page
    assert m.snapshot() == before
