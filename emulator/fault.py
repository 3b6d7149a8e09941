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
  the pte must still be the entry under the pte lock (R1). A batch locks
  its pages in ascending order and sleeps only on the first it cannot take
  (lock_pages): the kernel's fault locks one page, and two batches that each
  held a page the other sleeps on would never wake (a parent and its child
  faulting the same swapped pages: ABBA).
A batch stands for a CPU touching its pages one at a time, each access right
after its own fault (the kernel's do_anonymous_page, do_swap_page and
do_wp_page see one page each). So a batch must never need more memory at once
than that sequence would, and its own reclaim must not swap out pages it has
faulted but not yet accessed. When memory runs short:
- a fault that got memory for some of its pages but not all (or while another
  part of the same fault did) maps those and leaves the rest, not reached yet,
  for the access to retry after it has accessed the ones mapped; only a fault
  that got nothing reclaims (direct reclaim), and only one that gets nothing
  even then fails: OSError(ENOMEM), pages faulted so far staying faulted, as
  in the kernel;
- the access then takes on fewer pages per fault (halving down to one, doubling
  back while memory lasts), so that what one page needs between its fault and
  its access (a frame to swap it in, then one to copy it on write) is not
  taken first by the pages after it;
- do_wp_page holds the page it copies across direct reclaim (folio_get before
  wp_page_copy), so that reclaim cannot free the very page to copy, and fails
  when reclaim freed nothing (the allocation fails: VM_FAULT_OOM);
- kswapd, which runs beside the task, is woken after the access.
A page left for the retry counts in pgfault once, when first attempted.
"""
from __future__ import annotations

import errno

import numpy as np

from . import pte as P
from .frames import PG_dirty, PG_locked, PG_lru, PG_swapcache, PG_anon, span
from .kernel import split_nodes
from .mm import VMA
from .page_alloc import alloc_for, policy_of
from .rmap import entry_dup, entry_free
from .sched import call, wait
from .swap import add_at
from .swap_state import lookup_swap_cache, read_swap_cache_async, try_to_free_swap
from .tlb import flush_tlb


def _isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.isin(a, b); on small batches one broadcast compare instead of its sort."""
    if len(a) * len(b) <= 256:
        return (a[:, None] == b[None, :]).any(axis=1)
    return np.isin(a, b)


# -- the access itself ----------------------------------------------------
def reads_zero_page(ptes: np.ndarray, write: bool, shared: bool) -> np.ndarray:
    """The pages an access reads as the zero page: untouched (pte none) pages
    of a private mapping, read. Nothing to fault, nothing to map (a shared
    mapping's page may exist in a sibling: that is a fault)."""
    if write or shared:
        return np.zeros(len(ptes), dtype=bool)
    return ptes == 0


def access_step(k, vma: VMA, idx: np.ndarray, write: bool, toks: np.ndarray | None) -> np.ndarray:
    """Access pages idx of vma; returns the ones whose pte does not allow it. A write
    stores toks: per page a token (token mode; the first word in bytes mode) or, in
    bytes mode, a whole row of page_size bytes (the page's new contents)."""
    ptes = vma.pte[idx]
    need = P.PRESENT | P.WRITE if write else P.PRESENT
    ok = (ptes & need) == need
    if not write and not vma.shared:
        zero = reads_zero_page(ptes, write, vma.shared)
        ok |= zero
        ptes = np.where(zero, -1, ptes)
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
            store_pages(k, vma, fr, pf, good[sel], tk[sel])
            fr.flags[pf] |= PG_dirty
        fr.tick += 1
    return fault


def store_pages(k, vma: VMA, fr, pf: np.ndarray, idx: np.ndarray, t: np.ndarray) -> None:
    """A write's stores into frames pf of fr, mapped at pages idx of vma, and
    the writer's record of them (vma.shadow)."""
    if k.payload == "token":
        fr.data[pf] = t
        vma.shadow[idx] = t
    elif t.ndim == 2:
        fr.data[pf] = t
        vma.shadow[idx] = k.checksum(t)
    else:
        w0 = fr.data.view(np.int64)[pf, 0]
        delta = (t.view(np.uint64) - w0.view(np.uint64)) * k.weights[0]
        vma.shadow[idx] = (vma.shadow[idx].view(np.uint64) + delta).view(np.int64)
        fr.data.view(np.int64)[pf, 0] = t


async def touch(k, vma: VMA, lo: int, hi: int, write: bool, toks: np.ndarray | None) -> None:
    from .reclaim import wakeup_kswapd
    owner = k.node_owner(vma.mm.node)
    idx = np.arange(lo, hi, dtype=np.int64)     # pages not accessed yet, in order
    w = len(idx)                                # most pages one fault takes on
    span = w                                    # pages the next access tries
    counted = None                              # left by a short fault: fault counted
    kswapd = False
    while len(idx):
        cur = idx[:span]
        fault = await call(owner, access_step, k, vma, cur, write,
                           toks[:span] if toks is not None else None)
        if kswapd:
            # kswapd runs beside the task, which has accessed what it faulted by now
            await wakeup_kswapd(k)
            kswapd = False
        if len(fault) != len(cur):
            if len(fault):
                keep = np.ones(len(idx), dtype=bool)
                keep[:len(cur)] = _isin(cur, fault)
            else:
                keep = slice(len(cur), None)
            idx = idx[keep]
            toks = toks[keep] if toks is not None else None
        if not len(fault):
            w = span = 2 * w
            continue
        fault = fault[:w]           # the first pages not accessed: idx[:len(fault)]
        left, short, kswapd = await handle_mm_fault(
            k, vma, fault, write, counted[fault - lo] if counted is not None else None)
        if counted is not None:
            counted[fault - lo] = False
        if len(left):
            if counted is None:
                counted = np.zeros(hi - lo, dtype=bool)
            counted[left - lo] = True
        # memory ran short: fewer pages at once, as the kernel's one by one, so that
        # what a page needs between its fault and its access (a frame to swap it in,
        # another to copy it on write) is not taken by the pages after it
        w = max(1, w // 2) if short else 2 * w
        span = max(w, len(fault))   # the next access covers every page just faulted


# the node of the zero page, which a read of an untouched private page finds:
# empty_zero_page is in the kernel image, which x86-64 loads low, on node 0
ZERO_PAGE_NODE = 0


def page_node_step(k, vma: VMA, i: int) -> int | None:
    """follow_page() for a read of page i of vma, under the pte lock: the node
    of the page a present pte maps, the zero page's for an untouched page of a
    private mapping; None: not there for a read (get_user_pages faults)."""
    if vma.mm.find_vma(vma.start + i) is not vma:
        raise OSError(errno.EFAULT, f"pid {vma.mm.pid}: page {vma.start + i:#x} was unmapped")
    pte = int(vma.pte[i])
    if pte & P.PRESENT:
        return (pte >> P.OFF_SHIFT) >> P.NODE_SHIFT
    if pte == 0 and not vma.shared:
        return ZERO_PAGE_NODE
    return None


async def lookup_node(k, vma: VMA, i: int) -> int:
    """lookup_node() of get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR), Linux 6.1:
    get_user_pages_fast(addr, 1, 0) (no FOLL_WRITE: a read), then
    page_to_nid(). A page not there for a read is faulted in as a read fault
    (touch(): do_swap_page, migration_entry_wait, a shared page allocated by
    the object's policy at its offset, or the sibling's page mapped), each
    counted in pgfault, then looked at again, as __get_user_pages() loops on
    follow_page_mask() and faultin_page(). An untouched private page is the
    zero page's (6.1 maps it and counts a pgfault: the model maps no zero
    page and counts none, as any read of such a page here; README, Status)."""
    owner = k.node_owner(vma.mm.node)
    while True:
        node = await call(owner, page_node_step, k, vma, i)
        if node is not None:
            return node
        await touch(k, vma, i, i + 1, False, None)


# -- the fault ------------------------------------------------------------
def read_ptes(k, vma: VMA, idx: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """The pte read before taking the pte lock (orig_pte). counted (a mask over idx):
    pages a short fault left, whose fault is counted already."""
    n = len(idx) - (int(counted.sum()) if counted is not None else 0)
    k.stat.add(vma.mm.node, "pgfault", n)
    return vma.pte[idx].copy()


async def handle_mm_fault(k, vma: VMA, idx: np.ndarray, write: bool,
                          counted: np.ndarray | None = None) -> tuple[np.ndarray, bool, bool]:
    """Fault pages idx in. Returns the pages left, for want of memory, for the access
    to retry once the pages faulted now have been accessed (see the module's rules),
    whether memory ran short (pages left, or direct reclaim), and whether new pages
    were allocated (do_anonymous_page), after which the caller wakes kswapd once it
    has accessed them. counted: as read_ptes."""
    owner = k.node_owner(vma.mm.node)
    ptes = await call(owner, read_ptes, k, vma, idx, counted)
    left = []
    short = False
    progress = False        # some page of this fault got memory: the others may wait
    none = ptes == 0
    if none.any():
        sub = idx[none]
        rest, reclaimed = await do_anonymous_page(k, vma, sub, progress)
        progress |= len(rest) < len(sub)
        short |= reclaimed or len(rest) > 0
        left.append(rest)
    present = (ptes & P.PRESENT) != 0
    if write and present.any():
        sub = idx[present]
        rest, reclaimed = await do_wp_page(k, vma, sub, progress)
        progress |= len(rest) < len(sub)
        short |= reclaimed or len(rest) > 0
        left.append(rest)
    swp = ~none & ~present
    if swp.any():
        e = ptes[swp]
        mig = P.is_migration(e)
        if mig.any():
            await migration_entry_wait(k, e[mig])
        if (~mig).any():
            rest, reclaimed = await do_swap_page(k, vma, idx[swp][~mig], e[~mig], write, progress)
            short |= reclaimed or len(rest) > 0
            left.append(rest)
    left = np.concatenate(left) if len(left) > 1 else left[0] if left else idx[:0]
    return left, short, bool(none.any())


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


async def do_anonymous_page(k, vma: VMA, idx: np.ndarray, defer: bool = False) -> tuple[np.ndarray, bool]:
    """Returns the pages left for the access to retry (module rules): those it had no
    memory for while it mapped others, or while `defer` (another part of the fault
    made progress); and whether it reclaimed. Only a fault that mapped nothing
    reclaims."""
    from .reclaim import direct_reclaim
    owner = k.node_owner(vma.mm.node)
    left, busy = await call(owner, map_anon_step, k, vma, idx)
    if len(busy):
        # a sibling's page is under migration: wait for it, the access retries
        await wait(owner, lambda: not any_locked(k, busy), "shared page under migration")
    if not len(left) or defer or len(left) < len(idx):
        return left, False
    await direct_reclaim(k, vma.mm, policy_of(vma.mm, vma, vma.start + int(left[0])), len(left))
    n = len(left)
    left, _ = await call(owner, map_anon_step, k, vma, left)
    if len(left) == n:
        raise OSError(errno.ENOMEM, f"out of memory: pid {vma.mm.pid} could not fault in {len(left)} pages")
    return left, True


def wp_step(k, vma: VMA, idx: np.ndarray, hold: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """do_wp_page() under the pte lock: reuse exclusive pages, copy shared ones.
    Returns the pages still waiting for memory to copy into, the pages referenced
    for them (with hold, when it could do nothing for want of memory: do_wp_page's
    folio_get(), so that the page to copy stays while the allocation of its copy
    reclaims), and how many pages it made writable."""
    none = idx[:0]
    ptes = vma.pte[idx]
    live = (ptes & (P.PRESENT | P.WRITE)) == P.PRESENT   # recheck: still read-only present
    idx, ptes = idx[live], ptes[live]
    if not len(idx):
        return idx, none, 0
    if vma.shared:
        vma.pte[idx] = ptes | P.WRITE
        return none, none, len(idx)
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
    nreuse = int(reuse.sum())
    idx, gp = idx[~reuse], gp[~reuse]
    if not len(idx):
        return idx, none, nreuse
    g = alloc_for(k, vma.mm, vma, vma.start + idx)
    got = g >= 0
    if hold and not nreuse and not got.any():
        k.pin(gp)
        return idx, gp, 0
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
    flush_tlb(k, vma, where)
    vma.pte[where] = (new << P.OFF_SHIFT) | (P.PRESENT | P.WRITE)
    for node, sel in split_nodes(old):
        fr = k.nodes[node]
        pf = old[sel] & P.PFN_MASK
        add_at(fr.mapcount, pf, -1)
        fr.put(pf)
    return idx[~got], none, nreuse + int(got.sum())


def wp_retry_step(k, vma: VMA, idx: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """After direct reclaim: drop the references wp_step held, and try again."""
    k.unpin(held)
    return wp_step(k, vma, idx)


async def do_wp_page(k, vma: VMA, idx: np.ndarray, defer: bool = False) -> tuple[np.ndarray, bool]:
    """Returns what do_anonymous_page returns, and the same way. A fault
    that could copy nothing holds its pages across direct reclaim (else reclaim could
    free the very page to copy, and the fault swap it in again: a livelock), and
    fails when even then it copies nothing, either for want of memory or because
    reclaim freed nothing (wp_page_copy's allocation fails: VM_FAULT_OOM, whether or
    not the pte changed meanwhile)."""
    from .reclaim import direct_reclaim
    owner = k.node_owner(vma.mm.node)
    left, held, _ = await call(owner, wp_step, k, vma, idx, not defer)
    if not len(held):
        return left, False
    freed = await direct_reclaim(k, vma.mm, policy_of(vma.mm, vma, vma.start + int(left[0]) if len(left) else None),
                                 len(left))
    left, _, done = await call(owner, wp_retry_step, k, vma, left, held)
    if not done and (len(left) or not freed):
        raise OSError(errno.ENOMEM, f"out of memory: pid {vma.mm.pid} could not copy "
                      f"{max(len(left), 1)} pages on write")
    return left, True


# -- do_swap_page ----------------------------------------------------------
def lock_step(k, gp: np.ndarray) -> np.ndarray:
    """trylock_page() on each page; returns the mask of pages now locked by us."""
    got = np.zeros(len(gp), dtype=bool)
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        at = span(pf)
        free = (fr.flags[at] & PG_locked) == 0
        if free.all():          # the usual batch: no one else holds any
            fr.flags[at] |= PG_locked
            got[sel] = True
            continue
        fr.flags[pf[free]] |= PG_locked
        got[np.arange(len(gp))[sel][free]] = True
    return got


def unlock_pages(k, gp: np.ndarray) -> None:
    for node, sel in split_nodes(gp):
        k.nodes[node].flags[gp[sel] & P.PFN_MASK] &= ~PG_locked


def lock_run_step(k, gp: np.ndarray) -> int:
    """trylock_page() on ascending pages up to the first one another holds:
    how many it locked (that leading run)."""
    busy = np.zeros(len(gp), dtype=bool)
    for node, sel in split_nodes(gp):
        busy[sel] = (k.nodes[node].flags[gp[sel] & P.PFN_MASK] & PG_locked) != 0
    n = int(np.argmax(busy)) if busy.any() else len(gp)
    for node, sel in split_nodes(gp[:n]):
        k.nodes[node].flags[gp[:n][sel] & P.PFN_MASK] |= PG_locked
    return n


async def lock_pages(k, gp: np.ndarray) -> None:
    """lock_page() on every page (distinct): in ascending order, sleeping on the
    first page another holds while holding only pages below it, so that no two
    batches ever wait for each other (see the rules)."""
    if "unordered-page-locks" in k.bugs:
        left = gp
        while len(left):
            left = left[~await call(k.node_owner(int(left[0] >> P.NODE_SHIFT)), lock_step, k, left)]
            if len(left):
                await wait(k.node_owner(int(left[0] >> P.NODE_SHIFT)),
                           lambda left=left: not any_locked(k, left), "lock_page")
        return
    left = np.sort(gp)
    while len(left):
        left = left[await call(k.node_owner(int(left[0] >> P.NODE_SHIFT)), lock_run_step, k, left):]
        if len(left):
            await wait(k.node_owner(int(left[0] >> P.NODE_SHIFT)),
                       lambda first=left[:1]: not any_locked(k, first), "lock_page")


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
        add_at(k.nodes[node].mapcount, gp[sel] & P.PFN_MASK, 1)
    vma.pte[idx] = (gp << P.OFF_SHIFT) | P.PRESENT | (P.WRITE if vma.shared else 0)
    entry_free(k, entries)
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        # should_try_to_free_swap(): swap full (vm_swap_full), or a write to a page
        # nobody else maps; try_to_free_swap frees only a slot no swap pte names any more
        full = k.swap.full()
        if write or full:
            freed = try_to_free_swap(k, node, pf if full else pf[fr.mapcount[pf] == 1])
            if write and len(freed):
                # map it writable only if this pte holds the only reference (else COW later)
                mine = _isin(pf, freed) & (fr.refcount[pf] == 1)
                vma.pte[idx[sel][mine]] |= P.WRITE
                fr.flags[pf[mine]] |= PG_dirty
        fr.flags[pf] &= ~PG_locked


def release_step(k, gp: np.ndarray) -> None:
    """Drop the lookup references of a fault that gives up."""
    k.unpin(gp)


def pte_same_step(k, vma: VMA, idx: np.ndarray, entries: np.ndarray) -> np.ndarray:
    return vma.pte[idx] == entries


async def do_swap_page(k, vma: VMA, idx: np.ndarray, entries: np.ndarray, write: bool,
                       defer: bool = False) -> tuple[np.ndarray, bool]:
    """Returns what do_anonymous_page returns, and the same way: a cache hit or a
    page read in is progress; only a fault with neither reclaims."""
    from .reclaim import direct_reclaim
    owner = k.node_owner(vma.mm.node)
    gp = await call("coord", lookup_swap_cache, k, entries)
    miss = gp < 0
    left = idx[:0]
    reclaimed = False
    if miss.any():
        sub = np.flatnonzero(miss)
        got, nomem = await call("coord", read_swap_cache_async, k, vma.mm, vma,
                                vma.start + idx[sub], entries[sub])
        gp[sub] = got
        if nomem.any() and not defer and not (gp >= 0).any():
            reclaimed = True
            first = vma.start + int(idx[sub[nomem][0]])      # the policy of the first page short
            await direct_reclaim(k, vma.mm, policy_of(vma.mm, vma, first), int(nomem.sum()))
            s2 = sub[nomem]
            got2, nomem2 = await call("coord", read_swap_cache_async, k, vma.mm, vma,
                                      vma.start + idx[s2], entries[s2])
            gp[s2] = got2
            nomem[nomem] = nomem2
        if nomem.any() and (defer or (gp >= 0).any()):
            # progress: the rest waits for the access to retry it
            wait_more = np.zeros(len(idx), dtype=bool)
            wait_more[sub[nomem]] = True
            left = idx[wait_more]
            idx, entries, gp = idx[~wait_more], entries[~wait_more], gp[~wait_more]
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
            return left, reclaimed
    await lock_pages(k, gp)
    ok = await call(owner, recheck_cache_step, k, gp, entries)
    if not ok.all():
        idx, entries, gp = idx[ok], entries[ok], gp[ok]
    if len(idx):
        await call(owner, map_swap_step, k, vma, idx, entries, gp, write)
    return left, reclaimed


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
    from .reclaim import wakeup_kswapd
    owner = k.node_owner(vma.mm.node)
    kswapd = False
    while True:
        g = await call(owner, gup_step, k, vma, i)
        if g >= 0:
            break
        kswapd |= (await handle_mm_fault(k, vma, np.array([i], dtype=np.int64), True))[2]
    if kswapd:
        await wakeup_kswapd(k)
    await call(owner, dma_write_step, k, vma, i, g, token)
    await call(owner, unpin_step, k, g)
