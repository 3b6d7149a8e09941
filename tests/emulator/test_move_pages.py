"""move_pages(2) and migrate_pages(2), row by row of KERNEL.md's "What Linux 6.1 does".

Swap is configured in every machine here so that the swapcache policy (which needs a
swap slot to migrate) behaves like the others; test_policies.py covers swap_pages=0.
"""
from __future__ import annotations

import errno

import pytest

from emu_support import (fill, make, numa, numa_delta, pages_of, pattern, raises_errno, step_through,
                         unmapped_addr, where)

EFAULT, ENOENT, EACCES, EBUSY = errno.EFAULT, errno.ENOENT, errno.EACCES, errno.EBUSY


def setup(policy, payload="token", npages=4, nodes=2, frames=32, swap=64, node=0):
    m = make(policy=policy, payload=payload, nodes=nodes, frames=frames, swap=swap)
    pid = m.spawn(node=node)
    a = m.mmap(pid, npages)
    data = fill(m, pid, a, npages)
    return m, pid, a, data


def success(m):
    return m.vmstat()["pgmigrate_success"]


def fail(m):
    return m.vmstat()["pgmigrate_fail"]


def test_query_of_touched_pages(policy):
    m, pid, a, _ = setup(policy, nodes=3)
    b = m.mmap(pid, 2)
    m.set_mempolicy(pid, "bind", [2])
    m.touch(pid, b, 2)
    before = m.vmstat()
    assert m.move_pages(pid, pages_of(m, a, 4) + pages_of(m, b, 2)) == [0, 0, 0, 0, 2, 2]
    assert m.vmstat() == before                    # a query moves and counts nothing
    m.check()


def test_never_touched_is_efault_in_query_and_move(policy):
    m = make(policy=policy, swap=64)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 1)
    ps = m.page_size
    assert m.move_pages(pid, [a, a + ps]) == [0, -EFAULT]
    s = success(m)
    assert m.move_pages(pid, [a, a + ps], [1, 1]) == [1, -EFAULT]
    assert success(m) == s + 1
    assert where(m, pid, a, 2) == [1, -EFAULT]      # moving did not fault it in
    m.check()


def test_outside_any_mapping_is_efault_and_the_others_still_move(policy):
    m, pid, a, data = setup(policy, npages=2)
    hole = unmapped_addr(m, pid)
    ps = m.page_size
    st = m.move_pages(pid, [a, hole, a + ps], [1, 1, 1])
    assert st == [1, -EFAULT, 1]
    assert m.move_pages(pid, [hole]) == [-EFAULT]
    assert where(m, pid, a, 2) == [1, 1]
    assert m.read(pid, a, 2 * ps) == b"".join(data)
    m.check()


def test_already_on_target_node(policy):
    m, pid, a, _ = setup(policy, npages=3)
    s, f = success(m), fail(m)
    assert m.move_pages(pid, pages_of(m, a, 3), [0, 0, 0]) == [0, 0, 0]
    assert (success(m), fail(m)) == (s, f)
    m.check()


def test_same_page_twice_same_target(policy):
    m, pid, a, data = setup(policy, npages=1)
    s = success(m)
    assert m.move_pages(pid, [a, a], [1, 1]) == [1, -EBUSY]
    assert success(m) == s + 1
    assert where(m, pid, a) == [1]
    assert m.read(pid, a, m.page_size) == data[0]
    m.check()


@pytest.mark.parametrize("between", ["hole", "on-target", "shared", "repeat"])
def test_a_page_not_queued_migrates_the_pages_before_it(policy, between):
    """6.1's do_pages_move() stores a page's error (or its node, if it is on
    the target already) and then migrates the pages queued before it
    (move_pages_and_store_status()): the same page named again after such an
    entry is on the target by then, so its status is the node, not -EBUSY."""
    from emulator import MPOL_MF_MOVE
    m = make(policy=policy, swap=64)
    pid = m.spawn(node=0)
    s = m.mmap(pid, 1, shared=True)
    fill(m, pid, s, 1, base=0x2000)
    m.fork(pid)                                     # s: mapped twice; what follows: once
    a = m.mmap(pid, 2)
    data = fill(m, pid, a, 2)
    ps = m.page_size
    m.move_pages(pid, [a + ps], [1])
    other, status = {"hole": (unmapped_addr(m, pid), -EFAULT), "on-target": (a + ps, 1),
                     "shared": (s, -EACCES), "repeat": (a, -EBUSY)}[between]
    before = success(m)
    assert m.move_pages(pid, [a, other, a], [1, 1, 1], flags=MPOL_MF_MOVE) == [1, status, 1]
    assert success(m) == before + 1                 # moved once; the second time it was there
    assert where(m, pid, a, 2) == [1, 1]
    assert m.read(pid, a, ps) == data[0]
    m.check()


def test_queued_pages_wait_for_the_next_page_not_queued(policy):
    """Pages queued one after another move together when a page is not queued
    (or the list ends), however long the run: a page named again while its
    first naming is still queued is -EBUSY, once moved it is on the target."""
    m, pid, a, data = setup(policy, npages=100, frames=256, swap=256)
    hole = unmapped_addr(m, pid)
    p = pages_of(m, a, 100)
    st = m.move_pages(pid, p[99:] + [hole] + p[:99] + p[:1] + [hole] + p[1:3], [1] * 105)
    assert st == [1, -EFAULT] + [1] * 99 + [-EBUSY, -EFAULT, 1, 1]
    # every other entry not queued: each page moves before the next is looked up
    m.migrate_pages(pid, [1], [0])
    alt = [x for v in p[:80] for x in (v, hole, v)]
    assert m.move_pages(pid, alt, [1] * len(alt)) == [1, -EFAULT, 1] * 80
    assert where(m, pid, a, 100) == [1] * 80 + [0] * 20
    assert m.read(pid, a, 100 * m.page_size) == b"".join(data)
    m.check()


def test_pages_named_once_move_in_one_migration_whatever_lies_between(policy, monkeypatch):
    """With no page named twice, migrating at each page not queued (as 6.1
    does) and migrating once move the same pages to the same nodes: one
    migration then, not one per page not queued (a batch of every other
    page already on the target took 2,048 migrations of 14 steps each)."""
    import emulator.move_pages as mp
    m, pid, a, data = setup(policy, npages=64, frames=256, swap=256)
    hole = unmapped_addr(m, pid)
    p = pages_of(m, a, 64)
    m.move_pages(pid, p[1::2], [1] * 32)            # every other page on the target already
    calls = []

    def counted(k, b, *args):
        calls.append(len(b))
        return migrate(k, b, *args)
    migrate = mp.migrate_batch
    monkeypatch.setattr(mp, "migrate_batch", counted)
    names = [x for i, v in enumerate(p) for x in ((v, hole) if i % 4 == 0 else (v,))]
    st = m.move_pages(pid, names, [1] * len(names))
    assert st == [x for i in range(64) for x in ((1, -EFAULT) if i % 4 == 0 else (1,))]
    assert calls == [32]
    assert where(m, pid, a, 64) == [1] * 64 and m.read(pid, a, 64 * m.page_size) == b"".join(data)
    m.check()


def test_shared_page_twice_is_eacces_both_times(policy):
    # add_page_for_migration(): the mapcount check (-EACCES) comes before
    # isolate_lru_page(), so the repeat of a shared page never gets as far as -EBUSY
    from emulator import MPOL_MF_MOVE
    m, pid, a, _ = setup(policy, npages=2)
    m.fork(pid)
    s, f = success(m), fail(m)
    assert m.move_pages(pid, [a, a], [1, 1], flags=MPOL_MF_MOVE) == [-EACCES, -EACCES]
    assert (success(m), fail(m)) == (s, f)
    assert where(m, pid, a, 2) == [0, 0]
    m.check()


def test_same_page_twice_different_targets_ends_on_the_last(policy):
    m, pid, a, data = setup(policy, npages=1, nodes=3)
    s = success(m)
    assert m.move_pages(pid, [a, a], [1, 2]) == [1, 2]
    assert where(m, pid, a) == [2]
    assert success(m) == s + 2                      # moved twice: 0 -> 1 -> 2
    assert m.move_pages(pid, [a, a + 7], [1, 0]) == [1, 0]
    assert where(m, pid, a) == [0]
    assert m.read(pid, a, m.page_size) == data[0]
    m.check()


@pytest.mark.parametrize("bad", [2, 7, 1 << 20])
def test_invalid_node_after_valid_ones_enodev_but_earlier_pages_moved(policy, bad):
    m, pid, a, data = setup(policy, npages=3)
    raises_errno(errno.ENODEV, m.move_pages, pid, pages_of(m, a, 3), [1, 1, bad])
    assert where(m, pid, a, 3) == [1, 1, 0]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    m.check()


def test_node_minus_one_is_enodev(policy):
    m, pid, a, _ = setup(policy, npages=2)
    s = success(m)
    raises_errno(errno.ENODEV, m.move_pages, pid, pages_of(m, a, 2), [-1, 1])
    assert where(m, pid, a, 2) == [0, 0]
    assert success(m) == s
    m.check()


def test_unaligned_address_moves_the_containing_page(policy):
    m, pid, a, data = setup(policy, npages=3)
    ps = m.page_size
    assert m.move_pages(pid, [a + ps + 13], [1]) == [1]
    assert where(m, pid, a, 3) == [0, 1, 0]
    assert m.move_pages(pid, [a + 3 * ps - 1]) == [0]
    assert m.read(pid, a, 3 * ps) == b"".join(data)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "cow"])
def test_page_mapped_by_two_processes(policy, payload, shared):
    from emulator import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL
    m = make(policy=policy, payload=payload, swap=64)
    ps = m.page_size
    parent = m.spawn(node=0)
    a = m.mmap(parent, 2, shared=shared)
    data = fill(m, parent, a, 2)
    child = m.fork(parent)
    # MPOL_MF_MOVE: -EACCES, nothing counted, nothing moved
    before = m.vmstat()
    assert m.move_pages(parent, [a], [1], flags=MPOL_MF_MOVE) == [-EACCES]
    assert m.move_pages(child, [a + ps], [1], flags=MPOL_MF_MOVE) == [-EACCES]
    after = m.vmstat()
    assert after["pgmigrate_success"] == before["pgmigrate_success"]
    assert after["pgmigrate_fail"] == before["pgmigrate_fail"]
    assert where(m, parent, a, 2) == [0, 0] and where(m, child, a, 2) == [0, 0]
    # MPOL_MF_MOVE_ALL (privileged): moves, both processes see it on the target
    s = success(m)
    assert m.move_pages(parent, [a], [1], flags=MPOL_MF_MOVE_ALL) == [1]
    assert success(m) == s + 1
    assert where(m, parent, a) == [1] and where(m, child, a) == [1]
    assert m.read(parent, a, ps) == data[0] == m.read(child, a, ps)
    m.check()
    # sharing semantics survive the move
    m.write(child, a, pattern(m, 77))
    if shared:
        assert m.read(parent, a, ps) == pattern(m, 77)
    else:
        assert m.read(parent, a, ps) == data[0]
    # once the other process exits, MPOL_MF_MOVE moves the page (mapcount is 1 again)
    m.exit(child)
    s = success(m)
    assert m.move_pages(parent, [a + ps], [1], flags=MPOL_MF_MOVE) == [1]
    assert success(m) == s + 1
    assert m.read(parent, a + ps, ps) == data[1]
    m.check()


@pytest.mark.parametrize("flags", [1, 8, 1 | 2, 0x100])
def test_einval_bad_flags_also_in_query_mode(policy, flags):
    m, pid, a, _ = setup(policy, npages=1)
    raises_errno(errno.EINVAL, m.move_pages, pid, [a], [1], flags=flags)
    raises_errno(errno.EINVAL, m.move_pages, pid, [a], None, flags=flags)
    assert where(m, pid, a) == [0]


def test_einval_when_nodes_and_pages_differ_in_length(policy):
    m, pid, a, _ = setup(policy, npages=2)
    raises_errno(errno.EINVAL, m.move_pages, pid, pages_of(m, a, 2), [1])
    assert where(m, pid, a, 2) == [0, 0]


def test_esrch(policy):
    m, pid, a, _ = setup(policy, npages=1)
    raises_errno(errno.ESRCH, m.move_pages, 999, [a], [1])
    raises_errno(errno.ESRCH, m.move_pages, 999, [a])
    other = m.spawn(node=0)
    m.exit(other)
    raises_errno(errno.ESRCH, m.move_pages, other, [a])


def test_eperm_without_privilege(policy):
    from emulator import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL
    m, pid, a, _ = setup(policy, npages=1)
    other = m.spawn(node=1)
    raises_errno(errno.EPERM, m.move_pages, pid, [a], [1], flags=MPOL_MF_MOVE_ALL,
                 privileged=False)
    raises_errno(errno.EPERM, m.move_pages, pid, [a], [1], flags=MPOL_MF_MOVE,
                 privileged=False, caller=other)
    assert where(m, pid, a) == [0]
    # a process moving its own pages needs no privilege
    assert m.move_pages(pid, [a], [1], flags=MPOL_MF_MOVE, privileged=False, caller=pid) == [1]


def test_numa_counters_of_a_move_follow_the_calling_task(policy):
    # the new pages are allocated in the caller of move_pages() (alloc_migration_target
    # -> __alloc_pages, zone_statistics): numa_local/numa_other compare their node with
    # the caller's numa_node_id(), not with the node of the process whose pages move
    from emulator import MPOL_MF_MOVE
    m, pid, a, _ = setup(policy, npages=4)            # the target process runs on node 0
    caller = m.spawn(node=1)
    before = numa(m)
    assert m.move_pages(pid, pages_of(m, a, 4), [1] * 4, flags=MPOL_MF_MOVE, caller=caller) == [1] * 4
    d = numa_delta(numa(m), before)
    assert (d[1]["numa_local"], d[1]["numa_other"]) == (4, 0)
    # without a caller the target process calls for itself (node 0): remote, numa_other
    before = numa(m)
    assert m.move_pages(pid, pages_of(m, a, 2), [0, 0]) == [0, 0]
    d = numa_delta(numa(m), before)
    assert (d[0]["numa_local"], d[0]["numa_other"]) == (2, 0)
    before = numa(m)
    assert m.move_pages(pid, pages_of(m, a, 2), [1, 1]) == [1, 1]
    d = numa_delta(numa(m), before)
    assert (d[1]["numa_local"], d[1]["numa_other"]) == (0, 2)
    m.check()


def test_e2big(policy):
    import emulator
    m, pid, a, _ = setup(policy, npages=1)
    raises_errno(errno.E2BIG, m.move_pages, pid, range(emulator.MOVE_PAGES_MAX + 1))
    assert where(m, pid, a) == [0]


def test_data_intact_after_moves(policy, payload):
    m = make(policy=policy, payload=payload, nodes=3, frames=32, swap=64)
    ps = m.page_size
    pid = m.spawn(node=0)
    a = m.mmap(pid, 6)
    if payload == "bytes":
        blob = bytes((i * 7 + 3) % 251 for i in range(6 * ps))
        m.write(pid, a, blob)
    else:
        blob = b"".join(fill(m, pid, a, 6, base=0xABCDEF))
    for targets in ([1] * 6, [2, 0, 1, 2, 0, 1], [0] * 6, [2] * 6):
        st = m.move_pages(pid, pages_of(m, a, 6), targets)
        assert st == targets
        assert where(m, pid, a, 6) == targets
        assert m.read(pid, a, 6 * ps) == blob
        m.check()


def test_pgmigrate_success_counts_one_per_page(policy):
    m, pid, a, _ = setup(policy, npages=5)
    s = success(m)
    assert m.move_pages(pid, pages_of(m, a, 5), [1] * 5) == [1] * 5
    assert success(m) == s + 5
    assert m.vmstat()["pgmigrate_fail"] == 0
    assert m.vmstat()["nr_isolated_anon"] == 0


def test_moved_frames_are_freed_on_the_source(policy):
    m, pid, a, _ = setup(policy, npages=4, frames=16)
    info = m.node_info()
    f0, f1 = info[0]["free"], info[1]["free"]
    m.move_pages(pid, pages_of(m, a, 4), [1] * 4)
    info = m.node_info()
    assert (info[0]["free"], info[1]["free"]) == (f0 + 4, f1 - 4)


def test_swapped_out_page_is_enoent(policy):
    m, pid, a, data = setup(policy, npages=2, frames=16, swap=16)
    assert m.reclaim(0, 2) == 2
    assert where(m, pid, a, 2) == [-ENOENT, -ENOENT]
    s = success(m)
    assert m.move_pages(pid, pages_of(m, a, 2), [1, 1]) == [-ENOENT, -ENOENT]
    assert success(m) == s
    assert m.read(pid, a, 2 * m.page_size) == b"".join(data)
    m.check()


# --------------------------------------------------------------------------- migrate_pages


def test_migrate_pages_moves_the_whole_process(policy, payload):
    m = make(policy=policy, payload=payload, nodes=2, frames=32, swap=64)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 5)
    b = m.mmap(pid, 3, shared=True)
    da = fill(m, pid, a, 5)
    db = fill(m, pid, b, 3, base=77)
    s = success(m)
    assert m.migrate_pages(pid, [0], [1]) == 0
    assert where(m, pid, a, 5) == [1] * 5 and where(m, pid, b, 3) == [1] * 3
    assert success(m) == s + 8
    assert m.read(pid, a, 5 * m.page_size) == b"".join(da)
    assert m.read(pid, b, 3 * m.page_size) == b"".join(db)
    m.check()


def test_migrate_pages_leaves_other_nodes_alone(policy):
    m = make(policy=policy, nodes=3, frames=32, swap=64)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    m.touch(pid, a, 1)
    m.set_mempolicy(pid, "bind", [2])
    m.touch(pid, a + m.page_size, 1)
    assert m.migrate_pages(pid, [0], [1]) == 0
    assert where(m, pid, a, 2) == [1, 2]


def test_migrate_pages_skips_a_page_under_another_migration(policy):
    """migrate_to_node() queues without MPOL_MF_STRICT, so migrate_page_add()
    skips a page it cannot isolate (another migration holds it) silently: it
    is not among the pages not moved that migrate_pages(2) returns. The other
    pages move; the migration that held the page ends as it would have."""
    import numpy as np

    from emulator.move_pages import MPOL_MF_MOVE, do_pages_move
    m, pid, a, data = setup(policy, npages=4, nodes=3)
    vpn0 = a >> m.k.page_shift
    left, failed = [], fail(m)
    other = do_pages_move(m.k, m.k.mms[pid], np.array([vpn0 + 1]), np.array([2]), MPOL_MF_MOVE)
    # after other's first step (page 1 queued: isolated), migrate_pages runs whole
    assert step_through(other, lambda: left.append(m.migrate_pages(pid, [0], [1]))).tolist() == [2]
    assert left == [0]
    assert where(m, pid, a, 4) == [1, 2, 1, 1]
    assert fail(m) == failed
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
    m.check()


@pytest.mark.parametrize("new", [[2], [-1], [99]])
def test_migrate_pages_einval_for_a_bad_target(policy, new):
    m, pid, a, _ = setup(policy, npages=2)
    raises_errno(errno.EINVAL, m.migrate_pages, pid, [0], new)
    assert where(m, pid, a, 2) == [0, 0]


def test_migrate_pages_esrch(policy):
    m, pid, a, _ = setup(policy, npages=1)
    raises_errno(errno.ESRCH, m.migrate_pages, 999, [0], [1])


def test_migrate_pages_with_node_sets_of_different_sizes_skips_destination_nodes(policy):
    # do_migrate_pages(): with nodes_weight(from) != nodes_weight(to) a source node that
    # is also in the destination set stays ("[0-7] -> [3,4,5] moves only 0,1,2,6,7")
    m, pid, a, data = setup(policy, npages=3, nodes=3)
    ps = m.page_size
    assert m.move_pages(pid, [a + ps, a + 2 * ps], [1, 2]) == [1, 2]
    s = success(m)
    assert m.migrate_pages(pid, [0, 1, 2], [1, 2]) == 0
    assert where(m, pid, a, 3) == [1, 1, 2]          # only node 0 moved, to node_remap(0) = 1
    assert success(m) == s + 1
    # sets of one size: every source moves to the node of the same rank ([2,3,4] -> [3,4,5])
    assert m.migrate_pages(pid, [1, 2], [0, 1]) == 0
    assert where(m, pid, a, 3) == [0, 0, 1]
    assert success(m) == s + 4
    assert m.read(pid, a, 3 * ps) == b"".join(data)
    m.check()


def test_migrate_pages_ignores_old_nodes_that_are_not_online(policy):
    # kernel_migrate_pages() checks only new_nodes (nodes_and with the cpuset's mems);
    # old_nodes is a mask read as given: a bit naming no online node has no pages
    m, pid, a, _ = setup(policy, npages=2)
    assert m.migrate_pages(pid, [0, 5], [1]) == 0
    assert where(m, pid, a, 2) == [1, 1]
    m.check()


def test_migrate_pages_esrch_before_a_bad_target(policy):
    # kernel_migrate_pages(): find_task_by_vpid() runs before new_nodes is checked
    m, pid, a, _ = setup(policy, npages=1)
    raises_errno(errno.ESRCH, m.migrate_pages, 999, [0], [5])


def test_a_page_freed_while_isolated_counts_as_migrated_but_moves_nowhere(policy):
    """unmap_and_move(): a page whose only reference left is the migration's
    was freed under it: MIGRATEPAGE_SUCCESS, so pgmigrate_success counts it,
    but nothing arrives anywhere (migrate_in/migrate_out, the summary's
    migrations, count pages that moved)."""
    import numpy as np

    from emulator.move_pages import MPOL_MF_MOVE_ALL, do_pages_move
    m = make(policy=policy, nodes=2, frames=32, swap=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    fill(m, pid, a, 4)
    k = m.k
    vpns = (a >> k.page_shift) + np.arange(4)
    # a thread of the process unmaps them after they were isolated, before they are locked
    st = step_through(do_pages_move(k, k.mms[pid], vpns, np.full(4, 1), MPOL_MF_MOVE_ALL),
                      lambda: m.munmap(pid, a, 4))
    assert st.tolist() == [1] * 4
    vm = m.vmstat()
    assert (vm["pgmigrate_success"], vm["migrate_in"], vm["migrate_out"]) == (4, 0, 0)
    assert [row["used"] for row in m.node_info()] == [0, 0]
    m.check()


@pytest.mark.parametrize("call", ["move_pages", "migrate_pages"])
def test_an_exit_during_a_migration_waits_for_it_to_let_go_of_the_mm(policy, call):
    """kernel_move_pages() and kernel_migrate_pages() hold the mm (get_task_mm()
    ... mmput()): the process exiting meanwhile is gone at once (ESRCH), but
    exit_mmap() waits for the syscall's mmput(), so every page still moves and
    only then is the memory freed."""
    import numpy as np

    from emulator.move_pages import MPOL_MF_MOVE_ALL, do_migrate_pages, do_pages_move
    from emulator.process import mm_held
    m = make(policy=policy, nodes=2, frames=32, swap=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    fill(m, pid, a, 4)
    k = m.k
    mm = k.mms[pid]
    op = (do_pages_move(k, mm, (a >> k.page_shift) + np.arange(4), np.full(4, 1), MPOL_MF_MOVE_ALL)
          if call == "move_pages" else do_migrate_pages(k, mm, {0: 1}, True, [0]))
    seen = []

    def exit_now():
        m.exit(pid)
        seen.append((pid in m.processes(), [r["used"] for r in m.node_info()]))
        raises_errno(errno.ESRCH, m.move_pages, pid, [a])
    out = step_through(mm_held(k, mm, op), exit_now)
    assert seen == [(False, [4, 0])]            # gone, but its pages still there
    assert (out.tolist() == [1] * 4) if call == "move_pages" else out == 0
    vm = m.vmstat()
    assert vm["pgmigrate_success"] == vm["migrate_in"] == 4
    assert [r["used"] for r in m.node_info()] == [0, 0] and pid not in k.mms
    m.check()


def test_an_exit_after_the_migration_tears_down_at_once(policy):
    m, pid, a, _ = setup(policy)
    assert m.move_pages(pid, pages_of(m, a, 4), [1] * 4) == [1] * 4
    m.exit(pid)
    assert pid not in m.k.mms and [r["used"] for r in m.node_info()] == [0, 0]
    m.check()
