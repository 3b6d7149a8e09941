"""Process lifetime: mmap, munmap, fork (copy_page_range), exit (zap).

Rules:
- Zapping a pte gives back what it held: a present pte its mapcount and page
  reference; a swap pte its swap count (free_swap_and_cache: a slot nobody
  names any more takes its idle cache page with it); a migration-cache pte
  its counter. An upstream migration entry holds nothing: the migrator owns
  the page.
- fork first links every child vma on its parent's anon_vma (at the tail,
  R3), then copies each vma's ptes in a step of its own. Private present
  ptes become read-only in both (COW), a writable migration entry becomes a
  readable one in both, swap and migration-cache entries gain a count; shared
  vmas keep writable ptes and share their contents.
- The child's record of contents (shadow) is taken with its ptes, in the
  same step, so the data oracle never sees a half-forked child; a shared
  vma's is the shared object's, the same array from the moment it is linked.
- A shared mapping's exiting mapper hands its ptes over to siblings without
  one for the page, but not to a child linked by a fork still in progress
  (``forking``): its ptes are about to be copied from its parent, over
  anything handed to it. A sibling that receives ptes counts it
  (``handed``), so that an rmap walk that already passed it walks it again
  (rmap.next_vma): a migration entry handed over behind a remap walk would
  otherwise stay after the migration ends.
- An mm has users (mm_users): its task, and each syscall working on another
  process's memory (move_pages, migrate_pages: get_task_mm() with the pid
  lookup, mmput() at the end). Exit takes the task away at once (its pid is
  ESRCH from then on) and drops the task's reference; whoever drops the last
  one tears the mm down (exit_mmap), in a step of its own. So a migration in
  flight keeps the pages it walks mapped, as in Linux; a munmap is what
  takes them away under a move_pages (migrate_pages holds mmap_lock
  throughout). Exit and reap are one event here: 6.1's zombie window, where
  get_task_mm() finds no mm and move_pages says EINVAL, is not modelled.
- A forked child's pid finds it only once its fork has copied every vma
  (copy_process() attaches the pid last): until then nothing can exit,
  unmap or migrate it.
"""
from __future__ import annotations

import errno

import numpy as np

from . import pte as P
from .frames import PG_locked, PG_swapcache
from .kernel import split_nodes
from .mm import MM, VMA
from .rmap import entry_dup, entry_free
from .sched import call
from .swap import add_at, ascending_unique
from .swap_state import delete_from_swap_cache, try_to_free_swap
from .tlb import flush_tlb


def mmap_step(k, mm: MM, npages: int, shared: bool) -> VMA:
    av = k.anon_vma_new()
    if shared:
        av.base = mm.next_vpn       # a new shared memory object: its page 0 (vm_pgoff 0) is here
    vma = VMA(mm, mm.next_vpn, npages, shared, av, np.zeros(npages, dtype=np.int64),
              np.zeros(npages, dtype=np.int64))
    av.vmas.append(vma)
    mm.next_vpn += npages + 1          # a guard page between mappings
    mm.insert_vma(vma)
    return vma


def hand_over(k, vma: VMA, lo: int, hi: int) -> None:
    """A shared mapping's pages outlive one mapper (they belong to the shared object):
    a pte going away moves to a sibling mapping that has none for that page yet."""
    vpn = vma.start + lo + np.arange(hi - lo)
    for sib in vma.anon_vma.vmas:
        if sib is vma or not sib.shared or sib.forking:    # a half-forked child gets its parent's ptes
            continue
        ptes = vma.pte[lo:hi]
        i = np.flatnonzero((ptes != 0) & (vpn >= sib.start) & (vpn < sib.end))
        if not len(i):
            continue
        j = vpn[i] - sib.start
        free = sib.pte[j] == 0
        i, j = i[free], j[free]
        if not len(i):
            continue
        flush_tlb(k, vma, lo + i)
        sib.pte[j] = ptes[i]
        sib.handed += 1
        sib.mm.rss += len(i)
        vma.mm.rss -= len(i)
        vma.pte[lo + i] = 0


def zap_step(k, vma: VMA, lo: int, hi: int) -> None:
    """zap_pte_range() over pages [lo, hi) of vma."""
    if vma.shared:
        hand_over(k, vma, lo, hi)
    ptes = vma.pte[lo:hi]
    nz = ptes[ptes != 0]
    if not len(nz):
        return
    flush_tlb(k, vma, slice(lo, hi))
    present = nz[(nz & P.PRESENT) != 0] >> P.OFF_SHIFT
    for node, sel in split_nodes(present):
        fr = k.nodes[node]
        pf = present[sel] & P.PFN_MASK
        add_at(fr.mapcount, pf, -1)
        # free_pages_and_swap_cache(): the last unmap drops an idle swap-cache copy
        idle = pf[(fr.mapcount[pf] == 0) & ((fr.flags[pf] & (PG_swapcache | PG_locked)) == PG_swapcache)]
        try_to_free_swap(k, node, idle)
        fr.put(pf)
    swp = nz[((nz & P.PRESENT) == 0) & ~P.is_migration(nz)]
    if len(swp):
        entry_free(k, swp)
        slots = P.pte_offset(swp[P.swp_type(swp) == P.SWP_SWAP])
        free_swap_cache(k, slots)
    vma.mm.rss -= len(nz)
    vma.pte[lo:hi] = 0


def free_swap_cache(k, slots: np.ndarray) -> None:
    """free_swap_and_cache(): a slot no pte names drops its idle cache page."""
    if not len(slots):
        return
    slots = ascending_unique(slots)
    gp = k.swap.cache_page[slots]
    idle = (gp >= 0) & (k.swap.count(slots) == 0)
    gp = gp[idle]
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        pf = pf[((fr.flags[pf] & PG_locked) == 0) & (fr.mapcount[pf] == 0)]
        delete_from_swap_cache(k, node, pf)


def unlink_vma(k, vma: VMA) -> None:
    av = vma.anon_vma
    av.vmas = [v for v in av.vmas if v is not vma]
    k.anon_vma_put(av)
    vma.mm.vmas = [v for v in vma.mm.vmas if v is not vma]


def split_vma(k, vma: VMA, at: int) -> VMA:
    """Cut vma at page `at`; returns the upper part, linked after it. Both
    parts keep their ptes where they were (views), as the kernel's page
    table does not move when a vma splits: a node that walks it (on Ray,
    in its shared memory) goes on reading the live ptes."""
    upper = VMA(vma.mm, vma.start + at, vma.npages - at, vma.shared, vma.anon_vma,
                vma.pte[at:], vma.shadow[at:] if vma.shared else vma.shadow[at:].copy(),
                vma.policy)
    vma.npages = at
    vma.pte = vma.pte[:at]
    vma.shadow = vma.shadow[:at] if vma.shared else vma.shadow[:at].copy()
    lst = vma.anon_vma.vmas
    lst.insert(next(i for i, v in enumerate(lst) if v is vma) + 1, upper)
    vma.mm.insert_vma(upper)
    return upper


def munmap_step(k, mm: MM, vpn: int, npages: int) -> None:
    end = vpn + npages
    for vma in [v for v in mm.vmas if v.start < end and v.end > vpn]:
        if vma.start < vpn:
            vma = split_vma(k, vma, vpn - vma.start)
        if vma.end > end:
            split_vma(k, vma, end - vma.start)
        zap_step(k, vma, 0, vma.npages)
        unlink_vma(k, vma)


def exit_step(k, mm: MM) -> None:
    """exit_mm(): the task lets go of its mm; the last user tears it down."""
    if not mm.findable:     # two exits of one pid, both started before either ran: one finds no task
        raise OSError(errno.ESRCH, f"no such process: {mm.pid}")
    mm.exited = True
    mm.users -= 1
    if not mm.users:
        exit_mmap(k, mm)


def exit_mmap(k, mm: MM) -> None:
    for vma in list(mm.vmas):
        zap_step(k, vma, 0, vma.npages)
        unlink_vma(k, vma)
    mm.alive = False
    k.mms.pop(mm.pid, None)


def fork_mm_step(k, parent: MM) -> tuple[MM, list[tuple[VMA, VMA]]]:
    """dup_mmap() up to copy_page_range: the child's vmas, linked on the anon_vmas."""
    child = MM(k.next_pid, parent.node, policy=parent.policy,      # a Mempolicy never changes: mpol_dup()
               next_vpn=parent.next_vpn, forking=bool(parent.vmas))
    k.next_pid += 1
    pairs = []
    for pv in parent.vmas:
        # a shared mapping's record of contents is the shared object's, from the moment
        # the child's vma is linked (the oracle looks pages up through siblings)
        cv = VMA(child, pv.start, pv.npages, pv.shared, pv.anon_vma, np.zeros(pv.npages, dtype=np.int64),
                 pv.shadow if pv.shared else np.zeros(pv.npages, dtype=np.int64), pv.policy, forking=True)
        if "r3-fork-links-at-head" in k.bugs:
            pv.anon_vma.vmas.insert(0, cv)
        else:
            pv.anon_vma.vmas.append(cv)
        child.vmas.append(cv)
        pairs.append((pv, cv))
    k.mms[child.pid] = child
    return child, pairs


def copy_page_range_step(k, pv: VMA, cv: VMA) -> None:
    cv.forking = False
    cv.mm.forking = any(v.forking for v in cv.mm.vmas)
    ptes = pv.pte
    if not pv.shared:
        flush_tlb(k, pv, slice(None), wrprotect=True)
        # COW: write-protect private present ptes, writable migration entries become readable
        ptes[(ptes & P.PRESENT) != 0] &= ~P.WRITE
        wm = ((ptes & P.PRESENT) == 0) & (P.swp_type(ptes) == P.SWP_MIGRATION_WRITE)
        if wm.any():
            ptes[wm] = P.mk_swp(P.SWP_MIGRATION_READ, P.pte_offset(ptes[wm]))
    cv.pte[:] = ptes
    present = ptes[(ptes & P.PRESENT) != 0] >> P.OFF_SHIFT
    for node, sel in split_nodes(present):
        fr = k.nodes[node]
        pf = present[sel] & P.PFN_MASK
        add_at(fr.mapcount, pf, 1)
        add_at(fr.refcount, pf, 1)
    swp = ptes[(ptes != 0) & ((ptes & P.PRESENT) == 0) & ~P.is_migration(ptes)]
    if len(swp):
        entry_dup(k, swp)
    if not pv.shared:
        cv.shadow = pv.shadow.copy()
    cv.mm.rss += int((ptes != 0).sum())


async def fork(k, parent: MM) -> int:
    owner = k.node_owner(parent.node)
    child, pairs = await call(owner, fork_mm_step, k, parent)
    for pv, cv in pairs:
        await call(owner, copy_page_range_step, k, pv, cv)
    return child.pid


async def exit_mm(k, mm: MM) -> None:
    await call(k.node_owner(mm.node), exit_step, k, mm)


async def mm_held(k, mm: MM, op):
    """``op`` (a syscall on mm's memory) between get_task_mm() and mmput(): an
    exit meanwhile leaves the teardown to it. The reference is taken when the
    operation starts, atomically with the lookup that found mm (a coroutine's
    code before its first await runs in the step that starts it)."""
    mm.users += 1
    try:
        out = await op
    except GeneratorExit:       # abandoned by its driver (a deadlock): the run is over
        raise
    except BaseException:
        await mmput(k, mm)
        raise
    await mmput(k, mm)
    return out


async def mmput(k, mm: MM) -> None:
    mm.users -= 1
    if not mm.users:
        await call(k.node_owner(mm.node), exit_mmap, k, mm)
