"""Direct page migration (mm/migrate.c) under the three policies.

A batch of isolated pages of one source node moves to one target node (or,
for mbind, to where a policy places each page), in passes (up to
MIGRATE_PASSES; the kernel's 3 async + 7 sync). Each pass:

1. lock the pages (trylock: a busy page waits for the next pass); a page
   whose only reference left is the isolation one was freed under us: done;
2. policy `swapcache`: add_to_swap (no slot: -ENOMEM); `migcache`:
   add_to_migration_cache; `migentry`: nothing;
3. pin each anon_vma (R2), then unmap every pte to the migration pte;
4. allocate the targets on the destination node (mbind: each page where its
   new policy places it, with the zonelist's fallback, or where 6.1's
   allocation in address order would: ByPolicy.plan); short, reclaim there
   and retry; still short: `migentry` remaps the pages where they were and
   gives up, as migrate_pages() returns -ENOMEM at the first page it cannot
   allocate for (no later pass, the caller fails the whole call);
   `swapcache`/`migcache` fall back, writing the page to swap (migcache
   first moves it to the swap cache, if it is still in the migration cache
   and a slot is free), and go on. A page that cannot go is remapped where
   it was and leaves the migration cache; one that moved to the swap cache
   stays there. Either way the page's status is -ENOMEM;
5. move the mapping: the old page's refcount must be exactly isolation +
   cache (the freeze), else undo and -EAGAIN for a later pass; the cache slot
   now names the new page; copy data and flags (the data plane);
6. remap every migration pte to the new page (the walk continues after the
   last vma it visited: R3), swap_free()ing cache entries; a migration-cache
   id counts only while it names this migration's page (rmap.remap_vma);
7. unlock both; the new page goes on the LRU; the old one is freed.
Undo (a failed freeze) is step 6 towards the old page, then out of the cache.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field

import numpy as np

from . import pte as P
from .fault import lock_step, unlock_pages
from .frames import PG_anon, PG_dirty, PG_isolated, PG_locked, PG_lru, PG_swapcache, span
from .kernel import distinct, keep, split_nodes
from .mm import MM, Mempolicy
from .page_alloc import NOT_ALLOCATED, alloc_on, alloc_planned, alloc_policy
from .rmap import Batch, migcache_release, remap_vma, rmap_walk, unmap_vma
from .sched import call
from .swap_state import add_to_migcache, add_to_swap, delete_from_swap_cache, pageout
from .migcache_ops import migration_move_to_swap

MIGRATE_PASSES = 10
MIGRATE_BATCH = 4096


def isolate_step(k, node: int, pfns: np.ndarray) -> np.ndarray:
    """isolate_lru_page(): off the LRU with a reference; False where the page is not
    on the LRU (already isolated by someone, or being reclaimed)."""
    fr = k.nodes[node]
    at = span(pfns)
    ok = (fr.flags[at] & (PG_lru | PG_isolated)) == PG_lru
    if not ok.all():
        at = pfns[ok]
    fr.flags[at] = (fr.flags[at] & ~PG_lru) | PG_isolated
    fr.refcount[at] += 1
    return ok


def freed_step(k, b: Batch) -> np.ndarray:
    """A page held only by our isolation reference was freed under us: done."""
    fr = k.nodes[b.node]
    at = b.at
    gone = (fr.refcount[at] == 1) & (fr.mapcount[at] == 0) & ((fr.flags[at] & PG_swapcache) == 0)
    return gone


def pin_anon_vmas(k, b: Batch) -> dict:
    avs = {a: k.anon_vmas[a] for a in distinct(b.av) if a in k.anon_vmas}
    for av in avs.values():
        av.pins += 1
    return avs


def unpin_anon_vmas(k, avs: dict) -> None:
    for av in avs.values():
        av.pins -= 1
        k.anon_vma_put(av)


def page_anon_vmas(k, b: Batch) -> dict:
    """page_lock_anon_vma() without a pin (R2): finds nothing for a page mapped nowhere."""
    fr = k.nodes[b.node]
    mapped = fr.mapcount[b.pfns] > 0
    return {a: k.anon_vmas[a] for a in distinct(b.av[mapped]) if a in k.anon_vmas}


def alloc_step(k, node: int, n: int, cpu: int) -> np.ndarray:
    pfns = alloc_on(k, node, n, cpu)
    fr = k.nodes[node]
    fr.flags[span(pfns)] = PG_anon | PG_locked | PG_isolated   # the migrator's reference
    return pfns


def prepare_step(k, b: Batch):
    """Where each page waits while it moves: (entries or None, mask of entries added now).
    A page already in the swap cache keeps its swap entry under every policy."""
    policy = k.topo.policy
    if policy == "migentry":
        return None, None
    fr = k.nodes[b.node]
    priv = np.array(fr.private[b.at])      # kept across the cache's writes below
    sc = ((fr.flags[b.at] & PG_swapcache) != 0) & (P.swp_type(priv) == P.SWP_SWAP)
    entries = np.where(sc, priv, 0)
    add = np.flatnonzero(~sc)
    if len(add):
        sub = b.take(add)
        entries[add] = add_to_swap(k, sub) if policy == "swapcache" else add_to_migcache(k, sub)
    return entries, ~sc


def move_mapping_step(k, b: Batch, dst: int, new: np.ndarray) -> np.ndarray:
    """migrate_folio(): freeze the refcount, move the cache slot, copy data and flags."""
    fr, nf = k.nodes[b.node], k.nodes[dst]
    pf, at = b.pfns, b.at
    cached = (fr.flags[at] & PG_swapcache) != 0
    if "no-refcount-freeze" in k.bugs:
        ok = fr.mapcount[at] == 0
    else:
        ok = (fr.refcount[at] == 1 + cached) & (fr.mapcount[at] == 0)
    pf, npf, cached = keep(ok, pf, new, cached)
    moved_pf, moved_npf = pf, npf
    if pf is not b.pfns:
        at = span(pf)
    nat = span(npf)
    nf.anon_vma[nat] = fr.anon_vma[at]
    nf.index[nat] = fr.index[at]
    nf.flags[nat] |= fr.flags[at] & PG_dirty
    if cached.any():
        if not cached.all():
            pf, npf = keep(cached, pf, npf)
            at, nat = span(pf), span(npf)
        e = np.array(fr.private[at])       # kept across the write below
        ng = P.gpfn(dst, npf)
        nf.flags[nat] |= PG_swapcache
        nf.private[nat] = e
        nf.refcount[nat] += 1
        off = P.pte_offset(e)
        sw = P.swp_type(e) == P.SWP_SWAP
        k.swap.cache_page[off[sw]] = ng[sw]
        k.migcache.page[off[~sw]] = ng[~sw]
        fr.flags[at] &= ~PG_swapcache
        fr.private[at] = 0
        fr.refcount[at] -= 1
    k.copy_payload(fr.data, moved_pf, nf.data, moved_npf)
    return ok


def _leave_cache(k, node: int, pfns: np.ndarray, entries: np.ndarray) -> None:
    """Once the ptes no longer name the entries: the page leaves whichever cache."""
    sw = P.swp_type(entries) == P.SWP_SWAP
    fr = k.nodes[node]
    p, e = keep(sw, pfns, entries)
    if len(p):
        at = span(p)
        delete_from_swap_cache(k, node, p[((fr.flags[at] & PG_swapcache) != 0) & (fr.private[at] == e)])
    if len(p) == len(pfns):
        return
    # the remap may have released the ids already, and another migration may
    # hold them again by now (lowest free id first): only ids still naming
    # these pages are this migration's to release
    mc_entries, mc_pfns = keep(~sw, entries, pfns)
    ids = P.pte_offset(mc_entries)
    mine = k.migcache.live(ids)
    mine[mine] = k.migcache.page[ids[mine]] == P.gpfn(node, mc_pfns[mine])
    ids = ids[mine]
    migcache_release(k, ids[k.migcache.counter[ids] == 0])


def finish_step(k, b: Batch, entries, added, dst: int, new: np.ndarray) -> None:
    """Unlock both pages; the new one joins the LRU, the old one is freed. A cache
    entry this migration added goes; a swap-cache page stays in the swap cache."""
    if entries is not None:
        _leave_cache(k, dst, *keep(added, new, entries))
    k.nodes[dst].flags[span(new)] &= ~PG_locked
    k.putback(dst, new)
    fr = k.nodes[b.node]
    fr.flags[b.at] &= ~(PG_locked | PG_isolated)
    fr.put(b.pfns, b.at)


def undo_step(k, b: Batch, entries, added) -> None:
    """After the ptes point at the old page again: out of the cache this migration
    put it in, unlocked, still isolated for the next pass."""
    if entries is not None:
        _leave_cache(k, b.node, b.pfns[added], entries[added])
    unlock_pages(k, b.gpfn)


def swap_out_step(k, b: Batch) -> np.ndarray:
    """Fallback: the unmapped swap-cache page is written out and freed.
    Returns the mask of pages that went; the rest must be undone."""
    fr = k.nodes[b.node]
    pf = b.pfns
    ok = (fr.mapcount[pf] == 0) & (fr.refcount[pf] == 2) & ((fr.flags[pf] & PG_swapcache) != 0)
    gone = pf[ok]
    pageout(k, b.node, gone)
    fr.flags[gone] &= ~(PG_isolated | PG_locked)
    delete_from_swap_cache(k, b.node, gone)
    fr.put(gone)
    k.stat.add(b.node, "pgmigrate_fallback_swap", len(gone))
    return ok


def to_swap_step(k, b: Batch) -> np.ndarray:
    """migcache fallback: move the pages to the swap cache first."""
    return migration_move_to_swap(k, b.node, b.pfns)


def free_frames_step(k, node: int, pfns: np.ndarray) -> None:
    fr = k.nodes[node]
    at = span(pfns)
    fr.flags[at] &= ~(PG_locked | PG_isolated)
    fr.put(pfns, at)


async def _remap(k, avs, b: Batch, entries, node: int, pfns: np.ndarray) -> None:
    await rmap_walk(k, avs, b, remap_vma, entries, node, pfns)


async def _undo(k, avs, b: Batch, entries, added) -> None:
    await _remap(k, avs, b, entries, b.node, b.pfns)
    await call(k.node_owner(b.node), undo_step, k, b, entries, added)


@dataclass(frozen=True)
class ByPolicy:
    """Where mbind()'s new pages come from (new_page(), alloc_pages_vma()): as
    the task mm allocates under policy pol, each page on its own intended node
    (interleave by its offset), falling back along the zonelist. ``plan``:
    (vpns, sorted; node of each, -1 for none), the nodes 6.1 would give the
    pages allocating them in address order, where that order matters
    (move_pages._in_list_order); a page not in it allocates by the policy.
    ``base``: the pages' shared memory object's (mm.AnonVMA): the policy takes
    a page's offset in it, vpn - base, where a page is named by its vpn
    (``off()``; 0 for private pages, whose offset is the vpn); the plan is
    by offset."""
    mm: MM
    pol: Mempolicy
    plan: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False)
    base: int = 0

    def off(self, vpns: np.ndarray) -> np.ndarray:
        return vpns - self.base if self.base else vpns


def policy_alloc_step(k, mm: MM, pol: Mempolicy, vpns: np.ndarray, plan=None) -> np.ndarray:
    """new_page() for each page (vpns: their offsets, ByPolicy.off()): gpfn of
    its target frame, NOT_ALLOCATED where none."""
    if plan is None:
        g = alloc_policy(k, mm, pol, vpns, zero=False)
    else:
        pv, pn = plan
        i = np.minimum(np.searchsorted(pv, vpns), max(len(pv) - 1, 0))
        nodes = np.where(pv[i] == vpns, pn[i], -2) if len(pv) else np.full(len(vpns), -2)
        g = alloc_planned(k, mm, pol, vpns, nodes)
        free = (g < 0) & (nodes != -1)      # not planned, or its node ran dry meanwhile
        if free.any():
            g[free] = alloc_policy(k, mm, pol, vpns[free], zero=False)
    for node, sel in split_nodes(g[g >= 0]):
        k.nodes[node].flags[g[g >= 0][sel] & P.PFN_MASK] = PG_anon | PG_locked | PG_isolated
    return g


async def alloc_new(k, sub: Batch, dst: int | ByPolicy, cpu: int) -> np.ndarray:
    """The new page of each page (gpfn, NOT_ALLOCATED where none), reclaiming
    once where the first try came back short: alloc_migration_target() on
    node dst (__GFP_THISNODE), or by a policy (mbind)."""
    from .reclaim import direct_reclaim, shrink_node
    if isinstance(dst, ByPolicy):
        owner = k.node_owner(dst.mm.node)
        off = dst.off(sub.index)
        new = await call(owner, policy_alloc_step, k, dst.mm, dst.pol, off, dst.plan)
        short = np.flatnonzero(new < 0)
        if len(short):
            await direct_reclaim(k, dst.mm, dst.pol, len(short))
            new[short] = await call(owner, policy_alloc_step, k, dst.mm, dst.pol, off[short], dst.plan)
        return new
    owner = k.node_owner(dst)
    pfns = await call(owner, alloc_step, k, dst, len(sub), cpu)
    if len(pfns) == len(sub):
        return P.gpfn(dst, pfns)
    await shrink_node(k, dst, len(sub) - len(pfns))
    more = await call(owner, alloc_step, k, dst, len(sub) - len(pfns), cpu)
    new = np.full(len(sub), NOT_ALLOCATED, dtype=np.int64)
    new[:len(pfns) + len(more)] = P.gpfn(dst, np.concatenate((pfns, more)))
    return new


async def _move(k, avs, sub: Batch, entries, added, dst: int, new: np.ndarray) -> np.ndarray:
    """Steps 5-7 for pages whose new frames (pfns new) are on node dst. Returns
    the mask of those that moved; the others are back on their old page."""
    dst_owner = k.node_owner(dst)

    def part(sel):
        return (None, None) if entries is None else (entries[sel], added[sel])

    moved = await call(dst_owner, move_mapping_step, k, sub, dst, new)
    if (~moved).any():
        bad = ~moved
        await call(dst_owner, free_frames_step, k, dst, new[bad])
        await _undo(k, avs, sub.take(bad), *part(bad))
    if moved.any():
        msub = sub.take(moved)
        ment, madd = (entries, added) if entries is None or msub is sub else part(moved)
        (mnew,) = keep(moved, new)
        ravs = avs
        if "r2-anon-vma-not-pinned" in k.bugs:
            ravs = await call("rmap", page_anon_vmas, k, msub)
        await _remap(k, ravs, msub, ment, dst, mnew)
        await call(dst_owner, finish_step, k, msub, ment, madd, dst, mnew)
    return moved


def gave_up(k, result: np.ndarray) -> bool:
    """Did migrate_pages() return -ENOMEM? Upstream (migentry) it stops at the
    first page that gets no new page and the whole call fails; the historical
    designs fall back to swap page by page and go on (KERNEL.md)."""
    return k.topo.policy == "migentry" and bool((result == -errno.ENOMEM).any())


async def migrate_batch(k, b: Batch, dst: int | ByPolicy, cpu: int) -> np.ndarray:
    """Migrate isolated pages of one node to dst (a node, or as a policy places
    them): 0 per page moved, else -errno. Every page comes back unisolated
    (moved, freed, swapped out or put back). Under migentry the first page
    without a new page ends it (see gave_up): the pages tried after it are -ENOMEM
    too, but neither tried nor counted in pgmigrate_fail, as in migrate_pages()."""
    src = k.node_owner(b.node)
    result = np.full(len(b), -errno.EAGAIN, dtype=np.int64)
    final = np.zeros(len(b), dtype=bool)
    held = np.ones(len(b), dtype=bool)      # we still hold the isolation reference
    stop, untried = False, 0                # gave up: pages after the -ENOMEM that stopped it
    for npass in range(MIGRATE_PASSES):
        todo = np.flatnonzero(~final)
        if not len(todo) or stop:
            break
        if npass:
            k.stat.add(b.node, "migrate_retry", len(todo))
        sub = b.take(todo)
        locked = await call(src, lock_step, k, sub.gpfn)
        todo = todo[locked]
        sub = b.take(todo)
        if not len(todo):
            continue
        gone = await call(src, freed_step, k, sub)
        if gone.any():
            result[todo[gone]] = 0
            final[todo[gone]] = True
            held[todo[gone]] = False
            await call(src, free_frames_step, k, b.node, sub.pfns[gone])
            todo = todo[~gone]
            sub = b.take(todo)
            if not len(todo):
                continue
        entries, added = await call("coord", prepare_step, k, sub)
        if entries is not None and (entries == 0).any():
            noslot = entries == 0              # swapcache policy with no free slot
            result[todo[noslot]] = -errno.ENOMEM
            final[todo[noslot]] = True
            await call(src, unlock_pages, k, sub.gpfn[noslot])
            todo, entries, added = todo[~noslot], entries[~noslot], added[~noslot]
            sub = b.take(todo)
            if not len(todo):
                continue

        def part(sel):
            return (None, None) if entries is None else (entries[sel], added[sel])

        avs = await call("rmap", pin_anon_vmas, k, sub)
        await rmap_walk(k, avs, sub, unmap_vma, entries)
        new = await alloc_new(k, sub, dst, cpu)
        got = new >= 0
        if not got.all():
            # no room even after reclaim: migentry gives up (migrate_pages() -ENOMEM);
            # swapcache and migcache fall back to swap
            fb = np.flatnonzero(~got)
            fsub = sub.take(fb)
            fent, fadd = part(fb)
            result[todo[fb]] = -errno.ENOMEM
            final[todo[fb]] = True
            if entries is None:
                await _undo(k, avs, fsub, None, None)
                stop, untried = True, len(fb) - 1
            else:
                ok = np.ones(len(fb), dtype=bool)
                mc = P.swp_type(fent) == P.SWP_MIGCACHE
                if mc.any():
                    ok[mc] = await call("coord", to_swap_step, k, fsub.take(mc))
                    # the ptes are swap ptes now: undo with the swap entries
                    fent = np.where(mc & ok, k.nodes[b.node].private[fsub.pfns], fent)
                to_swap = mc & ok
                if ok.any():
                    went = await call(src, swap_out_step, k, fsub.take(ok))
                    held[todo[fb[np.flatnonzero(ok)[went]]]] = False
                    ok[np.flatnonzero(ok)[~went]] = False
                if (~ok).any():
                    # the page stays: a swap entry it got for the fallback stays with it; one
                    # still in the migration cache (no slot) leaves it, as any failed migration's
                    await _undo(k, avs, fsub.take(~ok), fent[~ok], fadd[~ok] & ~to_swap[~ok])
            stay = np.flatnonzero(got)
            todo, sub, new = todo[stay], sub.take(stay), new[stay]
            entries, added = part(stay)
        # the new pages' nodes: dst, or for a policy's pages wherever it placed them
        groups = split_nodes(new) if isinstance(dst, ByPolicy) else [(dst, slice(None))] if len(new) else []
        for node, sel in groups:
            whole = isinstance(sel, slice)
            moved = await _move(k, avs, sub if whole else sub.take(sel),
                                *(part(sel) if not whole else (entries, added)),
                                node, new[sel] & P.PFN_MASK)
            mtodo = (todo if whole else todo[sel])[moved]
            k.stat.add(node, "migrate_in", len(mtodo))
            k.stat.add(b.node, "migrate_out", len(mtodo))
            result[mtodo] = 0
            final[mtodo] = True
            held[mtodo] = False
        await call("rmap", unpin_anon_vmas, k, avs)
    await call(src, putback_step, k, b, held)
    ok = int((result == 0).sum())
    k.stat.add(b.node, "pgmigrate_success", ok)
    k.stat.add(b.node, "pgmigrate_fail", len(b) - ok - untried)
    return result


def putback_step(k, b: Batch, sel: np.ndarray) -> None:
    """putback_movable_pages(): pages still isolated go back on the LRU."""
    k.putback(b.node, b.pfns[sel])

