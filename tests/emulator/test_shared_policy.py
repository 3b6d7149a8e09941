"""mbind(2) of a shared mapping sets the policy of the shared memory object, as
Linux 6.1 does (vma_replace_policy() -> shmem_set_policy() ->
mpol_set_shared_policy()), and every process mapping the object allocates its
pages by that policy at the page's offset in the object (shmem_get_policy() ->
mpol_shared_policy_lookup()), falling back to its own task policy where the
object has none; the vma's own policy is not looked at. The object's policy
lives as long as the object, whoever set it.
"""
from __future__ import annotations

import hashlib

import msgpack
import pytest

from emu_support import make, pages_of, where
from emulator import MPOL_BIND, MPOL_INTERLEAVE, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, Machine


def shared(nodes=3, frames=64, npages=6, swap=0, odd=True):
    """A process on node 0 and its child sharing npages of shared memory;
    with ``odd``, the object's page 0 at an odd vpn, so that an offset in the
    object and a vpn differ in parity (interleave by offset shows)."""
    m = make(nodes=nodes, frames=frames, swap=swap)
    p = m.spawn(0)
    if odd:
        m.mmap(p, 2)                # 0x10000-0x10001, a guard page: the next mapping starts at 0x10003
    a = m.mmap(p, npages, shared=True)
    assert (a // m.page_size) % 2 == odd
    return m, p, m.fork(p), a


def test_mbind_by_one_process_places_the_pages_the_other_faults():
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [1] * 6
    m.touch(p, a, 6, write=False)                   # the same pages, the object's
    assert where(m, p, a, 6) == [1] * 6
    m.check()


def test_mbind_of_part_of_the_object_sets_that_offset_range_only():
    m, p, c, a = shared()
    ps = m.page_size
    m.mbind(p, a + 2 * ps, 2, MPOL_BIND, [2])
    m.touch(c, a, 6)                            # the child's vma is one, unsplit
    assert where(m, c, a, 6) == [0, 0, 2, 2, 0, 0]
    m.check()


def test_interleave_is_by_the_offset_in_the_object():
    """offset_il_node() of the page's index in the object (vm_pgoff of a shared
    mapping is 0): offset 0 gets the first node, wherever the object is mapped,
    and a policy on part of it keeps the object's offsets."""
    m, p, c, a = shared(nodes=2)
    ps = m.page_size
    m.mbind(p, a + ps, 4, MPOL_INTERLEAVE, [0, 1])      # offsets 1..4
    m.touch(c, a, 6)
    assert where(m, c, a, 6)[1:5] == [1, 0, 1, 0]
    # a task's interleave policy takes the same offsets
    m2, p2, _, a2 = shared(nodes=2)
    m2.set_mempolicy(p2, "interleave", [0, 1])
    m2.touch(p2, a2, 4)
    assert where(m2, p2, a2, 4) == [0, 1, 0, 1]


def test_the_policy_outlives_the_process_that_set_it():
    for gone in ("munmap", "exit"):
        m, p, c, a = shared()
        m.mbind(p, a, 6, "bind", [2])
        if gone == "munmap":
            m.munmap(p, a, 6)
        else:
            m.exit(p)
        m.touch(c, a, 6)
        assert where(m, c, a, 6) == [2] * 6, gone
        m.check()


def test_default_drops_the_objects_policy_for_every_process():
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    m.mbind(p, a, 2, "default", None)
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [0, 0, 1, 1, 1, 1]
    m.check()


def test_another_mapper_replaces_the_policy_for_both():
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    m.mbind(c, a, 6, "bind", [2])
    m.touch(p, a, 6)
    assert where(m, p, a, 6) == [2] * 6


def test_an_mbind_equal_to_the_vmas_own_policy_changes_nothing():
    """mbind_range() leaves a vma whose own policy is equal to the new one
    alone (mpol_equal()), so it never reaches the object: the child, forked
    before the parent's mbind, has no vma policy, and its mbind to default
    leaves the object's policy in place; one forked after (its vma's policy
    copied, vma_dup_policy()) drops it."""
    m, p, early, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    late = m.fork(p)
    m.mbind(early, a, 6, "default", None)
    m.touch(early, a, 2)
    assert where(m, early, a, 2) == [1, 1]
    m.mbind(late, a, 6, "default", None)
    m.touch(early, a + 2 * m.page_size, 4)
    assert where(m, early, a, 6) == [1, 1, 0, 0, 0, 0]
    m.check()


def test_mpol_equal_compares_the_nodes_given_with_relative_nodes():
    """__mpol_equal() compares the user's nodemask of a STATIC or RELATIVE
    policy: [4] and [1] are both node 1 on three nodes, but not equal."""
    from emulator import MPOL_F_RELATIVE_NODES
    rel = MPOL_BIND | MPOL_F_RELATIVE_NODES
    m, p, c, a = shared()
    ps = m.page_size
    m.mbind(p, a, 6, rel, [4])
    m.mbind(c, a, 6, "bind", [2])
    m.mbind(p, a, 3, rel, [4])              # equal to the vma's: the object keeps bind 2 there
    m.mbind(p, a + 3 * ps, 3, rel, [1])     # node 1 as well, but another policy: set
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [2, 2, 2, 1, 1, 1]
    m.check()


def test_mpol_equal_compares_the_nodes_given_with_numa_balancing():
    """6.1's mpol_store_user_nodemask() is any mode flag, MPOL_F_NUMA_BALANCING
    too: a bind|NUMA_BALANCING policy keeps the nodes given, and
    __mpol_equal() compares them. [1, 5] and [1] are both node 1 on three
    nodes, but not equal: the second mbind sets the object's policy."""
    from emulator import MPOL_F_NUMA_BALANCING
    nb = MPOL_BIND | MPOL_F_NUMA_BALANCING
    m, p, c, a = shared()
    m.mbind(p, a, 6, nb, [1, 5])
    m.mbind(c, a, 6, "bind", [2])
    m.mbind(p, a, 3, nb, [1, 5])            # equal to the vma's: the object keeps bind 2 there
    m.mbind(p, a + 3 * m.page_size, 3, nb, [1])
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [2, 2, 2, 1, 1, 1]
    m.check()


def test_the_vma_merged_with_its_neighbour_sets_the_object_over_both():
    """mbind_range() tries vma_merge() before it splits: the range merges with
    a neighbouring vma of the same object whose own policy equals the new
    one, and vma_replace_policy() sets the merged vma, so the object's policy
    is set over the neighbour's offsets too, whatever another mapper set
    there meanwhile. With MPOL_DEFAULT, a neighbour with no policy of its own
    merges (mpol_equal(NULL, NULL)), and the object's policy goes from its
    offsets too."""
    m, p, c, a = shared()
    ps = m.page_size
    m.mbind(p, a, 3, "bind", [1])                  # p: [0, 3) bind 1, [3, 6) none
    m.mbind(c, a, 6, "bind", [2])                  # the object: bind 2 over all
    m.mbind(p, a + 3 * ps, 3, "bind", [1])         # merges with [0, 3): bind 1 over [0, 6)
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [1] * 6
    m.check()
    m, p, c, a = shared()
    m.mbind(p, a + 3 * ps, 3, "bind", [1])         # p: [0, 3) none, [3, 6) bind 1
    m.mbind(c, a, 3, "bind", [2])                  # the object: [0, 3) bind 2, [3, 6) bind 1
    m.mbind(p, a + 3 * ps, 3, "default", None)     # merges with [0, 3): none over [0, 6)
    m.touch(c, a, 6)
    assert where(m, c, a, 6) == [0] * 6
    m.check()


def test_moved_pages_go_where_the_object_places_each_one():
    """new_page() allocates each page by get_vma_policy(): where the mbinding
    process's vma was skipped as equal, by the object's policy there, which
    another process set."""
    m, p, c, a = shared()
    m.touch(p, a, 4)                                 # on node 0, mapped by both
    m.touch(c, a, 4, write=False)
    m.mbind(p, a, 4, "bind", [1])
    late = m.fork(p)                                 # its vmas: [0, 4) bind 1, [4, 6) none
    m.mbind(p, a, 2, "bind", [2])                    # the object's [0, 2): bind 2
    # late's vma is left as it is, and so the object's policy (had a vma of the range
    # changed, it would have merged with this one, and set the object over both)
    m.mbind(late, a, 4, "bind", [1], MPOL_MF_MOVE_ALL)
    assert where(m, late, a, 4) == [2, 2, 1, 1] == where(m, c, a, 4)
    assert where(m, p, a, 4) == [2, 2, 1, 1]
    m.check()


def test_mbind_move_all_moves_the_shared_pages_for_every_mapper():
    m, p, c, a = shared()
    m.touch(c, a, 3)
    m.touch(p, a, 3, write=False)
    m.mbind(p, a, 6, "bind", [1], MPOL_MF_MOVE)           # mapped twice: MOVE leaves them
    assert where(m, p, a, 3) == [0, 0, 0]
    m.mbind(p, a, 6, "bind", [2], MPOL_MF_MOVE_ALL)
    assert where(m, p, a, 3) == [2, 2, 2] == where(m, c, a, 3)
    m.touch(c, a, 6)
    assert where(m, c, a + 3 * m.page_size, 3) == [2, 2, 2]
    m.check()


def test_a_shared_page_swapped_in_allocates_by_the_objects_policy():
    """shmem's swap-in allocates by the object's policy at the page's offset."""
    m, p, c, a = shared(nodes=2, frames=64, npages=4, swap=16)
    m.touch(p, a, 4)
    assert m.reclaim(0, 64) >= 4
    assert m.move_pages(p, pages_of(m, a, 4)) == [-2] * 4     # -ENOENT: swapped out
    m.mbind(p, a, 4, "bind", [1])
    m.touch(c, a, 4, write=False)
    assert where(m, c, a, 4) == [1] * 4
    m.check()


# ------------------------------------------------------------------ snapshots


def test_the_objects_policy_survives_a_snapshot():
    m, p, c, a = shared()
    ps = m.page_size
    m.mbind(p, a, 6, "bind", [1])
    m.mbind(p, a + 2 * ps, 2, MPOL_INTERLEAVE, [1, 2])
    m.exit(p)
    blob = m.snapshot()
    m2 = Machine.restore(blob)
    assert m2.snapshot() == blob
    for x in (m, m2):
        x.touch(c, a, 6)
        assert where(x, c, a, 6) == [1, 1, 1, 2, 1, 1]
    assert m2.snapshot() == m.snapshot()
    m2.check()


def test_an_older_snapshot_gives_the_object_its_mappings_policies():
    """A snapshot written before shared memory objects had a policy (anon_vma
    records without base and policy) had each shared mapping allocate by its
    vma's own policy: restored, the object takes those, so its mappers
    allocate as they did (offsets being vpns: base 0)."""
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    late = m.fork(p)

    def old(body):
        for rec in body["anon_vmas"]:
            del rec["base"], rec["policy"]
    m2 = Machine.restore(_edit(m.snapshot(), old))
    m2.touch(late, a, 3)
    m2.touch(c, a, 6)
    assert where(m2, c, a, 6) == [1] * 6 == where(m2, late, a, 6)[:3] + [1] * 3
    m2.check()


def _edit(blob: bytes, change) -> bytes:
    from emulator.snapshot import MAGIC
    body = msgpack.unpackb(blob[len(MAGIC) + 32:], raw=False, strict_map_key=False)
    change(body)
    packed = msgpack.packb(body, use_bin_type=True)
    return MAGIC + hashlib.sha256(packed).digest() + packed


def _object(body):
    """The anon_vmas record of the shared memory object."""
    return next(a for a in body["anon_vmas"] if a["base"])


def _private(body):
    return next(a for a in body["anon_vmas"] if not a["base"])


@pytest.mark.parametrize("change, message", [
    (lambda b: _object(b).update(policy=[[0, 4, [2, [1]]], [2, 6, [2, [2]]]]),
     "snapshot: anon_vmas[1].policy[1] start: must be a 64-bit integer >= 4, got 2"),
    (lambda b: _object(b).update(policy=[[3, 3, [2, [1]]]]),
     "snapshot: anon_vmas[1].policy[0] end: must be a 64-bit integer >= 4, got 3"),
    (lambda b: _object(b).update(policy=[[0, 2, [2, [7]]]]),
     "snapshot: anon_vmas[1].policy[0].policy nodes: must be in 0..2, got 7"),
    (lambda b: _object(b).update(policy=[[0, 2]]), "snapshot: anon_vmas[1].policy[0]: must be [start, end, policy]"),
    # no offset has the default policy: mbind(MPOL_DEFAULT) takes the range out (shared_policy_replace())
    (lambda b: _object(b).update(policy=[[0, 2, [0, []]]]),
     "snapshot: anon_vmas[1].policy[0].policy: mode 0 (default) is no policy here: an offset with none is in no range"),
    (lambda b: _object(b).update(base=-1), "snapshot: anon_vmas[1].base: must be a 64-bit integer >= 0, got -1"),
    (lambda b: _object(b).update(base=1 << 40), "starts before its shared memory object (anon_vma 2, base"),
    (lambda b: _private(b).update(policy=[[0, 2, [2, [1]]]]), "has a shared memory object's base or policy"),
    # a flagged policy keeps the nodes given, and they must make its nodes
    (lambda b: _object(b).update(policy=[[0, 2, [2 | 1 << 14, [1]]]]),
     "snapshot: anon_vmas[1].policy[0].policy: mode 0x4002 keeps the nodes given"),
    (lambda b: _object(b).update(policy=[[0, 2, [2 | 1 << 14, [1], [5]]]]),
     "snapshot: anon_vmas[1].policy[0].policy: nodes [1] are not what mode 0x4002 makes of the nodes given [5]: [2]"),
    (lambda b: _object(b).update(policy=[[0, 2, [2, [1], [1]]]]),
     "snapshot: anon_vmas[1].policy[0].policy: mode 0x2 keeps no nodes given"),
])
def test_an_impossible_shared_policy_is_refused_naming_the_field(change, message):
    m, p, c, a = shared()
    m.mbind(p, a, 6, "bind", [1])
    with pytest.raises(ValueError) as e:
        Machine.restore(_edit(m.snapshot(), change))
    assert message in str(e.value) and str(e.value).startswith("snapshot: "), str(e.value)
