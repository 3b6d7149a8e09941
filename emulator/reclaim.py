"""Reclaim (mm/vmscan.c): watermarks, shrink_list over the LRU, kswapd.

Rules:
- Reclaim isolates the oldest LRU pages of a node (lowest lru_tick) that are
  not locked, locks them, gives each a swap slot (add_to_swap; a page in the
  migration cache moves to the swap cache first, migration_move_to_swap),
  unmaps every pte to the swap entry, writes dirty pages out (pswpout) and
  frees a page only when the refcount is exactly isolation + cache (the
  freeze of __remove_mapping). Anything else goes back on the LRU.
- With no swap (or swap off or full), anonymous memory cannot be reclaimed.
- kswapd: after an allocation leaves a node below its low watermark, reclaim
  brings it back to its high watermark.
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .frames import PG_isolated, PG_locked, PG_lru, PG_swapcache
from .fault import lock_step
from .kernel import distinct
from .rmap import Batch, rmap_walk, unmap_vma
from .sched import call
from .swap_state import add_to_swap, delete_from_swap_cache, pageout
from .migcache_ops import migration_move_to_swap

SWAP_CLUSTER_MAX = 32


def isolate_lru(k, node: int, nr: int, kswapd: bool) -> Batch:
    if k.tlb is not None:
        k.tlb.referenced(k)         # the accessed bits the CPUs set through their TLBs
    fr = k.nodes[node]
    fl = fr.flags
    cand = np.flatnonzero((fl & (PG_lru | PG_locked | PG_isolated)) == PG_lru)
    if k.swap.nr_free < nr:
        # out of slots: only pages that already have one can go (swap-cache pages)
        sc = cand[(fl[cand] & PG_swapcache) != 0]
        if k.swap.nr_free == 0 or len(sc) >= nr:
            cand = sc if k.swap.nr_free == 0 else np.concatenate(
                (sc, cand[(fl[cand] & PG_swapcache) == 0][:k.swap.nr_free]))
    if len(cand) > nr:
        cand = cand[np.argpartition(fr.lru_tick[cand], nr - 1)[:nr]]
        cand.sort()
    cand = cand.astype(np.int64)
    fr.flags[cand] = (fl[cand] & ~PG_lru) | PG_isolated
    fr.refcount[cand] += 1
    k.stat.add(node, "pgscan_kswapd" if kswapd else "pgscan_direct", len(cand))
    return Batch(node, cand, fr.anon_vma[cand].astype(np.int64), fr.index[cand].astype(np.int64))


def prepare_swap_step(k, b: Batch, locked: np.ndarray) -> np.ndarray:
    """Locked pages get a swap slot; returns the mask of pages ready to unmap.
    Pages that could not be locked or given a slot go back on the LRU."""
    fr = k.nodes[b.node]
    ready = locked.copy()
    inmc = ready & ((fr.flags[b.pfns] & PG_swapcache) != 0) & \
        (P.swp_type(fr.private[b.pfns]) == P.SWP_MIGCACHE)
    if inmc.any():
        ready[inmc] = migration_move_to_swap(k, b.node, b.pfns[inmc])
    need = ready & ((fr.flags[b.pfns] & PG_swapcache) == 0)
    if need.any():
        e = add_to_swap(k, b.take(need))
        ready[np.flatnonzero(need)[e == 0]] = False
    back = ~ready
    fr.flags[b.pfns[back & locked]] &= ~PG_locked     # ours; a page we did not lock is another's
    k.putback(b.node, b.pfns[back])
    return ready


def free_step(k, b: Batch) -> int:
    """shrink_page_list() tail: write out, and free what nothing else holds."""
    fr = k.nodes[b.node]
    pf = b.pfns
    unmapped = fr.mapcount[pf] == 0
    pageout(k, b.node, pf[unmapped])
    # the freeze: isolation + swap cache references only
    free = unmapped & (fr.refcount[pf] == 2) & ((fr.flags[pf] & PG_swapcache) != 0)
    gone = pf[free]
    fr.flags[gone] &= ~(PG_isolated | PG_locked)
    delete_from_swap_cache(k, b.node, gone)
    fr.put(gone)
    fr.flags[pf[~free]] &= ~PG_locked
    k.putback(b.node, pf[~free])
    return len(gone)


async def shrink_node(k, node: int, nr: int, kswapd: bool = False) -> int:
    if not k.swap.on or nr <= 0:
        return 0
    owner = k.node_owner(node)
    b = await call(owner, isolate_lru, k, node, nr, kswapd)
    if not len(b):
        return 0
    locked = await call(owner, lock_step, k, b.gpfn)
    ready = await call("coord", prepare_swap_step, k, b, locked)
    b = b.take(ready)
    if not len(b):
        return 0
    entries = k.nodes[node].private[b.pfns].copy()
    avs = {a: k.anon_vmas[a] for a in distinct(b.av) if a in k.anon_vmas}
    await rmap_walk(k, avs, b, unmap_vma, entries)
    n = await call(owner, free_step, k, b)
    k.stat.add(node, "pgsteal_kswapd" if kswapd else "pgsteal_direct", n)
    return n


async def direct_reclaim(k, mm, pol, nr: int) -> int:
    """try_to_free_pages(): reclaim along the allocating task's zonelist, within
    the nodes its policy pol allows: bind's nodes; every node for the others
    (preferred-many reclaims only in its second walk, which has no nodemask)."""
    from .mm import MPOL_BIND
    if not k.swap.on:
        return 0
    done = 0
    for z in k.zonelists[mm.node]:
        if pol.mode == MPOL_BIND and z not in pol.nodes:
            continue
        done += await shrink_node(k, z, max(nr - done, SWAP_CLUSTER_MAX))
        if done >= nr:
            break
    return done


async def wakeup_kswapd(k) -> None:
    if not k.swap.on or k.swap.nr_free == 0:
        return
    for fr in k.nodes:
        if fr.nr_free < fr.wmark_low:
            await shrink_node(k, fr.node, fr.wmark_high - fr.nr_free, kswapd=True)
