"""The whole emulated machine's state, and the small primitives every path shares.

Owners (DESIGN.md principle 1): node N owns Frames N and the page tables of
processes homed on N; the coordinator ("coord") owns the swap device, the swap
cache index, the migration cache and the anon_vma registry. A step names the
owner it runs on; in-process every step runs atomically, whichever arrays it
touches, just as the kernel holds the pte lock and the page lock together.

Transient references (a fault's lookup reference, a get_user_pages pin) are
recorded in `pins` so the oracle can account for every reference
(invariant 3); a migrator's references are marked by PG_isolated instead.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from . import pte as P
from .frames import Frames, PG_isolated, PG_lru, copy_rows, span
from .migcache import MigCache
from .mm import MM, AnonVMA
from .swap import SwapDevice
from .topology import Topology
from .vmstat import Vmstat

BUGS = {
    "r1-no-pte-recheck": "do_swap_page maps without the pte_same recheck under the pte lock (R1)",
    "r1b-no-private-recheck": "do_swap_page skips the PageSwapCache && private == entry check after lock_page (R1b)",
    "r2-anon-vma-not-pinned": "migration does not pin the anon_vma before unmapping; remap looks it up through the page (R2)",
    "r3-fork-links-at-head": "fork links the child's vma at the head of the anon_vma list (R3)",
    "no-refcount-freeze": "migration moves the mapping without checking the expected reference count",
    "tlb-no-epoch": "a node's TLB installs the ptes of a fault even when a flush came after they were read",
    "unordered-page-locks": "a fault or swapoff batch takes the page locks that are free and sleeps on the rest "
                            "holding them, in no order (two batches can deadlock: ABBA)",
}


class Kernel:
    def __init__(self, topo: Topology, bugs: frozenset[str] = frozenset()):
        unknown = set(bugs) - set(BUGS)
        if unknown:
            raise ValueError(f"bugs: unknown bug injection {sorted(unknown)[0]!r} (known: {', '.join(BUGS)})")
        self.topo = topo
        self.bugs = frozenset(bugs)
        self.page_size = topo.page_size
        self.page_shift = topo.page_size.bit_length() - 1
        self.payload = topo.payload
        self.nodes = [Frames(i, f, topo.page_size, topo.payload) for i, f in enumerate(topo.frames)]
        self.swap = SwapDevice(topo.swap_pages, topo.page_size, topo.payload)
        self.migcache = MigCache()
        self.mms: dict[int, MM] = {}
        self.anon_vmas: dict[int, AnonVMA] = {}
        self.next_pid = 1
        self.next_av = 1
        self.stat = Vmstat(topo.nr_nodes)
        self.pins: Counter[int] = Counter()
        self.token_seq = 0
        self.inflight = 0
        self.deferred: list | None = None   # see copy_payload
        self.tlb = None                     # CPUs caching ptes: see tlb.flush_tlb
        self.zonelists = [topo.fallback_order(n) for n in range(topo.nr_nodes)]
        # bytes mode keeps a 64-bit linear checksum per page as the writer's record
        rng = np.random.default_rng(0x6E756D61)
        self.weights = rng.integers(0, 1 << 63, topo.page_size // 8, dtype=np.uint64) | np.uint64(1)

    # -- the data plane ------------------------------------------------------
    def copy_payload(self, src, si: np.ndarray, dst, di: np.ndarray) -> None:
        """A migration's copy: now, inside the step (in-process drivers), or,
        when a driver collects them in ``deferred``, right after the step and
        outside its critical section, before the operation's next step (or
        beside the next steps that read no payload, letting no other
        operation in: cluster/concurrent.py). Both
        pages are locked and the old one frozen, so no other step reads or
        writes their payload meanwhile (as folio_copy() runs unlocked)."""
        if self.deferred is None:
            copy_rows(src, si, dst, di)
        else:
            self.deferred.append((src, si, dst, di))

    # -- owners -------------------------------------------------------------
    @staticmethod
    def node_owner(n: int) -> str:
        return f"node{n}"

    # -- transient references ----------------------------------------------
    def pin(self, gpfns: np.ndarray) -> None:
        for g in gpfns.tolist():
            node, pfn = g >> P.NODE_SHIFT, g & P.PFN_MASK
            self.nodes[node].refcount[pfn] += 1
            self.pins[g] += 1

    def unpin(self, gpfns: np.ndarray, put: bool = True) -> None:
        """Forget transient references; with put, drop them from the page too."""
        for g in gpfns.tolist():
            c = self.pins[g] - 1
            if c:
                self.pins[g] = c
            else:
                del self.pins[g]
            if put:
                self.nodes[g >> P.NODE_SHIFT].put(np.array([g & P.PFN_MASK]))

    # -- anon_vma registry -------------------------------------------------
    def anon_vma_new(self) -> AnonVMA:
        av = AnonVMA(self.next_av)
        self.anon_vmas[av.id] = av
        self.next_av += 1
        return av

    def anon_vma_put(self, av: AnonVMA) -> None:
        if not av.vmas and av.pins == 0:
            self.anon_vmas.pop(av.id, None)

    # -- payload and checksums ---------------------------------------------
    def checksum(self, rows: np.ndarray) -> np.ndarray:
        """Linear checksum of bytes-mode pages: sum of words times fixed odd weights."""
        words = rows.view(np.uint64)
        return (words * self.weights).sum(axis=1, dtype=np.uint64).view(np.int64)

    def content_of(self, gpfns: np.ndarray) -> np.ndarray:
        """What the writer's record should equal for these frames (token or checksum)."""
        out = np.zeros(len(gpfns), dtype=np.int64)
        for node, sel in split_nodes(gpfns):
            pfns = gpfns[sel] & P.PFN_MASK
            fr = self.nodes[node]
            out[sel] = fr.data[pfns] if self.payload == "token" else self.checksum(fr.data[pfns])
        return out

    def store_content(self, slots: np.ndarray) -> np.ndarray:
        st = self.swap.store[slots]
        return st if self.payload == "token" else self.checksum(st)

    def next_tokens(self, n: int) -> np.ndarray:
        base = self.token_seq
        self.token_seq += n
        return np.arange(base + 1, base + n + 1, dtype=np.int64)

    # -- LRU ---------------------------------------------------------------
    def putback(self, node: int, pfns: np.ndarray) -> None:
        """putback_lru_page(): an isolated page goes back on the LRU and the
        isolation reference is dropped (the last one frees it). Its lock is
        its holder's to drop: a page the isolator failed to lock is held by
        another operation (shrink_page_list's keep path)."""
        fr = self.nodes[node]
        at = span(pfns)
        fr.flags[at] = (fr.flags[at] & ~PG_isolated) | PG_lru
        fr.lru_tick[at] = fr.tick
        fr.put(pfns, at)


def keep(mask: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """(a[mask] for a in arrays); the arrays themselves when the mask keeps
    every element, the usual batch, at the cost of one reduction instead of
    a copy each. Callers treat the result as read only, as they may the arrays."""
    if mask.all():
        return arrays
    return tuple(a[mask] for a in arrays)


def distinct(a: np.ndarray) -> list[int]:
    """The distinct values of a (usually one: a batch from one node or one anon_vma)."""
    if not len(a):
        return []
    lo, hi = int(a.min()), int(a.max())
    return [lo] if lo == hi else np.unique(a).tolist()


def split_nodes(gpfns: np.ndarray):
    """Yield (node, mask-or-slice) for the pages of each node in a gpfn array."""
    n = len(gpfns)
    if n == 0:
        return
    if n == 1:                      # a batch of one: no numpy reductions
        yield int(gpfns[0]) >> P.NODE_SHIFT, slice(None)
        return
    nodes = gpfns >> P.NODE_SHIFT
    lo, hi = int(nodes.min()), int(nodes.max())
    if lo == hi:
        yield lo, slice(None)
        return
    for n in np.unique(nodes).tolist():
        yield n, nodes == n


_FRAME_ARRAYS = ("refcount", "mapcount", "flags", "private", "anon_vma", "index", "lru_tick", "free_stack", "_data",
                 "counters")
_SWAP_ARRAYS = ("swap_map", "cache_page", "free_stack", "store")


def _shallow(o):
    """copy.copy for the model's plain classes, without copy's dispatch."""
    n = object.__new__(o.__class__)
    n.__dict__.update(o.__dict__)
    return n


def clone(k: Kernel) -> Kernel:
    """A deep copy of the whole machine state, fast enough to start every explored
    schedule from (copy.deepcopy of the same graph costs several times more).
    Shadows shared between vmas stay shared, whole or as views of one array."""
    new = _shallow(k)
    nodes = []
    for fr in k.nodes:
        f = _shallow(fr)
        d, src = f.__dict__, fr.__dict__
        for name in _FRAME_ARRAYS:
            d[name] = src[name].copy()
        nodes.append(f)
    new.nodes = nodes
    sw = new.swap = _shallow(k.swap)
    d, src = sw.__dict__, k.swap.__dict__
    for name in _SWAP_ARRAYS:
        d[name] = src[name].copy()
    mc = new.migcache = _shallow(k.migcache)
    mc.counter, mc.page, mc.free_ids = k.migcache.counter.copy(), k.migcache.page.copy(), list(k.migcache.free_ids)
    st = new.stat = _shallow(k.stat)
    st.counts = k.stat.counts.copy()
    pins = new.pins = Counter.__new__(Counter)     # Counter(k.pins), without its __init__
    dict.update(pins, k.pins)
    avs = {}
    for i, av in k.anon_vmas.items():
        a = avs[i] = _shallow(av)
        a.vmas = []
    vmap: dict[int, object] = {}
    shadows: dict[int, np.ndarray] = {}
    mms = new.mms = {}
    for pid, mm in k.mms.items():
        nm = mms[pid] = _shallow(mm)
        nvmas = nm.vmas = []
        for v in mm.vmas:
            sh = v.shadow
            if sh.base is None:             # a shadow of its own, or shared whole by forks
                new_sh = shadows.get(id(sh))
                if new_sh is None:
                    new_sh = shadows[id(sh)] = sh.copy()
            else:                           # a view (a split or restored mapping): copy the array it views, once
                root = sh.base
                while isinstance(root.base, np.ndarray):
                    root = root.base
                new_root = shadows.get(id(root))
                if new_root is None:
                    new_root = shadows[id(root)] = root.copy()
                off = (sh.__array_interface__["data"][0] - root.__array_interface__["data"][0]) // sh.itemsize
                new_sh = new_root[off:off + len(sh)]
            sh = new_sh
            nv = _shallow(v)
            nv.mm, nv.anon_vma, nv.pte, nv.shadow = nm, avs[v.anon_vma.id], v.pte.copy(), sh
            vmap[id(v)] = nv
            nvmas.append(nv)
    for i, av in k.anon_vmas.items():
        avs[i].vmas = [vmap[id(v)] for v in av.vmas]
    new.anon_vmas = avs
    if k.tlb is not None:           # the explorer's TLBs (emulator.tlb.tlbs_on)
        new.tlb = k.tlb.clone([p.clone() for p in k.tlb.ports])
    return new
