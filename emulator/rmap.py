"""Reverse mapping: from pages to the ptes that map them (mm/rmap.c).

Rules:
- A page's anon_vma and index say where to look: every vma on that anon_vma's
  list that covers the index may map it. The walk visits the list in order,
  one vma per step; between steps the list may change (fork appends, exit
  removes). The walk always continues after the last vma it visited, so a
  vma linked at the tail during the walk is visited and one linked at the
  head is not: the root of R3. A vma an exiting shared mapper handed its
  ptes to after the walk passed it (process.hand_over) is walked again at
  the end: the model's shared pages live in their mappers' ptes, which the
  kernel's page cache does not need, and a migration entry handed over
  behind a remap walk would stay after the migration.
- unmap turns each present pte mapping a page into that page's migration
  pte: an upstream migration entry (READ or WRITE, keeping the pte's write
  permission) or the page's swap / migration-cache entry (+1 to its count per
  pte, swap_duplicate). remap is the reverse, to a target page (the new page,
  or the old one when undoing), and swap_free()s each entry it consumes. A
  migration-cache id is freed as soon as the remap restores its last pte, and
  another migration may take it at once (lowest free id first) and write it
  into a sibling's pte at the same address: remap takes only ptes whose id
  still names its migration's page, as the RFC compares with the page's
  private, which the release clears.
- Every pte changed moves the page's mapcount and refcount with it, inside
  the same step: the pte lock and the page's counts never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import pte as P
from .frames import PG_swapcache, span
from .mm import VMA, AnonVMA
from .kernel import distinct, split_nodes as _split
from .sched import call
from .swap import add_at
from .tlb import flush_tlb


@dataclass
class Batch:
    """Pages of one node that one operation works on, with their rmap.
    Its arrays are never written in place, so a selection of every page is
    the batch itself."""
    node: int
    pfns: np.ndarray
    av: np.ndarray       # anon_vma id per page
    index: np.ndarray    # vpn per page

    @cached_property
    def gpfn(self) -> np.ndarray:
        return P.gpfn(self.node, self.pfns)

    @cached_property
    def at(self) -> slice | np.ndarray:
        """pfns as a slice where they are consecutive (frames.span), to index frame tables with."""
        return span(self.pfns)

    def take(self, sel) -> "Batch":
        """The pages a mask, a slice or ascending positions select."""
        if isinstance(sel, np.ndarray) and (sel.all() if sel.dtype == bool else len(sel) == len(self.pfns)):
            return self
        return Batch(self.node, self.pfns[sel], self.av[sel], self.index[sel])

    def __len__(self) -> int:
        return len(self.pfns)


def next_vma(av: AnonVMA, last: VMA | None, visited: dict[int, int]) -> VMA | None:
    """The vma after ``last`` on the list; at its end (or when ``last`` left
    the list), one the walk has not seen, or one handed ptes since the walk
    passed it (``visited``: id -> its ``handed`` count then)."""
    def due(v: VMA) -> bool:      # not seen, or handed ptes since
        return visited.get(id(v), -1) != v.handed

    if last is not None:
        for j, v in enumerate(av.vmas):
            if v is last:
                after = next((w for w in av.vmas[j + 1:] if due(w)), None)
                if after is not None:
                    return after
                # at the end: not one linked before last since (R3), but one handed ptes
                return next((w for w in av.vmas if id(w) in visited and due(w)), None)
    return next((v for v in av.vmas if due(v)), None)


def walk_step(k, av: AnonVMA, last: VMA | None, visited: dict[int, int], fn, args) -> VMA | None:
    """One step of an rmap walk: the next vma on the list, and fn applied to it."""
    vma = next_vma(av, last, visited)
    if vma is not None:
        visited[id(vma)] = vma.handed
        fn(k, vma, *args)
    return vma


async def rmap_walk(k, avs: dict[int, AnonVMA], pages: Batch, fn, *args) -> None:
    """Apply fn(k, vma, sub_batch, *args) to every vma that may map each page."""
    for av_id, av in avs.items():
        sel = np.flatnonzero(pages.av == av_id)
        if not len(sel):
            continue
        sub = pages.take(sel)
        if sub is pages:
            sel = None          # every page: positions are the identity
        last, visited = None, {}
        while True:
            last = await call("rmap", walk_step, k, av, last, visited, fn, (sub, sel) + args)
            if last is None:
                break


# Positions within a batch are index arrays, or None for every page in order:
# the usual batch (one anon_vma, one vma) then takes no gather at all.
def _pick(a: np.ndarray, ix: np.ndarray | None) -> np.ndarray:
    """a[ix]; a itself (read only, by the rules of Batch) for None."""
    return a if ix is None else a[ix]


def _in_vma(vma: VMA, b: Batch) -> tuple[np.ndarray | None, np.ndarray]:
    idx = b.index
    if len(idx) and idx.min() >= vma.start and idx.max() < vma.end:
        return None, idx - vma.start
    s = np.flatnonzero((idx >= vma.start) & (idx < vma.end))
    return s, idx[s] - vma.start


def _at(pos: np.ndarray | None, s: np.ndarray | None) -> np.ndarray | None:
    """pos[s], for positions that may be None."""
    if pos is None:
        return s
    return pos if s is None else pos[s]


def unmap_vma(k, vma: VMA, b: Batch, pos: np.ndarray | None, entries: np.ndarray | None) -> None:
    """try_to_unmap_one() for a batch: present ptes of b's pages -> migration ptes.
    entries (indexed by pos) holds each page's swap/migcache entry; None = upstream
    migration entries."""
    s, i = _in_vma(vma, b)
    cur = vma.pte[i]
    g = _pick(b.gpfn, s)
    hit = ((cur & P.PRESENT) != 0) & ((cur >> P.OFF_SHIFT) == g)
    if not hit.all():       # a whole batch mapped here is the usual case: no narrowing then
        if not hit.any():
            return
        s = np.flatnonzero(hit) if s is None else s[hit]
        i, cur, g = i[hit], cur[hit], g[hit]
    flush_tlb(k, vma, i)
    if entries is None:
        typ = np.where(cur & P.WRITE, P.SWP_MIGRATION_WRITE, P.SWP_MIGRATION_READ)
        vma.pte[i] = P.mk_swp(typ, g)
    else:
        e = _pick(entries, _at(pos, s))
        vma.pte[i] = e
        entry_dup(k, e)
    fr = k.nodes[b.node]
    pf = b.at if s is None else span(b.pfns[s])
    fr.mapcount[pf] -= 1
    fr.refcount[pf] -= 1


def remap_vma(k, vma: VMA, b: Batch, pos: np.ndarray | None, entries: np.ndarray | None,
              new_node: int, new_pfns: np.ndarray) -> None:
    """remove_migration_ptes() for a batch: migration ptes of b's pages -> present
    ptes to new_pfns (indexed by pos) on new_node; entries as for unmap_vma."""
    s, i = _in_vma(vma, b)
    cur = vma.pte[i]
    if entries is None:
        g = _pick(b.gpfn, s)
        hit = P.is_migration(cur) & ((cur >> P.OFF_SHIFT) == g)
        write = P.swp_type(cur) == P.SWP_MIGRATION_WRITE
    else:
        e = _pick(entries, _at(pos, s))
        hit = cur == e
        mc = P.swp_type(e) == P.SWP_MIGCACHE
        if mc.any():
            # a migration-cache id is freed as soon as its last pte is restored, and a
            # migration of another page may take it (lowest free id first) and put it in
            # a sibling's pte at the same address: only an id still naming this
            # migration's page (the old one, or the new one once the cache moved) is ours
            ids = P.pte_offset(e[mc])
            live = k.migcache.live(ids)
            at = k.migcache.page[np.where(live, ids, 0)]
            ours = live & ((at == _pick(b.gpfn, s)[mc]) |
                           (at == P.gpfn(new_node, _pick(new_pfns, _at(pos, s))[mc])))
            hit[np.flatnonzero(mc)[~ours]] = False
        write = vma.shared
    if not hit.all():
        if not hit.any():
            return
        s = np.flatnonzero(hit) if s is None else s[hit]
        i, cur = i[hit], cur[hit]
        if not np.isscalar(write):
            write = write[hit]
    npf = _pick(new_pfns, _at(pos, s))
    vma.pte[i] = P.mk_present(new_node, npf, write if np.isscalar(write) else write.astype(np.int64))
    fr = k.nodes[new_node]
    npf = span(npf)
    fr.mapcount[npf] += 1
    fr.refcount[npf] += 1
    if entries is not None:
        entry_free(k, cur)


# -- swap-format entries: swap_duplicate / swap_free for both pseudo devices --
def entry_dup(k, entries: np.ndarray) -> None:
    typ = P.swp_type(entries)
    off = P.pte_offset(entries)
    sw = typ == P.SWP_SWAP
    if sw.any():
        k.swap.duplicate(off[sw])
    if (~sw).any():
        add_at(k.migcache.counter, off[~sw], 1)


def entry_free(k, entries: np.ndarray) -> None:
    """swap_free(): for the migration cache, an entry whose counter reaches 0 is
    removed on the spot, with the page's cache state and the cache's reference."""
    typ = P.swp_type(entries)
    off = P.pte_offset(entries)
    sw = typ == P.SWP_SWAP
    if sw.any():
        k.swap.free_entries(off[sw])
    mc = off[typ == P.SWP_MIGCACHE]
    if len(mc):
        if not add_at(k.migcache.counter, mc, -1):
            mc = np.array(distinct(mc), dtype=np.int64)
        migcache_release(k, mc[k.migcache.counter[mc] == 0])


def migcache_release(k, ids: np.ndarray) -> None:
    """remove_from_migration_cache(): the entry goes, and the page leaves the cache."""
    if not len(ids):
        return
    gp = k.migcache.page[ids]
    for node, sel in _split(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        fr.flags[pf] &= ~PG_swapcache
        fr.private[pf] = 0
        fr.put(pf)
        k.stat.add(node, "migcache_remove", len(pf))
    k.migcache.remove(ids)

