"""Node-local accesses (cluster/tlb.py, emulator/tlb.py) against the model, in one process.

The node's TLB and the coordinator's shootdowns are the runtime's real
classes; only the transport differs: the Shootdown calls the NodeTLB
directly, where on Ray it makes an actor call. Every test writes through the
TLB, lets the model change the mapping, and checks that the data survived
and that the oracle (which reads the writer's record) still holds."""
from __future__ import annotations

import numpy as np
import pytest

from cluster.frames_shm import share
from cluster.local_fault import RING, account
from cluster.tlb import NodeTLB, ShmPort, StepsLock
from emulator import Machine
from emulator import pte as P
from emulator.frames import PG_dirty, PG_swapcache
from emulator.move_pages import MPOL_MF_MOVE
from emulator.tlb import NodeGone, Shootdown


class Rig:
    """A machine whose node 0 CPU caches one process's ptes."""

    def __init__(self, tmp, policy: str = "migcache", payload: str = "token", npages: int = 16,
                 shared: bool = False, frames: int = 64, hosts: tuple[str, str] = ("host", "host"),
                 walks: bool = False, local: bool = False):
        """``walks``: the node walks the page tables, which live in its shared
        memory; ``self.steps`` is the lock the coordinator holds in the model.
        ``local``: and it faults pages in itself (first touch, reuse), on the frame
        tables the model keeps in shared memory (cluster/local_fault.py)."""
        walks |= local
        tmp.mkdir(parents=True, exist_ok=True)
        self.m = m = Machine(nodes=2, frames_per_node=frames, swap_pages=64, policy=policy, payload=payload)
        k = m.k
        self.pid = m.spawn(node=0)
        self.addr = m.mmap(self.pid, npages, shared=shared)
        self.n = npages
        self.vpn = self.addr >> k.page_shift
        data = {i: fr.data for i, fr in enumerate(k.nodes) if hosts[i] == hosts[0]}
        self.steps = StepsLock(str(tmp / "steps")) if walks else None
        frames = None
        if local:   # as the coordinator: the tables shared, the local faults accounted when it takes the lock
            frames = share(k, str(tmp / "frames"))
            self.steps.drain = lambda rows: account(k, rows)
        # the node's TLB in a shared file, and the kernel's side flushing it in place (ShmPort)
        self.tlbs = [NodeTLB(0, k.page_shift, data, [(self.pid, self.addr, npages)], tmp / "node0-tlb",
                             self.steps.path if walks else None, frames)]
        self.port = ShmPort(self.tlbs[0].shared())
        self.sd = k.tlb = Shootdown([self.port, None], list(hosts))
        if walks:
            self.sd.register(0, self.pid, self.vpn, npages, self.port.tables[self.pid].maybe)
            assert self.port.adopt(m._mm(self.pid), 0) == npages
        else:
            self.sd.register(0, self.pid, self.vpn, npages)

    def fault(self, write: bool = True):
        """A miss: the access through the model, then the fill installed."""
        m = self.m
        toks = m.touch(self.pid, self.addr, self.n, write=write)
        mm = m._mm(self.pid)
        self.tlbs[0].install(self.pid, self.sd.fill(mm, m._range(mm, self.addr, self.n), 0, self.vpn))
        return toks

    def local(self, write: bool = True):
        return self.tlbs[0].access(self.pid, self.addr, self.n, write)

    def addrs(self) -> list[int]:
        return [self.addr + i * self.m.page_size for i in range(self.n)]

    def tokens(self) -> np.ndarray:
        return np.asarray(self.m.read_tokens(self.pid, self.addr, self.n))


@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_a_write_that_hits_runs_on_the_payload_and_the_harvest_brings_the_record(tmp_path, payload):
    r = Rig(tmp_path, payload=payload)
    assert r.local() is None                        # nothing cached yet: a miss
    r.fault()
    toks = r.local()
    assert toks is not None and len(toks) == r.n and r.tlbs[0].hits == 1
    np.testing.assert_array_equal(r.tokens(), toks)  # on the frames, without the model
    with pytest.raises(Exception, match="1 \\(data\\)"):
        r.m.check()                                 # the writer's record has not seen it yet
    r.sd.harvest(r.m.k)
    r.m.check()
    assert r.local(write=False) is not None         # the entries stay after a harvest


@pytest.mark.parametrize("policy", ["migcache", "swapcache", "migentry"])
def test_migration_flushes_the_entries_and_moves_what_was_written(tmp_path, policy):
    r = Rig(tmp_path, policy=policy)
    r.fault()
    toks = r.local()
    status = r.m.move_pages(r.pid, r.addrs(), [1] * r.n)
    assert list(status) == [1] * r.n
    assert r.sd.flush_calls == 1                    # one shootdown for the batch
    np.testing.assert_array_equal(r.tokens(), toks)
    fr = r.m.k.nodes[1]
    pf = (r.m.k.mms[r.pid].vmas[0].pte >> 8) & ((1 << 32) - 1)
    assert ((fr.flags[pf] & PG_dirty) != 0).all()   # the dirty bit went with the page
    assert r.local() is None                         # the old entries are gone: a miss
    r.m.check()
    r.fault()                                        # and the new ptes are cached again
    assert r.local() is not None


def test_a_fill_that_a_flush_overtook_is_not_installed(tmp_path):
    r = Rig(tmp_path)
    r.m.touch(r.pid, r.addr, r.n)
    mm = r.m._mm(r.pid)
    fill = r.sd.fill(mm, r.m._range(mm, r.addr, r.n), 0, r.vpn)
    r.m.move_pages(r.pid, r.addrs(), [1] * r.n)     # the flush comes before the driver installs
    r.tlbs[0].install(r.pid, fill)
    assert r.tlbs[0].tlb.stale_fills == 1
    assert r.local() is None                         # it would have written the freed frames
    r.m.check()


def test_reclaim_writes_a_clean_swap_cache_page_the_cpu_dirtied(tmp_path):
    """A shared page swapped in by a read is a clean swap-cache page mapped
    writable. A write through the TLB leaves only the pte dirty; reclaim must
    learn it when it unmaps the page, or it drops the page as clean and the
    next swap-in reads the old copy."""
    r = Rig(tmp_path, shared=True)
    r.fault()
    assert r.m.reclaim(0, r.n) == r.n
    out0 = r.m.vmstat()["pswpout"]
    r.fault(write=False)                             # swapped in, clean, in the swap cache
    toks = r.local()
    assert toks is not None
    assert r.m.reclaim(0, r.n) == r.n
    assert r.m.vmstat()["pswpout"] - out0 == r.n     # written again, not dropped
    np.testing.assert_array_equal(r.tokens(), toks)
    r.m.check()


def test_fork_write_protects_the_cached_entries_and_copies_the_record(tmp_path):
    r = Rig(tmp_path)
    r.fault()
    toks = r.local()
    child = r.m.fork(r.pid)
    r.m.check()                                      # the child's record has the TLB's writes
    assert r.local() is None                         # write-protected: the write faults (COW)
    assert r.local(write=False) is not None          # the entries stay, read-only
    np.testing.assert_array_equal(np.asarray(r.m.read_tokens(child, r.addr, r.n)), toks)
    r.m.exit(child)
    r.m.check()


def test_pages_on_another_host_are_not_cached(tmp_path):
    """Node 1 is on another host: its payload is not mapped on node 0's."""
    r = Rig(tmp_path, hosts=("a", "b"), npages=8)
    r.fault()
    assert r.local(write=False) is not None
    r.m.move_pages(r.pid, r.addrs()[:3], [1] * 3)
    r.fault()
    ent = r.tlbs[0].tlb.procs[r.pid].ent
    assert (ent[:3] == 0).all() and (ent[3:] != 0).all()   # only the pages still on node 0
    assert r.local(write=False) is None                    # so the access goes to the coordinator
    r.m.check()


def test_exit_and_a_dead_node_leave_no_entry_behind(tmp_path):
    r = Rig(tmp_path)
    r.fault()
    toks = r.local()
    r.sd.node_lost(r.m.k, 0)                         # its TLB went with it: take the frames as written
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    assert r.sd.fill(r.m._mm(r.pid), r.m._range(r.m._mm(r.pid), r.addr, r.n), 0, r.vpn) is None
    r.m.exit(r.pid)
    r.m.check()


class Silent:
    """A node that no longer answers (on Ray: its actor died, or hung past ANSWER_S)."""

    def flush(self, pid, vpns, wrprotect=False):
        raise NodeGone("node 0 did not answer")

    def harvest(self):
        raise NodeGone("node 0 did not answer")

    def revoke(self, k):
        pass


def test_a_node_that_does_not_answer_a_flush_is_lost_and_its_pages_taken_as_written(tmp_path):
    r = Rig(tmp_path)
    r.fault()
    toks = r.local()                                 # written through the TLB: the record has not seen it
    r.sd.ports[0] = Silent()
    status = r.m.move_pages(r.pid, r.addrs(), [1] * r.n)   # the flush fails: the migration goes on
    assert list(status) == [1] * r.n and 0 in r.sd.dead
    np.testing.assert_array_equal(r.tokens(), toks)
    r.m.check()                                      # the contents were taken as the record
    mm = r.m._mm(r.pid)
    assert r.sd.fill(mm, r.m._range(mm, r.addr, r.n), 0, r.vpn) is None   # and it is never filled again


def test_a_node_that_holds_its_tlb_is_lost_not_waited_for_forever(tmp_path, monkeypatch):
    """The coordinator flushes in place under the TLB's lock; a node that
    holds it past ANSWER_S (hung in the middle of an access) is lost."""
    import cluster.tlb as T
    monkeypatch.setattr(T, "ANSWER_S", 0.2)
    r = Rig(tmp_path)
    r.fault()
    toks = r.local()
    with r.tlbs[0].lock:                             # the node, stuck inside an access
        r.m.move_pages(r.pid, r.addrs(), [1] * r.n)
    assert 0 in r.sd.dead
    np.testing.assert_array_equal(r.tokens(), toks)
    r.m.check()


def test_reclaim_reads_the_accessed_bits_a_node_set_through_its_tlb(tmp_path):
    """page_referenced(): pages a node accessed only through its TLB are young
    for reclaim, which takes another process's older-looking pages instead."""
    r = Rig(tmp_path, frames=64)
    m = r.m
    r.fault()                                       # r's pages: the oldest LRU ticks, cached
    other = m.spawn(node=0)
    oaddr = m.mmap(other, r.n)
    m.touch(other, oaddr, r.n)                      # newer, as far as the model has seen
    assert r.local(write=False) is not None         # r's pages accessed again, in the TLB only
    assert m.reclaim(0, r.n) == r.n
    mine = m.k.mms[r.pid].vmas[0].pte
    theirs = m.k.mms[other].vmas[0].pte
    assert (mine & 1).all()                         # still present: they were referenced
    assert not (theirs & 1).any()                   # the other process's went to swap
    m.check()


def test_hot_pages_count_the_accesses_a_node_made_through_its_tlb(tmp_path):
    r = Rig(tmp_path)
    m = r.m
    r.fault()
    half = r.n // 2
    m.touch(r.pid, r.addr + half * m.page_size, half)               # the second half, through the model
    assert r.tlbs[0].access(r.pid, r.addr, half, False) is not None  # then the first, through the TLB
    assert sorted(m.hot_pages(r.pid, half)) == r.addrs()[:half]


# -- page walks: the page tables in the node's memory --------------------------------
@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_a_miss_on_present_ptes_is_walked_on_the_node_without_the_kernel(tmp_path, payload):
    r = Rig(tmp_path, payload=payload, walks=True)
    node = r.tlbs[0]
    assert r.local() is None and node.misses == 1    # nothing mapped: the walk faults
    r.m.touch(r.pid, r.addr, r.n)                    # the kernel maps them (no fill)
    faults = r.m.vmstat()["pgfault"]
    toks = r.local()
    assert toks is not None and node.walks == 1 and node.hits == 0
    np.testing.assert_array_equal(r.tokens(), toks)
    assert r.local() is not None and node.hits == 1  # cached by the walk
    assert r.m.vmstat()["pgfault"] == faults         # a walk is no fault
    r.sd.harvest(r.m.k)
    r.m.check()


def test_no_walk_while_a_coordinator_thread_is_inside_the_model(tmp_path):
    r = Rig(tmp_path, walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    with r.steps:                                    # a step runs: the page tables may be mid-change
        assert r.local() is None
    assert r.tlbs[0].misses == 1 and r.tlbs[0].walks == 0
    assert r.local() is not None and r.tlbs[0].walks == 1


def test_no_walk_while_a_copy_the_coordinator_pinned_lands(tmp_path):
    """A copy still landing after its call keeps the node out (StepsLock.pin)
    whether or not a coordinator thread is inside the model, and lets it in
    once it has landed and no thread is."""
    r = Rig(tmp_path, walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    with r.steps:
        r.steps.pin()
        r.steps.pin()
    r.steps.unpin()
    assert r.local() is None                          # pinned: no thread inside, a copy lands
    with r.steps:                                    # a thread comes and goes while it lands
        r.steps.unpin()
        assert r.local() is None                     # landed, but a thread is inside
    assert r.local() is not None and r.tlbs[0].walks == 1


@pytest.mark.parametrize("policy", ["migentry", "migcache", "swapcache"])
def test_walked_entries_are_flushed_when_the_pages_move(tmp_path, policy):
    """The walk marks what it caches for the kernel: without the mark the
    migration would not flush the node, which would go on writing the old,
    freed frames."""
    r = Rig(tmp_path, policy=policy, walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    toks = r.local()
    assert r.tlbs[0].walks == 1
    with r.steps:
        assert r.m.move_pages(r.pid, r.addrs(), [1] * r.n) == [1] * r.n
    assert r.sd.flush_calls == 1
    assert (r.tlbs[0].tlb.procs[r.pid].ent == 0).all()
    np.testing.assert_array_equal(r.tokens(), toks)
    again = r.local()
    if policy == "migentry":                         # the ptes are present again: walked
        assert again is not None and r.tlbs[0].walks == 2
        np.testing.assert_array_equal(r.tokens(), again)
    else:                                            # cache entries in the ptes: a fault
        assert again is None
    r.sd.harvest(r.m.k)
    r.m.check()


def test_a_walk_caches_and_marks_exactly_the_pages_of_the_access(tmp_path):
    r = Rig(tmp_path, policy="migentry", walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    q = r.n // 4
    sub = r.addr + q * r.m.page_size
    toks = r.tlbs[0].access(r.pid, sub, q, True)        # pages [q, 2q) only
    assert toks is not None and r.tlbs[0].walks == 1
    maybe = r.sd.procs[r.pid][2]
    assert list(np.flatnonzero(maybe)) == list(range(q, 2 * q))
    assert list(np.flatnonzero(r.tlbs[0].tlb.procs[r.pid].ent)) == list(range(q, 2 * q))
    assert r.m.move_pages(r.pid, r.addrs()[q:2 * q], [1] * q) == [1] * q
    assert r.sd.flush_calls == 1 and not maybe.any()
    assert not r.tlbs[0].tlb.procs[r.pid].ent.any()
    r.sd.harvest(r.m.k)
    np.testing.assert_array_equal(r.tokens()[q:2 * q], toks)
    r.m.check()


def test_a_split_vma_keeps_its_page_table_in_the_nodes_memory(tmp_path):
    """mbind on part of a mapping splits its vma; both parts go on writing
    the page table the node walks, so it sees the pages move."""
    r = Rig(tmp_path, policy="migentry", walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    half = r.n // 2
    r.m.mbind(r.pid, r.addr + half * r.m.page_size, half, "bind", [1], flags=MPOL_MF_MOVE)
    pt = r.port.tables[r.pid][0]
    vmas = r.m.k.mms[r.pid].vmas
    assert len(vmas) == 2 and all(np.shares_memory(v.pte, pt) for v in vmas)
    assert r.m.move_pages(r.pid, r.addrs(), None) == [0] * half + [1] * half
    assert r.local(write=False) is not None and r.tlbs[0].walks == 1
    got = r.tlbs[0].tlb.procs[r.pid].ent
    assert list(P.pte_node(got)) == [0] * half + [1] * half
    r.m.check()


def test_a_lost_node_gets_its_page_tables_taken_back(tmp_path, monkeypatch):
    """A node that held its TLB past ANSWER_S is lost; if it was only hung,
    it must not go on writing through entries no flush reaches any more,
    nor walk a page table the coordinator goes on changing."""
    import cluster.tlb as T
    monkeypatch.setattr(T, "ANSWER_S", 0.2)
    r = Rig(tmp_path, policy="migentry", walks=True)
    r.m.touch(r.pid, r.addr, r.n)
    toks = r.local()
    assert r.tlbs[0].walks == 1
    with r.tlbs[0].lock:                             # hung inside an access
        r.m.move_pages(r.pid, r.addrs(), [1] * r.n)
    assert 0 in r.sd.dead
    vma = r.m.k.mms[r.pid].vmas[0]
    assert not np.shares_memory(vma.pte, r.port.tables[r.pid][0])
    assert (P.pte_node(vma.pte) == 1).all() and (vma.pte & P.PRESENT).all()   # the model's, intact
    assert r.local() is None and r.tlbs[0].walks == 1  # it wakes: no entry, nothing to walk
    np.testing.assert_array_equal(r.tokens(), toks)
    r.m.check()


# -- local faults (cluster/local_fault.py) ------------------------------------

STRUCT_PAGE = ("refcount", "mapcount", "flags", "private", "anon_vma", "index", "lru_tick", "free_stack", "counters")


def _as_the_model_would(r: Rig, model: Rig) -> None:
    """model, the same machine without local faults, takes the same write
    through the model's own fault: every struct page field, vmstat counter
    and pte of the process must then be what the node's local fault left."""
    model.fault()
    for a, b in zip(r.m.k.nodes, model.m.k.nodes):
        for name in STRUCT_PAGE:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(r.m.k.stat.counts, model.m.k.stat.counts)
    np.testing.assert_array_equal(r.m._mm(r.pid).vmas[0].pte, model.m._mm(model.pid).vmas[0].pte)


@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_a_first_write_to_untouched_pages_is_faulted_in_on_the_node_as_the_model_would(tmp_path, payload):
    """The node runs the model's own fault steps: after the write and the
    harvest of what it wrote, every struct page field and counter is what the
    model's own fault and access leave."""
    r = Rig(tmp_path / "a", payload=payload, local=True)
    toks = r.local()
    assert toks is not None and len(toks) == r.n
    assert r.tlbs[0].local_faults == 1 and r.tlbs[0].walks == 0 and r.tlbs[0].misses == 0
    mm = r.m._mm(r.pid)
    assert mm.rss == 0                       # accounted when the coordinator next takes the lock
    with r.steps:
        assert mm.rss == r.n
    r.sd.harvest(r.m.k)
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    assert (P.pte_node(mm.vmas[0].pte) == 0).all()
    assert r.local() is not None and r.tlbs[0].hits == 1     # cached: the next write hits
    model = Rig(tmp_path / "b", payload=payload)
    _as_the_model_would(r, model)


@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_a_write_to_pages_only_this_pte_holds_makes_them_writable_on_the_node_as_the_model_would(
        tmp_path, payload):
    """do_wp_page's reuse: after a fork whose child exited, the parent's
    pages are read-only and its own again; a write reuses them."""
    rigs = []
    for name, local in (("a", True), ("b", False)):
        r = Rig(tmp_path / name, payload=payload, local=local)
        r.m.touch(r.pid, r.addr, r.n // 2)            # half present, half untouched
        r.m.exit(r.m.fork(r.pid))
        assert not (r.m._mm(r.pid).vmas[0].pte[: r.n // 2] & P.WRITE).any()
        rigs.append(r)
    r, model = rigs
    toks = r.local()
    assert toks is not None and r.tlbs[0].local_faults == 1 and r.tlbs[0].misses == 0
    with r.steps:
        pass
    r.sd.harvest(r.m.k)
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    _as_the_model_would(r, model)
    assert r.m._mm(r.pid).rss == model.m._mm(model.pid).rss == r.n


def test_no_local_reuse_of_a_page_in_the_swap_cache(tmp_path):
    r = Rig(tmp_path, local=True)
    r.m.touch(r.pid, r.addr, r.n)
    assert r.m.reclaim(0, r.n) == r.n
    r.m.touch(r.pid, r.addr, r.n, write=False)        # swapped in by a read: read-only, in the swap cache
    assert not (r.m._mm(r.pid).vmas[0].pte & P.WRITE).any()
    _denied(r)                                        # try_to_free_swap's: the swap device is the coordinator's


def test_a_local_fault_maps_only_the_untouched_pages_of_the_access(tmp_path):
    r = Rig(tmp_path, local=True)
    half = r.n // 2
    r.m.touch(r.pid, r.addr, half)                    # present and writable: the walk's
    assert r.local() is not None and r.tlbs[0].local_faults == 1
    with r.steps:
        pass
    r.sd.harvest(r.m.k)
    r.m.check()
    assert r.m.vmstat()["pgfault"] == r.n             # half by the model, half here


def _denied(r: Rig, write: bool = True) -> None:
    used = [fr.used() for fr in r.m.k.nodes]
    assert r.local(write=write) is None               # the coordinator's to fault
    assert r.tlbs[0].local_faults == 0 and [fr.used() for fr in r.m.k.nodes] == used


def test_a_read_of_untouched_pages_reads_the_zero_page_on_the_node(tmp_path):
    r = Rig(tmp_path / "private", local=True)
    used = [fr.used() for fr in r.m.k.nodes]
    assert r.local(write=False) is not None          # nothing to fault, as the model's access_step
    assert r.tlbs[0].walks == 1 and r.tlbs[0].local_faults == 0 and r.tlbs[0].misses == 0
    assert [fr.used() for fr in r.m.k.nodes] == used and r.m.vmstat()["pgfault"] == 0
    r.m.check()
    _denied(Rig(tmp_path / "shared", shared=True, local=True), write=False)   # the sibling's page may exist
    r = Rig(tmp_path / "mixed", local=True)
    r.m.touch(r.pid, r.addr + 2 * r.m.page_size, 3)  # pages 2-4 present: walked, the rest read as zero
    assert r.local(write=False) is not None and r.tlbs[0].walks == 1
    assert r.tlbs[0].tlb.lookup(r.pid, r.vpn + 2, 3, False) is not None
    assert r.tlbs[0].tlb.lookup(r.pid, r.vpn + 1, 2, False) is None


def test_no_local_fault_for_a_shared_mapping_or_another_policy(tmp_path):
    from emulator.mm import (MPOL_BIND, MPOL_F_NUMA_BALANCING, MPOL_F_STATIC_NODES, MPOL_INTERLEAVE, MPOL_PREFERRED,
                             MPOL_PREFERRED_MANY)
    _denied(Rig(tmp_path / "shared", shared=True, local=True))  # shmem: the sibling's page may exist
    r = Rig(tmp_path / "policy", local=True)
    r.m.set_mempolicy(r.pid, MPOL_INTERLEAVE, [0, 1])
    r.port.adopt(r.m._mm(r.pid), 0)                   # published again, as after the call on Ray
    _denied(r)
    # a policy that allocates as the default one would while the node has room is still
    # not the default one: where the node runs short it falls back otherwise
    for i, (mode, nodes) in enumerate([(MPOL_PREFERRED_MANY, [0]), (MPOL_BIND | MPOL_F_NUMA_BALANCING, [0, 1]),
                                       (MPOL_PREFERRED | MPOL_F_STATIC_NODES, [0])]):
        r = Rig(tmp_path / f"flags{i}", local=True)
        r.m.set_mempolicy(r.pid, mode, nodes)
        r.port.adopt(r.m._mm(r.pid), 0)
        _denied(r)
    r = Rig(tmp_path / "mbind", local=True)
    r.m.mbind(r.pid, r.addr, 1, MPOL_INTERLEAVE, [0, 1])
    r.port.adopt(r.m._mm(r.pid), 0)
    assert r.local(write=True) is None                # the access spans the bound page
    assert r.tlbs[0].access(r.pid, r.addr + r.m.page_size, r.n - 1, True) is not None   # not the rest
    with r.steps:
        pass
    r.sd.harvest(r.m.k)
    r.m.check()


def test_no_local_fault_below_the_low_watermark(tmp_path):
    r = Rig(tmp_path / "low", local=True, frames=128, npages=127)
    fr = r.m.k.nodes[0]
    assert fr.nr_free - r.n < fr.wmark_low < fr.nr_free
    _denied(r)                                        # kswapd's to wake, and the allocation may fall back
    r = Rig(tmp_path / "copies", local=True, frames=128, npages=64)
    r.m.touch(r.pid, r.addr, r.n)
    r.m.fork(r.pid)                                   # every page shared: each write copies one
    fr = r.m.k.nodes[0]
    assert fr.nr_free - r.n < fr.wmark_low <= fr.nr_free - r.n + 2
    _denied(r)
    assert r.tlbs[0].access(r.pid, r.addr, r.n - 2, True) is not None   # room for that many copies


@pytest.mark.parametrize("payload", ["token", "bytes"])
def test_a_write_to_a_page_a_child_shares_is_copied_on_the_node_as_the_model_would(tmp_path, payload):
    """do_wp_page's copy (wp_page_copy): the parent's write gets a new page on
    its node with the old contents, then its own; the child keeps the old one."""
    rigs = []
    for name, local in (("a", True), ("b", False)):
        r = Rig(tmp_path / name, payload=payload, local=local)
        before = np.asarray(r.m.touch(r.pid, r.addr, r.n))
        assert r.m.move_pages(r.pid, r.addrs()[:4], [1] * 4) == [1] * 4   # four of the pages to copy: on node 1
        r.child = r.m.fork(r.pid)
        rigs.append(r)
    r, model = rigs
    toks = r.local()
    assert toks is not None and r.tlbs[0].local_faults == 1 and r.tlbs[0].misses == 0
    with r.steps:
        pass
    r.sd.harvest(r.m.k)
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    np.testing.assert_array_equal(r.m.read_tokens(r.child, r.addr, r.n), before)
    assert (P.pte_node(r.m._mm(r.pid).vmas[0].pte) == 0).all()     # the copies: on the faulting node
    _as_the_model_would(r, model)
    assert r.m._mm(r.pid).rss == model.m._mm(model.pid).rss == r.n


def test_a_swap_cache_page_a_child_maps_too_is_copied_on_the_node_as_the_model_would(tmp_path):
    """Swapped out from both, read back in by both: one swap-cache page that
    two ptes map read-only. The parent's write copies it (the swap cache
    keeps the old one, for the child's pte), with no swap device involved."""
    rigs = []
    for name, local in (("a", True), ("b", False)):
        r = Rig(tmp_path / name, local=local)
        before = np.asarray(r.m.touch(r.pid, r.addr, r.n))
        r.child = r.m.fork(r.pid)
        assert r.m.reclaim(0, r.n) == r.n
        for pid in (r.pid, r.child):
            r.m.touch(pid, r.addr, r.n, write=False)
        rigs.append(r)
    r, model = rigs
    fr = r.m.k.nodes[0]
    old = r.m._mm(r.pid).vmas[0].pte >> P.OFF_SHIFT & P.PFN_MASK
    assert ((fr.flags[old] & PG_swapcache) != 0).all() and (fr.mapcount[old] == 2).all()
    toks = r.local()
    assert toks is not None and r.tlbs[0].local_faults == 1
    with r.steps:
        pass
    r.sd.harvest(r.m.k)
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    np.testing.assert_array_equal(r.m.read_tokens(r.child, r.addr, r.n), before)
    _as_the_model_would(r, model)
    np.testing.assert_array_equal(r.m.k.swap.swap_map, model.m.k.swap.swap_map)


def test_a_local_copy_flushes_the_nodes_entries_and_counts_as_a_shootdown(tmp_path):
    """The old read-only entries the node cached go, and the coordinator counts
    the flush: a fill it read before is stale, one read after is not."""
    r = Rig(tmp_path, local=True)
    before = np.asarray(r.m.touch(r.pid, r.addr, r.n))
    child = r.m.fork(r.pid)
    assert r.local(write=False) is not None and r.tlbs[0].walks == 1    # the old pages, cached read-only
    mm = r.m._mm(r.pid)
    stale = r.sd.fill(mm, r.m._range(mm, r.addr, r.n), 0, r.vpn)
    flushes = r.tlbs[0].tlb.flushes
    old = mm.vmas[0].pte >> P.OFF_SHIFT & P.PFN_MASK
    ticks = r.m.k.nodes[0].lru_tick[old].copy()
    toks = r.local()
    assert toks is not None and r.tlbs[0].local_faults == 1
    assert r.tlbs[0].tlb.flushes == flushes + 1
    assert (r.m.k.nodes[0].lru_tick[old] > ticks).all()     # the flush's accessed bits: the read
    with r.steps:                                      # the ring read: the flush is the kernel's too
        assert r.sd.epoch[r.pid] == r.tlbs[0].tlb.procs[r.pid].gen[0]
    assert not r.tlbs[0].tlb.install(r.pid, stale)     # it names the old pages
    np.testing.assert_array_equal(r.tlbs[0].access(r.pid, r.addr, r.n, False), [])
    assert r.tlbs[0].tlb.install(r.pid, r.sd.fill(mm, r.m._range(mm, r.addr, r.n), 0, r.vpn))
    assert r.tlbs[0].tlb.lookup(r.pid, r.vpn, r.n, True) is not None
    r.sd.harvest(r.m.k)
    r.m.check()
    np.testing.assert_array_equal(r.tokens(), toks)
    np.testing.assert_array_equal(r.m.read_tokens(child, r.addr, r.n), before)


def test_no_local_copy_of_a_locked_page_or_one_this_node_cannot_read(tmp_path):
    from emulator.fault import lock_step, unlock_pages
    r = Rig(tmp_path / "locked", local=True)
    r.m.touch(r.pid, r.addr, r.n)
    r.m.fork(r.pid)
    gp = r.m._mm(r.pid).vmas[0].pte[3:4] >> P.OFF_SHIFT
    assert lock_step(r.m.k, gp).all()                 # as a migration or reclaim holds it
    _denied(r)
    unlock_pages(r.m.k, gp)
    assert r.local() is not None
    r = Rig(tmp_path / "far", local=True, hosts=("host", "other"))
    r.m.touch(r.pid, r.addr, r.n)
    r.m.move_pages(r.pid, r.addrs()[:1], [1])         # its payload is on another host
    r.m.fork(r.pid)
    _denied(r)


def test_no_local_fault_while_a_coordinator_thread_is_inside_the_model(tmp_path):
    import fcntl
    import os
    r = Rig(tmp_path, local=True)
    with r.steps:
        _denied(r)
    fd = os.open(r.steps.path, os.O_RDONLY)    # another node's page walk: it reads, so no step may run
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        _denied(r)
    finally:
        os.close(fd)
    assert r.local() is not None and r.tlbs[0].local_faults == 1


def test_a_local_fault_that_finds_the_lock_taken_tries_again_as_a_walk_does(tmp_path, monkeypatch):
    """Another node's walk holds the steps lock shared: no step may run, so
    the fault lets go of the TLB, waits and tries again (the wait here is
    where that walk ends) rather than faulting through the coordinator."""
    import fcntl
    import os

    import cluster.tlb as ctlb
    r = Rig(tmp_path, local=True)
    fd = os.open(r.steps.path, os.O_RDONLY)
    waits = []

    def walk_ends(s):
        waits.append(s)
        fcntl.flock(fd, fcntl.LOCK_UN)
    monkeypatch.setattr(ctlb.time, "sleep", walk_ends)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert r.local() is not None
    finally:
        os.close(fd)
    assert waits == [ctlb.WALK_WAIT_S]
    assert r.tlbs[0].local_faults == 1 and r.tlbs[0].misses == 0 and r.tlbs[0].refused == 0


def test_local_faults_wait_for_the_coordinator_once_their_ring_is_full(tmp_path):
    r = Rig(tmp_path, local=True, npages=RING + 1, frames=4 * RING)
    node = r.tlbs[0]
    for i in range(RING):
        assert node.access(r.pid, r.addr + i * r.m.page_size, 1, True) is not None
    last = r.addr + RING * r.m.page_size
    assert node.access(r.pid, last, 1, True) is None and node.local_faults == RING
    with r.steps:                                     # read and accounted: room again
        assert r.m._mm(r.pid).rss == RING
    assert node.access(r.pid, last, 1, True) is not None
