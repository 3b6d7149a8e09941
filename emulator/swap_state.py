"""The swap cache and the migration cache as a page sees them (mm/swap_state.c).

Rules:
- A page enters a cache with PG_swapcache, private = its entry and one page
  reference held by the cache; the cache index (swap: cache_page[slot] with
  HAS_CACHE; migration cache: the idr entry) points back at it. Leaving
  undoes all four together. Invariants 4, 5 and 7 are these rules.
- lookup takes a transient reference on a hit (the fault's reference).
- read_swap_cache_async reads a slot that is still in use and not cached into
  a new page (pswpin); for do_swap_page that is a major fault (pgmajfault),
  for swapoff's unuse walk not. Migration-cache entries are never read from
  anywhere: a miss is a miss.
- pageout writes a dirty swap-cache page to its slot (pswpout).
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .frames import PG_anon, PG_dirty, PG_lru, PG_swapcache, span
from .kernel import split_nodes
from .page_alloc import alloc_for
from .rmap import Batch
from .swap import HAS_CACHE


def add_to_swap(k, b: Batch) -> np.ndarray:
    """Give each page a swap slot and put it in the swap cache; entry per page, 0 if none."""
    slots = k.swap.get_slots(len(b))
    out = np.zeros(len(b), dtype=np.int64)
    n = len(slots)
    if n:
        fr = k.nodes[b.node]
        pf = b.pfns[:n]
        at = b.at if n == len(b) else span(pf)
        e = P.mk_swp(P.SWP_SWAP, slots)
        fr.flags[at] |= PG_swapcache | PG_dirty
        fr.private[at] = e
        fr.refcount[at] += 1
        k.swap.cache_page[slots] = P.gpfn(b.node, pf)
        out[:n] = e
    return out


def add_to_migcache(k, b: Batch) -> np.ndarray:
    """add_to_migration_cache(): an idr id per page, counter 0, the cache's reference."""
    ids = k.migcache.alloc_ids(len(b))
    k.migcache.insert(ids, b.gpfn)
    fr = k.nodes[b.node]
    e = P.mk_swp(P.SWP_MIGCACHE, ids)
    at = b.at
    fr.flags[at] |= PG_swapcache
    fr.private[at] = e
    fr.refcount[at] += 1
    k.stat.add(b.node, "migcache_add", len(b))
    return e


def delete_from_swap_cache(k, node: int, pfns: np.ndarray) -> None:
    """The page leaves the swap cache; the slot keeps its swap ptes' counts."""
    if not len(pfns):
        return
    fr = k.nodes[node]
    at = span(pfns)
    slots = P.pte_offset(fr.private[at])
    fr.flags[at] &= ~PG_swapcache
    fr.private[at] = 0
    k.swap.clear_cache(slots)
    fr.put(pfns, at)


def pageout(k, node: int, pfns: np.ndarray) -> None:
    """Write dirty swap-cache pages to their slots."""
    fr = k.nodes[node]
    dirty = pfns[(fr.flags[pfns] & PG_dirty) != 0]
    if len(dirty):
        slots = P.pte_offset(fr.private[dirty])
        k.swap.store[slots] = fr.data[dirty]
        fr.flags[dirty] &= ~PG_dirty
        k.stat.add(node, "pswpout", len(dirty))


def lookup_swap_cache(k, entries: np.ndarray) -> np.ndarray:
    """gpfn of the cached page for each entry, or -1; a hit takes a reference."""
    typ = P.swp_type(entries)
    off = P.pte_offset(entries)
    out = np.full(len(entries), -1, dtype=np.int64)
    sw = typ == P.SWP_SWAP
    if sw.any():
        ok = sw & (off <= k.swap.nslots)
        out[ok] = k.swap.cache_page[off[ok]]
    mc = typ == P.SWP_MIGCACHE
    if mc.any():
        live = np.zeros(len(entries), dtype=bool)
        live[mc] = k.migcache.live(off[mc])
        out[live] = k.migcache.page[off[live]]
    k.pin(out[out >= 0])
    return out


def read_swap_cache_async(k, mm, vma, vpns: np.ndarray, entries: np.ndarray, fault: bool = True):
    """Bring swap slots into the swap cache. Returns (gpfn per entry or -1,
    mask of entries that failed for want of memory). Holds a reference on each.
    fault: the reader is do_swap_page(), the only one counting PGMAJFAULT
    (swapoff's unuse_pte_range() reads too, and counts pswpin alone)."""
    out = np.full(len(entries), -1, dtype=np.int64)
    nomem = np.zeros(len(entries), dtype=bool)
    slots = P.pte_offset(entries)
    sw = (P.swp_type(entries) == P.SWP_SWAP) & (slots <= k.swap.nslots)
    cached = np.zeros(len(entries), dtype=bool)
    cached[sw] = k.swap.cache_page[slots[sw]] >= 0
    # raced with another fault: it is in the cache now
    if cached.any():
        out[cached] = k.swap.cache_page[slots[cached]]
        k.pin(out[cached])
    want = sw & ~cached
    want[want] = k.swap.count(slots[want]) > 0   # a freed slot has nothing to read
    idx = np.flatnonzero(want)
    if not len(idx):
        return out, nomem
    g = alloc_for(k, mm, vma, vpns[idx])
    got = g >= 0
    nomem[idx[~got]] = True
    idx, g = idx[got], g[got]
    out[idx] = g
    for node, sel in split_nodes(g):
        fr = k.nodes[node]
        pf = g[sel] & P.PFN_MASK
        sl = slots[idx[sel]]
        k.swap.swap_map[sl] |= HAS_CACHE
        k.swap.cache_page[sl] = g[sel]
        fr.flags[pf] = PG_anon | PG_swapcache | PG_lru
        fr.private[pf] = entries[idx[sel]]
        fr.refcount[pf] += 1                 # the cache's; the allocation's is our pin
        fr.anon_vma[pf] = vma.anon_vma.id
        fr.index[pf] = vpns[idx[sel]]
        fr.data[pf] = k.swap.store[sl]
        fr.lru_tick[pf] = fr.tick
        k.stat.add(node, "pswpin", len(pf))
    for gg in g.tolist():
        k.pins[gg] += 1
    if fault:
        k.stat.add(mm.node, "pgmajfault", len(g))
    return out, nomem


def try_to_free_swap(k, node: int, pfns: np.ndarray) -> np.ndarray:
    """Drop swap-cache pages whose slot no pte needs any more (not locked by others).
    Returns the pages it freed from the cache."""
    fr = k.nodes[node]
    sc = pfns[((fr.flags[pfns] & PG_swapcache) != 0)]
    if not len(sc):
        return sc
    e = fr.private[sc]
    sc = sc[P.swp_type(e) == P.SWP_SWAP]
    sc = sc[k.swap.count(P.pte_offset(fr.private[sc])) == 0]
    delete_from_swap_cache(k, node, sc)
    return sc
