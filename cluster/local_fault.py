"""A node actor's own page faults: do_anonymous_page and do_wp_page, run
where the CPU is.

A first write to pages no pte maps yet is the most node-local step there is:
the kernel allocates on the faulting CPU's node and sets the pte under the
pte lock, nothing else involved. So is a write to a read-only pte: do_wp_page
makes it writable if this pte alone maps and holds its page
(wp_page_reuse), else copies the page into a new one on this node and points
the pte there (wp_page_copy), flushing the entries of the old pte from the
TLBs that may hold them: only this node's, which alone caches the process's
ptes (Shootdown.register). A node actor on the coordinator's host runs
them itself, with the model's own steps (read_ptes, map_anon_step, wp_step,
and through them alloc_for, Frames.alloc, flush_tlb and pte_bits_to_page) on
the model's own memory: the frame tables and counters the coordinator shares
(cluster/frames_shm.py), the page tables in the node's file (ShmPort.adopt),
and the node's TLB (``OwnShootdown``). Principle 1 holds: one
implementation, driven from two places.

Rules (anything else faults through the coordinator, which can wait, reclaim
and fall back):
- The node holds the coordinator's steps lock exclusively (``flock(LOCK_EX)``,
  not waited for: while another holds it, the node lets go of its TLB and
  tries again, as a page walk does): no step of the model runs meanwhile, in
  the coordinator or in another node. A local fault is one step, as
  map_anon_step is.
- Only pages of a private mapping under the default policy, of a process
  homed on this node: the coordinator publishes, per
  page, the anon_vma id of such a mapping and -1 elsewhere (``eligible``).
  A call that changes a process's mappings or policy drops the lock between
  its steps, so the coordinator clears the ids when such a call starts and
  publishes them again once none is in flight (Coordinator.call), as the
  kernel's faults wait on mmap_lock held for write. Every page of the
  access is in one such mapping.
- Only a write, to pages that are none, present and writable, or present
  read-only with a page that is not locked, not in the swap cache if this
  pte alone maps it (do_wp_page would try_to_free_swap it first: the swap
  device is the coordinator's; a swap-cache page others map too is copied,
  the swap cache keeping it), on a node whose
  payload this node maps (a copy reads it), and whose TLB entry here has no
  dirty bit (none can: a read-only pte's entry is read-only since the flush
  that write-protected it; the writer's record is the coordinator's). The
  fault is then exactly handle_mm_fault's do_anonymous_page on the none
  pages and do_wp_page on the read-only ones, and the access follows at once.
  (A read of none ptes maps nothing, the zero page: the walk's.)
- Only while every node stays at or above its low watermark after
  allocating a page for every none page and every page to copy: the model's
  allocations then come from this node, and the kswapd wake-up after the
  access would do nothing.
- Each local fault is appended to a ring in the steps file (``FaultRing``).
  The coordinator reads the ring whenever it takes the steps lock, before
  any step: it adds the pages to the process's rss, counts the flushes the
  node made of the process's entries as its own (``Shootdown.epoch``: a fill
  read before them is then stale, as after any flush, and one read after
  them is not), and logs the fault as the touch it stands for, made by the
  workload thread that made it (so a dump replays it in that thread's
  order). No step of the model ever sees a local fault half accounted.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from emulator import pte as P
from emulator.fault import map_anon_step, read_ptes, wp_step
from emulator.frames import PG_locked, PG_swapcache
from emulator.kernel import split_nodes
from emulator.mm import MM, VMA, AnonVMA, Mempolicy
from emulator.tlb import TLB, pte_bits_to_page

RING = 1024                     # local faults the coordinator has not read yet, at most
ROW = 8                         # pid, addr, npages, write, pages mapped, node, workload thread, flushes
RING_BYTES = 8 * (1 + RING * ROW)
DEFAULT_POLICY = Mempolicy()    # MPOL_DEFAULT, no node, no mode flag: any other policy faults through the coordinator


def eligible(mm: MM | None, node: int, lo: int, n: int) -> np.ndarray:
    """Per page of [lo, lo + n): the anon_vma id of the mapping there if a
    node actor ``node`` may fault it in itself, else -1 (see the rules)."""
    out = np.full(n, -1, dtype=np.int32)
    if mm is None or not mm.alive or not mm.findable or mm.node != node or mm.policy != DEFAULT_POLICY:
        return out
    for vma in mm.vmas:
        a, b = max(vma.start - lo, 0), min(vma.end - lo, n)
        if a < b and not vma.shared and vma.policy is None and not vma.forking:
            out[a:b] = vma.anon_vma.id
    return out


class FaultRing:
    """The local faults the coordinator has not accounted yet: a count, then
    rows of ROW int64s, in the steps lock's file. Written by a node and read
    by the coordinator, each only while it holds the lock exclusively."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < RING_BYTES:
                os.ftruncate(fd, RING_BYTES)
            self.buf = mmap.mmap(fd, RING_BYTES)
        finally:
            os.close(fd)
        a = np.frombuffer(self.buf, dtype=np.int64)
        self.count, self.rows = a[:1], a[1:].reshape(RING, ROW)

    def append(self, row: tuple[int, ...]) -> bool:
        n = int(self.count[0])
        if n == RING:
            return False
        self.rows[n] = row
        self.count[0] = n + 1
        return True

    def take(self) -> np.ndarray:
        n = int(self.count[0])
        if not n:
            return self.rows[:0]
        out = self.rows[:n].copy()
        self.count[0] = 0
        return out


def account(k, rows: np.ndarray) -> list[tuple[int, int, int, int, bool]]:
    """The coordinator's side of the local faults in ``rows`` (FaultRing.take),
    under the steps lock before any step: their pages into their processes'
    rss, their flushes into the shootdowns sent (``k.tlb``). Returns them as
    (node, thread, pid, addr, npages, write), for the log."""
    out = []
    for pid, addr, npages, write, mapped, node, thread, flushes in rows.tolist():
        k.mms[pid].rss += mapped
        if flushes:
            k.tlb.epoch[pid] = k.tlb.epoch.get(pid, 0) + flushes
            k.tlb.flush_calls += flushes
        out.append((node, thread, pid, addr, npages, bool(write)))
    return out


class OwnShootdown:
    """``k.tlb`` of a node's local fault: flush_tlb() reaches this node's own
    TLB, the only one that caches the process's ptes, in place (the caller
    holds it), as Shootdown.flush would with the node's port."""

    def __init__(self, tlb: TLB, tables: dict):
        self.tlb, self.tables = tlb, tables
        self.flushes = 0        # of the current fault's process's entries

    def flush(self, k, vma: VMA, idx: np.ndarray, wrprotect: bool = False) -> None:
        pid = vma.mm.pid
        maybe = self.tables[pid].maybe
        cached = maybe[vma.start - self.tlb.procs[pid].lo + idx]
        if not cached.any():
            return
        idx = idx[cached]
        young, dirty = self.tlb.flush(pid, vma.start + idx, wrprotect)
        self.flushes += 1       # (the maybe bits stay: the access after the fault caches these pages again)
        pte_bits_to_page(k, vma, idx, young, dirty)


def fault_in(kern, ring: FaultRing, node: int, thread: int, pid: int, lo: int, table,
             vpn: int, npages: int, page_shift: int) -> int:
    """A write to [vpn, vpn + npages) of pid, whose page table, maybe bits
    and eligible ids for [lo, ...) are ``table``'s (cluster.tlb.Table):
    fault its pages in here if the rules allow (the caller holds the steps
    lock exclusively, and the node's TLB, which is ``kern.tlb``'s). Returns
    the pages faulted, 0 if it did nothing."""
    pt, ids = table.pt, table.ids
    i0 = vpn - lo
    seg = pt[i0:i0 + npages]
    none = seg == 0
    present = (seg & P.PRESENT) != 0
    ro = present & ((seg & P.WRITE) == 0)
    if not (none | ro).any() or not (none | present).all():
        return 0
    av = ids[i0:i0 + npages]
    if av[0] < 0 or (av != av[0]).any():
        return 0
    gp = seg[ro] >> P.OFF_SHIFT
    copies = 0
    for n_, sel in split_nodes(gp):     # the pages do_wp_page reuses or copies
        fr, pf = kern.nodes[n_], gp[sel] & P.PFN_MASK
        fl, mc = fr.flags[pf], fr.mapcount[pf]
        if fr.data is None or ((fl & PG_locked) != 0).any() or (((fl & PG_swapcache) != 0) & (mc == 1)).any():
            return 0
        copies += int(((mc != 1) | (fr.refcount[pf] != 1)).sum())
    own = kern.tlb
    if copies and own.tlb.procs[pid].dirty[i0 + np.flatnonzero(ro)].any():
        return 0
    n = int(none.sum())
    here = kern.nodes[node]
    if n + copies and (here.nr_free - n - copies < here.wmark_low
                       or any(fr.nr_free < fr.wmark_low for fr in kern.nodes)):
        return 0
    if int(ring.count[0]) == RING:
        return 0
    mm = MM(pid, node, policy=Mempolicy())
    vma = VMA(mm, lo, len(pt), False, AnonVMA(int(av[0])), pt, pt[:0])
    own.flushes = 0
    read_ptes(kern, vma, i0 + np.flatnonzero(none | ro))        # handle_mm_fault, as the model's
    left = map_anon_step(kern, vma, i0 + np.flatnonzero(none))[0] if n else none[:0]
    if ro.any():
        wp_step(kern, vma, i0 + np.flatnonzero(ro))
    # all mapped and copied: the watermarks said so
    ring.append((pid, vpn << page_shift, npages, 1, n - len(left), node, thread, own.flushes))
    return int(ro.sum()) + n - len(left)
