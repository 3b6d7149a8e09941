"""A node actor's own page faults: do_anonymous_page and do_wp_page's reuse,
run where the CPU is.

A first write to pages no pte maps yet is the most node-local step there is:
the kernel allocates on the faulting CPU's node and sets the pte under the
pte lock, nothing else involved. So is a write to a read-only pte whose page
this pte alone maps and holds (wp_page_reuse: the pte becomes writable). A
node actor on the coordinator's host runs them itself, with the model's own
steps (read_ptes, map_anon_step, wp_step, and through them alloc_for and
Frames.alloc) on the model's own memory: the frame tables and counters
the coordinator shares (cluster/frames_shm.py) and the page tables in the
node's file (ShmPort.adopt). Principle 1 holds: one
implementation, driven from two places.

Rules (anything else faults through the coordinator, which can wait, reclaim
and fall back):
- The node holds the coordinator's steps lock exclusively (``flock(LOCK_EX)``,
  not waited for): no step of the model runs meanwhile, in the coordinator
  or in another node. A local fault is one step, as map_anon_step is.
- Only pages of a private mapping under the default policy, of a process
  homed on this node: the coordinator publishes, per
  page, the anon_vma id of such a mapping and -1 elsewhere (``eligible``).
  A call that changes a process's mappings or policy drops the lock between
  its steps, so the coordinator clears the ids when such a call starts and
  publishes them again once none is in flight (Coordinator.call), as the
  kernel's faults wait on mmap_lock held for write. Every page of the
  access is in one such mapping.
- Only a write, to pages that are none, present and writable, or present
  read-only with a page that pte alone maps and references (mapcount and
  refcount 1), neither in the swap cache nor locked: the fault is then
  exactly handle_mm_fault's do_anonymous_page on the none pages and
  do_wp_page's reuse on the read-only ones, and the access follows at once.
  (A read of none ptes maps nothing, the zero page: the walk's.)
- Only while every node stays at or above its low watermark after the
  allocation: the model's allocation then comes from this node, and the
  kswapd wake-up after the access would do nothing.
- Each local fault is appended to a ring in the steps file (``FaultRing``).
  The coordinator reads the ring whenever it takes the steps lock, before
  any step: it adds the pages to the process's rss and logs the fault as the
  touch it stands for, made by the workload thread that made it (so a dump
  replays it in that thread's order). No step of the model ever sees
  a local fault half accounted.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from emulator import pte as P
from emulator.fault import map_anon_step, read_ptes, wp_step
from emulator.frames import PG_locked
from emulator.kernel import split_nodes
from emulator.mm import MM, MPOL_DEFAULT, VMA, AnonVMA, Mempolicy

RING = 1024                     # local faults the coordinator has not read yet, at most
ROW = 7                         # pid, addr, npages, write, pages mapped, node, workload thread
RING_BYTES = 8 * (1 + RING * ROW)


def eligible(mm: MM | None, node: int, lo: int, n: int) -> np.ndarray:
    """Per page of [lo, lo + n): the anon_vma id of the mapping there if a
    node actor ``node`` may fault it in itself, else -1 (see the rules)."""
    out = np.full(n, -1, dtype=np.int32)
    if mm is None or not mm.alive or mm.node != node or mm.policy.mode != MPOL_DEFAULT:
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
    rss. Returns them as (node, thread, pid, addr, npages, write), for the log."""
    out = []
    for pid, addr, npages, write, mapped, node, thread in rows.tolist():
        k.mms[pid].rss += mapped
        out.append((node, thread, pid, addr, npages, bool(write)))
    return out


def fault_in(kern, ring: FaultRing, node: int, thread: int, pid: int, lo: int, pt: np.ndarray,
             ids: np.ndarray, vpn: int, npages: int, page_shift: int) -> int:
    """A write to [vpn, vpn + npages) of pid, whose page table for [lo, ...)
    is ``pt`` and whose eligible ids are ``ids``: fault its pages in here if
    the rules allow (the caller holds the steps lock exclusively). Returns
    the pages faulted, 0 if it did nothing."""
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
    for n_, sel in split_nodes(gp):     # wp_page_reuse's pages only: no copy, no flush
        fr, pf = kern.nodes[n_], gp[sel] & P.PFN_MASK
        # (a swap-cache page has the cache's reference too: refcount 1 rules it out)
        if not ((fr.mapcount[pf] == 1) & (fr.refcount[pf] == 1) & ((fr.flags[pf] & PG_locked) == 0)).all():
            return 0
    n = int(none.sum())
    here = kern.nodes[node]
    if n and (here.nr_free - n < here.wmark_low or any(fr.nr_free < fr.wmark_low for fr in kern.nodes)):
        return 0
    if int(ring.count[0]) == RING:
        return 0
    mm = MM(pid, node, policy=Mempolicy())
    vma = VMA(mm, lo, len(pt), False, AnonVMA(int(av[0])), pt, pt[:0])
    read_ptes(kern, vma, i0 + np.flatnonzero(none | ro))        # handle_mm_fault, as the model's
    left = map_anon_step(kern, vma, i0 + np.flatnonzero(none))[0] if n else none[:0]
    if ro.any():
        wp_step(kern, vma, i0 + np.flatnonzero(ro))
    ring.append((pid, vpn << page_shift, npages, 1, n - len(left), node, thread))   # all mapped: the watermarks said so
    return int(ro.sum()) + n - len(left)
