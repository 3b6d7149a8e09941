"""swapon / swapoff (mm/swapfile.c).

Rules:
- swapoff first checks that memory can take back every page that lives only
  on the device; if not it fails with ENOMEM and changes nothing. Then no new
  slot is handed out, and the unuse walk brings every swapped page back:
  read into the swap cache, lock, recheck the pte still names the entry, map
  it, swap_free; again until a pass finds no swap pte. Finally, once no pte
  names a swap entry and no swap-cache page is locked (a migration under
  the swapcache policy unmaps into the page's swap entry), every page leaves
  the swap cache and every slot is free. Should memory still run out midway
  (another task took it), the device
  stays on with whatever is left on it, all of it intact, and ENOMEM.
- The migration cache is not a swap device: its entries are left alone.
"""
from __future__ import annotations

import errno

import numpy as np

from . import pte as P
from .fault import any_locked, lock_pages
from .frames import PG_dirty, PG_locked
from .kernel import split_nodes
from .rmap import entry_free
from .sched import call, wait
from .swap import HAS_CACHE, add_at
from .swap_state import delete_from_swap_cache, read_swap_cache_async


def swapoff_begin(k) -> None:
    if k.swap.nslots == 0:
        raise OSError(errno.EINVAL, "swapoff: no swap device is configured")
    if not k.swap.on:
        raise OSError(errno.EINVAL, "swapoff: swap is already off")
    sm = k.swap.swap_map
    need = int((((sm & ~HAS_CACHE) > 0) & ((sm & HAS_CACHE) == 0)).sum())
    room = sum(max(0, fr.nr_free - fr.wmark_min) for fr in k.nodes)
    if need > room:
        raise OSError(errno.ENOMEM, f"swapoff: {need} swapped pages but room for {room} only")
    k.swap.on = False


def unuse_pte_step(k, vma, idx: np.ndarray, entries: np.ndarray, gp: np.ndarray) -> None:
    """unuse_pte(): map the page where the pte still names its entry."""
    same = vma.pte[idx] == entries
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        s = same[sel]
        add_at(fr.mapcount, pf[s], 1)
        fr.flags[pf] &= ~PG_locked
    vma.pte[idx[same]] = (gp[same] << P.OFF_SHIFT) | P.PRESENT | (P.WRITE if vma.shared else 0)
    entry_free(k, entries[same])
    k.unpin(gp[same], put=False)
    k.unpin(gp[~same])


def _cache_locked(k) -> bool:
    """A swap-cache page is locked: a migration (the swapcache policy) may be
    about to put its swap entry into ptes, or a fault to map it."""
    cp = k.swap.cache_page
    return any_locked(k, cp[cp >= 0])


def _swap_ptes_of(ptes: np.ndarray) -> np.ndarray:
    """Where ptes name a swap entry."""
    return ((ptes & P.PRESENT) == 0) & (P.swp_type(ptes) == P.SWP_SWAP) & (ptes != 0)


def _swap_ptes(k) -> bool:
    return any(_swap_ptes_of(vma.pte).any() for mm in k.mms.values() for vma in mm.vmas)


def swapoff_end(k) -> bool:
    """Every page leaves the swap cache; the device is empty. Refused (False)
    while a pte names a swap entry again or a swap-cache page is locked:
    try_to_unuse() locks every page it brings back and retries while slots
    are in use, so a migration holding a swap-cache page finishes first."""
    if _swap_ptes(k) or _cache_locked(k):
        return False
    cp = k.swap.cache_page
    slots = np.flatnonzero(cp >= 0)
    gp = cp[slots]
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        fr.flags[pf] |= PG_dirty
        delete_from_swap_cache(k, node, pf)
    return True


def swapoff_fail(k) -> None:
    k.swap.on = True


async def swapoff(k) -> None:
    await call("coord", swapoff_begin, k)
    # try_to_unuse(): pass over every mm until a pass finds no pte naming a
    # swap entry (mm/swapfile.c retries while si->inuse_pages): a fork during
    # a pass copies swap ptes into a child the pass may not visit. swapoff_end
    # rechecks in its own step, since a migration holding a swap-cache page
    # (the swapcache policy) puts its swap entry into ptes until it is done.
    while True:
        while await _unuse_pass(k):
            pass
        if await call("coord", swapoff_end, k):
            return
        await wait("coord", lambda: not _cache_locked(k), "a swap-cache page locked (a migration)")


async def _unuse_pass(k) -> bool:
    """One pass of the unuse walk; True when it found swap ptes."""
    found = False
    for mm in list(k.mms.values()):
        for vma in list(mm.vmas):
            ptes = vma.pte
            idx = np.flatnonzero(_swap_ptes_of(ptes))
            if not len(idx):
                continue
            found = True
            entries = ptes[idx].copy()
            gp, nomem = await call("coord", read_swap_cache_async, k, mm, vma, vma.start + idx, entries,
                                   False)
            if nomem.any():
                k.unpin(gp[gp >= 0])
                await call("coord", swapoff_fail, k)
                raise OSError(errno.ENOMEM, "swapoff: out of memory while bringing pages back; swap stays on")
            ok = gp >= 0
            idx, entries, gp = idx[ok], entries[ok], gp[ok]
            await lock_pages(k, gp)
            await call(k.node_owner(mm.node), unuse_pte_step, k, vma, idx, entries, gp)
    return found


def swapon(k) -> None:
    if k.swap.nslots == 0:
        raise OSError(errno.EINVAL, "swapon: no swap device is configured (machine.swap_pages = 0)")
    if k.swap.on:
        raise OSError(errno.EBUSY, "swapon: swap is already on")
    k.swap.on = True
