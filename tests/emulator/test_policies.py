"""The three migration policies of KERNEL.md: where a page waits while it migrates, what
that costs in swap, and what happens when the target node has no room.

- swapcache: the page gets a real swap slot (add_to_swap); no swap -> -ENOMEM per page.
- migcache (V8): a pseudo swap type; no slot used; nothing lingers after completion.
- migentry (upstream): migration entries; no swap, no cache, no fallback: no frame on the
  target fails the whole call with ENOMEM (migrate_pages() stops at the first such page).
"""
from __future__ import annotations

import errno

import pytest

from emu_support import PAYLOADS, POLICIES, fill, make, pages_of, pattern, raises_errno, unmapped_addr, where

ENOMEM = errno.ENOMEM


def machine(policy, payload="token", swap=0, frames=32, nodes=2):
    m = make(policy=policy, payload=payload, nodes=nodes, frames=frames, swap=swap)
    pid = m.spawn(node=0)
    return m, pid


# ----------------------------------------------------------------------------- no swap


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("policy", ["migcache", "migentry"])
def test_swapless_policies_migrate_without_swap(policy, payload):
    m, pid = machine(policy, payload, swap=0)
    a = m.mmap(pid, 6)
    data = fill(m, pid, a, 6)
    s = m.vmstat()["pgmigrate_success"]
    assert m.move_pages(pid, pages_of(m, a, 6), [1] * 6) == [1] * 6
    assert m.vmstat()["pgmigrate_success"] == s + 6
    assert where(m, pid, a, 6) == [1] * 6
    assert m.read(pid, a, 6 * m.page_size) == b"".join(data)
    sw = m.swap_info()
    assert sw["slots"] == 0 and sw["used"] == 0
    vm = m.vmstat()
    assert vm["pswpout"] == 0 and vm["pswpin"] == 0 and vm["nr_swapcached"] == 0
    assert vm["nr_migcache_entries"] == 0
    m.check()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_swapcache_policy_without_swap_fails_each_page_with_enomem(payload):
    m, pid = machine("swapcache", payload, swap=0)
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    s = m.vmstat()["pgmigrate_success"]
    assert m.move_pages(pid, pages_of(m, a, 3), [1] * 3) == [-ENOMEM] * 3
    assert m.vmstat()["pgmigrate_success"] == s
    assert where(m, pid, a, 3) == [0, 0, 0]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    # migrate_pages reports every page as not moved
    assert m.migrate_pages(pid, [0], [1]) == 3
    assert where(m, pid, a, 3) == [0, 0, 0]
    m.check()
    # pages that need no migration still report their node
    assert m.move_pages(pid, [a], [0]) == [0]


# ----------------------------------------------------------------------------- with swap


@pytest.mark.parametrize("payload", PAYLOADS)
def test_swapcache_policy_with_swap_migrates_and_frees_the_slots(payload):
    m, pid = machine("swapcache", payload, swap=16)
    a = m.mmap(pid, 6)
    data = fill(m, pid, a, 6)
    assert m.move_pages(pid, pages_of(m, a, 6), [1] * 6) == [1] * 6
    assert where(m, pid, a, 6) == [1] * 6
    assert m.read(pid, a, 6 * m.page_size) == b"".join(data)
    sw = m.swap_info()
    assert sw["used"] == 0 and sw["swapcached"] == 0
    vm = m.vmstat()
    assert vm["nr_swapcached"] == 0
    assert vm["pswpout"] == 0          # the slot held the page's place: nothing was written
    m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_shared_page_migrates_with_every_pte_rewritten(policy):
    from emulator import MPOL_MF_MOVE_ALL
    m, pid = machine(policy, "bytes", swap=16)
    a = m.mmap(pid, 2, shared=True)
    data = fill(m, pid, a, 2)
    kids = [m.fork(pid) for _ in range(3)]
    st = m.move_pages(pid, pages_of(m, a, 2), [1, 1], flags=MPOL_MF_MOVE_ALL)
    assert st == [1, 1]
    for p in [pid] + kids:
        assert where(m, p, a, 2) == [1, 1]
        assert m.read(p, a, 2 * m.page_size) == b"".join(data)
    m.write(kids[1], a, pattern(m, 5))
    assert m.read(pid, a, m.page_size) == pattern(m, 5)
    vm = m.vmstat()
    assert vm["nr_migcache_entries"] == 0 and m.swap_info()["used"] == 0
    assert m.node_info()[0]["used"] == 0 and m.node_info()[1]["used"] == 2
    m.check()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_migcache_counters(payload):
    m, pid = machine("migcache", payload, swap=16)
    a = m.mmap(pid, 5)
    fill(m, pid, a, 5)
    before = m.vmstat()
    assert m.move_pages(pid, pages_of(m, a, 5), [1] * 5) == [1] * 5
    after = m.vmstat()
    assert after["migcache_add"] - before["migcache_add"] == 5
    assert after["migcache_remove"] - before["migcache_remove"] == 5   # nothing lingers
    assert after["nr_migcache_entries"] == 0
    assert after["migcache_move_to_swap"] == before["migcache_move_to_swap"]
    assert after["pswpout"] == before["pswpout"]
    assert m.swap_info()["used"] == 0
    m.check()


@pytest.mark.parametrize("policy", ["swapcache", "migentry"])
def test_other_policies_never_touch_the_migration_cache(policy):
    m, pid = machine(policy, swap=16)
    a = m.mmap(pid, 3)
    fill(m, pid, a, 3)
    m.move_pages(pid, pages_of(m, a, 3), [1] * 3)
    vm = m.vmstat()
    assert vm["migcache_add"] == 0 and vm["nr_migcache_entries"] == 0


def test_migentry_uses_no_swap_even_when_it_exists():
    m, pid = machine("migentry", swap=16)
    a = m.mmap(pid, 4)
    fill(m, pid, a, 4)
    assert m.move_pages(pid, pages_of(m, a, 4), [1] * 4) == [1] * 4
    assert m.swap_info()["used"] == 0
    assert m.vmstat()["pswpout"] == 0


# ----------------------------------------------------------------------------- target full


def fill_node(m, node, npages):
    """Another process, bound to `node`, occupies `npages` frames there."""
    hog = m.spawn(node=node)
    m.set_mempolicy(hog, "bind", [node])
    h = m.mmap(hog, npages)
    m.touch(hog, h, npages)
    return hog, h


@pytest.mark.parametrize("payload", PAYLOADS)
def test_migentry_target_full_fails_the_whole_call_with_enomem(payload):
    """Upstream migrate_pages() stops at the first page it gets no new page for
    (-ENOMEM, no later pass) and move_pages() fails as a whole; the pages stay
    where they were, and only that page counts in pgmigrate_fail: the ones
    after it were never tried."""
    m = make(policy="migentry", payload=payload, nodes=2, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    hog, h = fill_node(m, 1, 16)
    assert m.node_info()[1]["free"] == 0
    before = m.vmstat()
    raises_errno(ENOMEM, m.move_pages, pid, pages_of(m, a, 3), [1] * 3)
    after = m.vmstat()
    assert where(m, pid, a, 3) == [0, 0, 0]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    assert after["pgmigrate_success"] == before["pgmigrate_success"]
    assert after["pgmigrate_fail"] == before["pgmigrate_fail"] + 1
    assert after["pgmigrate_fallback_swap"] == before["pgmigrate_fallback_swap"] == 0
    assert after["nr_isolated_anon"] == 0
    m.check()
    # migrate_pages(2) fails the same way
    raises_errno(ENOMEM, m.migrate_pages, pid, [0], [1])
    assert where(m, pid, a, 3) == [0, 0, 0]
    assert m.vmstat()["nr_isolated_anon"] == 0
    m.check()
    # once the hog is gone the same move succeeds
    m.exit(hog)
    assert m.move_pages(pid, pages_of(m, a, 3), [1] * 3) == [1] * 3
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    m.check()


def test_migentry_enomem_keeps_what_moved_before_it():
    """Room for one page on node 1: the first page of the list moves, the
    second finds no frame and the call fails; one success, one failure (the
    third page was never tried)."""
    m = make(policy="migentry", nodes=2, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    fill_node(m, 1, 15)
    before = m.vmstat()
    raises_errno(ENOMEM, m.move_pages, pid, pages_of(m, a, 3), [1] * 3)
    after = m.vmstat()
    assert where(m, pid, a, 3) == [1, 0, 0]
    assert after["pgmigrate_success"] - before["pgmigrate_success"] == 1
    assert after["pgmigrate_fail"] - before["pgmigrate_fail"] == 1
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    m.check()


def test_migentry_enomem_after_lists_that_moved():
    """do_pages_move() migrates a list whenever the target changes or a page is
    not queued: the lists before the one that found no memory have moved."""
    m = make(policy="migentry", nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    data = fill(m, pid, a, 4)
    fill_node(m, 1, 16)
    p = pages_of(m, a, 4)
    raises_errno(ENOMEM, m.move_pages, pid, p[:3], [2, 2, 1])       # the target changes
    assert where(m, pid, a, 4) == [2, 2, 0, 0]
    raises_errno(ENOMEM, m.move_pages, pid, [p[2], a + 99 * m.page_size, p[3]], [0, 1, 1])
    assert where(m, pid, a, 4) == [2, 2, 0, 0]
    raises_errno(ENOMEM, m.move_pages, pid, [p[0], p[2], p[3]], [2, 2, 1])   # p[0] there already
    assert where(m, pid, a, 4) == [2, 2, 2, 0]
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
    assert m.vmstat()["nr_isolated_anon"] == 0
    m.check()


def test_migentry_enomem_or_enodev_whichever_6_1_meets_first():
    """An invalid node after a list: 6.1 checks the node (ENODEV) before it
    migrates the list (out_flush), so ENODEV wins over that list's ENOMEM; a
    list migrated at a page not queued fails first (ENOMEM)."""
    m = make(policy="migentry", nodes=2, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2)
    fill_node(m, 1, 16)
    p = pages_of(m, a, 2)
    raises_errno(errno.ENODEV, m.move_pages, pid, p, [1, 5])
    raises_errno(ENOMEM, m.move_pages, pid, [p[0], a + 99 * m.page_size, p[1]], [1, 1, 5])
    assert where(m, pid, a, 2) == [0, 0] and m.vmstat()["nr_isolated_anon"] == 0
    m.check()


def test_migentry_enomem_moves_the_lists_before_the_one_that_found_no_room():
    """[P, hole, Q] to a node with room for one page: 6.1 migrates [P] at the
    hole and then [Q] runs out: P moved, Q stayed, ENOMEM. Taken as one list
    (grouped by source node, Q's node first) Q would move instead."""
    m = make(policy="migentry", nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2)
    P, Q = pages_of(m, a, 2)
    m.move_pages(pid, [P], [2])                     # P on node 2, Q on node 0
    hog = m.spawn(node=1)
    m.set_mempolicy(hog, "bind", [1])
    free = m.node_info()[1]["free"]
    h = m.mmap(hog, free - 1)
    m.touch(hog, h, free - 1)                       # node 1: room for one page
    with pytest.raises(OSError) as e:
        m.move_pages(pid, [P, unmapped_addr(m, pid), Q], [1, 1, 1])
    assert e.value.errno == ENOMEM and "the 2 pages before" in str(e.value)
    assert m.move_pages(pid, [P, Q]) == [1, 0]
    m.check()


def test_migrate_pages_moves_one_source_node_at_a_time_in_6_1s_order():
    """do_migrate_pages(): the first source whose destination is not a source
    still to go, each node's pages queued just before they move; with room
    for one page, the page of node 0 moves (0 goes first: 2 is no source),
    whatever order the mappings hold the pages in."""
    from emulator.move_pages import migrate_order, nodes_remap
    old = list(range(8))
    assert migrate_order(old, nodes_remap(old, [3, 4, 5])) == [(7, 4), (6, 3), (2, 5), (1, 4), (0, 3)]
    assert migrate_order([1, 2], nodes_remap([1, 2], [0, 1])) == [(1, 0), (2, 1)]
    assert migrate_order([0, 1, 2], nodes_remap([0, 1, 2], [0, 1, 3])) == [(2, 3)]    # 0 and 1 stay
    m = make(policy="migentry", nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 1)
    fill(m, pid, a, 1)
    b = m.mmap(pid, 1)
    fill(m, pid, b, 1)
    m.move_pages(pid, [a], [1])                     # a (mapped first) on node 1, b on node 0
    fill_node(m, 2, 15)
    raises_errno(ENOMEM, m.migrate_pages, pid, [0, 1], [2])
    assert (where(m, pid, a), where(m, pid, b)) == ([1], [2])
    m.check()


def test_migentry_enomem_within_a_list_moves_its_pages_in_the_order_named():
    """One list, pages of two nodes, room for one on the target: 6.1 walks
    the list in order, so the first page named moves (it is on node 1 here,
    the second on node 0) and the second finds no room."""
    m = make(policy="migentry", nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 2)
    fill(m, pid, a, 2)
    p = pages_of(m, a, 2)
    m.move_pages(pid, [p[0]], [1])                  # p0 on node 1, p1 on node 0
    fill_node(m, 2, 15)
    raises_errno(ENOMEM, m.move_pages, pid, p, [2, 2])
    assert where(m, pid, a, 2) == [2, 0]
    m.check()


def test_a_short_target_reclaims_once_and_moves_a_batch_per_node(monkeypatch):
    """Pages of two nodes alternating in the list, the target short but with
    pages to reclaim: one reclaim of the shortfall, then one migration per
    node (a migration per run of one node took 38,000 steps for 4096 pages)."""
    import emulator.move_pages as mp
    m = make(policy="migentry", nodes=3, frames=128, swap=256)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 40)
    fill(m, pid, a, 40)
    p = pages_of(m, a, 40)
    m.move_pages(pid, p[1::2], [2] * 20)            # alternating nodes 0 and 2
    hog, h = fill_node(m, 1, m.node_info()[1]["free"] - 2 - 10)   # room for 10 on node 1
    calls = []
    real = mp.migrate_batch
    monkeypatch.setattr(mp, "migrate_batch", lambda k, b, *args: calls.append(len(b)) or real(k, b, *args))
    assert m.move_pages(pid, p, [1] * 40) == [1] * 40
    assert sorted(calls) == [20, 20] and m.vmstat(node=1)["pgsteal_direct"] > 0
    m.check()


@pytest.mark.parametrize("policy", ["migentry", "migcache"])
def test_mbind_move_runs_out_in_address_order(policy, monkeypatch):
    """6.1's do_mbind() hands migrate_pages() one list in address order, and
    new_page() allocates each page by the policy as it comes: interleave over
    nodes 1 and 2 with node 2 full sends every page to node 1 (the zonelist's
    fallback) until node 1 runs out, so the first pages of the range move,
    whichever node their offset names; under migentry the first page without
    a frame ends the call (-ENOMEM, which mbind reports only under STRICT, as
    EIO), under migcache each page left tries on its own. With room for all,
    the pages move a batch per source node, as before."""
    import emulator.move_pages as mp
    from emulator import MPOL_MF_MOVE, MPOL_MF_STRICT
    m = make(policy=policy, nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 8)
    data = fill(m, pid, a, 8)
    calls = []
    real = mp.migrate_batch
    monkeypatch.setattr(mp, "migrate_batch", lambda k, b, *args: calls.append(len(b)) or real(k, b, *args))
    m.mbind(pid, a, 8, "interleave", [1, 2], flags=MPOL_MF_MOVE)     # room for all: one batch
    assert calls == [8] and sorted(where(m, pid, a, 8)) == [1] * 4 + [2] * 4
    m.mbind(pid, a, 8, "bind", [0], flags=MPOL_MF_MOVE)
    assert calls == [8, 4, 4] and where(m, pid, a, 8) == [0] * 8
    fill_node(m, 0, m.node_info()[0]["free"])
    fill_node(m, 2, 16)
    fill_node(m, 1, 16 - 3)                         # room for 3 pages, all on node 1
    calls.clear()
    flags = MPOL_MF_MOVE | (MPOL_MF_STRICT if policy == "migentry" else 0)
    if policy == "migentry":
        raises_errno(errno.EIO, m.mbind, pid, a, 8, "interleave", [1, 2], flags=flags)
    else:
        m.mbind(pid, a, 8, "interleave", [1, 2], flags=flags)
    assert where(m, pid, a, 8) == [1, 1, 1] + [0] * 5
    if policy == "migentry":
        assert calls == [3, 1]                      # the pages that fit, then the one that runs out
    assert m.vmstat()["nr_isolated_anon"] == 0
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    m.check()


def test_mbind_move_places_pages_of_several_nodes_in_address_order():
    """bind to nodes 1 and 2, the range's pages alternating between nodes 0
    and 3: 6.1 allocates for them in address order, not node 0's pages
    first: node 1 down to its low watermark (two pages), node 2 down to its
    (one), then node 1 and node 2 down to min (one each); the sixth finds
    none and migrate_pages() returns -ENOMEM. Without MPOL_MF_STRICT, mbind
    succeeds all the same (do_mbind() says EIO for migrate_pages()'s failure
    only under STRICT). Nodes 0 and 3 have room, but not for bind."""
    from emulator import MPOL_MF_MOVE
    m = make(policy="migentry", nodes=4, frames=128, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 8)
    data = fill(m, pid, a, 8)
    p = pages_of(m, a, 8)
    m.move_pages(pid, p[1::2], [3] * 4)             # pages alternate between nodes 0 and 3
    for node, low in ((1, 2), (2, 1)):              # frames above the low watermark, then one down to min
        fr = m.k.nodes[node]
        assert fr.wmark_low - fr.wmark_min == 1
        fill_node(m, node, m.node_info()[node]["free"] - fr.wmark_low - low)
    m.mbind(pid, a, 8, "bind", [1, 2], flags=MPOL_MF_MOVE)
    assert where(m, pid, a, 8) == [1, 1, 2, 1, 2, 3, 0, 3]
    assert m.vmstat()["nr_isolated_anon"] == 0
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    m.check()


def test_mbind_move_falls_back_in_address_order_with_room_for_all():
    """Room for every page, but not on the nodes the policy intends: each page
    new_page() allocates falls back along its zonelist as it comes, in address
    order. Interleave over nodes 1 and 2 (room for two each), then nodes 3
    and 4 (the next in both zonelists, node 0 being full): the first four
    pages get their own nodes, the next two node 3, the last two node 4
    (allocating one node's pages first gave the first fallback, to the other
    interleave node, to that node's pages alone)."""
    from emulator import MPOL_MF_MOVE
    m = make(policy="migentry", nodes=5, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 8)
    data = fill(m, pid, a, 8)
    for node, room in ((0, 0), (1, 2), (2, 2), (3, 2), (4, 8)):
        fill_node(m, node, m.node_info()[node]["free"] - room)
    m.mbind(pid, a, 8, "interleave", [1, 2], flags=MPOL_MF_MOVE)
    loc = where(m, pid, a, 8)
    assert sorted(loc[:2]) == [1, 2] and loc[2:4] == loc[:2] and loc[4:] == [3, 3, 4, 4]
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    m.check()


def test_migcache_target_full_is_per_page_and_the_call_goes_on():
    """No frame on the target and no swap to fall back to: -ENOMEM for the page
    and the call goes on to the next list, as the V8 design does (swapcache
    without swap: test_swapcache_policy_without_swap_fails_each_page_with_enomem)."""
    m = make(policy="migcache", nodes=3, frames=16, swap=0)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    fill_node(m, 1, 16)
    st = m.move_pages(pid, pages_of(m, a, 3), [1, 2, 2])
    assert st[0] == -ENOMEM and st[1:] == [2, 2]
    assert where(m, pid, a, 3) == [0, 2, 2]
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    assert m.migrate_pages(pid, [2], [1]) == 2      # each page not moved counted, no error
    m.check()


def _full_target_move(policy, payload, swap, npages=3):
    """Node 1 full of another process's pages; move `npages` pages of a process on node 0
    there. Returns what the assertions need."""
    m = make(policy=policy, payload=payload, nodes=2, frames=16, swap=swap)
    pid = m.spawn(node=0)
    a = m.mmap(pid, npages)
    data = fill(m, pid, a, npages)
    hog, h = fill_node(m, 1, 16)
    hog_data = [int(t) for t in m.read_tokens(hog, h, 16)]
    assert m.node_info()[1]["free"] == 0
    before = m.vmstat()
    st = m.move_pages(pid, pages_of(m, a, npages), [1] * npages)
    after = m.vmstat()
    m.check()
    q = where(m, pid, a, npages)
    fell = [i for i in range(npages) if q[i] == -errno.ENOENT]
    moved = [i for i in range(npages) if q[i] == 1]
    stayed = [i for i in range(npages) if q[i] == 0]
    assert sorted(fell + moved + stayed) == list(range(npages)), q
    # each free swap slot lets exactly one page go: written out itself (fallback), or
    # taking the place of one of the other process's pages that reclaim wrote out
    assert len(fell) + len(moved) == min(npages, swap), (q, st)
    for i in moved:
        assert st[i] == 1
    for i in fell + stayed:
        assert st[i] == -ENOMEM
    assert after["pgmigrate_fallback_swap"] - before["pgmigrate_fallback_swap"] == len(fell)
    assert after["pgmigrate_success"] - before["pgmigrate_success"] == len(moved)
    assert after["nr_migcache_entries"] == 0 and after["nr_isolated_anon"] == 0
    # every slot that got used was written: A's pages that fell back, or the other
    # process's pages that reclaim pushed out to make room
    assert after["pswpout"] - before["pswpout"] == m.swap_info()["used"] >= len(fell)
    # the next access swaps a fallen-back page back in, with its data
    before = m.vmstat()
    assert m.read(pid, a, npages * m.page_size) == b"".join(data)
    after = m.vmstat()
    assert after["pswpin"] - before["pswpin"] == len(fell)
    if fell:
        assert after["pgmajfault"] - before["pgmajfault"] >= 1
    assert all(x >= 0 for x in where(m, pid, a, npages))
    # the other process's data is intact wherever its pages went
    assert [int(t) for t in m.read_tokens(hog, h, 16)] == hog_data
    m.check()
    m.exit(hog)
    m.exit(pid)
    assert m.swap_info()["used"] == 0
    assert [n["free"] for n in m.node_info()] == [16, 16]
    m.check()
    return fell, moved


@pytest.mark.parametrize("payload", PAYLOADS)
def test_swapcache_target_full_falls_back_to_swap(payload):
    """swapcache: the page already holds a swap slot when the target turns out to be full
    (add_to_swap comes first); with every slot so taken reclaim cannot make room, and
    the page is written out instead of migrated: -ENOMEM, the page now lives in swap."""
    fell, moved = _full_target_move("swapcache", payload, swap=3)
    assert fell == [0, 1, 2] and moved == []


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("swap", [1, 3, 8])
@pytest.mark.parametrize("policy", ["swapcache", "migcache"])
def test_target_full_reclaims_or_falls_back(policy, payload, swap):
    """Whatever mix of reclaim-on-target and fallback-to-swap the slots allow, no page
    stays behind while a slot is free, the counters add up and all data survives."""
    # swap=1: one page goes, two stay (-ENOMEM, data intact); swap=3, 8: all three go
    _full_target_move(policy, payload, swap=swap)


@pytest.mark.parametrize("policy", ["swapcache", "migcache"])
def test_target_full_and_swap_full_page_stays_put(policy):
    """No frame on the target and no swap slot for a fallback: -ENOMEM, the page stays."""
    m = make(policy=policy, nodes=2, frames=16, swap=2)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 4)
    data = fill(m, pid, a, 4)
    hog, h = fill_node(m, 1, 16)
    assert m.node_info()[1]["free"] == 0
    assert m.reclaim(0, 4) == 2                  # only two swap slots exist
    assert m.swap_info()["used"] == 2
    q0 = where(m, pid, a, 4)
    assert sorted(q0) == [-errno.ENOENT, -errno.ENOENT, 0, 0]
    before = m.vmstat()
    st = m.move_pages(pid, pages_of(m, a, 4), [1] * 4)
    assert st == [-ENOMEM if q == 0 else -errno.ENOENT for q in q0]
    assert where(m, pid, a, 4) == q0
    after = m.vmstat()
    assert after["pgmigrate_success"] == before["pgmigrate_success"]
    assert after["pgmigrate_fallback_swap"] == before["pgmigrate_fallback_swap"]
    assert after["nr_migcache_entries"] == 0
    m.check()
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
    m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_check_passes_after_a_mixed_workload(policy):
    m = make(policy=policy, payload="bytes", nodes=3, frames=24, swap=32)
    p = m.spawn(node=0)
    a = m.mmap(p, 8)
    s = m.mmap(p, 4, shared=True)
    fill(m, p, a, 8)
    fill(m, p, s, 4, base=9)
    c = m.fork(p)
    m.check()
    m.move_pages(p, pages_of(m, a, 8), [1, 2] * 4)
    m.check()
    m.write(c, a, pattern(m, 3))
    m.reclaim(1, 3)
    m.check()
    m.migrate_pages(c, [0, 1], [2, 2])
    m.check()
    m.swapoff()
    m.check()
    m.swapon()
    m.exit(p)
    m.check()
    assert m.read(c, a, m.page_size) == pattern(m, 3)
    assert m.read(c, a + m.page_size, m.page_size) == pattern(m, 0x1001)
    m.exit(c)
    assert [n["free"] for n in m.node_info()] == [24, 24, 24]
    assert m.swap_info()["used"] == 0
    m.check()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_clean_page_that_falls_back_to_swap_is_written_out(payload, monkeypatch):
    """migration_move_to_swap() takes its slot through add_to_swap(), which
    marks the page dirty: the slot holds nothing of it yet. A clean page in
    the migration cache (here a shared mapping's page that was only read)
    must be written out when the migration falls back to swap, or the next
    swap-in reads whatever the slot held before."""
    import emulator.reclaim

    async def nothing_to_reclaim(k, node, nr, kswapd=False):
        return 0        # every page on the target busy: reclaim there frees nothing
    m = make(policy="migcache", payload=payload, nodes=2, frames=16, swap=8)
    # stale contents in every swap slot: another process's pages, written out, then gone
    junk = m.spawn(node=0)
    j = m.mmap(junk, 8)
    fill(m, junk, j, 8, base=0x7000)
    assert m.reclaim(0, 8) == 8 and m.vmstat()["pswpout"] == 8
    m.exit(junk)
    assert m.swap_info()["used"] == 0
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3, shared=True)
    m.touch(pid, a, 3, write=False)                  # zero pages, never written: clean
    fill_node(m, 1, 16)
    monkeypatch.setattr(emulator.reclaim, "shrink_node", nothing_to_reclaim)
    before = m.vmstat()
    assert m.move_pages(pid, pages_of(m, a, 3), [1] * 3) == [-ENOMEM] * 3
    after = m.vmstat()
    assert after["pgmigrate_fallback_swap"] - before["pgmigrate_fallback_swap"] == 3
    assert after["pswpout"] - before["pswpout"] == 3  # written, though clean
    m.check()
    assert list(m.read_tokens(pid, a, 3)) == [0, 0, 0]
    m.check()
