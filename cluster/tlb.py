"""Node-local accesses: each node actor's TLB, and the coordinator's shootdowns.

A CPU does not ask the kernel for every access: it walks the page table once
and caches the pte in its TLB. Here a node actor caches the ptes of its
processes' pages, so that an access whose pages are all present (and
writable, for a write) in its TLB runs in the node actor, on the payload in
shared memory, without a call to the coordinator. Everything else (a miss,
a fault of any kind) goes to the coordinator as before, and comes back with
the ptes to cache (a fill).

Rules these two classes keep (emulator/tlb.py has the model's side):
- The coordinator's page tables are the only truth; a TLB entry is a copy.
  The coordinator knows which pages a node may cache (``maybe``), and every
  step that takes a cached mapping away calls the node's ``flush`` and waits
  for it, inside the step: no other step sees the pte changed while a CPU
  can still write through the old one, as a flush waits for every CPU's
  acknowledgement before the kernel goes on.
- A flush reports the accessed and dirty bits of the entries it drops, and
  the step folds them into the pages (``pte_bits_to_page``) before it goes
  on: pageout then writes a page the node wrote, and migration moves its
  dirty bit.
- A fill is computed under the coordinator's lock and installed later by the
  node's driver thread; a flush may come in between. Each fill carries the
  number of flushes the coordinator had sent that node when it read the ptes
  (``epoch``); the node installs it only if it has received exactly that
  many, so it never installs a pte a flush already took away.
- Dirty bits stay in the TLB until a flush or a harvest (``harvest``, which
  the coordinator runs before the oracle, a snapshot or a dump). Accessed
  bits only order the LRU, so the driver also hands them over every
  ``YOUNG_EVERY`` hits: late or misplaced, they cost reclaim some accuracy,
  never data.
- Only pages on nodes of the node actor's own host are cached: their payload
  is mapped here. A page on another host is always accessed through the
  coordinator.
- A node actor that dies, or does not answer a flush within ``ANSWER_S``
  (the runner gives up on a silent node as soon), is lost with its TLB; the
  coordinator then takes the contents of every page it may have cached as
  the writer's record, and never fills its TLB again.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from emulator import pte as P
from emulator.frames import store_tokens
from emulator.kernel import split_nodes
from emulator.tlb import pte_bits_to_page

YOUNG_EVERY = 32          # hits between two hand-overs of the accessed bits
ANSWER_S = 30.0           # a node that does not answer a flush this long is lost (so is a silent one)
TOKEN_BASE = 1 << 44      # node n's tokens start at (n + 1) << 44: unique across writers


class _Entries:
    """One process's cached ptes over [lo, lo + n) (vpns), and their bits."""

    __slots__ = ("lo", "ent", "young", "dirty")

    def __init__(self, lo: int, n: int):
        self.lo = lo
        self.ent = np.zeros(n, dtype=np.int64)
        self.young = np.zeros(n, dtype=bool)
        self.dirty = np.zeros(n, dtype=bool)


class NodeTLB:
    """A node actor's TLB, shared by its workload threads."""

    def __init__(self, node: int, page_shift: int, data: dict[int, np.ndarray]):
        """``data``: the payload arrays of the nodes whose pages may be cached."""
        self.node = node
        self.page_shift = page_shift
        self.data = data
        self.near = np.zeros(max(data) + 1, dtype=bool)    # [node]: its payload is mapped here
        self.near[list(data)] = True
        self.lock = threading.Lock()
        self.procs: dict[int, _Entries] = {}
        self.flushes = 0                  # flushes received: see the epoch rule
        self.next_token = (node + 1) * TOKEN_BASE
        self.hits = self.misses = self.stale_fills = 0
        self.hits_since_young = 0

    def add(self, pid: int, addr: int, npages: int) -> None:
        lo, hi = addr >> self.page_shift, (addr >> self.page_shift) + npages
        e = self.procs.get(pid)
        if e is not None:
            lo, hi = min(lo, e.lo), max(hi, e.lo + len(e.ent))
        self.procs[pid] = _Entries(lo, hi - lo)

    def _span(self, pid: int, addr: int, npages: int) -> tuple[_Entries, slice] | None:
        e = self.procs.get(pid)
        if e is None:
            return None
        off = (addr >> self.page_shift) - e.lo
        if off < 0 or off + npages > len(e.ent):
            return None
        return e, slice(off, off + npages)

    # -- the driver's side -----------------------------------------------------
    def access(self, pid: int, addr: int, npages: int, write: bool) -> np.ndarray | None:
        """The access, if every page hits with the permission it needs: the
        tokens written (empty for a read). None: a miss, for the coordinator."""
        need = P.PRESENT | P.WRITE if write else P.PRESENT
        with self.lock:
            span = self._span(pid, addr, npages)
            if span is None:
                return None
            e, s = span
            ent = e.ent[s]
            if ((ent & need) != need).any():
                self.misses += 1
                return None
            toks = np.arange(self.next_token, self.next_token + npages, dtype=np.int64) if write else None
            if write:
                self.next_token += npages
                gp = ent >> P.OFF_SHIFT
                for node, sel in split_nodes(gp):
                    store_tokens(self.data[node], gp[sel] & P.PFN_MASK, toks[sel])
                e.dirty[s] = True
            e.young[s] = True
            self.hits += 1
            self.hits_since_young += 1
        return toks if write else np.zeros(0, dtype=np.int64)

    def install(self, pid: int, fill: tuple[int, int, np.ndarray] | None) -> None:
        """Cache the ptes a coordinator call returned, unless a flush came since."""
        if fill is None:
            return
        epoch, lo, ptes = fill
        with self.lock:
            if epoch != self.flushes:
                self.stale_fills += 1
                return
            e = self.procs.get(pid)
            if e is None:
                return
            nodes = P.pte_node(ptes)
            far = nodes >= len(self.near)
            far[~far] = ~self.near[nodes[~far]]
            off = lo - e.lo
            e.ent[off:off + len(ptes)] = np.where(far, 0, ptes)

    def take_young(self) -> dict[int, np.ndarray]:
        """The vpns accessed since the last hand-over, per pid (cleared)."""
        out = {}
        with self.lock:
            self.hits_since_young = 0
            for pid, e in self.procs.items():
                i = np.flatnonzero(e.young)
                if len(i):
                    e.young[i] = False
                    out[pid] = e.lo + i
        return out

    # -- the coordinator's side ------------------------------------------------
    def flush(self, pid: int, vpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop the entries of vpns; their accessed and dirty bits, per vpn."""
        with self.lock:
            self.flushes += 1
            e = self.procs.get(pid)
            if e is None:
                z = np.zeros(len(vpns), dtype=bool)
                return z, z
            i = vpns - e.lo
            young, dirty = e.young[i].copy(), e.dirty[i].copy()
            e.ent[i] = 0
            e.young[i] = False
            e.dirty[i] = False
            return young, dirty

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Every set accessed or dirty bit, per pid: (vpns, young, dirty),
        cleared; the entries stay."""
        out = {}
        with self.lock:
            for pid, e in self.procs.items():
                i = np.flatnonzero(e.young | e.dirty)
                if len(i):
                    out[pid] = (e.lo + i, e.young[i].copy(), e.dirty[i].copy())
                    e.young[i] = False
                    e.dirty[i] = False
        return out

    def stats(self) -> dict[str, int]:
        return {"tlb_hits": self.hits, "tlb_misses": self.misses, "tlb_flushes": self.flushes,
                "tlb_stale_fills": self.stale_fills}


class NodeGone(Exception):
    """A node whose TLB no longer answers (its actor died)."""


class RayPort:
    """A node actor's TLB, reached with actor calls."""

    def __init__(self, handle: Any):
        self.handle = handle

    def flush(self, pid: int, vpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._get(self.handle.tlb_flush.remote(pid, vpns))

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return self._get(self.handle.tlb_harvest.remote())

    @staticmethod
    def _get(ref):
        import ray
        try:
            return ray.get(ref, timeout=ANSWER_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise NodeGone(str(exc)) from exc


class Shootdown:
    """The coordinator's view of the node actors' TLBs (``k.tlb``)."""

    def __init__(self, ports: list[Any], hosts: list[str], page_shift: int):
        """``ports[n]``: node n's TLB, with ``flush(pid, vpns)`` and
        ``harvest()`` (a :class:`RayPort`, or a :class:`NodeTLB` in one process)."""
        self.ports = ports
        self.near = [np.array([h == mine for h in hosts]) for mine in hosts]   # [node][node]: one host
        self.page_shift = page_shift
        self.procs: dict[int, tuple[int, int, np.ndarray]] = {}   # pid -> (node, lo, maybe)
        self.epoch = [0] * len(ports)
        self.dead: set[int] = set()
        self.flush_calls = 0

    def register(self, node: int, pid: int, addr: int, npages: int) -> None:
        lo, hi = addr >> self.page_shift, (addr >> self.page_shift) + npages
        old = self.procs.get(pid)
        if old is not None:
            lo, hi = min(lo, old[1]), max(hi, old[1] + len(old[2]))
        self.procs[pid] = (node, lo, np.zeros(hi - lo, dtype=bool))

    def fill(self, k, mm, ranges, node: int, addr: int) -> tuple[int, int, np.ndarray] | None:
        """The ptes a node may cache after an access of ``ranges`` (the
        Machine's (vma, lo, hi) list from addr) by its driver; call under the
        coordinator's lock, right after the access."""
        reg = self.procs.get(mm.pid)
        if reg is None or reg[0] != node or node in self.dead:
            return None
        _, lo, maybe = reg
        ptes = np.concatenate([vma.pte[a:b] for vma, a, b in ranges]) if len(ranges) > 1 \
            else ranges[0][0].pte[ranges[0][1]:ranges[0][2]].copy()
        vpn = addr >> self.page_shift
        off = vpn - lo
        if off < 0 or off + len(ptes) > len(maybe):
            return None
        ok = (ptes & P.PRESENT) != 0
        if not self.near[node].all() and ok.any():
            on = np.flatnonzero(ok)
            ok[on] = self.near[node][P.pte_node(ptes[on])]
        ptes[~ok] = 0
        maybe[off:off + len(ptes)] |= ok
        return self.epoch[node], vpn, ptes

    def flush(self, k, vma, idx) -> None:
        """Called by the model's steps (emulator.tlb.flush_tlb), under the lock,
        for pages idx (an index array or a slice) of vma."""
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
        maybe[pos] = False
        if node in self.dead:
            young = np.zeros(len(idx), dtype=bool)
            pte_bits_to_page(k, vma, idx, young, ~young)
            return
        self.epoch[node] += 1
        self.flush_calls += 1
        try:
            young, dirty = self.ports[node].flush(vma.mm.pid, lo + pos)
        except NodeGone:
            self.dead.add(node)
            young = np.zeros(len(idx), dtype=bool)
            young, dirty = young, ~young      # it may have written any of them
        pte_bits_to_page(k, vma, idx, young, dirty)

    def young(self, k, pid: int, vpns: np.ndarray) -> None:
        """A node's accessed bits, handed over between flushes: the LRU only."""
        none = np.zeros(len(vpns), dtype=bool)
        self._apply(k, pid, vpns, ~none, none)

    def harvest(self, k) -> None:
        """Bring every node's accessed and dirty bits in (before the oracle
        reads the writer's record, or a snapshot is taken)."""
        for n in sorted({reg[0] for reg in self.procs.values() if reg[2].any()} - self.dead):
            try:
                got = self.ports[n].harvest()
            except NodeGone:
                self.node_lost(k, n)
                continue
            for pid, (vpns, young, dirty) in got.items():
                self._apply(k, pid, vpns, young, dirty)

    def node_lost(self, k, node: int) -> None:
        """A dead node's TLB is gone, with whatever it wrote through it: take
        the pages it may have cached as written."""
        self.dead.add(node)
        for pid, (n, lo, maybe) in self.procs.items():
            if n == node and maybe.any():
                vpns = lo + np.flatnonzero(maybe)
                maybe[:] = False
                none = np.zeros(len(vpns), dtype=bool)
                self._apply(k, pid, vpns, none, ~none)

    def _apply(self, k, pid: int, vpns: np.ndarray, young: np.ndarray, dirty: np.ndarray) -> None:
        mm = k.mms.get(pid)
        if mm is None:
            return
        for vma in mm.vmas:
            sel = (vpns >= vma.start) & (vpns < vma.end)
            if sel.any():
                pte_bits_to_page(k, vma, vpns[sel] - vma.start, young[sel], dirty[sel])
