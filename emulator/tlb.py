"""TLBs: CPUs that cache ptes, and the shootdowns that keep them coherent.

A CPU does not ask the kernel for every access: it caches ptes in its TLB.
The Ray runtime's node actors do the same (cluster/tlb.py): an access whose
pages are all present in the node's TLB (and writable, for a write) runs in
the node actor, without the coordinator. The explorer runs the same
protocol in-process (``access`` operations of race scenarios, ``cpu_access``
below), so its races can be searched and replayed like any other.

Rules these classes keep:
- The page tables are the only truth; a TLB entry is a copy. Without TLBs
  (``k.tlb`` None) an access is access_step, which reads the pte itself, and
  ``flush_tlb`` does nothing.
- The kernel side (``Shootdown``) knows which pages each node may cache
  (``maybe``). Every step that clears a present pte, points it at another
  page or write-protects it calls ``flush_tlb`` first, while the old pte is
  still in place, as ptep_clear_flush() does: the TLBs drop those entries
  inside the step and report the accessed and dirty bits they set, which
  ``pte_bits_to_page`` lands on the page before the step goes on (accessed:
  the LRU tick; dirty: PG_dirty, so pageout writes a page a CPU dirtied, and
  the page's contents as the writer's record). No other step sees the pte
  changed while a CPU can still write through the old one. A write-protect
  (fork's COW) keeps the entries, read-only: a write faults, a read hits.
- A pte that gains a mapping or a permission needs no flush: a CPU that
  still caches the old one faults, and the fault finds the new pte.
- A miss walks the page table first, as the MMU does: when every pte allows
  the access (present, and writable for a write), the walk caches them and
  the access runs on, with no fault and no kernel step. Only what the walk
  cannot resolve faults. A walk reads the ptes between steps, never inside
  one: in-process it is part of the CPU's access step; on Ray the node
  actor walks the page table in shared memory only while no coordinator
  thread is inside the model (cluster/tlb.py: the steps lock). It marks the
  pages it caches in ``maybe``, so every later flush reaches it.
- A fill (the ptes a fault leaves, for the faulting node to cache) is read
  under the kernel's lock and installed later, by the node; a flush may come
  in between. A fill carries the number of flushes of that process's
  entries sent when it was read (``epoch``); the node installs it only if it
  has received exactly that many, so it never installs a pte a flush already
  took away (the ``tlb-no-epoch`` bug injection drops that check). Flushes
  of other processes' entries do not make a fill stale.
- Dirty bits stay in the TLB until a flush or a ``harvest`` (before the
  oracle reads the writer's record, or a snapshot). Accessed bits only order
  the LRU: a scan of it (reclaim, hot pages) takes them first
  (``referenced``), as page_referenced() reads the ptes' accessed bits.
- Only pages on nodes whose payload the node can reach are cached (its own
  host's, on Ray). A node that no longer answers (``NodeGone``) is lost with
  its TLB: every page it may have cached is taken as written, and it is
  never filled again.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from . import pte as P
from .frames import PG_dirty
from .kernel import split_nodes
from .mm import MM, VMA
from .sched import call


class NodeGone(Exception):
    """A node whose TLB no longer answers (on Ray: its actor died or hung)."""


# -- the kernel's side ----------------------------------------------------------
def flush_tlb(k, vma: VMA, idx, wrprotect: bool = False) -> None:
    """flush_tlb_page() for pages idx (an index array or a slice) of vma.
    ``wrprotect``: the ptes stay, read-only (fork's COW): the TLBs keep them
    read-only too, as a CPU's next read would walk the page table to."""
    if k.tlb is not None:
        k.tlb.flush(k, vma, idx, wrprotect)


def pte_bits_to_page(k, vma: VMA, idx: np.ndarray, young: np.ndarray, dirty: np.ndarray) -> None:
    """Fold the accessed and dirty bits a CPU set through its cached ptes for
    pages idx of vma into their pages. Pages whose pte is no longer present
    are skipped: their bits were folded in when the pte changed."""
    ptes = vma.pte[idx]
    live = (ptes & P.PRESENT) != 0
    if not live.all():
        idx, ptes, young, dirty = idx[live], ptes[live], young[live], dirty[live]
    gp = ptes >> P.OFF_SHIFT
    for node, sel in split_nodes(gp):
        fr = k.nodes[node]
        pf = gp[sel] & P.PFN_MASK
        y, d = young[sel], dirty[sel]
        fr.lru_tick[pf[y | d]] = fr.tick
        fr.tick += 1
        if d.any():
            fr.flags[pf[d]] |= PG_dirty
    if dirty.any():
        vma.shadow[idx[dirty]] = k.content_of(gp[dirty])


class Shootdown:
    """Which pages each node's TLB may hold, and the flushes (``k.tlb``)."""

    def __init__(self, ports: list[Any], hosts: list[str]):
        """``ports[n]``: node n's TLB, with ``flush(pid, vpns)``, ``harvest()``
        and ``take_young()`` (a :class:`TLB` in one process; on Ray, the node's TLB
        in shared memory, or actor calls to a node on another host).
        ``hosts[n]``: where node n's payload is; a node caches only pages on
        nodes of its own host."""
        self.ports = ports
        self.near = [np.array([h == mine for h in hosts]) for mine in hosts]   # [node][node]
        self.procs: dict[int, tuple[int, int, np.ndarray]] = {}   # pid -> (node, lo vpn, maybe)
        self.epoch: dict[int, int] = {}      # pid -> flushes of its entries sent
        self.dead: set[int] = set()
        self.flush_calls = 0
        self.flush_s = 0.0                # wall time waiting for the nodes' answers

    def clone(self, ports: list[Any]) -> "Shootdown":
        new = object.__new__(Shootdown)
        new.__dict__.update(self.__dict__)
        new.ports = ports
        new.procs = {pid: (n, lo, m.copy()) for pid, (n, lo, m) in self.procs.items()}
        new.epoch, new.dead = dict(self.epoch), set(self.dead)
        return new

    def register(self, node: int, pid: int, lo: int, npages: int, maybe: np.ndarray | None = None) -> None:
        """Node ``node`` caches pid's ptes of vpns [lo, lo + npages) (its span).
        ``maybe``: where to keep which of them it may cache (shared memory on
        Ray, where the node's page walks mark them)."""
        self.procs[pid] = (node, lo, np.zeros(npages, dtype=bool) if maybe is None else maybe)

    def maybe_of(self, pid: int) -> tuple[int, np.ndarray] | None:
        """(first vpn, maybe) of pid's span: what its node's page walks mark."""
        reg = self.procs.get(pid)
        return None if reg is None else (reg[1], reg[2])

    def fill(self, mm: MM, ranges, node: int, vpn: int) -> tuple[int, int, np.ndarray] | None:
        """(epoch, vpn, ptes) a node may cache after its access of ``ranges``
        (the Machine's (vma, lo, hi) list from vpn); 0 for a pte it may not."""
        reg = self.procs.get(mm.pid)
        if reg is None or reg[0] != node or node in self.dead:
            return None
        _, lo, maybe = reg
        ptes = np.concatenate([vma.pte[a:b] for vma, a, b in ranges]) if len(ranges) > 1 \
            else ranges[0][0].pte[ranges[0][1]:ranges[0][2]].copy()
        off = vpn - lo
        if off < 0 or off + len(ptes) > len(maybe):
            return None
        ok = (ptes & P.PRESENT) != 0
        if not self.near[node].all() and ok.any():
            on = np.flatnonzero(ok)
            ok[on] = self.near[node][P.pte_node(ptes[on])]
        ptes[~ok] = 0
        maybe[off:off + len(ptes)] |= ok
        return self.epoch.get(mm.pid, 0), vpn, ptes

    def flush(self, k, vma: VMA, idx, wrprotect: bool = False) -> None:
        """For the model's steps (flush_tlb), within the step."""
        reg = self.procs.get(vma.mm.pid)
        if reg is None:
            return
        node, lo, maybe = reg
        if isinstance(idx, slice):
            idx = np.arange(vma.npages, dtype=np.int64)[idx]
        pos = vma.start + idx - lo
        inside = (pos >= 0) & (pos < len(maybe))
        if not inside.all():
            idx, pos = idx[inside], pos[inside]
        cached = maybe[pos]
        if not cached.any():
            return
        idx, pos = idx[cached], pos[cached]
        none = np.zeros(len(idx), dtype=bool)
        if node in self.dead:
            maybe[pos] = False
            pte_bits_to_page(k, vma, idx, none, ~none)
            return
        self.epoch[vma.mm.pid] = self.epoch.get(vma.mm.pid, 0) + 1
        self.flush_calls += 1
        t0 = time.perf_counter()
        try:
            young, dirty = self.ports[node].flush(vma.mm.pid, lo + pos, wrprotect)
            if not wrprotect:
                maybe[pos] = False
        except NodeGone:
            self._lose(k, node)
            maybe[pos] = False
            young, dirty = none, ~none        # it may have written any of them
        self.flush_s += time.perf_counter() - t0
        pte_bits_to_page(k, vma, idx, young, dirty)

    def referenced(self, k) -> None:
        """page_referenced() for a scan of the LRU (reclaim, hot pages): every
        node's accessed bits, into the pages' LRU ticks, cleared in the TLBs
        (as ptep_clear_flush_young() on x86, without a flush); dirty bits stay."""
        for got in self._ask(k, "take_young"):
            for pid, vpns in got.items():
                none = np.zeros(len(vpns), dtype=bool)
                self._apply(k, pid, vpns, ~none, none)

    def harvest(self, k) -> None:
        """Bring every node's accessed and dirty bits in."""
        for got in self._ask(k, "harvest"):
            for pid, (vpns, young, dirty) in got.items():
                self._apply(k, pid, vpns, young, dirty)

    def _ask(self, k, what: str):
        """What each live node that may cache a pte answers to port method
        ``what``; a node that no longer answers is lost."""
        for n in sorted({reg[0] for reg in self.procs.values() if reg[2].any()} - self.dead):
            try:
                yield getattr(self.ports[n], what)()
            except NodeGone:
                self.node_lost(k, n)

    def node_lost(self, k, node: int) -> None:
        """A lost node's TLB is gone, with whatever it wrote through it: take
        the pages it may have cached as written."""
        self._lose(k, node)
        for pid, (n, lo, maybe) in self.procs.items():
            if n == node and maybe.any():
                vpns = lo + np.flatnonzero(maybe)
                maybe[:] = False
                none = np.zeros(len(vpns), dtype=bool)
                self._apply(k, pid, vpns, none, ~none)

    def _lose(self, k, node: int) -> None:
        """Never fill or flush the node again, and take back the page tables
        it walks (on Ray: a hung node that wakes up must find none)."""
        if node not in self.dead:
            self.dead.add(node)
            self.ports[node].revoke(k)

    def _apply(self, k, pid: int, vpns: np.ndarray, young: np.ndarray, dirty: np.ndarray) -> None:
        mm = k.mms.get(pid)
        if mm is None:
            return
        for vma in mm.vmas:
            sel = (vpns >= vma.start) & (vpns < vma.end)
            if sel.any():
                pte_bits_to_page(k, vma, vpns[sel] - vma.start, young[sel], dirty[sel])


# -- a node's side ---------------------------------------------------------------
class _Entries:
    """One process's cached ptes over vpns [lo, lo + n), and their bits."""

    __slots__ = ("lo", "gen", "ent", "young", "dirty")

    def __init__(self, lo: int, n: int):
        self.lo = lo
        self.gen = np.zeros(1, dtype=np.int64)    # flushes of these entries received
        self.ent = np.zeros(n, dtype=np.int64)
        self.young = np.zeros(n, dtype=bool)
        self.dirty = np.zeros(n, dtype=bool)

    @classmethod
    def over(cls, lo: int, gen: np.ndarray, ent: np.ndarray, young: np.ndarray,
             dirty: np.ndarray) -> "_Entries":
        """Entries held in arrays of the caller's (shared memory, on Ray)."""
        e = cls(lo, 0)
        e.gen, e.ent, e.young, e.dirty = gen, ent, young, dirty
        return e


class TLB:
    """One node's TLB: the cached ptes of the processes homed there."""

    def __init__(self, counts: np.ndarray | None = None) -> None:
        """``counts``: where to count flushes received and fills dropped (two
        int64s; shared memory on Ray, so that the kernel's side flushes in place)."""
        self.procs: dict[int, _Entries] = {}
        self.counts = np.zeros(2, dtype=np.int64) if counts is None else counts

    @property
    def flushes(self) -> int:
        """Flushes received, of any process's entries."""
        return int(self.counts[0])

    @property
    def stale_fills(self) -> int:
        return int(self.counts[1])

    def adopt(self, pid: int, lo: int, gen: np.ndarray, ent: np.ndarray, young: np.ndarray,
              dirty: np.ndarray) -> None:
        """Cache pid's ptes of vpns [lo, lo + len(ent)) in the caller's arrays."""
        self.procs[pid] = _Entries.over(lo, gen, ent, young, dirty)

    def clone(self) -> "TLB":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.counts = self.counts.copy()
        procs = new.procs = {}
        for pid, e in self.procs.items():
            c = procs[pid] = _Entries(e.lo, 0)
            c.gen, c.ent, c.young, c.dirty = e.gen.copy(), e.ent.copy(), e.young.copy(), e.dirty.copy()
        return new

    def add(self, pid: int, lo: int, npages: int) -> None:
        """Cache pid's ptes of vpns [lo, lo + npages) (its span)."""
        self.procs[pid] = _Entries(lo, npages)

    def lookup(self, pid: int, vpn: int, npages: int, write: bool) -> np.ndarray | None:
        """The gpfns of pages [vpn, vpn + npages), marked accessed (and
        dirty), if every one hits with the permission it needs; else None."""
        e = self.procs.get(pid)
        if e is None:
            return None
        off = vpn - e.lo
        if off < 0 or off + npages > len(e.ent):
            return None
        ent = e.ent[off:off + npages]
        need = P.PRESENT | P.WRITE if write else P.PRESENT
        if ((ent & need) != need).any():
            return None
        e.young[off:off + npages] = True
        if write:
            e.dirty[off:off + npages] = True
        return ent >> P.OFF_SHIFT

    def walk(self, pid: int, vpn: int, ptes: np.ndarray, maybe: np.ndarray, write: bool,
             near: np.ndarray | None = None) -> bool:
        """The MMU's page walk on a miss over [vpn, vpn + len(ptes)): ``ptes``
        is the page table there, read between steps; ``maybe``, the kernel's
        marks over pid's whole span (Shootdown's). Caches the ptes if every
        one allows the access (and, with ``near``, is on a node whose payload
        is mapped here); False otherwise, for a fault."""
        e = self.procs.get(pid)
        n = len(ptes)
        if e is None or n == 0 or len(maybe) != len(e.ent):
            return False
        off = vpn - e.lo
        if off < 0 or off + n > len(e.ent):
            return False
        need = P.PRESENT | P.WRITE if write else P.PRESENT
        if ((ptes & need) != need).any():
            return False
        if near is not None:
            nodes = P.pte_node(ptes)
            if (nodes >= len(near)).any() or not near[nodes].all():
                return False
        maybe[off:off + n] = True       # a later flush of these pages reaches this TLB
        e.ent[off:off + n] = ptes
        return True

    def install(self, pid: int, fill: tuple[int, int, np.ndarray] | None, check_epoch: bool = True) -> bool:
        """Cache a fill, unless a flush came since it was read (then False)."""
        if fill is None:
            return False
        epoch, vpn, ptes = fill
        e = self.procs.get(pid)
        if e is None:
            return False
        if check_epoch and epoch != e.gen[0]:
            self.counts[1] += 1
            return False
        off = vpn - e.lo
        e.ent[off:off + len(ptes)] = ptes
        return True

    def flush(self, pid: int, vpns: np.ndarray, wrprotect: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Drop the entries of vpns (with wrprotect: keep them, read-only);
        their accessed and dirty bits, per vpn."""
        self.counts[0] += 1
        e = self.procs.get(pid)
        if e is None:
            z = np.zeros(len(vpns), dtype=bool)
            return z, z
        e.gen[0] += 1
        i = vpns - e.lo
        young, dirty = e.young[i].copy(), e.dirty[i].copy()
        if wrprotect:
            e.ent[i] &= ~P.WRITE
        else:
            e.ent[i] = 0
        e.young[i] = False
        e.dirty[i] = False
        return young, dirty

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every set accessed or dirty bit, per pid: (vpns, young, dirty),
        cleared; the entries stay."""
        out = {}
        for pid, e in self.procs.items():
            i = np.flatnonzero(e.young | e.dirty)
            if len(i):
                out[pid] = (e.lo + i, e.young[i].copy(), e.dirty[i].copy())
                e.young[i] = False
                e.dirty[i] = False
        return out

    def revoke(self, k) -> None:
        """The node is lost: in-process its walks read the model's page tables, nothing to take back."""

    def take_young(self) -> dict[int, np.ndarray]:
        """The vpns accessed since the last look, per pid (cleared)."""
        out = {}
        for pid, e in self.procs.items():
            i = np.flatnonzero(e.young)
            if len(i):
                e.young[i] = False
                out[pid] = e.lo + i
        return out


# -- the explorer's CPU: an access through the TLB, one process ------------------
def spans(ranges) -> dict[int, tuple[int, int]]:
    """pid -> (first vpn, pages) covering every (pid, first vpn, pages) given."""
    out: dict[int, tuple[int, int]] = {}
    for pid, lo, n in ranges:
        hi = lo + n
        if pid in out:
            lo, hi = min(lo, out[pid][0]), max(hi, out[pid][0] + out[pid][1])
        out[pid] = (lo, hi - lo)
    return out


def tlbs_on(k) -> None:
    """Give every node a TLB that caches the ptes of the processes homed on
    it (their mappings now): what ``access`` operations run against."""
    ports = [TLB() for _ in k.nodes]
    k.tlb = Shootdown(ports, ["local"] * len(k.nodes))
    for pid, (lo, n) in spans((pid, v.start, v.npages) for pid, mm in k.mms.items() for v in mm.vmas).items():
        node = k.mms[pid].node
        ports[node].add(pid, lo, n)
        k.tlb.register(node, pid, lo, n)


def tlb_access_step(k, vma: VMA, lo: int, hi: int, write: bool, toks: np.ndarray | None) -> bool:
    """The CPU's access, if every page hits in its node's TLB or the page
    walk caches it: the store and the writer's record as access_step's, the
    accessed and dirty bits in the TLB (not on the page: a flush or a
    harvest brings them)."""
    from .fault import store_pages
    tlb, pid, vpn = k.tlb.ports[vma.mm.node], vma.mm.pid, vma.start + lo
    gp = tlb.lookup(pid, vpn, hi - lo, write)
    if gp is None:
        reg = k.tlb.maybe_of(pid)
        if reg is None or reg[0] != tlb.procs[pid].lo or not tlb.walk(pid, vpn, vma.pte[lo:hi], reg[1], write):
            return False
        gp = tlb.lookup(pid, vpn, hi - lo, write)
    if write:
        idx = np.arange(lo, hi, dtype=np.int64)
        for node, sel in split_nodes(gp):
            store_pages(k, vma, k.nodes[node], gp[sel] & P.PFN_MASK, idx[sel], toks[sel])
    return True


def fill_step(k, vma: VMA, lo: int, hi: int):
    """The ptes the faulting node may cache, read under the kernel's lock."""
    return k.tlb.fill(vma.mm, [(vma, lo, hi)], vma.mm.node, vma.start + lo)


def install_step(k, mm: MM, fill) -> bool:
    return k.tlb.ports[mm.node].install(mm.pid, fill, "tlb-no-epoch" not in k.bugs)


async def cpu_access(k, vma: VMA, lo: int, hi: int, write: bool, toks: np.ndarray | None) -> None:
    """An access by a CPU of the process's home node, as the Ray runtime's
    node actor runs it: a TLB hit or a page walk alone; else the fault
    (touch), then the ptes it left are read and cached, with preemption
    points between."""
    from .fault import touch
    owner = k.node_owner(vma.mm.node)
    if await call(owner, tlb_access_step, k, vma, lo, hi, write, toks):
        return
    await touch(k, vma, lo, hi, write, toks)
    fill = await call("coord", fill_step, k, vma, lo, hi)
    await call(owner, install_step, k, vma.mm, fill)

