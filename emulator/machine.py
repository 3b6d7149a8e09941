"""Machine: the syscall-shaped public API over the model.

Every method validates its arguments completely before it changes anything
(bad input never corrupts emulated state), then runs the operation's
coroutine with the inline driver. Errors are the kernel's: OSError with its
errno for a whole call, negative errnos in move_pages' status list.
"""
from __future__ import annotations

import errno
from typing import Any, Iterable, Sequence

import numpy as np

from . import invariants, pte as P
from .fault import lookup_node, touch as _touch
from .kernel import Kernel
from .mm import (ADDRESS_PAGES, MM, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED, MPOL_F_NODE, MPOL_INTERLEAVE,
                 MPOL_KEEPS_USER_NODES, MPOL_MODE_FLAGS, Mempolicy, get_nodes, is_int, make_policy, parse_mode)
from .move_pages import (MPOL_MF_MOVE, MPOL_MF_MOVE_ALL, MPOL_MF_VALID, do_mbind, do_migrate_pages,
                         do_pages_move, nodes_remap, stat_step)
from .page_alloc import vma_policy
from .process import exit_mm, fork as _fork, mm_held, mmap_step, munmap_step
from .reclaim import shrink_node
from .sched import run_inline
from .swapfile import swapoff as _swapoff, swapon as _swapon
from .topology import Topology
from .vmstat import EVENTS, GAUGES

MOVE_PAGES_MAX = 1 << 24
RUN_KEYS = frozenset({"policy", "payload", "seed"})    # may be given beside a Topology
_INT64_MAX = np.iinfo(np.int64).max


def _flag(v, what: str) -> bool:
    """A yes/no argument: a bool, or 0/1; never any other truthy value ("no" is truthy)."""
    if isinstance(v, (bool, np.bool_)) or (is_int(v) and v in (0, 1)):
        return bool(v)
    raise OSError(errno.EINVAL, f"{what}: must be True or False, got {v!r}")


def _int_array(values, what: str, wrap: bool = False) -> np.ndarray:
    """A flat list of integers as int64, never by converting floats or strings.
    Beyond int64 (a C unsigned long's upper half): -1, which no address or node
    is; or, ``wrap``, the same 64 bits (a content token)."""
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise OSError(errno.EINVAL, f"{what}: not a list of integers ({e})") from None
    if a.ndim != 1:
        if a.size == 0 and a.ndim > 0:
            return np.zeros(0, np.int64)
        raise OSError(errno.EINVAL, f"{what}: must be a flat list of integers, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype.kind == "i":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "O" and all(is_int(v) for v in a.tolist()):     # ints beyond 64 bits among them
        if wrap:
            raise OSError(errno.EINVAL, f"{what}: a value does not fit in 64 bits")
        return np.array([v if -_INT64_MAX - 1 <= v <= _INT64_MAX else -1 for v in a.tolist()], dtype=np.int64)
    if a.dtype.kind == "u":
        out = a.astype(np.int64)        # the same 64 bits
        if not wrap:
            out[a > _INT64_MAX] = -1
        return out
    raise OSError(errno.EINVAL, f"{what}: must be integers, got {a.dtype} values")


class Machine:
    def __init__(self, topology: Topology | None = None, *, bugs: Iterable[str] = (), **config: Any):
        """Machine(topology), Machine(topology, policy=..., payload=..., seed=...)
        (the same nodes, run another way), or Machine(**configuration keys)."""
        if topology is None:
            topology = Topology.from_config(config)
        elif config:
            other = sorted(set(config) - RUN_KEYS)
            if other:
                raise TypeError(f"Machine(topology, ...): {other[0]} is the topology's; with a Topology "
                                f"only {', '.join(sorted(RUN_KEYS))} may be given")
            topology = Topology.from_config({**topology.to_config(), **config})
        self.topology = topology
        self.k = Kernel(topology, frozenset(bugs))

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, bugs: Iterable[str] = ()) -> "Machine":
        return cls(Topology.from_config(cfg), bugs=bugs)

    # -- properties ---------------------------------------------------------
    nr_nodes = property(lambda self: self.topology.nr_nodes)
    page_size = property(lambda self: self.topology.page_size)
    policy = property(lambda self: self.topology.policy)
    payload = property(lambda self: self.topology.payload)

    def _run(self, coro):
        k = self.k
        k.inflight += 1
        try:
            return run_inline(coro)
        finally:
            k.inflight -= 1

    def _mm(self, pid: int) -> MM:
        mm = self.k.mms.get(int(pid)) if is_int(pid) else None
        if mm is None or not mm.findable:   # an exited task's mm may live on while a migration holds it
            raise OSError(errno.ESRCH, f"no such process: {pid!r}")
        return mm

    def _node(self, node: int, what: str = "node") -> int:
        if not is_int(node) or not 0 <= node < self.nr_nodes:
            raise OSError(errno.EINVAL, f"{what}: {node!r} is not an online node (0..{self.nr_nodes - 1})")
        return int(node)

    def _range(self, mm: MM, addr: int, npages: int):
        if not is_int(addr) or addr < 0:
            raise OSError(errno.EFAULT, f"bad address {addr!r}")
        if not is_int(npages) or npages < 0:
            raise OSError(errno.EINVAL, f"bad page count {npages!r}")
        return mm.ranges(int(addr) >> self.k.page_shift, int(npages), page_shift=self.k.page_shift)

    # -- processes ----------------------------------------------------------
    def spawn(self, node: int = 0) -> int:
        node = self._node(node)
        k = self.k
        mm = MM(k.next_pid, node)
        k.next_pid += 1
        k.mms[mm.pid] = mm
        return mm.pid

    def mmap(self, pid: int, npages: int, shared: bool = False) -> int:
        mm = self._mm(pid)
        if not is_int(npages) or npages <= 0:
            raise OSError(errno.EINVAL, f"mmap: npages must be a positive integer, got {npages!r}")
        shared = _flag(shared, "mmap: shared")
        if mm.next_vpn + npages >= ADDRESS_PAGES:
            raise OSError(errno.ENOMEM, "mmap: address space exhausted")
        vma = mmap_step(self.k, mm, int(npages), shared)
        return vma.start << self.k.page_shift

    def munmap(self, pid: int, addr: int, npages: int) -> None:
        mm = self._mm(pid)
        if not is_int(addr) or addr < 0 or addr % self.page_size:
            raise OSError(errno.EINVAL, f"munmap: address {addr!r} is not a page-aligned address")
        if not is_int(npages) or npages <= 0:
            raise OSError(errno.EINVAL, f"munmap: npages must be a positive integer, got {npages!r}")
        munmap_step(self.k, mm, int(addr) >> self.k.page_shift, int(npages))

    def fork(self, pid: int) -> int:
        return self._run(_fork(self.k, self._mm(pid)))

    def exit(self, pid: int) -> None:
        self._run(exit_mm(self.k, self._mm(pid)))

    def set_mempolicy(self, pid: int, mode, nodes: Sequence[int] | None = None) -> None:
        """set_mempolicy(2) of the process, as Linux 6.1's: mode a name
        ("bind", "preferred_many", "bind=static": see mm.parse_mode) or an
        int with its mode flags or'ed in (MPOL_BIND | MPOL_F_STATIC_NODES);
        mm.make_policy() for the rest."""
        mm = self._mm(pid)
        mm.policy = make_policy(mode, nodes, self.nr_nodes)

    def mbind(self, pid: int, addr: int, npages: int, mode, nodes: Sequence[int] | None = None,
              flags: int = 0, *, privileged: bool = True) -> None:
        """mbind(2) on the process's own range, as do_mbind() in Linux 6.1: flags
        MPOL_MF_STRICT, MPOL_MF_MOVE, MPOL_MF_MOVE_ALL (see move_pages.do_mbind).
        EINVAL and EPERM (MOVE_ALL without CAP_SYS_NICE: ``privileged``) before
        EFAULT (a hole in the range, met as 6.1's walk meets it, after the
        pages before it: see move_pages.mbind_step; for MPOL_DEFAULT only a
        range with no mapping at all); EIO from MPOL_MF_STRICT. On a shared
        mapping the policy is the shared memory object's, which every process
        mapping it allocates by (shmem_set_policy())."""
        mm = self._mm(pid)
        parse_mode(mode)
        raw = get_nodes(nodes)      # kernel_mbind() reads the nodemask before do_mbind() looks at the range
        if not is_int(flags) or flags & ~MPOL_MF_VALID:
            raise OSError(errno.EINVAL, f"mbind: unknown flags {flags!r}")
        flags = int(flags)
        if flags & MPOL_MF_MOVE_ALL and not privileged:     # do_mbind(): before the start's alignment
            raise OSError(errno.EPERM, "mbind: MPOL_MF_MOVE_ALL needs CAP_SYS_NICE")
        if not is_int(addr) or addr < 0 or addr % self.page_size:
            raise OSError(errno.EINVAL, f"mbind: address {addr!r} is not a page-aligned address")
        if not is_int(npages) or npages < 0:
            raise OSError(errno.EINVAL, f"mbind: bad page count {npages!r}")
        if npages == 0:
            return
        pol = make_policy(mode, nodes, self.nr_nodes)
        self._run(do_mbind(self.k, mm, int(addr) >> self.k.page_shift, int(npages), pol, raw, flags))

    def get_mempolicy(self, pid: int, addr: int | None = None, flags: int = 0) -> tuple[int, list[int]]:
        """get_mempolicy(2) of the process, as do_get_mempolicy() in Linux 6.1
        (mm/mempolicy.c): (mode, nodes), the mode with its mode flags or'ed
        in, the nodemask as sorted node numbers. addr None is NULL.
        - flags: any bit but MPOL_F_NODE, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED is
          EINVAL; MEMS_ALLOWED with either other is EINVAL; MEMS_ALLOWED alone
          is (0, the nodes the task may use: every node, no cpuset here),
          addr not looked at.
        - MPOL_F_ADDR: the policy at addr, "Do NOT fall back to task policy":
          a shared mapping's get_policy (shmem_get_policy(): the object's at
          the page's offset), else the vma's own; none is MPOL_DEFAULT. No vma
          at addr (vma_lookup()): EFAULT. Without it, the task's policy, and
          an addr other than NULL is EINVAL.
        - no policy is MPOL_DEFAULT with no node; MPOL_LOCAL (set as
          preferred with no node too) shows as MPOL_LOCAL.
        - nodes: a policy made with a mode flag gives the nodes as given
          (mpol_store_user_nodemask(): w.user_nodemask), else pol->nodes
          (get_policy_nodemask(): none for default and local), as many bits
          as copy_nodes_to_user() copies out: a long per 64 nodes of the
          machine (a caller's maxnode covering them all).
        - MPOL_F_NODE: with MPOL_F_ADDR the mode is the node of the page at
          addr, faulted in for a read if it is not there (lookup_node():
          get_user_pages without FOLL_WRITE; fault.lookup_node); without it,
          for an interleave task policy, next_node_in(il_prev, nodes): the
          policy's first node here, as il_prev stays where set_mempolicy()
          put it (MAX_NUMNODES-1): only allocations with no vma move it
          (interleave_nodes(): slab, page tables), which the model has none
          of; any other policy, EINVAL. The nodes are the policy's, as
          above.
        6.1's EINVAL for a maxnode below the machine's node count and its
        EFAULTs for bad user pointers have no counterpart: the results are
        returned."""
        mm = self._mm(pid)
        if not is_int(flags) or flags & ~(MPOL_F_NODE | MPOL_F_ADDR | MPOL_F_MEMS_ALLOWED):
            raise OSError(errno.EINVAL, f"get_mempolicy: unknown flags {flags!r}")
        if addr is not None and not is_int(addr):
            raise OSError(errno.EINVAL, f"get_mempolicy: address {addr!r} is not an address")
        flags, addr = int(flags), 0 if addr is None else int(addr)
        if flags & MPOL_F_MEMS_ALLOWED:
            if flags & (MPOL_F_NODE | MPOL_F_ADDR):
                raise OSError(errno.EINVAL, "get_mempolicy: MPOL_F_MEMS_ALLOWED with MPOL_F_NODE or MPOL_F_ADDR")
            return 0, list(range(self.nr_nodes))    # cpuset_current_mems_allowed: every node has memory
        vma = None
        if flags & MPOL_F_ADDR:
            vpn = addr >> self.k.page_shift
            vma = mm.find_vma(vpn) if addr >= 0 else None
            if vma is None:
                raise OSError(errno.EFAULT, f"get_mempolicy: address {addr:#x} is not mapped")
            pol = vma_policy(vma, vpn)
        elif addr:
            raise OSError(errno.EINVAL, f"get_mempolicy: address {addr:#x} without MPOL_F_ADDR")
        else:
            pol = mm.policy
        if pol is None:
            pol = Mempolicy()           # &default_policy: MPOL_DEFAULT, no node
        if flags & MPOL_F_NODE:
            if vma is not None:
                mode = self._run(lookup_node(self.k, vma, vpn - vma.start))
            elif pol.mode == MPOL_INTERLEAVE:
                mode = pol.nodes[0]     # next_node_in(MAX_NUMNODES - 1, pol->nodes)
            else:
                raise OSError(errno.EINVAL, "get_mempolicy: MPOL_F_NODE without MPOL_F_ADDR needs an "
                                            "interleave task policy")
        else:
            mode = pol.mode | (pol.flags & MPOL_MODE_FLAGS)
        nodes = pol.user_nodes if pol.flags & MPOL_KEEPS_USER_NODES else pol.nodes   # none: default, local
        width = -(-self.nr_nodes // 64) * 64       # copy_nodes_to_user(): BITS_TO_LONGS(nr_node_ids) longs
        return mode, [n for n in nodes if n < width]

    # -- memory access ------------------------------------------------------
    def touch(self, pid: int, addr: int, npages: int, write: bool = True, tokens=None):
        mm = self._mm(pid)
        ranges = self._range(mm, addr, npages)
        write = _flag(write, "touch: write")
        toks = None
        if write:
            if tokens is None:
                toks = self.k.next_tokens(int(npages))
            else:
                toks = _int_array(tokens, "touch: tokens", wrap=True)
                if toks.shape != (npages,):
                    raise OSError(errno.EINVAL, f"touch: tokens must hold {npages} values, got {toks.shape[0]}")
        done = 0
        for vma, lo, hi in ranges:
            self._run(_touch(self.k, vma, lo, hi, write,
                             toks[done:done + hi - lo] if write else None))
            done += hi - lo
        return toks

    def hot_pages(self, pid: int, n: int, exclude_node: int | None = None) -> list[int]:
        """Addresses of the process's n most recently accessed resident pages
        (latest LRU tick first), leaving out pages already on exclude_node:
        what a NUMA-balancing policy would promote."""
        mm = self._mm(pid)
        if self.k.tlb is not None:
            self.k.tlb.referenced(self.k)      # accesses through the CPUs' TLBs count
        addrs, ticks = [], []
        for vma in mm.vmas:
            p = vma.pte
            idx = np.flatnonzero((p & P.PRESENT) != 0)
            g = p[idx] >> P.OFF_SHIFT
            node, pfn = g >> P.NODE_SHIFT, g & P.PFN_MASK
            keep = node != exclude_node if exclude_node is not None else np.ones(len(idx), bool)
            idx, node, pfn = idx[keep], node[keep], pfn[keep]
            t = np.zeros(len(idx), dtype=np.int64)
            for nd in np.unique(node).tolist():
                sel = node == nd
                t[sel] = self.k.nodes[nd].lru_tick[pfn[sel]]
            addrs.append((vma.start + idx) << self.k.page_shift)
            ticks.append(t)
        if not addrs:
            return []
        a, t = np.concatenate(addrs), np.concatenate(ticks)
        order = np.argsort(-t, kind="stable")[:max(0, int(n))]
        return a[order].tolist()

    def _settled(self) -> None:
        """Before a look at contents that does not fault: in-process no
        migration copy is ever in flight (cluster.concurrent's driver waits)."""

    def read_tokens(self, pid: int, addr: int, npages: int) -> np.ndarray:
        self._settled()
        mm = self._mm(pid)
        out = []
        for vma, lo, hi in self._range(mm, addr, npages):
            c = invariants.content_of_ptes(self.k, invariants.effective_ptes(vma, lo, hi)) if self.payload == "token" \
                else self._page_rows(vma, lo, hi).view(np.int64)[:, 0]
            out.append(c)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _page_rows(self, vma, lo: int, hi: int) -> np.ndarray:
        """Bytes-mode contents of pages [lo, hi) wherever they are, without faulting."""
        k = self.k
        ptes = invariants.effective_ptes(vma, lo, hi)
        rows = np.zeros((hi - lo, self.page_size), dtype=np.uint8)
        pres = (ptes & P.PRESENT) != 0
        t = P.swp_type(ptes)
        off = P.pte_offset(ptes)
        for i in np.flatnonzero(ptes != 0).tolist():
            if pres[i] or t[i] in (P.SWP_MIGRATION_READ, P.SWP_MIGRATION_WRITE):
                g = int(off[i])
            elif t[i] == P.SWP_MIGCACHE:
                g = int(k.migcache.page[off[i]])
            else:
                g = int(k.swap.cache_page[off[i]])
                if g < 0:
                    rows[i] = k.swap.store[off[i]]
                    continue
            rows[i] = k.nodes[g >> P.NODE_SHIFT].data[g & P.PFN_MASK]
        return rows

    def read(self, pid: int, addr: int, length: int) -> bytes:
        mm = self._mm(pid)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise OSError(errno.EINVAL, f"read: bad length {length!r}")
        if length == 0:
            return b""
        ps = self.page_size
        first, last = addr // ps, (addr + length - 1) // ps
        ranges = self._range(mm, first * ps, last - first + 1)
        parts = []
        for vma, lo, hi in ranges:
            self._run(_touch(self.k, vma, lo, hi, False, None))
            self._settled()
            if self.payload == "token":
                toks = invariants.content_of_ptes(self.k, invariants.effective_ptes(vma, lo, hi))
                parts.append(np.repeat(toks[:, None], ps // 8, axis=1).view(np.uint8).reshape(-1))
            else:
                parts.append(self._page_rows(vma, lo, hi).reshape(-1))
        buf = np.concatenate(parts)
        start = addr - first * ps
        return buf[start:start + length].tobytes()

    def write(self, pid: int, addr: int, data: bytes) -> None:
        mm = self._mm(pid)
        if not isinstance(data, (bytes, bytearray, memoryview)):    # bytes(4096) would be 4096 zeros
            raise OSError(errno.EINVAL, f"write: data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data:
            return
        ps = self.page_size
        first, last = addr // ps, (addr + len(data) - 1) // ps
        npages = last - first + 1
        ranges = self._range(mm, first * ps, npages)
        if self.payload == "token":
            if addr % ps or len(data) % ps:
                raise OSError(errno.EINVAL, "write: token mode stores one 64-bit token per page: write "
                                            "whole, page-aligned pages (or use payload='bytes')")
            words = np.frombuffer(data, dtype=np.int64).reshape(npages, ps // 8)
            if (words != words[:, :1]).any():
                raise OSError(errno.EINVAL, "write: token mode pages must be one 8-byte value repeated "
                                            "(or use payload='bytes')")
            self.touch(pid, first * ps, npages, True, words[:, 0].copy())
            return
        # bytes mode: each page's new contents (the bytes written over what it holds now)
        # land as the access stores them, right after the page's own fault: a page
        # reclaimed later in the same call keeps them, in swap
        done = 0
        buf = np.frombuffer(data, dtype=np.uint8)
        start = addr - first * ps
        for vma, lo, hi in ranges:
            span = (hi - lo) * ps
            rows = self._page_rows(vma, lo, hi).reshape(-1)
            a = max(0, start - done)
            b = min(span, start + len(data) - done)
            rows[a:b] = buf[done + a - start:done + b - start]
            self._run(_touch(self.k, vma, lo, hi, True, rows.reshape(hi - lo, ps)))
            done += span

    # -- migration ------------------------------------------------------------
    def move_pages(self, pid: int, pages, nodes=None, flags: int = 0, *, privileged: bool = True,
                   caller: int | None = None) -> list[int]:
        return self.move_pages_status(pid, pages, nodes, flags, privileged=privileged, caller=caller).tolist()

    def move_pages_status(self, pid: int, pages, nodes=None, flags: int = 0, *, privileged: bool = True,
                          caller: int | None = None) -> np.ndarray:
        """move_pages() with its status list as an int64 array: what a
        transport sends as one buffer instead of thousands of ints."""
        addrs = _int_array(pages, "move_pages: pages")
        if len(addrs) > MOVE_PAGES_MAX:
            raise OSError(errno.E2BIG, f"move_pages: {len(addrs)} pages, more than {MOVE_PAGES_MAX}")
        if not is_int(flags) or flags & ~(MPOL_MF_MOVE | MPOL_MF_MOVE_ALL):
            raise OSError(errno.EINVAL, f"move_pages: flags {flags!r}: only MPOL_MF_MOVE and MPOL_MF_MOVE_ALL")
        flags = int(flags)
        if flags & MPOL_MF_MOVE_ALL and not privileged:
            raise OSError(errno.EPERM, "move_pages: MPOL_MF_MOVE_ALL needs CAP_SYS_NICE")
        mm = self._mm(pid)
        if caller is not None and caller != pid and not privileged:
            raise OSError(errno.EPERM, f"move_pages: pid {caller} may not move pages of pid {pid}")
        vpns = np.where(addrs >= 0, addrs >> self.k.page_shift, -1)
        if nodes is None:
            return stat_step(self.k, mm, vpns)
        tgt = _int_array(nodes, "move_pages: nodes")
        if len(tgt) != len(addrs):
            raise OSError(errno.EINVAL, f"move_pages: {len(tgt)} nodes for {len(addrs)} pages")
        cpu = None if caller is None else self._mm(caller).node   # the caller allocates
        return self._run(mm_held(self.k, mm, do_pages_move(self.k, mm, vpns, tgt, flags, cpu)))  # MovePagesError: an OSError

    def migrate_pages(self, pid: int, old_nodes: Sequence[int], new_nodes: Sequence[int], *,
                      privileged: bool = True) -> int:
        """kernel_migrate_pages(): both nodemasks read first (a number no
        nodemask holds: EINVAL), then the pid (ESRCH), then new_nodes (a node
        not online, or none: EINVAL); old_nodes is only a mask to read, and a
        bit naming no online node has no pages there, so it is no error."""
        mm, mapping, old = self.migrate_pages_args(pid, old_nodes, new_nodes)
        if not mapping:
            return 0
        return self._run(mm_held(self.k, mm, do_migrate_pages(self.k, mm, mapping, privileged, old)))

    def migrate_pages_args(self, pid: int, old_nodes: Sequence[int], new_nodes: Sequence[int]):
        """The process, the node remap migrate_pages(2) would use and its from
        nodes, in 6.1's order of checks; an empty remap moves nothing."""
        old = list(get_nodes(old_nodes, "migrate_pages: old_nodes"))
        new_mask = get_nodes(new_nodes, "migrate_pages: new_nodes")
        mm = self._mm(pid)
        new = [self._node(n, "migrate_pages: new_nodes") for n in new_mask]
        if not new:
            raise OSError(errno.EINVAL, "migrate_pages: new_nodes names no node")
        return mm, (nodes_remap(old, new) if old else {}), old

    # -- reclaim and swap -----------------------------------------------------
    def reclaim(self, node: int, nr_pages: int) -> int:
        node = self._node(node)
        if not is_int(nr_pages) or nr_pages < 0:
            raise OSError(errno.EINVAL, f"reclaim: nr_pages must be >= 0, got {nr_pages!r}")
        return self._run(shrink_node(self.k, node, int(nr_pages)))

    def swapoff(self) -> None:
        self._run(_swapoff(self.k))

    def swapon(self) -> None:
        _swapon(self.k)

    # -- observation ------------------------------------------------------------
    def vmstat(self, node: int | None = None) -> dict[str, int]:
        k = self.k
        nodes = range(self.nr_nodes) if node is None else [self._node(node)]
        counts = k.stat.counts[list(nodes)].sum(axis=0)
        out = {name: int(v) for name, v in zip(EVENTS, counts)}
        from .frames import PG_isolated, PG_swapcache
        g = dict.fromkeys(GAUGES, 0)
        for n in nodes:
            fr = k.nodes[n]
            g["nr_free_pages"] += fr.nr_free
            g["nr_anon_pages"] += int((fr.mapcount > 0).sum())
            sc = (fr.flags & PG_swapcache) != 0
            g["nr_swapcached"] += int((sc & (P.swp_type(fr.private) == P.SWP_SWAP)).sum())
            g["nr_migcache_entries"] += int((sc & (P.swp_type(fr.private) == P.SWP_MIGCACHE)).sum())
            g["nr_isolated_anon"] += int(((fr.flags & PG_isolated) != 0).sum())
        if node is None:
            g["nr_swap_used"] = k.swap.used
        else:
            del g["nr_swap_used"]
        out.update(g)
        return out

    def node_info(self) -> list[dict[str, int]]:
        out = []
        for fr in self.k.nodes:
            from .frames import PG_lru, PG_swapcache
            out.append({"node": fr.node, "frames": fr.nframes, "free": fr.nr_free, "used": fr.used(),
                        "lru": int(((fr.flags & PG_lru) != 0).sum()),
                        "swapcache": int(((fr.flags & PG_swapcache) != 0).sum())})
        return out

    def swap_info(self) -> dict[str, Any]:
        sw = self.k.swap
        return {"slots": sw.nslots, "used": sw.used, "on": sw.on,
                "swapcached": int((sw.cache_page >= 0).sum())}

    def processes(self) -> list[int]:
        return sorted(pid for pid, mm in self.k.mms.items() if mm.findable)

    def check(self) -> None:
        invariants.check(self.k)

    # -- snapshots --------------------------------------------------------------
    def snapshot(self) -> bytes:
        from .snapshot import dump
        return dump(self)

    @classmethod
    def restore(cls, blob: bytes, *, checked: bool = True) -> "Machine":
        """checked=False restores a state the oracle rejects (a violation's
        dump, to explore further); bad bytes are refused either way."""
        from .snapshot import load
        return load(cls, blob, checked)
