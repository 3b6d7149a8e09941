"""Reclaim, swap-out, swap-in (do_swap_page), swapoff (try_to_unuse) and swapon."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu_support import PAYLOADS, POLICIES, fill, make, pages_of, pattern, raises_errno, step_through, where

ENOENT = errno.ENOENT


def setup(policy="migentry", payload="token", npages=8, frames=32, swap=64, nodes=2):
    m = make(policy=policy, payload=payload, nodes=nodes, frames=frames, swap=swap)
    pid = m.spawn(node=0)
    a = m.mmap(pid, npages)
    data = fill(m, pid, a, npages)
    return m, pid, a, data


def test_reclaim_swaps_out_n_lru_pages(policy, payload):
    m, pid, a, data = setup(policy, payload)
    before = m.vmstat()
    f0 = m.node_info()[0]["free"]
    assert m.reclaim(0, 3) == 3
    after = m.vmstat()
    assert after["pswpout"] - before["pswpout"] == 3
    assert m.node_info()[0]["free"] == f0 + 3
    assert m.swap_info()["used"] == 3
    assert where(m, pid, a, 8).count(-ENOENT) == 3
    assert after["nr_anon_pages"] == before["nr_anon_pages"] - 3
    assert after["nr_swapcached"] == 0            # written out and freed
    m.check()


def test_reclaim_of_more_than_there_is(policy):
    m, pid, a, data = setup(policy, npages=4)
    assert m.reclaim(0, 100) == 4
    assert where(m, pid, a, 4) == [-ENOENT] * 4
    assert m.node_info()[0]["used"] == 0
    assert m.reclaim(0, 5) == 0
    assert m.reclaim(1, 5) == 0                    # nothing on node 1
    m.check()


def test_reclaim_limited_by_free_swap_slots():
    m, pid, a, data = setup(npages=8, swap=5)
    assert m.reclaim(0, 8) == 5
    assert m.swap_info()["used"] == 5
    assert m.reclaim(0, 8) == 0
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    m.check()


def test_reading_swapped_pages_swaps_them_in(policy, payload):
    m, pid, a, data = setup(policy, payload, npages=4)
    assert m.reclaim(0, 4) == 4
    # read_tokens faults nothing in, yet sees the data where it is
    assert [int(t) for t in m.read_tokens(pid, a, 4)] == [0x1000 + i for i in range(4)]
    assert where(m, pid, a, 4) == [-ENOENT] * 4
    before = m.vmstat()
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
    after = m.vmstat()
    assert after["pswpin"] - before["pswpin"] == 4
    assert after["pgmajfault"] - before["pgmajfault"] >= 1
    assert all(x >= 0 for x in where(m, pid, a, 4))
    m.check()


def test_touch_swaps_in_and_write_breaks_nothing(payload):
    m, pid, a, data = setup(payload=payload, npages=4)
    m.reclaim(0, 4)
    before = m.vmstat()
    assert m.touch(pid, a, 2, write=False) is None
    assert m.vmstat()["pswpin"] - before["pswpin"] == 2
    m.touch(pid, a + 2 * m.page_size, 2, tokens=np.array([5, 6]))
    assert m.vmstat()["pswpin"] - before["pswpin"] == 4
    assert [int(t) for t in m.read_tokens(pid, a, 4)] == [0x1000, 0x1001, 5, 6]
    assert m.read(pid, a, 2 * m.page_size) == b"".join(data[:2])
    if payload == "bytes":   # touch wrote the first 8 bytes only
        assert m.read(pid, a + 2 * m.page_size + 8, 8) == data[2][8:16]
    m.check()


def test_swapin_after_read_keeps_the_page_in_swap_cache():
    """do_swap_page frees the slot only when swap is full or the page mlocked: after a
    read fault with swap mostly empty the page stays in the swap cache."""
    m, pid, a, data = setup(npages=4, swap=64)
    m.reclaim(0, 4)
    m.read(pid, a, 4 * m.page_size)
    vm = m.vmstat()
    sw = m.swap_info()
    assert vm["nr_swapcached"] == 4 == sw["swapcached"]
    assert sum(n["swapcache"] for n in m.node_info()) == 4
    assert sw["used"] == 4
    m.check()


def test_nr_swapcached_agrees_everywhere(policy):
    m, pid, a, data = setup(policy, npages=6, swap=64)
    m.reclaim(0, 6)
    m.read(pid, a, 3 * m.page_size)
    vm, sw = m.vmstat(), m.swap_info()
    assert vm["nr_swapcached"] == sw["swapcached"] == sum(n["swapcache"] for n in m.node_info())
    assert sw["used"] >= 3            # three still swapped out, plus any cached
    m.check()


def test_swapoff_brings_everything_back(policy, payload):
    m, pid, a, data = setup(policy, payload, npages=8)
    s = m.mmap(pid, 2, shared=True)
    sdata = fill(m, pid, s, 2, base=0x55)
    child = m.fork(pid)
    m.write(child, a, pattern(m, 0x99))
    got = m.reclaim(0, 20)
    assert got == 11          # 8 private + 2 shared + 1 COW copy
    assert m.swap_info()["used"] > 0
    m.swapoff()
    sw = m.swap_info()
    assert sw["on"] is False and sw["used"] == 0 and sw["swapcached"] == 0
    assert m.vmstat()["nr_swapcached"] == 0
    assert all(x >= 0 for x in where(m, pid, a, 8))
    assert all(x >= 0 for x in where(m, child, a, 8))
    assert all(x >= 0 for x in where(m, pid, s, 2))
    before = m.vmstat()
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    assert m.read(child, a, m.page_size) == pattern(m, 0x99)
    assert m.read(child, a + m.page_size, 7 * m.page_size) == b"".join(data[1:])
    assert m.read(child, s, 2 * m.page_size) == b"".join(sdata)
    assert m.vmstat()["pswpin"] == before["pswpin"]      # no more swap-ins after swapoff
    # shared stays shared after the unuse walk
    m.write(child, s, pattern(m, 0x66))
    assert m.read(pid, s, m.page_size) == pattern(m, 0x66)
    m.check()
    # with swap off, reclaim has nowhere to put anonymous pages
    assert m.reclaim(0, 4) == 0
    m.swapon()
    assert m.swap_info()["on"] is True
    assert m.reclaim(0, 4) == 4
    m.check()


def test_swapoff_counts_pswpin_but_no_major_fault(policy):
    # try_to_unuse() -> unuse_pte_range() reads through swapin_readahead(): swap_readpage
    # counts pswpin, but only do_swap_page() counts PGMAJFAULT
    m, pid, a, data = setup(policy, npages=8)
    assert m.reclaim(0, 8) == 8
    before = m.vmstat()
    m.swapoff()
    after = m.vmstat()
    assert after["pswpin"] - before["pswpin"] == 8
    assert after["pgmajfault"] == before["pgmajfault"]
    assert m.read(pid, a, 8 * m.page_size) == b"".join(data)
    assert m.vmstat()["pgmajfault"] == before["pgmajfault"]
    m.check()


def test_swapoff_enomem_leaves_everything_intact(policy):
    m = make(policy=policy, nodes=2, frames=16, swap=64)
    pid = m.spawn(node=0)
    n = 48                                           # more than the 32 frames
    a = m.mmap(pid, n)
    for i in range(n):
        m.touch(pid, a + i * m.page_size, 1, tokens=np.array([700 + i]))
    assert m.swap_info()["used"] >= n - 32
    m.check()
    raises_errno(errno.ENOMEM, m.swapoff)
    assert m.swap_info()["on"] is True
    m.check()
    assert [int(t) for t in m.read_tokens(pid, a, n)] == [700 + i for i in range(n)]
    for i in range(n):
        assert m.read(pid, a + i * m.page_size, 8) == (700 + i).to_bytes(8, "little")
    m.check()
    # freeing memory lets the next swapoff succeed
    m.munmap(pid, a, 24)
    m.swapoff()
    assert m.swap_info()["used"] == 0
    assert [int(t) for t in m.read_tokens(pid, a + 24 * m.page_size, 24)] == \
        [700 + i for i in range(24, 48)]
    m.check()


def test_swapon_errors():
    m = make(swap=0)
    raises_errno(errno.EINVAL, m.swapon)        # no swap device configured
    m = make(swap=8)
    raises_errno(errno.EBUSY, m.swapon)         # already on
    m.swapoff()
    m.swapon()
    raises_errno(errno.EBUSY, m.swapon)


def test_swapoff_when_not_on_is_einval():
    m = make(swap=0)
    raises_errno(errno.EINVAL, m.swapoff)
    m = make(swap=8)
    m.swapoff()
    raises_errno(errno.EINVAL, m.swapoff)


def test_reclaim_without_swap_reclaims_nothing(policy):
    m, pid, a, data = setup(policy, npages=4, swap=0)
    before = (m.vmstat(), [n["free"] for n in m.node_info()])
    assert m.reclaim(0, 4) == 0
    assert (m.vmstat()["pswpout"], [n["free"] for n in m.node_info()]) == \
        (before[0]["pswpout"], before[1])
    assert where(m, pid, a, 4) == [0] * 4
    m.check()


def test_fault_under_pressure_reclaims_instead_of_failing(payload):
    """With swap, memory pressure swaps pages out rather than returning ENOMEM."""
    m = make(payload=payload, nodes=2, frames=8, swap=32)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 24)
    for i in range(24):
        m.write(pid, a + i * m.page_size, pattern(m, 300 + i))
    assert m.vmstat()["pswpout"] >= 8
    for i in range(24):
        assert m.read(pid, a + i * m.page_size, m.page_size) == pattern(m, 300 + i)
    m.check()


def test_exit_frees_swap_slots_and_swap_cache(policy):
    m, pid, a, data = setup(policy, npages=6)
    m.reclaim(0, 6)
    m.read(pid, a, 2 * m.page_size)              # two back, possibly still swap-cached
    m.exit(pid)
    assert m.swap_info()["used"] == 0
    assert m.vmstat()["nr_swapcached"] == 0
    assert [n["free"] for n in m.node_info()] == [32, 32]
    m.check()


def test_munmap_frees_swap_slots(policy):
    m, pid, a, data = setup(policy, npages=4)
    m.reclaim(0, 4)
    m.munmap(pid, a, 4)
    assert m.swap_info()["used"] == 0
    m.check()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_swapped_cow_page_stays_cow(payload):
    m, pid, a, data = setup(payload=payload, npages=2)
    child = m.fork(pid)
    assert m.reclaim(0, 2) == 2
    assert m.swap_info()["used"] == 2                # one slot per page, shared by both
    m.write(child, a, pattern(m, 1))
    assert m.read(pid, a, m.page_size) == data[0]
    assert m.read(child, a + m.page_size, m.page_size) == data[1]
    assert m.read(pid, a + m.page_size, m.page_size) == data[1]
    m.check()


def test_migrate_after_swapin(policy):
    m, pid, a, data = setup(policy, npages=4)
    m.reclaim(0, 4)
    m.read(pid, a, 4 * m.page_size)
    assert m.move_pages(pid, pages_of(m, a, 4), [1] * 4) == [1] * 4
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
    m.check()


@pytest.mark.parametrize("n", [33, 41, 48])
def test_one_batched_touch_larger_than_ram_succeeds_when_swap_suffices(policy, payload, n):
    """A workload touching more pages than RAM in one call: the kernel's CPU faults them
    one by one, reclaim swapping older ones out; with RAM + swap >= the pages it never
    runs out of memory (2 x 16 frames + 24 slots = 56 >= n)."""
    m = make(policy=policy, payload=payload, nodes=2, frames=16, swap=24)
    pid = m.spawn(node=0)
    a = m.mmap(pid, n)
    toks = np.arange(1, n + 1, dtype=np.int64) * 3
    out = m.touch(pid, a, n, tokens=toks)
    assert [int(t) for t in out] == [int(t) for t in toks]
    m.check()
    assert [int(t) for t in m.read_tokens(pid, a, n)] == [int(t) for t in toks]
    assert m.vmstat()["pswpout"] >= n - 32
    assert m.vmstat()["pgfault"] == n               # each page faulted once, as page by page
    assert m.vmstat()["pswpin"] == 0                # no page swapped out before its write
    m.check()


def test_one_touch_larger_than_ram_swaps_out_only_pages_it_has_written(policy, payload):
    """With real watermarks kswapd runs too: it runs beside the task, whose accesses
    follow their faults, so it only ever takes pages already written; nothing is
    swapped back in, nothing faults twice."""
    n = 700
    m = make(policy=policy, payload=payload, nodes=2, frames=256, swap=512)
    pid = m.spawn(node=0)
    a = m.mmap(pid, n)
    toks = np.arange(1, n + 1, dtype=np.int64) * 7
    m.touch(pid, a, n, tokens=toks)
    vm = m.vmstat()
    assert vm["pgfault"] == n
    assert vm["pswpin"] == 0 and vm["pgmajfault"] == 0
    assert vm["pswpout"] >= n - 512
    assert [int(t) for t in m.read_tokens(pid, a, n)] == [int(t) for t in toks]
    m.check()


@pytest.mark.parametrize("frames,swap,n", [(16, 24, 27), (24, 64, 50), (32, 64, 63)])
def test_cow_writes_to_swapped_pages_under_pressure_complete(policy, payload, frames, swap, n):
    """After fork, the child writes every page while memory is full: each write swaps
    the parent's page in (its slot still named by the parent) and copies it. Faulted
    in one batch, the swap-ins took every frame, reclaim then took the pages back
    before they were copied, and the touch looped for ever (2n <= RAM + swap)."""
    m = make(policy=policy, payload=payload, nodes=2, frames=frames, swap=swap)
    pid = m.spawn(node=0)
    a = m.mmap(pid, n)
    t1 = np.arange(1, n + 1, dtype=np.int64)
    m.touch(pid, a, n, tokens=t1)
    child = m.fork(pid)
    t2 = t1 + 1000
    m.touch(child, a, n, tokens=t2)
    m.check()
    assert [int(t) for t in m.read_tokens(pid, a, n)] == t1.tolist()
    assert [int(t) for t in m.read_tokens(child, a, n)] == t2.tolist()
    m.touch(pid, a, n, write=False)
    m.touch(child, a, n, write=False)
    m.check()


def test_write_whose_fault_reclaims_an_earlier_page_of_the_same_write(policy):
    """Bytes mode: a write spanning a present page and an untouched one, with memory
    full. Faulting the second page reclaims the first, already written; the bytes
    must land in it all the same (they went to whatever frame the swap pte's bits
    named: another page's)."""
    m = make(policy=policy, payload="bytes", nodes=2, frames=24, swap=64)
    pid = m.spawn(node=0)
    ps = m.page_size
    a = m.mmap(pid, 60)
    for i in range(1, 49):                      # memory full; page 0 never touched
        m.write(pid, a + i * ps, pattern(m, 100 + i))
    data = bytes(range(256)) * (ps // 256 + 1)
    m.write(pid, a + ps // 2, data[:ps])        # the end of page 0, the start of page 1
    assert m.read(pid, a + ps // 2, ps) == data[:ps]
    assert m.read(pid, a + 3 * ps // 2, ps // 2) == pattern(m, 101)[ps // 2:]
    assert m.read(pid, a + 2 * ps, 47 * ps) == b"".join(pattern(m, 100 + i) for i in range(2, 49))
    m.check()


def test_one_bytes_write_larger_than_ram(policy):
    m = make(policy=policy, payload="bytes", nodes=2, frames=16, swap=24)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 48)
    data = b"".join(pattern(m, 0x40 + i) for i in range(48))
    m.write(pid, a, data)
    m.check()
    assert m.read(pid, a, len(data)) == data
    m.check()


def test_read_fault_with_swap_full_frees_the_slot_of_a_page_mapped_twice():
    """should_try_to_free_swap(): with swap full (vm_swap_full, more than half in use)
    a swap-in frees the slot as soon as no swap pte names it, however many ptes map
    the page (here a parent and its child, both faulted back in)."""
    m = make(nodes=2, frames=16, swap=4)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 3)
    data = fill(m, pid, a, 3)
    child = m.fork(pid)
    assert m.reclaim(0, 3) == 3
    assert m.swap_info()["used"] == 3               # 3 of 4: full
    assert m.read(pid, a, 3 * m.page_size) == b"".join(data)
    assert m.swap_info()["used"] == 3               # the child's swap ptes still name them
    assert m.read(child, a, 3 * m.page_size) == b"".join(data)
    sw = m.swap_info()
    assert sw["used"] == 0 and sw["swapcached"] == 0
    m.check()


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), nodes=st.integers(2, 3), frames=st.sampled_from([16, 24, 128]),
       swap=st.sampled_from([8, 24, 64]), payload=st.sampled_from(PAYLOADS),
       policy=st.sampled_from(POLICIES))
def test_touches_never_run_out_of_memory_when_ram_and_swap_suffice(data, nodes, frames, swap,
                                                                   payload, policy):
    """Any sequence of touches (reads, writes, any range, one process or a parent and
    its forked child) whose distinct pages fit in RAM above the min watermarks plus
    swap, with one page to spare, completes: the kernel, faulting page by page, never
    runs out of memory there, and neither may a batch."""
    m = make(policy=policy, payload=payload, nodes=nodes, frames=frames, swap=swap)
    room = nodes * (frames - frames // 128) + swap - 1
    forks = data.draw(st.booleans(), "fork")
    cap = room // 2 if forks else room
    n = data.draw(st.integers(cap * 3 // 4, cap), "npages")       # more than RAM, mostly
    pid = m.spawn(node=data.draw(st.integers(0, nodes - 1), "node"))
    a = m.mmap(pid, n)
    want = {pid: [0] * n}
    pids = [pid]
    for _ in range(data.draw(st.integers(1, 6), "ops")):
        if forks and len(pids) == 1 and data.draw(st.booleans(), "fork now"):
            child = m.fork(pid)
            pids.append(child)
            want[child] = list(want[pid])
            continue
        p = data.draw(st.sampled_from(pids), "pid")
        if data.draw(st.booleans(), "all of it"):
            lo, hi = 0, n
        else:
            lo = data.draw(st.integers(0, n - 1), "lo")
            hi = data.draw(st.integers(lo + 1, n), "hi")
        if data.draw(st.booleans(), "write"):
            toks = m.touch(p, a + lo * m.page_size, hi - lo)
            want[p][lo:hi] = [int(t) for t in toks]
        else:
            m.touch(p, a + lo * m.page_size, hi - lo, write=False)
        m.check()
    for p in pids:
        assert [int(t) for t in m.read_tokens(p, a, n)] == want[p]


@pytest.mark.parametrize("swap", [0, 8, 24])
def test_enomem_from_a_batched_touch_leaves_a_consistent_machine(policy, swap):
    """More pages than RAM + swap: ENOMEM, but no leaked reference or slot, and every
    page that was written reads back what was written."""
    m = make(policy=policy, nodes=2, frames=16, swap=swap)
    pid = m.spawn(node=0)
    a = m.mmap(pid, 64)
    toks = np.arange(1, 65, dtype=np.int64)
    raises_errno(errno.ENOMEM, m.touch, pid, a, 64, tokens=toks)
    m.check()
    got = [int(t) for t in m.read_tokens(pid, a, 64)]
    assert all(g in (0, t) for g, t in zip(got, toks.tolist()))
    m.exit(pid)
    assert m.swap_info()["used"] == 0
    assert [n["free"] for n in m.node_info()] == [16, 16]
    m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_reclaim_leaves_the_lock_of_a_page_it_could_not_lock(policy):
    """shrink_page_list: a page isolated but locked by someone else before
    reclaim's trylock goes back on the LRU still locked. Unlocking it would
    take the lock from under its holder (a fault in lock_page, swapoff, a
    migration), and a Ray stress run saw swapoff wait forever for a page
    lock after such a theft."""
    from emulator.frames import PG_isolated, PG_locked, PG_lru
    from emulator.reclaim import shrink_node
    m, pid, a, data = setup(policy, npages=4)
    k = m.k
    fr = k.nodes[0]
    held = []

    def lock_one():     # another operation takes the lock of the first isolated page
        iso = np.flatnonzero(fr.flags & PG_isolated)
        held.append(int(iso[0]))
        fr.flags[iso[0]] |= PG_locked
    got = step_through(shrink_node(k, 0, 4), lock_one)
    assert got == 3
    p = held[0]
    assert fr.flags[p] & PG_locked                   # still its holder's
    assert fr.flags[p] & PG_lru and not fr.flags[p] & PG_isolated
    fr.flags[p] &= ~PG_locked                        # the holder unlocks
    m.check()
    assert m.read(pid, a, 4 * m.page_size) == b"".join(data)
