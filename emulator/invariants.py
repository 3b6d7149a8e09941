"""The invariant oracle: every invariant of KERNEL.md, checkable after any step.

check(k) recomputes, from the page tables alone, what every counter must be,
and compares. It raises InvariantViolation naming the invariant (by its
KERNEL.md number and a short name), where (node/frame, pid/page, slot or
entry) and the values seen. Transient references of operations in flight are
taken from k.pins; a migrator's from PG_isolated. When no operation is in
flight (k.inflight == 0) it also checks quiescence: nothing locked or
isolated, no migration entry, no migration-cache entry (invariant 8).
With TLBs in the same process (emulator.tlb, as the explorer runs them) it
also checks invariant 11, which KERNEL.md leaves to the hardware: every
cached pte is the pte (same page, no wider permission), and the kernel
knows it may be cached, so the next change of that pte flushes it.
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .frames import PG_buddy, PG_isolated, PG_locked, PG_lru, PG_swapcache, flag_names
from .swap import COUNT_MASK, HAS_CACHE


class InvariantViolation(AssertionError):
    def __init__(self, invariant: str, where: str, seen: dict):
        self.invariant, self.where, self.seen = invariant, where, seen
        vals = ", ".join(f"{k}={v}" for k, v in seen.items())
        super().__init__(f"invariant {invariant} violated at {where}: {vals}")


def _fail(inv: str, where: str, **seen) -> None:
    raise InvariantViolation(inv, where, seen)


def _has_duplicates(a: np.ndarray) -> bool:
    """len(np.unique(a)) != len(a), without np.unique's cost on the small arrays
    the explorer checks after every step."""
    n = len(a)
    if n < 2:
        return False
    if n <= 256:
        return len(set(a.tolist())) != n
    s = np.sort(a)
    return bool((s[1:] == s[:-1]).any())


def check(k) -> None:
    nr = len(k.nodes)
    sizes = [fr.nframes for fr in k.nodes]
    mapcount = [np.zeros(s, dtype=np.int64) for s in sizes]
    slots = k.swap.nslots + 1
    swap_ptes = np.zeros(slots, dtype=np.int64)
    mc_ptes = np.zeros(len(k.migcache.page), dtype=np.int64)

    for pid, mm in k.mms.items():
        rss = 0
        for vma in mm.vmas:
            ptes = vma.pte
            nz = ptes != 0
            rss += int(np.count_nonzero(nz))
            pres = (ptes & P.PRESENT) != 0
            g = ptes[pres] >> P.OFF_SHIFT
            if len(g):
                nd, pf = g >> P.NODE_SHIFT, g & P.PFN_MASK
                bad = (nd < 0) | (nd >= nr)
                if bad.any():
                    _fail("2 (mapcount)", f"pid {pid} page {vma.start + np.flatnonzero(pres)[bad][0]:#x}",
                          pte=P.describe(ptes[pres][bad][0]))
                n = int(nd[0])
                if (nd == n).all():         # the usual case: every page on one node
                    if (pf >= sizes[n]).any():
                        _fail("2 (mapcount)", f"pid {pid}", pte="pfn out of range")
                    mapcount[n] += np.bincount(pf, minlength=sizes[n])
                else:
                    for n in np.unique(nd).tolist():
                        s = nd == n
                        if (pf[s] >= sizes[n]).any():
                            _fail("2 (mapcount)", f"pid {pid}", pte="pfn out of range")
                        mapcount[n] += np.bincount(pf[s], minlength=sizes[n])
            swp = nz & ~pres
            e = ptes[swp]
            if not len(e):
                continue            # no swap-format entry in this vma
            t = P.swp_type(e)
            off = P.pte_offset(e)
            sw = t == P.SWP_SWAP
            if sw.any():
                if (off[sw] < 1).any() or (off[sw] > k.swap.nslots).any():
                    _fail("4 (swap_map)", f"pid {pid}", pte=P.describe(e[sw][0]), why="slot out of range")
                swap_ptes += np.bincount(off[sw], minlength=slots)
            mc = t == P.SWP_MIGCACHE
            if mc.any():
                live = k.migcache.live(off[mc])
                if not live.all():
                    i = np.flatnonzero(swp)[mc][~live][0]
                    _fail("5 (migration cache)", f"pid {pid} page {vma.start + i:#x}",
                          pte=P.describe(ptes[i]), why="names no live entry")
                mc_ptes += np.bincount(off[mc], minlength=len(mc_ptes))
            mig = (t == P.SWP_MIGRATION_READ) | (t == P.SWP_MIGRATION_WRITE)
            if mig.any():
                for i, ent in zip(np.flatnonzero(swp)[mig].tolist(), e[mig].tolist()):
                    n, f = ent >> (P.OFF_SHIFT + P.NODE_SHIFT), (ent >> P.OFF_SHIFT) & P.PFN_MASK
                    fl = int(k.nodes[n].flags[f]) if 0 <= n < nr and f < sizes[n] else PG_buddy
                    if not fl & PG_locked or fl & PG_buddy:
                        _fail("6 (migration entry)", f"pid {pid} page {vma.start + i:#x}",
                              pte=P.describe(ent), page_flags=flag_names(fl))
            known = sw | mc | mig
            if not known.all():
                _fail("2 (mapcount)", f"pid {pid}", pte=P.describe(e[~known][0]), why="unknown pte type")
        if rss != mm.rss:
            _fail("9 (pages conserved)", f"pid {pid}", ptes=rss, expected=mm.rss)

    _check_data(k)
    if k.tlb is not None:
        _check_tlbs(k)

    for n, fr in enumerate(k.nodes):
        free = (fr.flags & PG_buddy) != 0
        nfree = int(np.count_nonzero(free))
        if nfree != fr.nr_free:
            _fail("10 (no frame lost)", f"node {n}", buddy_frames=nfree, nr_free=fr.nr_free)
        stack = fr.free_stack[:fr.nr_free]
        if len(stack) != fr.nr_free or _has_duplicates(stack) or not free[stack].all():
            _fail("10 (no frame lost)", f"node {n}", why="free stack disagrees with free frames")
        mc = mapcount[n]
        bad = np.flatnonzero(mc != fr.mapcount)
        if len(bad):
            f = bad[0]
            _fail("2 (mapcount)", f"node {n} frame {f}", mapcount=int(fr.mapcount[f]), present_ptes=int(mc[f]),
                  flags=flag_names(int(fr.flags[f])))
        if (free & (mc > 0)).any():
            f = np.flatnonzero(free & (mc > 0))[0]
            _fail("10 (free and mapped)", f"node {n} frame {f}", present_ptes=int(mc[f]))
        if (fr.refcount[free] != 0).any() or (fr.flags[free] != PG_buddy).any():
            f = np.flatnonzero(free & ((fr.refcount != 0) | (fr.flags != PG_buddy)))[0]
            _fail("10 (free frame)", f"node {n} frame {f}", refcount=int(fr.refcount[f]), flags=flag_names(int(fr.flags[f])))
        cache = ((fr.flags & PG_swapcache) != 0).astype(np.int64)
        iso = ((fr.flags & PG_isolated) != 0).astype(np.int64)
        pins = np.zeros(fr.nframes, dtype=np.int64)
        for g, c in k.pins.items():
            if g >> P.NODE_SHIFT == n:
                pins[g & P.PFN_MASK] += c
        expect = mc + cache + iso + pins
        bad = np.flatnonzero((expect != fr.refcount) & ~free)
        if len(bad):
            f = bad[0]
            _fail("3 (refcount)", f"node {n} frame {f}", refcount=int(fr.refcount[f]), mapcount=int(mc[f]),
                  cache=int(cache[f]), isolated=int(iso[f]), pins=int(pins[f]), flags=flag_names(int(fr.flags[f])))
        live = ~free & (fr.refcount == 0)
        if live.any():
            f = np.flatnonzero(live)[0]
            _fail("10 (no frame lost)", f"node {n} frame {f}", refcount=0, flags=flag_names(int(fr.flags[f])))
        # 7: SwapCache exactly when the cache maps private to this page
        for f in np.flatnonzero(cache).tolist():
            e = int(fr.private[f])
            t, off = P.swp_type(e), P.pte_offset(e)
            g = P.gpfn(n, f)
            if t == P.SWP_SWAP and 1 <= off <= k.swap.nslots and k.swap.cache_page[off] == g:
                continue
            if t == P.SWP_MIGCACHE and k.migcache.live(np.array([off]))[0] and k.migcache.page[off] == g:
                continue
            _fail("7 (SwapCache)", f"node {n} frame {f}", private=P.describe(e), why="the cache does not map private to this page")

    # 4: swap_map
    sm = k.swap.swap_map
    cnt = sm & COUNT_MASK
    bad = np.flatnonzero(cnt != swap_ptes)
    if len(bad):
        s = bad[0]
        _fail("4 (swap_map)", f"slot {s}", count=int(cnt[s]), swap_ptes=int(swap_ptes[s]), has_cache=bool(sm[s] & HAS_CACHE))
    hc = (sm & HAS_CACHE) != 0
    if (hc != (k.swap.cache_page >= 0)).any():
        s = np.flatnonzero(hc != (k.swap.cache_page >= 0))[0]
        _fail("4 (swap_map)", f"slot {s}", has_cache=bool(hc[s]), cache_page=int(k.swap.cache_page[s]))
    for s in np.flatnonzero(k.swap.cache_page >= 0).tolist():
        g = int(k.swap.cache_page[s])
        fr = k.nodes[g >> P.NODE_SHIFT]
        f = g & P.PFN_MASK
        if not fr.flags[f] & PG_swapcache or fr.private[f] != P.mk_swp(P.SWP_SWAP, s):
            _fail("4 (swap_map)", f"slot {s}", why="HAS_CACHE but the page is not cached for it",
                  page=f"node {fr.node} frame {f}", private=P.describe(int(fr.private[f])))
    free_slots = np.zeros(slots, dtype=bool)
    sstack = k.swap.free_stack[:k.swap.nr_free]
    free_slots[sstack] = True
    if len(sstack) != k.swap.nr_free or _has_duplicates(sstack):
        _fail("10 (swap slot leak)", "swap", why="a slot is on the free stack twice")
    idle = (sm == 0)
    idle[0] = False
    if (idle[1:] != free_slots[1:]).any():
        s = 1 + np.flatnonzero(idle[1:] != free_slots[1:])[0]
        _fail("10 (swap slot leak)", f"slot {s}", swap_map=int(sm[s]), on_free_list=bool(free_slots[s]))

    # 5: migration cache counters
    mcache = k.migcache
    livemask = mcache.page >= 0
    bad = np.flatnonzero(livemask & (mcache.counter != mc_ptes))
    if len(bad):
        i = bad[0]
        _fail("5 (migration cache)", f"entry {i}", counter=int(mcache.counter[i]), migcache_ptes=int(mc_ptes[i]))
    for i in np.flatnonzero(livemask).tolist():
        g = int(mcache.page[i])
        fr = k.nodes[g >> P.NODE_SHIFT]
        f = g & P.PFN_MASK
        if mcache.counter[i] == 0 and not fr.flags[f] & PG_locked:
            _fail("5 (migration cache)", f"entry {i}", counter=0, why="entry at 0 survives with its page unlocked")
        if not fr.flags[f] & PG_swapcache or fr.private[f] != P.mk_swp(P.SWP_MIGCACHE, i):
            _fail("5 (migration cache)", f"entry {i}", why="the entry's page is not in the cache for it",
                  private=P.describe(int(fr.private[f])))

    if k.inflight == 0:
        _check_quiescent(k)


def _check_tlbs(k) -> None:
    sd = k.tlb
    for n, port in enumerate(sd.ports):
        if n in sd.dead or not hasattr(port, "procs"):     # on Ray the node actors hold them
            continue
        for pid, e in port.procs.items():
            cached = np.flatnonzero(e.ent != 0)
            if not len(cached):
                continue
            mm = k.mms.get(pid)
            reg = sd.procs.get(pid)
            for i in cached.tolist():
                vpn, ent = e.lo + i, int(e.ent[i])
                vma = mm.find_vma(vpn) if mm is not None else None
                pte = int(vma.pte[vpn - vma.start]) if vma is not None else 0
                if not (pte & P.PRESENT) or (pte >> P.OFF_SHIFT) != (ent >> P.OFF_SHIFT) or \
                        (ent & P.WRITE and not pte & P.WRITE):
                    _fail("11 (TLB)", f"node {n} pid {pid} page {vpn:#x}", cached=P.describe(ent),
                          pte=P.describe(pte))
                if reg is None or reg[0] != n or not reg[2][vpn - reg[1]]:
                    _fail("11 (TLB)", f"node {n} pid {pid} page {vpn:#x}", cached=P.describe(ent),
                          why="the kernel does not know it may be cached: no flush would reach it")


def _check_quiescent(k) -> None:
    for n, fr in enumerate(k.nodes):
        busy = np.flatnonzero((fr.flags & (PG_locked | PG_isolated)) != 0)
        if len(busy):
            f = busy[0]
            _fail("8 (migration completed)", f"node {n} frame {f}", flags=flag_names(int(fr.flags[f])),
                  why="locked or isolated with no operation in flight")
        inuse = (fr.flags & PG_buddy) == 0
        if (inuse & ((fr.flags & PG_lru) == 0)).any():
            f = np.flatnonzero(inuse & ((fr.flags & PG_lru) == 0))[0]
            _fail("8 (migration completed)", f"node {n} frame {f}", flags=flag_names(int(fr.flags[f])),
                  why="in use but off the LRU with no operation in flight")
    if k.pins:
        g, c = next(iter(k.pins.items()))
        _fail("3 (refcount)", f"node {g >> P.NODE_SHIFT} frame {g & P.PFN_MASK}", pins=c,
              why="a transient reference outlived its operation")
    if k.migcache.nr_entries:
        i = int(np.flatnonzero(k.migcache.page >= 0)[0])
        _fail("8 (migration completed)", f"migcache entry {i}", counter=int(k.migcache.counter[i]),
              why="migration-cache entry with no migration in flight")
    for pid, mm in k.mms.items():
        for vma in mm.vmas:
            m = P.is_migration(vma.pte) & (vma.pte != 0)
            if m.any():
                i = int(np.flatnonzero(m)[0])
                _fail("8 (migration completed)", f"pid {pid} page {vma.start + i:#x}",
                      pte=P.describe(int(vma.pte[i])), why="migration entry left behind")


def content_of_ptes(k, ptes: np.ndarray) -> np.ndarray:
    """The content record (token or checksum) a pte leads to; 0 for pte_none."""
    out = np.zeros(len(ptes), dtype=np.int64)
    pres = (ptes & P.PRESENT) != 0
    t = P.swp_type(ptes)
    off = P.pte_offset(ptes)
    gp = np.full(len(ptes), -1, dtype=np.int64)
    gp[pres] = off[pres]
    mig = ~pres & ((t == P.SWP_MIGRATION_READ) | (t == P.SWP_MIGRATION_WRITE))
    gp[mig] = off[mig]
    mc = ~pres & (t == P.SWP_MIGCACHE) & (ptes != 0)
    if mc.any():
        gp[mc] = k.migcache.page[off[mc]]
    sw = ~pres & (t == P.SWP_SWAP) & (ptes != 0)
    if sw.any():
        cp = k.swap.cache_page[off[sw]]
        g = gp[sw]
        g[cp >= 0] = cp[cp >= 0]
        gp[sw] = g
        ondisk = np.flatnonzero(sw)[cp < 0]
        out[ondisk] = k.store_content(off[ondisk])
    have = gp >= 0
    out[have] = k.content_of(gp[have])
    return out


def effective_ptes(vma, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """The ptes through which a process sees its pages: in a shared mapping a page
    not faulted in here yet is the one a sibling mapping holds (shmem's view),
    and so is one under migration that a sibling maps already."""
    ptes = vma.pte[lo:hi]
    if not vma.shared or ((ptes & P.PRESENT) != 0).all():
        return ptes
    ptes = ptes.copy()
    vpn = vma.start + lo + np.arange(len(ptes))
    for sib in vma.anon_vma.vmas:
        none = np.flatnonzero(ptes == 0)
        if not len(none):
            break
        if sib is vma or not sib.shared:
            continue
        inr = none[(vpn[none] >= sib.start) & (vpn[none] < sib.end)]
        ptes[inr] = sib.pte[vpn[inr] - sib.start]
    # a migration entry here while a sibling maps the page already: the migration
    # moved the shared object's page, and the remap has reached the sibling
    # first (a write through it is what this mapper will see once it is remapped)
    mig = np.flatnonzero(P.is_migration(ptes) & (ptes != 0))
    for sib in vma.anon_vma.vmas if len(mig) else ():
        if sib is vma or not sib.shared:
            continue
        inr = mig[(vpn[mig] >= sib.start) & (vpn[mig] < sib.end)]
        s = sib.pte[vpn[inr] - sib.start]
        pres = (s & P.PRESENT) != 0
        ptes[inr[pres]] = s[pres]
    return ptes


def _check_data(k) -> None:
    """Invariant 1: every page reads back what its writer last wrote."""
    for pid, mm in k.mms.items():
        for vma in mm.vmas:
            got = content_of_ptes(k, effective_ptes(vma))
            bad = np.flatnonzero(got != vma.shadow)
            if len(bad):
                i = bad[0]
                _fail("1 (data)", f"pid {pid} page {vma.start + i:#x}", pte=P.describe(int(vma.pte[i])),
                      content=int(got[i]), last_written=int(vma.shadow[i]))
