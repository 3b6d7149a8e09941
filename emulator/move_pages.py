"""move_pages(2), migrate_pages(2) and mbind(2)'s moving (mm/migrate.c, mm/mempolicy.c).

Rules (KERNEL.md, with Linux 6.1 where the man page is vague):
- Pages are taken in order; pages queued one after another for the same
  target form a list that is migrated when the target changes, when a page
  is not queued (its status stored first: 6.1's do_pages_move() then calls
  move_pages_and_store_status()), or when the pages end. So a page named
  again after a page not queued is looked up after the migration: on the
  target, its status is the node. An invalid target ends the call with
  ENODEV after the lists before it have moved.
- Per page: no vma or pte_none -> -EFAULT; a non-present pte (swapped out,
  under migration) -> -ENOENT; already on the target -> the node (nothing
  counted); mapped more than once without MPOL_MF_MOVE_ALL -> -EACCES (each
  time it is named: the check precedes isolation); not isolatable (queued
  already: the same page named twice in a list, or under another migration)
  -> -EBUSY; then the node it moved to, or the migration's -errno.
- Under migentry (upstream), a migration that finds no frame on its target,
  even after reclaim, gives up (migrate_pages() returns -ENOMEM): the whole
  call fails with ENOMEM, the lists migrated before it having moved. The
  historical designs fall back to swap page by page and go on.
- migrate_pages() moves every present page of the process from old_nodes to
  the corresponding new node (nodes_remap; with sets of different sizes a
  source that is also a destination stays), one source node at a time in
  6.1's order (migrate_order), queueing each node's pages just before they
  move, and returns the number of pages queued that could not be moved (a
  page it could not queue, shared without MOVE_ALL or under another
  migration, is skipped, not counted); ENOMEM as above, ending the call at
  the node that ran out.
- mbind() with MPOL_MF_MOVE(_ALL) moves the present pages of the range on a
  node outside the caller's nodemask as the new policy allocates them
  (new_page()), one list in address order: unless every page has room on
  the node its policy intends (a batch per node then places them alike),
  each goes where, and under migentry the call stops where, 6.1's
  allocation page by page in that order would (_in_list_order(),
  nodes_in_order()); that ENOMEM is an error of mbind's only under
  MPOL_MF_STRICT (EIO: see do_mbind()). A hole in the range (but for
  MPOL_DEFAULT) is EFAULT where 6.1's walk meets it, vma by vma (hole_at()),
  after the pages of the vmas before it were looked at.
- mbind() gives a shared mapping's range policy to its shared memory object
  (vma_replace_policy()), for every process mapping it, over the vma that
  vma_merge() makes of the range and its neighbours with an equal policy
  (mm.merged_span()), and leaves a vma whose own policy equals the new one
  as it is (mpol_equal()), so the pages it moves go where each one's policy
  now places it: the object's, which may not be the one given
  (policy_runs()).
"""
from __future__ import annotations

import errno
from dataclasses import replace

import numpy as np

from . import pte as P
from .frames import PG_isolated, PG_lru
from .kernel import distinct, keep
from .migrate import MIGRATE_BATCH, ByPolicy, gave_up, isolate_step, migrate_batch, putback_step
from .mm import MM, MPOL_DEFAULT, MPOL_INTERLEAVE, Mempolicy, vma_replace_policy
from .page_alloc import get_vma_policy, intended_nodes, nodes_in_order
from .rmap import Batch
from .sched import call

MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2


def lookup_ptes(mm: MM, vpns: np.ndarray) -> np.ndarray:
    """The pte for each vpn, or -1 where no vma covers it (follow_page's view);
    SHARED_NONE for a shared mapping's page with no pte here."""
    out = np.full(len(vpns), -1, dtype=np.int64)
    if not mm.vmas or not len(vpns):
        return out
    lo, hi = int(vpns.min()), int(vpns.max())
    vma = mm.find_vma(lo)
    if vma is not None and hi < vma.end and not vma.shared:   # the common case: one mapping
        return vma.pte[vpns - vma.start]
    starts = np.array([v.start for v in mm.vmas], dtype=np.int64)
    ends = np.array([v.end for v in mm.vmas], dtype=np.int64)
    pos = np.searchsorted(starts, vpns, side="right") - 1
    ok = (pos >= 0) & (vpns < ends[np.maximum(pos, 0)]) & (vpns >= 0)
    if not ok.any():
        return out
    lo, hi = int(pos[ok].min()), int(pos[ok].max())
    for p in distinct(pos[ok]):
        sel = ok & (pos == p) if lo != hi else ok
        vma = mm.vmas[p]
        e = vma.pte[vpns[sel] - vma.start]
        if vma.shared:
            e = np.where(e == 0, SHARED_NONE, e)
        out[sel] = e
    return out


SHARED_NONE = -2   # no pte in a shared mapping: follow_page() finds no page (-ENOENT)


def page_status(ptes: np.ndarray) -> np.ndarray:
    """do_pages_stat(): node of each present page, else -EFAULT / -ENOENT."""
    if len(ptes) and (ptes & P.PRESENT).all() and (ptes > 0).all():    # every page mapped: the usual batch
        return P.pte_node(ptes)
    st = np.where(ptes == -1, -errno.EFAULT, 0)
    st = np.where(ptes == 0, -errno.EFAULT, st)
    st = np.where(ptes == SHARED_NONE, -errno.ENOENT, st)
    npres = (ptes > 0) & ((ptes & P.PRESENT) == 0)
    st = np.where(npres, -errno.ENOENT, st)
    pres = (ptes > 0) & ((ptes & P.PRESENT) != 0)
    return np.where(pres, P.pte_node(np.maximum(ptes, 0)), st)


def stat_step(k, mm: MM, vpns: np.ndarray) -> np.ndarray:
    return page_status(lookup_ptes(mm, vpns))


def collect_step(k, mm: MM, vpns: np.ndarray, target: int, flags: int, queued_before: bool,
                 rest: bool = True):
    """add_page_for_migration() over pages named in a row for one target.
    6.1's do_pages_move() migrates the pages it has queued as soon as a page is
    not queued (its error, or its node if it is on the target already, stored
    first) and looks the pages after that one up afterwards. So this takes the
    pages not queued before the first queued one (each migrates nothing, unless
    queued_before: pages an earlier call queued are waiting), then the queued
    ones, then the first one not queued after those, and stops there. When
    they are the rest of the run (``rest``), nothing waits, no page it
    queues is named again and the target has room for them all, it takes
    them all as one list instead.
    Returns the statuses of the pages taken (a queued page's node, for now),
    the isolated pages as (positions, Batch) by node, how many pages it took,
    and whether the last of them ends the list, which is to be migrated now."""
    ptes = lookup_ptes(mm, vpns)
    status = page_status(ptes)      # a present page's status is its node: there already, done
    pres = status >= 0
    if pres.all():
        gp = ptes >> P.OFF_SHIFT
        queued = status != target
    else:
        gp = np.where(pres, np.maximum(ptes, 0) >> P.OFF_SHIFT, -1)
        queued = pres & (status != target)
    every = bool(queued.all())      # every page present, none on the target: the usual batch
    repeated = False                # a page queued here named again after it
    idx = None if every else np.flatnonzero(queued)
    g = gp if every else gp[idx]
    if len(g):
        nd = g >> P.NODE_SHIFT
        shared = np.zeros(len(g), dtype=bool)
        onlru = np.zeros(len(g), dtype=bool)
        nodes = distinct(nd)
        for n in nodes:
            sel = slice(None) if len(nodes) == 1 else nd == n
            pf = g[sel] & P.PFN_MASK
            fr = k.nodes[n]
            if not flags & MPOL_MF_MOVE_ALL:
                shared[sel] = fr.mapcount[pf] > 1
            onlru[sel] = (fr.flags[pf] & (PG_lru | PG_isolated)) == PG_lru
        # mapcount before isolation: a shared page is -EACCES however often it is named;
        # then isolate_lru_page() fails (-EBUSY) for a page on no LRU list: isolated by
        # another migration, or by this one (the same page named again)
        bad = shared | ~onlru
        live = np.flatnonzero(~bad)
        v = (vpns if every else vpns[idx])[live]
        if len(live) > 1 and not (np.diff(v) > 0).all():    # distinct pages (an mm maps a page once)
            _, first = np.unique(g[live], return_index=True)
            again = np.ones(len(live), dtype=bool)
            again[first] = False
            bad[live[again]] = True
            repeated = bool(again.any())
        if bad.any():
            pos = np.flatnonzero(bad) if every else idx[bad]
            status[pos] = np.where(shared[bad], -errno.EACCES, -errno.EBUSY)
            queued[pos] = False
            every = False
    n = len(vpns)
    if every:
        h, f = 0, n
    else:
        q = np.flatnonzero(queued)
        if rest and not queued_before and not repeated and len(q) <= room_step(k, target):
            # no page queued named twice (a page not queued stays so: on the target, shared,
            # a hole, busy elsewhere) and room for every one on the target: migrating the
            # queued pages at each page not queued, as 6.1 does, moves the same pages to the
            # same nodes as one list, in one migration instead of one per page not queued (no
            # page's status depends on another's migration, and no list runs out of memory,
            # where the order of the lists decides which pages move). The list ends at a page
            # not queued if one comes after the last queued page: the next node's check
            # (ENODEV) comes after its migration then, as in 6.1
            return status, _isolate(k, q, gp[q]), n, bool(len(q)) and int(q[-1]) < n - 1
        if queued_before:
            h = 0
        else:
            if not len(q):
                return status, [], n, False
            h = int(q[0])
        stop = np.flatnonzero(~queued[h:])
        f = h + int(stop[0]) if len(stop) else n    # the first page not queued after the queued ones
    used = min(f + 1, n)
    return status[:used], _isolate(k, np.arange(h, f), gp[h:f]), used, f < n


def _isolate(k, pos: np.ndarray, g: np.ndarray) -> list:
    """isolate_lru_page() of queued pages (every one on the LRU: the caller
    checked, in the same step): (positions, Batch) by node."""
    batches = []
    nd = g >> P.NODE_SHIFT
    for node in distinct(nd):
        p, pf = keep(nd == node, pos, g & P.PFN_MASK)
        isolate_step(k, node, pf)
        batches.append((p, _batch(k, node, pf)))
    return batches


def _batch(k, node: int, pf: np.ndarray) -> Batch:
    """The isolated pages pf of a node with their rmap (anon_vma, index)."""
    fr = k.nodes[node]
    return Batch(node, pf, fr.anon_vma[pf].astype(np.int64), fr.index[pf].astype(np.int64))


def merge_batches(batches: list) -> list:
    """One (positions, Batch) per source node: what several calls queued is one list."""
    if len(batches) < 2:
        return batches
    out = []
    for node in sorted({b.node for _, b in batches}):
        mine = [(p, b) for p, b in batches if b.node == node]
        if len(mine) == 1:
            out.append(mine[0])
            continue
        cat = [np.concatenate(x) for x in zip(*[(p, b.pfns, b.av, b.index) for p, b in mine])]
        out.append((cat[0], Batch(node, *cat[1:])))
    return out


def room_step(k, node: int) -> int:
    """Frames a migration target may take (alloc_migration_target(): down to min)."""
    fr = k.nodes[node]
    return max(0, fr.nr_free - fr.wmark_min)


async def _in_list_order(k, batches: list, target: int | ByPolicy) -> tuple[list, int | ByPolicy]:
    """6.1's migrate_pages() walks the list in the order named (mbind's: address
    order, new_page() allocating each page by the policy as it comes) and,
    under migentry, stops at the first page that finds no frame even after
    reclaim: which pages move, and where a policy's fallback puts them,
    depend on that order, not on the pages' nodes. After reclaiming the
    shortfall at once (as alloc_new() does for a batch): with room for all,
    a batch per node moves the same pages (a policy's each to the node it
    gets in list order: ByPolicy.plan, nodes_in_order()); otherwise the pages
    that fit go first, a batch per node, then the first page after them
    alone (the one that runs out; by a policy, planned to find none), then
    the rest. Returns the batches and the target (a policy's with its plan)."""
    from .reclaim import direct_reclaim, shrink_node
    policy = isinstance(target, ByPolicy)
    owner = k.node_owner(target.mm.node if policy else target)
    pos = np.concatenate([p for p, _ in batches])
    order = np.argsort(pos, kind="stable")
    vpns = target.off(np.concatenate([b.index for _, b in batches])[order]) if policy else None
    total = len(pos)

    async def fit() -> tuple[int, np.ndarray | None]:
        if not policy:
            return await call(owner, room_step, k, target), None
        nodes = await call(owner, nodes_in_order, k, target.mm, target.pol, vpns)
        return int((nodes >= 0).sum()), nodes
    room, nodes = await fit()
    if room < total:
        if policy:
            await direct_reclaim(k, target.mm, target.pol, total - room)
        else:
            await shrink_node(k, target, total - room)
        room, nodes = await fit()
    if policy:
        v, n = vpns[:room + 1], nodes[:room + 1]
        s = np.argsort(v)
        target = replace(target, plan=(v[s], n[s]))
    if total <= room:
        return batches, target
    which = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(batches)])
    idx = np.concatenate([np.arange(len(p)) for p, _ in batches])

    def per_node(sel: np.ndarray) -> list:
        """(positions, Batch) per node of the pages order[sel], in list order."""
        out = []
        for i in distinct(which[order[sel]]):
            mine = np.sort(order[sel][which[order[sel]] == i])
            out.append((pos[mine], batches[i][1].take(np.sort(idx[mine]))))
        return out
    parts = per_node(np.arange(room)) + per_node(np.arange(room, room + 1)) + per_node(np.arange(room + 1, total))
    return parts, target


async def putback_batches(k, batches: list[Batch]) -> None:
    """putback_movable_pages() of the pages a migration that gave up never tried."""
    for b in batches:
        if len(b):
            await call(k.node_owner(b.node), putback_step, k, b, np.ones(len(b), dtype=bool))


async def migrate_isolated(k, batches, target: int | ByPolicy, cpu: int,
                           status: np.ndarray | None = None, fits: bool = False) -> int:
    """migrate_pages() of the queued pages, in list order where that matters
    (_in_list_order(): several nodes' pages, or a policy's, which a batch
    allocates grouped by node), unless the caller knows every page ``fits``
    as it would one at a time; with status, store each one's node
    (move_pages_and_store_status(): the target) or -errno. Returns how many
    did not move, or -ENOMEM where it gave up (gave_up()), the rest put back."""
    batches = merge_batches(batches)
    if not fits and (len(batches) > 1 or isinstance(target, ByPolicy)):
        batches, target = await _in_list_order(k, batches, target)
    failed = 0
    for i, (pos, b) in enumerate(batches):
        for a in range(0, len(b), MIGRATE_BATCH):
            sl = slice(a, a + MIGRATE_BATCH)
            res = await migrate_batch(k, b.take(sl), target, cpu)
            if status is not None:
                status[pos[sl]] = np.where(res == 0, target, res)
            if gave_up(k, res):
                await putback_batches(k, [b.take(slice(a + MIGRATE_BATCH, None))] + [c for _, c in batches[i + 1:]])
                return -errno.ENOMEM
            failed += int((res != 0).sum())
    return failed


COLLECT_WINDOW = 64     # the fewest pages a look-up after a migration takes on


async def do_pages_move(k, mm: MM, vpns: np.ndarray, nodes: np.ndarray, flags: int,
                        cpu: int | None = None) -> np.ndarray:
    """cpu: the node of the task calling move_pages(), which allocates the new
    pages (numa_local/numa_other); the target process's own when it calls.
    Raises MovePagesError: ENODEV for a node not online, ENOMEM where a
    migration gave up (migentry); the pages before have been processed."""
    n = len(vpns)
    cpu = mm.node if cpu is None else cpu
    status = np.zeros(n, dtype=np.int64)
    owner = k.node_owner(mm.node)
    nr = k.topo.nr_nodes
    # runs of consecutive equal targets
    brk = np.flatnonzero(np.diff(nodes) != 0) + 1 if n else np.zeros(0, np.int64)
    starts = np.concatenate(([0], brk)).tolist() if n else []
    ends = np.concatenate((brk, [n])).tolist() if n else []
    for a, b in zip(starts, ends):
        target = int(nodes[a])
        if not 0 <= target < nr:
            raise _enodev(target, nr, a)
        pos, w, pending = a, b - a, []
        while pos < b:
            st, batches, used, ends_list = await call(owner, collect_step, k, mm, vpns[pos:min(b, pos + w)],
                                                      target, flags, bool(pending), pos + w >= b)
            status[pos:pos + used] = st
            pending += [(p + pos, bt) for p, bt in batches]
            pos += used
            if not ends_list and pos < b:
                w *= 2                  # the list goes on past this look-up
                continue
            if pending and await migrate_isolated(k, pending, target, cpu, status) < 0:
                done, last = _failed_list(status, pending, a, pos)
                if last and b < n and not 0 <= int(nodes[b]) < nr:
                    # the list that found no room ends the run: 6.1 meets the next node
                    # (out_flush) before that list's migration and its error
                    raise _enodev(int(nodes[b]), nr, b)
                raise MovePagesError(errno.ENOMEM, f"move_pages: out of memory on node {target}: "
                                                   f"the {done} pages before the list that found no room "
                                                   "were processed, and that list's pages before the first "
                                                   "one that found no frame have moved", done)
            pending = []
            w = max(COLLECT_WINDOW, 2 * used)
    return status


def _failed_list(status: np.ndarray, pending: list, a: int, end: int) -> tuple[int, bool]:
    """Where 6.1 would have stopped when the migration of ``pending`` (pages
    a..end-1 of a run, the rest not queued) gave up, a list ending at each page
    not queued, as 6.1 flushes there: how many pages it had processed (stored
    a status for), those before the list the first failed page was in, and
    whether that list was the run's last (no page not queued after it)."""
    queued = np.concatenate([p for p, _ in pending])
    failed = queued[status[queued] == -errno.ENOMEM]
    first = int(failed.min()) if len(failed) else int(queued.max())
    mine = np.zeros(end - a, dtype=bool)
    mine[queued - a] = True
    before, after = np.flatnonzero(~mine[:first - a]), np.flatnonzero(~mine[first - a:])
    return (a + int(before[-1]) + 1 if len(before) else a), not len(after)


def _enodev(node: int, nr: int, done: int) -> "MovePagesError":
    return MovePagesError(errno.ENODEV, f"move_pages: node {node} is not online (0..{nr - 1}); "
                                        f"the {done} pages before it were processed", done)


class MovePagesError(OSError):
    """A whole-call error of move_pages() (ENODEV, ENOMEM): the first `done`
    pages have been processed (moved, or their error stored) already."""

    def __init__(self, err: int, msg: str, done: int):
        super().__init__(err, msg)
        self.done = done


def nodes_remap(old: list[int], new: list[int]) -> dict[int, int]:
    """node_remap() of each source (do_migrate_pages()): the i-th old node to the
    (i mod |new|)-th new one. Sets of different sizes cannot keep the nodes'
    relative placement, so a source that is also a destination stays."""
    o, w = sorted(set(old)), sorted(set(new))
    return {s: w[i % len(w)] for i, s in enumerate(o) if len(o) == len(w) or s not in w}


def collect_process_step(k, mm: MM, mapping: dict[int, int], move_all: bool) -> list:
    """queue_pages_range() of migrate_to_node(): isolate every present page on a
    source node, as (dest, Batch). No MPOL_MF_STRICT there, so migrate_page_add()
    skips a page it cannot isolate (under another migration) silently: it is
    not one of the pages not moved that migrate_pages(2) returns."""
    groups: dict[tuple[int, int], list] = {}
    for vma in mm.vmas:
        ptes = vma.pte
        pres = np.flatnonzero((ptes & P.PRESENT) != 0)
        if not len(pres):
            continue
        g = ptes[pres] >> P.OFF_SHIFT
        nd = g >> P.NODE_SHIFT
        for s, d in mapping.items():
            if s == d:
                continue
            sel = nd == s
            if not sel.any():
                continue
            fr = k.nodes[s]
            pf = g[sel] & P.PFN_MASK
            if not move_all:
                pf = pf[fr.mapcount[pf] == 1]
            pf = pf[isolate_step(k, s, pf)]
            if len(pf):
                groups.setdefault((s, d), []).append(pf)
    out = []
    for (s, d), parts in groups.items():
        out.append((d, _batch(k, s, np.concatenate(parts))))
    return out


def migrate_order(sources: list[int], mapping: dict[int, int]) -> list[tuple[int, int]]:
    """do_migrate_pages()'s order of (source, dest): from the sources left, the
    first whose dest is not one of them (so no page lands where a move from
    that node is still to come), else the last that moves. A cycle (0 -> 1,
    1 -> 0) still moves the pages of one node twice, as 6.1 does."""
    tmp, order = sorted(set(sources) | set(mapping)), []
    while True:
        pick = None
        for s in tmp:
            if mapping.get(s, s) != s:          # a node that maps to itself does not move
                pick = s
                if mapping[s] not in tmp:
                    break
        if pick is None:
            return order
        tmp.remove(pick)
        order.append((pick, mapping[pick]))


async def do_migrate_pages(k, mm: MM, mapping: dict[int, int], move_all: bool,
                           sources: list[int] | None = None) -> int:
    """The number of pages that could not be moved; OSError(ENOMEM) where a
    migration gave up (migentry: migrate_to_node()'s error ends the call).
    One node at a time, in 6.1's order (``sources``: the from mask, whose
    nodes that do not move still steer it), its pages queued just before
    they move (migrate_to_node())."""
    left = 0
    for s, d in migrate_order(sources or list(mapping), mapping):
        batches = await call(k.node_owner(mm.node), collect_process_step, k, mm, {s: d}, move_all)
        for _, b in batches:
            failed = await migrate_isolated(k, [(np.arange(len(b)), b)], d, mm.node)
            if failed < 0:
                raise OSError(errno.ENOMEM, f"migrate_pages: out of memory on node {d}; "
                                            f"the pages not moved yet stay where they were")
            left += failed
    return left


# -- mbind(2) with MPOL_MF_MOVE / MPOL_MF_MOVE_ALL / MPOL_MF_STRICT (do_mbind()) --
MPOL_MF_STRICT = 1 << 0
MPOL_MF_VALID = MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL


def queue_pages(k, ranges, nmask: tuple[int, ...], flags: int):
    """queue_pages_range() of 6.1 over [(vma, lo, hi)]: the present pages on a node
    outside nmask (the caller's nodemask as given: empty for default and local,
    so every page). MPOL_MF_STRICT alone: the first such page is EIO.
    MPOL_MF_MOVE(_ALL): such a page mapped once (or any, with MOVE_ALL) is
    isolated; a shared one is left where it is, silently (migrate_page_add()).
    One not on the LRU is left too, but with STRICT it ends the walk at the end
    of its page table (the pte range's return) and the call is EIO once the
    rest has moved. Returns the isolated pages as (positions, Batch) by node
    and whether one was unmovable so."""
    if not flags & MPOL_MF_VALID or not ranges:
        return [], False
    vpns, gps, ends = [], [], []
    for vma, lo, hi in ranges:
        p = vma.pte[lo:hi]
        i = np.flatnonzero((p & P.PRESENT) != 0)
        vpns.append(vma.start + lo + i)
        gps.append(p[i] >> P.OFF_SHIFT)
        ends.append(np.full(len(i), vma.start + hi))    # where this vma's part of the walk ends
    vpn, g, end = (np.concatenate(a) for a in (vpns, gps, ends))
    vpn, g, end = keep(~np.isin(g >> P.NODE_SHIFT, nmask), vpn, g, end)
    if not len(vpn):
        return [], False
    if not flags & (MPOL_MF_MOVE | MPOL_MF_MOVE_ALL):
        raise OSError(errno.EIO, f"mbind: page {int(vpn[0]):#x} is on node {int(g[0] >> P.NODE_SHIFT)}, "
                                 f"outside the nodemask (MPOL_MF_STRICT)")
    once = np.ones(len(g), dtype=bool)
    onlru = np.zeros(len(g), dtype=bool)
    for n in distinct(g >> P.NODE_SHIFT):
        sel = (g >> P.NODE_SHIFT) == n
        pf = g[sel] & P.PFN_MASK
        fr = k.nodes[n]
        if not flags & MPOL_MF_MOVE_ALL:
            once[sel] = fr.mapcount[pf] == 1
        onlru[sel] = (fr.flags[pf] & (PG_lru | PG_isolated)) == PG_lru
    vpn, g, end, onlru = keep(once, vpn, g, end, onlru)
    unmovable = bool(flags & MPOL_MF_STRICT) and not onlru.all()
    take = onlru
    if unmovable:
        u = int(np.flatnonzero(~onlru)[0])
        ptrs = k.page_size // 8         # PTRS_PER_PTE: a page table is one page of 8-byte ptes
        take = onlru & (vpn < min(int(end[u]), (int(vpn[u]) // ptrs + 1) * ptrs))
    vpn, g = keep(take, vpn, g)
    return _isolate(k, np.arange(len(g)), g), unmovable


def hole_at(ranges, vpn: int, npages: int) -> int:
    """queue_pages_test_walk() without MPOL_MF_DISCONTIG_OK: the index of the
    first vma of the range at which the walk meets a hole (-EFAULT, before
    that vma's pages): a hole at the head, met at the first vma, or one
    after a vma that ends before the range does; len(ranges) if none."""
    end = vpn + npages
    for i, (vma, lo, _) in enumerate(ranges):
        if i == 0 and vma.start + lo > vpn:
            return 0
        if vma.end < end and (i + 1 == len(ranges) or ranges[i + 1][0].start > vma.end):
            return i
    return len(ranges)


def mbind_step(k, mm: MM, vpn: int, npages: int, pol: Mempolicy, nmask: tuple[int, ...], flags: int):
    """do_mbind() under mmap_write_lock: queue the pages to move (queue_pages()),
    then give the range its policy (mbind_range(): a vma whose policy is
    equal already is left as it is, not even split (mpol_equal()); the
    others are split to the range and take it (vma_replace_policy(): a
    shared mapping's shared memory object too, over the vma merged with its
    neighbours of equal policy); default is no vma policy:
    the task's applies). With MPOL_DEFAULT a range may have holes
    (MPOL_MF_DISCONTIG_OK), not be all one. Otherwise the walk meets a hole
    vma by vma (hole_at()): the pages of the vmas before it are looked at
    first (EIO from STRICT alone; an unisolatable page under STRICT ends the
    walk before the hole); then EFAULT, the pages queued put back, the policy
    not set. No page of the range mapped is EFAULT in every mode. Returns the
    queued pages (positions in address order, Batch) by node, whether one was
    unmovable, and the runs they move in (policy_runs())."""
    from .process import split_vma
    ranges = mm.ranges(vpn, npages, holes=True)
    hole = len(ranges) if pol.mode == MPOL_DEFAULT else hole_at(ranges, vpn, npages)
    batches, unmovable = queue_pages(k, ranges[:hole], nmask, flags)
    if hole < len(ranges) and not unmovable:
        for _, b in batches:
            k.putback(b.node, b.pfns)       # do_mbind()'s up_out: putback_movable_pages()
        raise OSError(errno.EFAULT, f"mbind: pid {mm.pid}: {vpn << k.page_shift:#x} +{npages} pages: "
                                    f"a hole in the range, met at {ranges[hole][0]!r}")
    new = None if pol.mode == MPOL_DEFAULT else pol
    for vma, lo, hi in ranges:
        if vma.policy == new:       # mpol_equal(vma_policy(vma), new_pol): nothing to do
            continue
        if lo > 0:
            vma = split_vma(k, vma, lo)
            hi -= lo
        if hi < vma.npages:
            split_vma(k, vma, hi)
        vma_replace_policy(vma, new)
    return batches, unmovable, policy_runs(k, mm, vpn, npages, batches)


def policy_runs(k, mm: MM, vpn: int, npages: int, batches: list) -> list:
    """Where new_page() allocates each queued page once the range has its
    policy: by get_vma_policy() (a shared mapping's page by its object's
    policy there, which an mbind that found its vma's policy equal did not
    set), by its offset (ByPolicy.base). Returns the runs of pages in
    address order that allocate alike, in order, as (ByPolicy, their
    (positions, Batch) by node, whether they fit as it intends:
    fits_intended(), which do_mbind() asks again of a later run when it
    moves); one run unless the range holds several."""
    if not batches:
        return []
    pos = np.concatenate([p for p, _ in batches])
    order = np.argsort(pos, kind="stable")
    vpns = np.concatenate([b.index for _, b in batches])[order]
    key = np.zeros(len(vpns), dtype=np.int64)
    dsts: dict[tuple, int] = {}
    for vma, lo, hi in mm.ranges(vpn, npages, holes=True):
        inr = np.flatnonzero((vpns >= vma.start + lo) & (vpns < vma.start + hi))
        if not len(inr):
            continue
        for p, sel in get_vma_policy(mm, vma, vpns[inr]):
            key[inr[sel]] = dsts.setdefault((p, vma.anon_vma.base), len(dsts))
    if len(dsts) == 1:
        ((p, base),) = dsts
        dst = ByPolicy(mm, p, base=base)
        return [(dst, batches, fits_intended(k, dst, batches))]
    kinds = {i: kb for kb, i in dsts.items()}
    cut = np.flatnonzero(np.diff(key)) + 1
    out = []
    for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [len(key)])).tolist()):
        lo_pos, hi_pos = pos[order[a]], pos[order[b - 1]]
        run = []
        for p, bt in batches:
            sel = (p >= lo_pos) & (p <= hi_pos)
            if sel.any():
                run.append((p[sel], bt.take(sel)))
        p, base = kinds[int(key[a])]
        dst = ByPolicy(mm, p, base=base)
        out.append((dst, run, fits_intended(k, dst, run)))
    return out


def fits_intended(k, dst: ByPolicy, batches: list) -> bool:
    """Has every page room above low on the node its policy intends? Then none
    falls back, so a batch per node places them as 6.1's new_page() one at a
    time in address order would: migrate_isolated()'s batches stand."""
    vpns = dst.off(batches[0][1].index if len(batches) == 1 else np.concatenate([b.index for _, b in batches]))
    ns = dst.pol.nodes
    if dst.pol.mode == MPOL_INTERLEAVE:      # by offset: intended_nodes()
        need = dict(zip(ns, np.bincount(vpns % len(ns), minlength=len(ns)).tolist()))
    else:                                   # one node for all
        need = {int(intended_nodes(k, dst.mm, dst.pol, vpns[:1])[0][0]): len(vpns)}
    return all(n <= k.nodes[z].nr_free - k.nodes[z].wmark_low for z, n in need.items())


async def do_mbind(k, mm: MM, vpn: int, npages: int, pol: Mempolicy, nmask: tuple[int, ...],
                   flags: int) -> None:
    """mbind(2) of [vpn, vpn+npages) as 6.1's do_mbind(): the pages queued move
    as the range's new policy allocates them (new_page(): interleave by offset,
    bind and preferred on their nodes, with the zonelist's fallback; default,
    the task's policy; a shared mapping's page, its object's policy there).
    EIO when a page could not be isolated under MPOL_MF_STRICT, or when,
    with STRICT, some page did not move (ENOMEM included: migrate_pages()
    returns -ENOMEM as nr_failed, so do_mbind() says EIO under STRICT and 0
    without); without STRICT the call succeeds whatever did not move. The
    pages migrate as one list in address order where memory may run out
    (migrate_isolated()), a run of pages that allocate alike at a time
    (policy_runs()): where one gives up, the later ones are put back, as
    6.1's migrate_pages() stops the whole list there."""
    if pol.mode == MPOL_DEFAULT:
        flags &= ~MPOL_MF_STRICT
    owner = k.node_owner(mm.node)
    batches, unmovable, runs = await call(owner, mbind_step, k, mm, vpn, npages, pol, nmask, flags)
    failed = 0
    for i, (dst, run, fits) in enumerate(runs):
        if i:       # the runs before took memory: does this one fit now?
            fits = await call(owner, fits_intended, k, dst, run)
        got = await migrate_isolated(k, run, dst, mm.node, fits=fits)
        if got < 0:
            await putback_batches(k, [b for _, later, _ in runs[i + 1:] for _, b in later])
            failed = got
            break
        failed += got
    if unmovable or (failed and flags & MPOL_MF_STRICT):
        raise OSError(errno.EIO, f"mbind: {'a page could not be isolated' if unmovable else 'pages did not move'} "
                                 f"(MPOL_MF_STRICT)")
