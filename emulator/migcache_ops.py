"""migration_move_to_swap() (V8): a migration-cache page becomes a swap-cache page.

Rules: the page is locked by the caller and still in the migration cache
(else nothing happens: the caller backs off). A real swap slot is allocated (none:
the page stays in the migration cache and the caller backs off); every
migration-cache pte naming the entry is rewritten into a swap pte for the
slot (the swap count takes each pte; the idr counter loses each); the page
moves from the idr to the swap cache, keeping its one cache reference, and
is marked dirty, as add_to_swap() marks it: the new slot holds nothing of
it yet, so even a clean page must be written before it is freed; the idr
entry, now at 0, is removed. One step: the whole rewrite happens under
the page lock and the ptes' locks, and a fault that read the old pte without
its lock must notice (R1).
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .frames import PG_dirty, PG_swapcache
from .swap import HAS_CACHE


def migration_move_to_swap(k, node: int, pfns: np.ndarray) -> np.ndarray:
    """Returns the mask of pages moved to the swap cache. A page no longer in
    the migration cache (its entry was released when the last pte naming it
    went) is not moved: the RFC's page_is_migration() check."""
    fr = k.nodes[node]
    inmc = np.flatnonzero(((fr.flags[pfns] & PG_swapcache) != 0) &
                          (P.swp_type(fr.private[pfns]) == P.SWP_MIGCACHE))
    slots = k.swap.get_slots(len(inmc))
    ok = np.zeros(len(pfns), dtype=bool)
    ok[inmc[:len(slots)]] = True
    for pf, slot in zip(pfns[inmc[:len(slots)]].tolist(), slots.tolist()):
        old = int(fr.private[pf])
        new = P.mk_swp(P.SWP_SWAP, slot)
        av = k.anon_vmas.get(int(fr.anon_vma[pf]))
        n = 0
        for vma in (av.vmas if av else ()):
            i = int(fr.index[pf]) - vma.start
            if 0 <= i < vma.npages and vma.pte[i] == old:
                vma.pte[i] = new
                n += 1
        mid = old >> P.OFF_SHIFT
        k.migcache.counter[mid] -= n
        k.swap.swap_map[slot] = HAS_CACHE | n
        k.swap.cache_page[slot] = P.gpfn(node, pf)
        fr.private[pf] = new
        fr.flags[pf] |= PG_dirty
        k.migcache.page[mid] = -1          # the cache reference moves with the page
        k.migcache.remove(np.array([mid]))
        k.stat.add(node, "migcache_move_to_swap")
    return ok
