"""Page allocation under a mempolicy (mm/mempolicy.c, mm/page_alloc.c).

Rules:
- A page allocates by get_vma_policy(): a private mapping's own policy, else
  the task's; a shared mapping's by its offset in the shared memory object
  (shmem_get_policy(): the object's shared policy there, else the task's;
  the vma's own is not looked at). So one fault's pages may allocate by
  several policies, a group each.
- The intended node of a page: the CPU's node (default/local), the preferred
  node, the nearest bound node to the CPU (bind), the nearest preferred node
  to the CPU (preferred-many), or the interleave node by the page's offset
  (interleave: nodes[off % n], as offset_il_node()). The offset is the vpn
  in a private mapping (vm_pgoff is the address), the offset in the object
  in a shared one (vpn - base): what the allocators below take as ``vpns``.
  (6.1's shmem faults add the object's inode number, which the model has
  none of: README, Status.)
- Fast path: walk the intended node's zonelist (nearest first; for bind, the
  CPU's zonelist restricted to the bound nodes) taking frames while a node stays above its low
  watermark; slow path: the same walk down to the min watermark. Direct
  reclaim and OOM are the caller's (a step never sleeps).
- Preferred-many (alloc_pages_preferred_many()) walks twice: the CPU's
  zonelist within the preferred nodes (fast path, then slow path without
  reclaim: it may fail), then the CPU's whole zonelist, as the default
  policy would; its direct reclaim is the second walk's, along the whole
  zonelist (zonelist_walks()).
- Many pages at once: the pages of one intended node walk, then the next
  node's; nodes_in_order() gives the nodes they would get one at a time in
  the order given (6.1's migrate_pages() over mbind's list), for
  alloc_planned() to take them there.
- NUMA counters as zone_statistics(): numa_hit on the node used when it is
  the intended one, else numa_miss there and numa_foreign on the intended
  one; numa_local when it is the CPU's node, else numa_other;
  numa_interleave when an interleave allocation got its intended node.
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .mm import MM, VMA, MPOL_BIND, MPOL_INTERLEAVE, MPOL_PREFERRED, MPOL_PREFERRED_MANY, Mempolicy

NOT_ALLOCATED = -1


def get_vma_policy(mm: MM, vma: VMA, vpns: np.ndarray) -> list[tuple[Mempolicy, slice | np.ndarray]]:
    """get_vma_policy() of the pages of vma at vpns: (policy, their selection)
    per policy (see the rules)."""
    if not vma.shared:
        return [(vma.policy if vma.policy is not None else mm.policy, slice(None))]
    av = vma.anon_vma
    if not av.policy:
        return [(mm.policy, slice(None))]
    off = vpns - av.base
    left = np.ones(len(vpns), dtype=bool)
    out = []
    for start, end, pol in av.policy:       # mpol_shared_policy_lookup()
        sel = (off >= start) & (off < end)
        if sel.any():
            out.append((pol, sel))
            left &= ~sel
    if left.any():
        out.append((mm.policy, left))
    return out


def vma_policy(vma: VMA, vpn: int) -> Mempolicy | None:
    """__get_vma_policy() of one page, with no fallback to the task's policy
    (what get_mempolicy(MPOL_F_ADDR) reports): a shared mapping's
    vm_ops->get_policy, shmem_get_policy(), the object's shared policy at the
    page's offset (mpol_shared_policy_lookup(); the vma's own is not looked
    at); a private mapping's vma->vm_policy. None: it has none."""
    if not vma.shared:
        return vma.policy
    av = vma.anon_vma
    off = vpn - av.base
    return next((pol for start, end, pol in av.policy if start <= off < end), None)


def policy_of(mm: MM, vma: VMA, vpn: int | None = None) -> Mempolicy:
    """get_vma_policy() of one page of vma (the vma's first without vpn)."""
    pol = vma_policy(vma, vma.start if vpn is None else vpn)
    return mm.policy if pol is None else pol


def offsets(vma: VMA, vpns: np.ndarray) -> np.ndarray:
    """The pages' offsets (interleave's index): in the shared memory object for
    a shared mapping, the vpns themselves for a private one (base 0)."""
    return vpns - vma.anon_vma.base if vma.anon_vma.base else vpns


def intended_nodes(k, mm: MM, pol: Mempolicy, vpns: np.ndarray) -> tuple[np.ndarray, tuple | None, int]:
    n = len(vpns)
    if pol.mode == MPOL_INTERLEAVE:
        ns = np.asarray(pol.nodes, dtype=np.int64)
        return ns[vpns % len(ns)], None, pol.mode
    if pol.mode == MPOL_PREFERRED:
        return np.full(n, pol.nodes[0], dtype=np.int64), None, pol.mode
    if pol.mode in (MPOL_BIND, MPOL_PREFERRED_MANY):
        first = next(z for z in k.zonelists[mm.node] if z in pol.nodes)
        return np.full(n, first, dtype=np.int64), pol.nodes, pol.mode
    return np.full(n, mm.node, dtype=np.int64), None, pol.mode


def zonelist_walks(k, mm: MM, pol: Mempolicy, t: int, allowed: tuple | None) -> list[tuple[list[int], int]]:
    """The walks of an allocation intended for node t (intended_nodes()), in
    turn, each down to the low then the min watermark: (nodes in zonelist
    order, the node its zone_statistics() count as the preferred one). One
    walk: of t's zonelist (preferred, interleave and local name the node,
    with no nodemask), or under bind of the CPU's zonelist within the bound
    nodes (policy_node() keeps the local node, policy_nodemask() gives the
    mask; preferred zone: t, the first of them). Preferred-many's two
    (alloc_pages_preferred_many()): the CPU's zonelist within the preferred
    nodes (preferred zone: t), then the CPU's whole zonelist (nodemask NULL:
    preferred zone, the CPU's node). The second walk meets the preferred
    nodes again below min: they give nothing."""
    if allowed is None:
        return [(k.zonelists[t], t)]
    within = [z for z in k.zonelists[mm.node] if z in allowed]
    if pol.mode == MPOL_PREFERRED_MANY:
        return [(within, t), (list(k.zonelists[mm.node]), mm.node)]
    return [(within, t)]


def alloc_for(k, mm: MM, vma: VMA, vpns: np.ndarray) -> np.ndarray:
    """Allocate one frame per vpn of vma, each by its policy (get_vma_policy());
    gpfn per page, NOT_ALLOCATED where memory ran out."""
    groups = get_vma_policy(mm, vma, vpns)
    off = offsets(vma, vpns)
    if len(groups) == 1:
        return alloc_policy(k, mm, groups[0][0], off)
    out = np.full(len(vpns), NOT_ALLOCATED, dtype=np.int64)
    for pol, sel in groups:
        out[sel] = alloc_policy(k, mm, pol, off[sel])
    return out


def alloc_policy(k, mm: MM, pol: Mempolicy, vpns: np.ndarray, zero: bool = True) -> np.ndarray:
    """alloc_pages_vma() under policy pol for mm's task: the fault's allocation, and
    mbind's new_page() for a page it migrates (zero=False: about to be copied over)."""
    intended, allowed, mode = intended_nodes(k, mm, pol, vpns)
    out = np.full(len(vpns), NOT_ALLOCATED, dtype=np.int64)
    t0 = int(intended[0]) if len(vpns) else 0
    groups = [(t0, slice(None))] if len(vpns) and (intended == t0).all() else \
        [(t, np.flatnonzero(intended == t)) for t in np.unique(intended).tolist()]
    for t, sel in groups:
        pos = np.arange(len(vpns))[sel]
        for order, pref in zonelist_walks(k, mm, pol, t, allowed):
            for wmark in ("wmark_low", "wmark_min"):
                for z in order:
                    if not len(pos):
                        break
                    fr = k.nodes[z]
                    pfns = fr.alloc(len(pos), getattr(fr, wmark), zero)
                    if len(pfns):
                        got, pos = pos[:len(pfns)], pos[len(pfns):]
                        out[got] = P.gpfn(z, pfns)
                        count_numa(k, z, pref, mm.node, mode, len(pfns))
    return out


def nodes_in_order(k, mm: MM, pol: Mempolicy, vpns: np.ndarray) -> np.ndarray:
    """The node each page would get, allocated one at a time in the order given
    under policy pol (6.1's migrate_pages() walking mbind's list, new_page()
    per page): the first node of its walks (zonelist_walks()) above the low
    watermark, else above min, walk after walk; -1 from the first page none
    is. Allocates nothing. Runs of pages between two nodes reaching a
    watermark go at once."""
    intended, allowed, _ = intended_nodes(k, mm, pol, vpns)
    walks = {t: [o for o, _ in zonelist_walks(k, mm, pol, t, allowed)] for t in np.unique(intended).tolist()}
    ok = np.zeros(len(k.nodes), dtype=bool)
    for orders in walks.values():
        for o in orders:
            ok[o] = True
    low = np.array([max(0, fr.nr_free - fr.wmark_low) if a else 0 for fr, a in zip(k.nodes, ok)])
    mn = np.array([max(0, fr.nr_free - fr.wmark_min) if a else 0 for fr, a in zip(k.nodes, ok)])
    out = np.full(len(vpns), -1, dtype=np.int64)
    pos = 0
    while pos < len(vpns):
        pick = np.full(len(k.nodes), -1, dtype=np.int64)
        cap: dict[int, int] = {}        # a node picked: pages it takes before the choices change
        for t, orders in walks.items():
            z, r = next(((z, int(room[z])) for o in orders for room in (low, mn) for z in o if room[z] > 0),
                        (-1, 0))
            pick[t] = z
            if z >= 0:
                cap[z] = min(cap.get(z, r), r)
        c = pick[intended[pos:]]
        end = len(c) if c[0] >= 0 else 0
        for z, r in cap.items():
            at = np.flatnonzero(c == z)
            if len(at) > r:
                end = min(end, int(at[r]))      # z reaches the watermark: the choices change
        if not end:
            break
        out[pos:pos + end] = c[:end]
        used = np.bincount(c[:end], minlength=len(k.nodes))
        low, mn = np.maximum(low - used, 0), mn - used
        pos += end
    return out


def alloc_planned(k, mm: MM, pol: Mempolicy, vpns: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """alloc_policy() with each page's node decided (nodes_in_order(); -1: none):
    taken there down to min and counted against the node the policy intended;
    NOT_ALLOCATED where the node had none left."""
    intended, allowed, mode = intended_nodes(k, mm, pol, vpns)
    out = np.full(len(vpns), NOT_ALLOCATED, dtype=np.int64)
    for z in np.unique(nodes[nodes >= 0]).tolist():
        fr = k.nodes[z]
        at = np.flatnonzero(nodes == z)
        pfns = fr.alloc(len(at), fr.wmark_min, zero=False)
        at = at[:len(pfns)]
        out[at] = P.gpfn(z, pfns)
        for t, n in zip(*np.unique(intended[at], return_counts=True)):
            # counted as the walk that reaches z first (nodes_in_order()) would count it
            pref = next(p for o, p in zonelist_walks(k, mm, pol, int(t), allowed) if z in o)
            count_numa(k, z, pref, mm.node, mode, int(n))
    return out


def alloc_on(k, node: int, n: int, cpu_node: int) -> np.ndarray:
    """alloc_migration_target(): __GFP_THISNODE, down to the min watermark."""
    fr = k.nodes[node]
    pfns = fr.alloc(n, fr.wmark_min, zero=False)
    count_numa(k, node, node, cpu_node, 0, len(pfns))
    return pfns


def count_numa(k, z: int, intended: int, cpu: int, mode: int, n: int) -> None:
    if not n:
        return
    st = k.stat
    if z == intended:
        st.add(z, "numa_hit", n)
        if mode == MPOL_INTERLEAVE:
            st.add(z, "numa_interleave", n)
    else:
        st.add(z, "numa_miss", n)
        st.add(intended, "numa_foreign", n)
    st.add(z, "numa_local" if z == cpu else "numa_other", n)
    st.add(z, "pgalloc", n)
