"""Page faults and accesses (mm/memory.c): the path workloads drive.

An access (touch) is a loop, like a CPU's: try the access on every page whose
pte allows it; fault on the rest; try again. Faults:
- pte_none -> do_anonymous_page: allocate under the mempolicy and map
  writable, rechecking pte_none under the pte lock.
- a write to a read-only present pte -> do_wp_page: reuse the page when this
  pte is its only user, else copy it (COW after fork).
- an upstream migration entry -> migration_entry_wait: sleep until the page
  is unlocked (taking no reference: it would fail the migration's refcount
  check), then retry.
- a swap or migration-cache entry -> do_swap_page, with KERNEL.md's rechecks:
  the cache page must still hold private == entry after lock_page (R1b), and
  the pte must still be the entry under the pte lock (R1).
Out of memory after direct reclaim raises OSError(ENOMEM); pages faulted so
far stay faulted, as in the kernel.
"""
from __future__ import annotations

import errno

import numpy as np

from . import pte as P
from .frames import PG_dirty, PG_locked, PG_lru, PG_swapcache, PG_anon
from .kernel import split_nodes
from .mm import VMA
from .page_alloc import alloc_for
from .rmap import entry_dup, entry_free
from .sched import call, wait
from .swap_state import lookup_swap_cache, read_swap_cache_async, try_to_free_swap


# -- the access itself ----------------------------------------------------
def access_step(k, vma: VMA, idx: np.ndarray, write: bool, toks: np.ndarray | None) -> np.ndarray:
    """Access pages idx of vma; returns the ones whose pte does not allow it. A write
    stores toks: per page a token (token mode; the first word in bytes mode) or, in
    bytes mode, a whole row of page_size bytes (the page's new contents)."""
    ptes = vma.pte[idx]
    need = P.PRESENT | P.WRITE if write else P.PRESENT
    ok = (ptes & need) == need
    if not write and not vma.shared:
        ok |= ptes == 0          # a read of an untouched page maps the zero page: nothing to do
        ptes = np.where(ptes == 0, -1, ptes)
    if ok.all():
        good, gp, fault = idx, ptes >> P.OFF_SHIFT, idx[:0]
        tk = toks
    else:
        good, gp, fault = idx[ok], ptes[ok] >> P.OFF_SHIFT, idx[~ok]
        tk = toks[ok] if toks is not None else None
    if not write:
        gp = gp[gp >= 0]
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        fr.lru_tick[pf] = fr.tick
        if write:
            t = tk[sel]
            if k.payload == "token":
                fr.data[pf] = t
                vma.shadow[good[sel]] = t
            elif t.ndim == 2:
                fr.data[pf] = t
                vma.shadow[good[sel]] = k.checksum(t)
            else:
                w0 = fr.data.view(np.int64)[pf, 0]
                delta = (t.view(np.uint64) - w0.view(np.uint64)) * k.weights[0]
                vma.shadow[good[sel]] = (vma.shadow[good[sel]].view(np.uint64) + delta).view(np.int64)
                fr.data.view(np.int64)[pf, 0] = t
            fr.flags[pf] |= PG_dirty
        fr.tick += 1
    return fault


async def touch(k, vma: VMA, lo: int, hi: int, write: bool, toks: np.ndarray | None) -> None:
    owner = k.node_owner(vma.mm.node)
    idx = np.arange(lo, hi, dtype=np.int64)
    while True:
        fault = await call(owner, access_step, k, vma, idx, write, toks)
        if not len(fault):
            return
        if len(fault) != len(idx):
            keep = np.isin(idx, fault)
            toks = toks[keep] if toks is not None else None
        idx = fault
        await handle_mm_fault(k, vma, idx, write)


# -- the fault ------------------------------------------------------------
def read_ptes(k, vma: VMA, idx: np.ndarray) -> np.ndarray:
    """The pte read before taking the pte lock (orig_pte)."""
    k.stat.add(vma.mm.node, "pgfault", len(idx))
    return vma.pte[idx].copy()


async def handle_mm_fault(k, vma: VMA, idx: np.ndarray, write: bool) -> None:
    owner = k.node_owner(vma.mm.node)
    ptes = await call(owner, read_ptes, k, vma, idx)
    none = ptes == 0
    if none.any():
        await do_anonymous_page(k, vma, idx[none])
    present = (ptes & P.PRESENT) != 0
    if write and present.any():
        await do_wp_page(k, vma, idx[present])
    swp = ~none & ~present
    if swp.any():
        e = ptes[swp]
        mig = P.is_migration(e)
        if mig.any():
            await migration_entry_wait(k, e[mig])
        if (~mig).any():
            await do_swap_page(k, vma, idx[swp][~mig], e[~mig], write)


async def migration_entry_wait(k, entries: np.ndarray) -> None:
    gp = np.unique(P.pte_offset(entries))
    await wait(k.node_owner(int(gp[0] >> P.NODE_SHIFT)),
               lambda: not any_locked(k, gp), "migration_entry_wait")


def any_locked(k, gp: np.ndarray) -> bool:
    for node, sel in split_nodes(gp):
        if (k.nodes[node].flags[gp[sel] & P.PFN_MASK] & PG_locked).any():
            return True
    return False


def shared_lookup(k, vma: VMA, idx: np.ndarray, busy_out: list) -> np.ndarray:
    """A shared mapping's page may exist already in a sibling (shmem's page cache
    lookup): map the same page, or take the same swap entry. Returns the pages
    still to allocate; pages held by a migration in flight go to busy_out (their
    frames), for the fault to wait on and retry."""
    left = np.ones(len(idx), dtype=bool)
    vpn = vma.start + idx
    for sib in vma.anon_vma.vmas:
        if sib is vma or not sib.shared or not left.any():
            continue
        inr = left & (vpn >= sib.start) & (vpn < sib.end)
        if not inr.any():
            continue
        pos = np.flatnonzero(inr)
        e = sib.pte[vpn[pos] - sib.start]
        pos, e = pos[e != 0], e[e != 0]
        if not len(pos):
            continue
        left[pos] = False
        pres = (e & P.PRESENT) != 0
        gp = e[pres] >> P.OFF_SHIFT
        busy = ~pres & (P.is_migration(e) | (P.swp_type(e) == P.SWP_MIGCACHE))
        sw = ~pres & ~busy
        if sw.any():        # a swapped page whose cache page is under migration must wait too
            cp = k.swap.cache_page[P.pte_offset(e[sw])]
            lk = np.zeros(len(cp), dtype=bool)
            lk[cp >= 0] = [any_locked(k, np.array([g])) for g in cp[cp >= 0].tolist()]
            busy[np.flatnonzero(sw)[lk]] = True
            sw = ~pres & ~busy
        if busy.any():
            eb = e[busy]
            mig = P.is_migration(eb)
            g = np.where(mig, P.pte_offset(eb), -1)
            mc = P.swp_type(eb) == P.SWP_MIGCACHE
            g[mc] = k.migcache.page[P.pte_offset(eb[mc])]
            swb = ~mig & ~mc
            g[swb] = k.swap.cache_page[P.pte_offset(eb[swb])]
            busy_out.extend(g[g >= 0].tolist())
        for node, sel in split_nodes(gp):
            pf = gp[sel] & P.PFN_MASK
            k.nodes[node].mapcount[pf] += 1
            k.nodes[node].refcount[pf] += 1
        vma.pte[idx[pos[pres]]] = (gp << P.OFF_SHIFT) | P.PRESENT | P.WRITE
        if sw.any():
            entry_dup(k, e[sw])
            vma.pte[idx[pos[sw]]] = e[sw]
        vma.mm.rss += int(pres.sum() + sw.sum())
    return idx[left]


def map_anon_step(k, vma: VMA, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """do_anonymous_page(): allocate and map, under the pte lock. Returns the pages
    left unmapped for want of memory, and the frames of shared pages to wait for."""
    idx = idx[vma.pte[idx] == 0]        # recheck pte_none: another thread may have won
    busy: list[int] = []
    if vma.shared and len(idx):
        idx = shared_lookup(k, vma, idx, busy)
    busy_gp = np.array(busy, dtype=np.int64)
    if not len(idx):
        return idx, busy_gp
    mm = vma.mm
    g = alloc_for(k, mm, vma, vma.start + idx)
    got = g >= 0
    for node, sel in split_nodes(g[got]):
        fr = k.nodes[node]
        gg = g[got][sel]
        pf = gg & P.PFN_MASK
        fr.mapcount[pf] = 1
        fr.flags[pf] = PG_anon | PG_lru
        fr.anon_vma[pf] = vma.anon_vma.id
        fr.index[pf] = (vma.start + idx[got][sel]).astype(np.int32)
        fr.lru_tick[pf] = fr.tick
    vma.pte[idx[got]] = (g[got] << P.OFF_SHIFT) | (P.PRESENT | P.WRITE)
    mm.rss += int(got.sum())
    return idx[~got], busy_gp


async def do_anonymous_page(k, vma: VMA, idx: np.ndarray) -> None:
    from .reclaim import direct_reclaim, wakeup_kswapd
    owner = k.node_owner(vma.mm.node)
    left, busy = await call(owner, map_anon_step, k, vma, idx)
    if len(busy):
        # a sibling's page is under migration: wait for it, the access retries
        await wait(owner, lambda: not any_locked(k, busy), "shared page under migration")
    if len(left):
        await direct_reclaim(k, vma.mm, vma, len(left))
        left, _ = await call(owner, map_anon_step, k, vma, left)
        if len(left):
            raise OSError(errno.ENOMEM, f"out of memory: pid {vma.mm.pid} could not fault in {len(left)} pages")
    await wakeup_kswapd(k)


def wp_step(k, vma: VMA, idx: np.ndarray) -> np.ndarray:
    """do_wp_page() under the pte lock: reuse exclusive pages, copy shared ones.
    Returns pages still waiting for memory to copy into."""
    ptes = vma.pte[idx]
    live = (ptes & (P.PRESENT | P.WRITE)) == P.PRESENT   # recheck: still read-only present
    idx, ptes = idx[live], ptes[live]
    if not len(idx):
        return idx
    if vma.shared:
        vma.pte[idx] = ptes | P.WRITE
        return idx[:0]
    gp = ptes >> P.OFF_SHIFT
    reuse = np.zeros(len(idx), dtype=bool)
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        try_to_free_swap(k, node, pf[(fr.mapcount[pf] == 1) & ((fr.flags[pf] & PG_locked) == 0)])
        fl = fr.flags[pf]
        # exclusive: this pte holds the only reference (page_count() == 1)
        reuse[sel] = (fr.mapcount[pf] == 1) & (fr.refcount[pf] == 1) & ((fl & PG_swapcache) == 0)
    vma.pte[idx[reuse]] = ptes[reuse] | P.WRITE
    idx, gp = idx[~reuse], gp[~reuse]
    if not len(idx):
        return idx
    g = alloc_for(k, vma.mm, vma, vma.start + idx)
    got = g >= 0
    old, new, where = gp[got], g[got], idx[got]
    for node, sel in split_nodes(new):
        fr = k.nodes[node]
        pf = new[sel] & P.PFN_MASK
        fr.mapcount[pf] = 1
        fr.flags[pf] = PG_anon | PG_lru | PG_dirty
        fr.anon_vma[pf] = vma.anon_vma.id
        fr.index[pf] = (vma.start + where[sel]).astype(np.int32)
        osrc = old[sel]
        for onode, osel in split_nodes(osrc):
            src = k.nodes[onode]
            fr.data[pf[osel]] = src.data[osrc[osel] & P.PFN_MASK]
    vma.pte[where] = (new << P.OFF_SHIFT) | (P.PRESENT | P.WRITE)
    for node, sel in split_nodes(old):
        fr = k.nodes[node]
        pf = old[sel] & P.PFN_MASK
        np.subtract.at(fr.mapcount, pf, 1)
        fr.put(pf)
    return idx[~got]


async def do_wp_page(k, vma: VMA, idx: np.ndarray) -> None:
    from .reclaim import direct_reclaim
    owner = k.node_owner(vma.mm.node)
    left = await call(owner, wp_step, k, vma, idx)
    if len(left):
        await direct_reclaim(k, vma.mm, vma, len(left))
        left = await call(owner, wp_step, k, vma, left)
        if len(left):
            raise OSError(errno.ENOMEM, f"out of memory: pid {vma.mm.pid} could not copy {len(left)} pages on write")


# -- do_swap_page ----------------------------------------------------------
def lock_step(k, gp: np.ndarray) -> np.ndarray:
    """trylock_page() on each page; returns the mask of pages now locked by us."""
    got = np.zeros(len(gp), dtype=bool)
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        free = (fr.flags[pf] & PG_locked) == 0
        fr.flags[pf[free]] |= PG_locked
        got[np.arange(len(gp))[sel][free]] = True
    return got


def unlock_pages(k, gp: np.ndarray) -> None:
    for node, sel in split_nodes(gp):
        k.nodes[node].flags[gp[sel] & P.PFN_MASK] &= ~PG_locked


async def lock_pages(k, gp: np.ndarray) -> None:
    """lock_page() on every page: sleeps while another holds the lock."""
    left = gp
    while len(left):
        got = await call(k.node_owner(int(left[0] >> P.NODE_SHIFT)), lock_step, k, left)
        left = left[~got]
        if len(left):
            await wait(k.node_owner(int(left[0] >> P.NODE_SHIFT)),
                       lambda left=left: not any_locked(k, left), "lock_page")


def recheck_cache_step(k, gp: np.ndarray, entries: np.ndarray) -> np.ndarray:
    """After lock_page: is the page still in the cache for this entry? (R1b)
    Pages that are not are unlocked and released here."""
    ok = np.ones(len(gp), dtype=bool)
    if "r1b-no-private-recheck" not in k.bugs:
        for node, sel in split_nodes(gp):
            fr = k.nodes[node]
            pf = gp[sel] & P.PFN_MASK
            ok[sel] = ((fr.flags[pf] & PG_swapcache) != 0) & (fr.private[pf] == entries[sel])
    bad = gp[~ok]
    unlock_pages(k, bad)
    k.unpin(bad)
    return ok


def map_swap_step(k, vma: VMA, idx: np.ndarray, entries: np.ndarray, gp: np.ndarray,
                  write: bool) -> None:
    """Under the pte lock: recheck pte_same (R1), map, swap_free(entry), unlock."""
    if "r1-no-pte-recheck" in k.bugs:
        same = np.ones(len(idx), dtype=bool)
    else:
        same = vma.pte[idx] == entries
    back = gp[~same]
    unlock_pages(k, back)
    k.unpin(back)
    idx, entries, gp = idx[same], entries[same], gp[same]
    if not len(idx):
        return
    k.unpin(gp, put=False)                     # the lookup reference becomes the pte's
    for node, sel in split_nodes(gp):
        np.add.at(k.nodes[node].mapcount, gp[sel] & P.PFN_MASK, 1)
    vma.pte[idx] = (gp << P.OFF_SHIFT) | P.PRESENT | (P.WRITE if vma.shared else 0)
    entry_free(k, entries)
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        # swap full, or a write to a page nobody else maps: the slot has done its job
        if write or k.swap.full():
            freed = try_to_free_swap(k, node, pf[fr.mapcount[pf] == 1])
            if write and len(freed):
                # map it writable only if this pte holds the only reference (else COW later)
                mine = np.isin(pf, freed) & (fr.refcount[pf] == 1)
                vma.pte[idx[sel][mine]] |= P.WRITE
                fr.flags[pf[mine]] |= PG_dirty
        fr.flags[pf] &= ~PG_locked


def release_step(k, gp: np.ndarray) -> None:
    """Drop the lookup references of a fault that gives up."""
    k.unpin(gp)


def pte_same_step(k, vma: VMA, idx: np.ndarray, entries: np.ndarray) -> np.ndarray:
    return vma.pte[idx] == entries


async def do_swap_page(k, vma: VMA, idx: np.ndarray, entries: np.ndarray, write: bool) -> None:
    from .reclaim import direct_reclaim
    owner = k.node_owner(vma.mm.node)
    gp = await call("coord", lookup_swap_cache, k, entries)
    miss = gp < 0
    if miss.any():
        got, nomem = await call("coord", read_swap_cache_async, k, vma.mm, vma,
                                vma.start + idx[miss], entries[miss])
        if nomem.any():
            await direct_reclaim(k, vma.mm, vma, int(nomem.sum()))
            sub = np.flatnonzero(miss)[nomem]
            got2, nomem2 = await call("coord", read_swap_cache_async, k, vma.mm, vma,
                                      vma.start + idx[sub], entries[sub])
            got[nomem] = got2
        gp[miss] = got
        still = gp < 0
        if still.any():
            # nothing to map: if the pte is still this entry, the fault fails (OOM);
            # otherwise someone else resolved it, and the access retries
            same = await call(owner, pte_same_step, k, vma, idx[still], entries[still])
            if same.any():
                await call(owner, release_step, k, gp[gp >= 0])
                raise OSError(errno.ENOMEM, f"out of memory: pid {vma.mm.pid} could not swap in {int(same.sum())} pages")
        idx, entries, gp = idx[~still], entries[~still], gp[~still]
        if not len(idx):
            return
    await lock_pages(k, gp)
    ok = await call(owner, recheck_cache_step, k, gp, entries)
    if not ok.all():
        idx, entries, gp = idx[ok], entries[ok], gp[ok]
    if len(idx):
        await call(owner, map_swap_step, k, vma, idx, entries, gp, write)


# -- get_user_pages: a device writing into a pinned page ---------------------
def gup_step(k, vma: VMA, i: int) -> int:
    """pin_user_pages(FOLL_WRITE): pin the page behind a writable present pte, or -1."""
    pte = int(vma.pte[i])
    if (pte & (P.PRESENT | P.WRITE)) != (P.PRESENT | P.WRITE):
        return -1
    g = pte >> P.OFF_SHIFT
    k.pin(np.array([g]))
    return g


def dma_write_step(k, vma: VMA, i: int, g: int, token: int) -> None:
    """The device's write lands in the pinned page, whatever maps it now."""
    fr = k.nodes[g >> P.NODE_SHIFT]
    pf = g & P.PFN_MASK
    t = np.array([token], dtype=np.int64)
    if k.payload == "token":
        fr.data[pf] = token
        vma.shadow[i] = token
    else:
        old = fr.data.view(np.int64)[pf, 0:1]
        delta = (t.view(np.uint64) - old.view(np.uint64)) * k.weights[0]
        vma.shadow[i:i + 1] = (vma.shadow[i:i + 1].view(np.uint64) + delta).view(np.int64)
        fr.data.view(np.int64)[pf, 0] = token
    fr.flags[pf] |= PG_dirty


def unpin_step(k, g: int) -> None:
    k.unpin(np.array([g]))


async def gup_write(k, vma: VMA, i: int, token: int) -> None:
    """A direct-I/O style write: pin, let the device write later, unpin. The
    migration's refcount freeze is what keeps such a page from moving meanwhile."""
    owner = k.node_owner(vma.mm.node)
    while True:
        g = await call(owner, gup_step, k, vma, i)
        if g >= 0:
            break
        await handle_mm_fault(k, vma, np.array([i], dtype=np.int64), True)
    await call(owner, dma_write_step, k, vma, i, g, token)
    await call(owner, unpin_step, k, g)
