"""Processes: address spaces, vmas, page tables, anon_vmas, mempolicy.

Rules:
- A process (MM) has a home node (the CPU it runs on) and sorted,
  non-overlapping vmas. Addresses are handed out upwards from MMAP_BASE and
  never reused, so a stale address faults instead of aliasing new memory.
- Each vma owns its page table: one int64 pte per page (see pte.py), and the
  shadow: what the writer last wrote to each page (the token, or in bytes mode
  a checksum of the page), which the data oracle compares against.
- Every vma hangs on one anon_vma. fork puts the child's vma on the parent
  vma's anon_vma, at the tail of its list (R3: at the head, a remap walk that
  has already started can miss it). Shared vmas share their page table
  semantics through the anon_vma too: fork never write-protects them.
- An anon_vma lives while a vma is on it or an operation pins it (R2).
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field

import numpy as np

from .topology import MAX_NODES as MAX_NUMNODES    # a nodemask's bits: CONFIG_NODES_SHIFT=10, as Debian's 6.1

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE, MPOL_LOCAL = 0, 1, 2, 3, 4
MPOL_NAMES = {"default": MPOL_DEFAULT, "preferred": MPOL_PREFERRED, "bind": MPOL_BIND,
              "interleave": MPOL_INTERLEAVE, "local": MPOL_LOCAL}
MMAP_BASE_VPN = 0x10000
ADDRESS_PAGES = 1 << 31     # mmap hands out vpns below this: a page number at or past it is no page


@dataclass
class Mempolicy:
    mode: int = MPOL_DEFAULT
    nodes: tuple[int, ...] = ()


@dataclass(eq=False)
class AnonVMA:
    id: int
    vmas: list["VMA"] = field(default_factory=list)
    pins: int = 0


@dataclass(eq=False)
class VMA:
    mm: "MM"
    start: int          # first vpn
    npages: int
    shared: bool
    anon_vma: AnonVMA
    pte: np.ndarray
    shadow: np.ndarray
    policy: Mempolicy | None = None
    forking: bool = False   # linked on the anon_vma by fork, its ptes not copied yet
    handed: int = 0         # hand-overs of an exiting sibling's ptes received (rmap walks look again)

    @property
    def end(self) -> int:
        return self.start + self.npages

    def __repr__(self) -> str:
        return f"vma(pid={self.mm.pid}, {self.start:#x}+{self.npages}{', shared' if self.shared else ''})"


@dataclass(eq=False)
class MM:
    pid: int
    node: int
    vmas: list[VMA] = field(default_factory=list)
    policy: Mempolicy = field(default_factory=Mempolicy)
    next_vpn: int = MMAP_BASE_VPN
    alive: bool = True       # not torn down yet (exit_mmap)
    rss: int = 0             # pages with a non-none pte: invariant 9 counts these
    users: int = 1           # mm_users: the task, and each syscall on its memory in flight (get_task_mm)
    exited: bool = False     # the task is gone (its pid is ESRCH); the mm lives on while users hold it
    forking: bool = False    # a child whose fork is still copying: no pid finds it yet (copy_process)

    @property
    def findable(self) -> bool:
        """Whether its pid finds the task: not before its fork ends, not after its exit."""
        return not (self.exited or self.forking)

    def find_vma(self, vpn: int) -> VMA | None:
        starts = [v.start for v in self.vmas]
        i = bisect.bisect_right(starts, vpn) - 1
        if i >= 0 and vpn < self.vmas[i].end:
            return self.vmas[i]
        return None

    def insert_vma(self, vma: VMA) -> None:
        starts = [v.start for v in self.vmas]
        self.vmas.insert(bisect.bisect_left(starts, vma.start), vma)

    def ranges(self, vpn: int, npages: int, holes: bool = False,
               page_shift: int = 12) -> list[tuple[VMA, int, int]]:
        """Split [vpn, vpn+npages) by vma: (vma, lo, hi) page indexes in the vma.
        Raises EFAULT if any page is outside every vma (the access would SIGSEGV);
        with holes (mbind's MPOL_MF_DISCONTIG_OK), only if every page is.
        page_shift: for the addresses in the error."""
        out = []
        start, end = vpn, vpn + npages
        while vpn < end:
            vma = self.find_vma(vpn)
            if vma is None:
                if not holes:
                    raise OSError(errno.EFAULT, f"pid {self.pid}: address {vpn << page_shift:#x} (page {vpn:#x}) is not mapped")
                nxt = bisect.bisect_right([v.start for v in self.vmas], vpn)
                vpn = self.vmas[nxt].start if nxt < len(self.vmas) else end
                continue
            hi = min(end, vma.end)
            out.append((vma, vpn - vma.start, hi - vma.start))
            vpn = hi
        if holes and not out and npages:
            raise OSError(errno.EFAULT, f"pid {self.pid}: no page of {start << page_shift:#x} (page {start:#x}) "
                                        f"+{npages} pages is mapped")
        return out


def parse_mode(mode) -> int:
    if isinstance(mode, str):
        if mode not in MPOL_NAMES:
            raise OSError(errno.EINVAL, f"mempolicy mode: must be one of {', '.join(MPOL_NAMES)}, got {mode!r}")
        return MPOL_NAMES[mode]
    if isinstance(mode, bool) or not isinstance(mode, int) or mode not in MPOL_NAMES.values():
        raise OSError(errno.EINVAL, f"mempolicy mode: unknown mode {mode!r}")
    return mode


def is_int(v) -> bool:
    """An integer argument or field: a Python or numpy integer, never a bool
    (Python's True is an int, and TOML and msgpack both have booleans)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def get_nodes(nodes, what: str = "mempolicy nodes") -> tuple[int, ...]:
    """get_nodes(): the caller's nodemask (node numbers in any iterable, a
    numpy array too; None for none) as sorted node numbers. A number that no
    nodemask can hold (negative, or MAX_NUMNODES and up) is EINVAL; one naming
    no node of this machine is kept, for mpol_set_nodemask() to drop."""
    try:
        raw = [] if nodes is None else list(nodes)     # never an array's truth value
    except TypeError:
        raise OSError(errno.EINVAL, f"{what}: {nodes!r} is not a list of node numbers") from None
    bad = [n for n in raw if not is_int(n)]
    if bad:
        raise OSError(errno.EINVAL, f"{what}: {bad[0]!r} is not a node number")
    ns = tuple(sorted({int(n) for n in raw}))
    if ns and (ns[0] < 0 or ns[-1] >= MAX_NUMNODES):
        raise OSError(errno.EINVAL, f"{what}: {list(ns)} names a node outside a nodemask "
                                    f"(0..{MAX_NUMNODES - 1})")
    return ns


def make_policy(mode, nodes, nr_nodes: int) -> Mempolicy:
    """mpol_new() then mpol_set_nodemask(), as do_set_mempolicy() and do_mbind()
    call them (Linux 6.1): default and local take no node; preferred with none
    is local; bind, preferred and interleave keep the nodes that exist (the
    caller's nodemask and the online nodes: a cpuset allows them all here) and
    are EINVAL only if none is left; preferred keeps the first."""
    mode = parse_mode(mode)
    ns = get_nodes(nodes)
    if mode == MPOL_PREFERRED and not ns:
        mode = MPOL_LOCAL
    if mode in (MPOL_DEFAULT, MPOL_LOCAL):
        if ns:
            raise OSError(errno.EINVAL, "mempolicy nodes: must be empty for default and local")
        return Mempolicy(mode)
    if not ns:
        raise OSError(errno.EINVAL, "mempolicy nodes: bind and interleave need at least one node")
    online = tuple(n for n in ns if n < nr_nodes)
    if not online:
        raise OSError(errno.EINVAL, f"mempolicy nodes: {list(ns)} names no online node (0..{nr_nodes - 1})")
    return Mempolicy(mode, online[:1] if mode == MPOL_PREFERRED else online)
