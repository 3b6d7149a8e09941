"""move_pages(2) and migrate_pages(2) (mm/migrate.c, mm/mempolicy.c).

Rules (KERNEL.md, with Linux 6.1 where the man page is vague):
- Pages are taken in order; consecutive pages with the same target form a
  batch that is isolated, then migrated when the target changes or the list
  ends. An invalid target ends the call with ENODEV after the batches before
  it have moved.
- Per page: no vma or pte_none -> -EFAULT; a non-present pte (swapped out,
  under migration) -> -ENOENT; already on the target -> the node (nothing
  counted); mapped more than once without MPOL_MF_MOVE_ALL -> -EACCES (each
  time it is named: the check precedes isolation); not isolatable (the same
  page earlier in the batch, or another migration) -> -EBUSY; then the node
  it moved to, or the migration's -errno.
- migrate_pages() moves every present page of the process from old_nodes to
  the corresponding new node (nodes_remap; with sets of different sizes a
  source that is also a destination stays) and returns the number of pages
  that could not be moved.
"""
from __future__ import annotations

import errno

import numpy as np

from . import pte as P
from .kernel import distinct, keep
from .migrate import MIGRATE_BATCH, isolate_step, migrate_batch
from .mm import MM
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


def collect_step(k, mm: MM, vpns: np.ndarray, target: int, flags: int):
    """add_page_for_migration() over a batch: statuses, and the isolated pages by node."""
    ptes = lookup_ptes(mm, vpns)
    status = page_status(ptes)      # a present page's status is its node: there already, done
    pres = status >= 0
    if pres.all():                  # every page mapped: the usual batch
        gp, node = ptes >> P.OFF_SHIFT, status
        cand = node != target
    else:
        gp = np.where(pres, np.maximum(ptes, 0) >> P.OFF_SHIFT, -1)
        node = np.where(pres, gp >> P.NODE_SHIFT, -1)
        cand = pres & (node != target)
    batches = []
    idx = np.flatnonzero(cand)
    if not len(idx):
        return status, batches
    g = gp[idx]
    if not flags & MPOL_MF_MOVE_ALL:
        # mapcount before isolation: a shared page is -EACCES however often it is named
        shared = np.zeros(len(idx), dtype=bool)
        for n in distinct(g >> P.NODE_SHIFT):
            sel = (g >> P.NODE_SHIFT) == n
            shared[sel] = k.nodes[n].mapcount[g[sel] & P.PFN_MASK] > 1
        status[idx[shared]] = -errno.EACCES
        idx, g = keep(~shared, idx, g)
    # the same page twice: the second one finds it isolated already
    if len(g) > 1 and not (np.diff(g) > 0).all():
        _, first = np.unique(g, return_index=True)
        dup = np.ones(len(idx), dtype=bool)
        dup[first] = False
        status[idx[dup]] = -errno.EBUSY
        idx, g = idx[~dup], g[~dup]
    for n in distinct(g >> P.NODE_SHIFT):
        pos, pf = keep((g >> P.NODE_SHIFT) == n, idx, g)
        pf = pf & P.PFN_MASK
        fr = k.nodes[n]
        ok = isolate_step(k, n, pf)
        status[pos[~ok]] = -errno.EBUSY
        pos, pf = keep(ok, pos, pf)
        if len(pf):
            batches.append((pos, Batch(n, pf, fr.anon_vma[pf].astype(np.int64),
                                       fr.index[pf].astype(np.int64))))
    return status, batches


async def migrate_isolated(k, batches, target: int, cpu: int, status: np.ndarray) -> None:
    for pos, b in batches:
        for a in range(0, len(b), MIGRATE_BATCH):
            sl = slice(a, a + MIGRATE_BATCH)
            res = await migrate_batch(k, b.take(sl), target, cpu)
            status[pos[sl]] = np.where(res == 0, target, res)


async def do_pages_move(k, mm: MM, vpns: np.ndarray, nodes: np.ndarray, flags: int,
                        cpu: int | None = None) -> np.ndarray:
    """cpu: the node of the task calling move_pages(), which allocates the new
    pages (numa_local/numa_other); the target process's own when it calls."""
    n = len(vpns)
    cpu = mm.node if cpu is None else cpu
    status = np.zeros(n, dtype=np.int64)
    owner = k.node_owner(mm.node)
    # runs of consecutive equal targets
    brk = np.flatnonzero(np.diff(nodes) != 0) + 1 if n else np.zeros(0, np.int64)
    starts = np.concatenate(([0], brk)).tolist() if n else []
    ends = np.concatenate((brk, [n])).tolist() if n else []
    for a, b in zip(starts, ends):
        target = int(nodes[a])
        if target < 0 or target >= k.topo.nr_nodes:
            raise MovePagesENODEV(status[:a], target)
        st, batches = await call(owner, collect_step, k, mm, vpns[a:b], target, flags)
        await migrate_isolated(k, batches, target, cpu, st)
        status[a:b] = st
    return status


class MovePagesENODEV(Exception):
    """A target node not online: the pages before it have moved already."""

    def __init__(self, done: np.ndarray, node: int):
        super().__init__(node)
        self.done, self.node = done, node


def nodes_remap(old: list[int], new: list[int]) -> dict[int, int]:
    """node_remap() of each source (do_migrate_pages()): the i-th old node to the
    (i mod |new|)-th new one. Sets of different sizes cannot keep the nodes'
    relative placement, so a source that is also a destination stays."""
    o, w = sorted(set(old)), sorted(set(new))
    return {s: w[i % len(w)] for i, s in enumerate(o) if len(o) == len(w) or s not in w}


def collect_process_step(k, mm: MM, mapping: dict[int, int], move_all: bool):
    """queue_pages_range(): isolate every present page on a source node."""
    groups: dict[tuple[int, int], list] = {}
    busy = 0
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
            ok = isolate_step(k, s, pf)
            busy += int((~ok).sum())
            pf = pf[ok]
            if len(pf):
                groups.setdefault((s, d), []).append(pf)
    out = []
    for (s, d), parts in groups.items():
        pf = np.concatenate(parts)
        fr = k.nodes[s]
        out.append((d, Batch(s, pf, fr.anon_vma[pf].astype(np.int64), fr.index[pf].astype(np.int64))))
    return out, busy


async def do_migrate_pages(k, mm: MM, mapping: dict[int, int], move_all: bool) -> int:
    batches, left = await call(k.node_owner(mm.node), collect_process_step, k, mm, mapping, move_all)
    for d, b in batches:
        for a in range(0, len(b), MIGRATE_BATCH):
            res = await migrate_batch(k, b.take(slice(a, a + MIGRATE_BATCH)), d, mm.node)
            left += int((res != 0).sum())
    return left
