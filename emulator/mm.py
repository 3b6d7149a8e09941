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
- A mempolicy is made once (make_policy(): sanitize_mpol_flags(), mpol_new(),
  mpol_set_nodemask(), as Linux 6.1) and never changed after: vmas, a forked
  child and snapshots share or copy it whole. Default has no nodes and no
  flags; local no nodes; preferred one node; bind, interleave and
  preferred-many at least one, online, sorted.
- A shared mapping's anon_vma stands for its shared memory object (the
  inode of anonymous shmem): every process maps it at the same addresses
  (fork; there is no mremap), so a page's offset in it is its vpn minus the
  object's ``base`` (the vpn of its page 0; a private mapping's vm_pgoff is
  its address: base 0, the offset is the vpn). It holds the object's shared
  policy (shmem's info->policy): sorted, apart ranges of offsets with their
  policy, set by mbind() of any mapping of it (mpol_set_shared_policy()),
  looked up by every fault on it (shmem_get_policy(); page_alloc's
  get_vma_policy()), and gone with the object.
"""
from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass, field

import numpy as np

from .topology import MAX_NODES as MAX_NUMNODES    # a nodemask's bits: CONFIG_NODES_SHIFT=10, as Debian's 6.1

MPOL_DEFAULT, MPOL_PREFERRED, MPOL_BIND, MPOL_INTERLEAVE, MPOL_LOCAL, MPOL_PREFERRED_MANY = 0, 1, 2, 3, 4, 5
MPOL_MAX = 6
MPOL_NAMES = {"default": MPOL_DEFAULT, "preferred": MPOL_PREFERRED, "bind": MPOL_BIND,
              "interleave": MPOL_INTERLEAVE, "local": MPOL_LOCAL, "preferred_many": MPOL_PREFERRED_MANY}
# mode flags (include/uapi/linux/mempolicy.h), or'ed into the mode
MPOL_F_NUMA_BALANCING = 1 << 13
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_STATIC_NODES = 1 << 15
MPOL_MODE_FLAGS = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | MPOL_F_NUMA_BALANCING
MPOL_USER_NODEMASK = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES
# the flags with which a policy keeps the nodes given (mpol_store_user_nodemask(): any mode flag, in 6.1)
MPOL_KEEPS_USER_NODES = MPOL_MODE_FLAGS
# a string mode's flag, as tmpfs's mpol= option spells it (mpol_parse_str(): "bind=static")
MPOL_FLAG_NAMES = {"static": MPOL_F_STATIC_NODES, "relative": MPOL_F_RELATIVE_NODES}
# get_mempolicy()'s flags (include/uapi/linux/mempolicy.h)
MPOL_F_NODE, MPOL_F_ADDR, MPOL_F_MEMS_ALLOWED = 1 << 0, 1 << 1, 1 << 2
MMAP_BASE_VPN = 0x10000
ADDRESS_PAGES = 1 << 31     # mmap hands out vpns below this: a page number at or past it is no page


@dataclass(frozen=True)
class Mempolicy:
    """struct mempolicy: the mode, the nodes it allocates on (pol->nodes: after
    mpol_set_nodemask()) and the mode flags the caller gave (what
    get_mempolicy() or's into the mode). MPOL_F_STATIC_NODES and
    MPOL_F_RELATIVE_NODES decide the nodes when the policy is made; after
    that they matter only when a cpuset changes the nodes a task may use
    (mpol_rebind_*()), which never happens here (every online node is
    allowed), and in mpol_equal(), which compares the nodes given
    (``user_nodes``) too: mbind() sets no policy equal to the vma's.
    MPOL_F_NUMA_BALANCING (bind only) is recorded and does nothing: there is
    no NUMA balancing (no hinting faults) in this model; but, a mode flag,
    it keeps the nodes given too (mpol_store_user_nodemask() is any mode
    flag in 6.1), so mpol_equal() compares them."""
    mode: int = MPOL_DEFAULT
    nodes: tuple[int, ...] = ()
    flags: int = 0
    user_nodes: tuple[int, ...] = ()    # w.user_nodemask: the nodes as given, kept with any mode flag


@dataclass(eq=False)
class AnonVMA:
    id: int
    vmas: list["VMA"] = field(default_factory=list)
    pins: int = 0
    base: int = 0       # a shared memory object's: the vpn of its page 0 (see the rules)
    policy: list[tuple[int, int, Mempolicy]] = field(default_factory=list)   # its shared policy: [start, end)


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


def parse_mode(mode) -> tuple[int, int]:
    """sanitize_mpol_flags(): (mode, mode flags). An int carries its flags as
    Linux's does (``MPOL_BIND | MPOL_F_STATIC_NODES``); a name may carry
    ``=static`` or ``=relative`` as tmpfs's mpol= spells them ("bind=static"),
    MPOL_F_NUMA_BALANCING only an int. EINVAL: a mode past the last one,
    STATIC with RELATIVE, NUMA_BALANCING with any mode but bind."""
    if isinstance(mode, str):
        name, eq, flag = mode.partition("=")
        if name not in MPOL_NAMES or (eq and flag not in MPOL_FLAG_NAMES):
            raise OSError(errno.EINVAL, f"mempolicy mode: must be one of {', '.join(MPOL_NAMES)}, optionally "
                                        f"with ={' or ='.join(MPOL_FLAG_NAMES)}, got {mode!r}")
        m, flags = MPOL_NAMES[name], MPOL_FLAG_NAMES[flag] if eq else 0
    else:
        if not is_int(mode):
            raise OSError(errno.EINVAL, f"mempolicy mode: unknown mode {mode!r}")
        m, flags = int(mode) & ~MPOL_MODE_FLAGS, int(mode) & MPOL_MODE_FLAGS
        if not 0 <= m < MPOL_MAX:
            raise OSError(errno.EINVAL, f"mempolicy mode: unknown mode {mode!r}")
    if flags & MPOL_F_STATIC_NODES and flags & MPOL_F_RELATIVE_NODES:
        raise OSError(errno.EINVAL, "mempolicy mode: MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES together")
    if flags & MPOL_F_NUMA_BALANCING and m != MPOL_BIND:
        raise OSError(errno.EINVAL, "mempolicy mode: MPOL_F_NUMA_BALANCING is for MPOL_BIND only")
    return m, flags


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


def mpol_relative_nodemask(nodes: tuple[int, ...], allowed: tuple[int, ...]) -> tuple[int, ...]:
    """MPOL_F_RELATIVE_NODES: the user's node n means the (n mod |allowed|)-th
    allowed node (nodes_fold() onto |allowed| bits, then nodes_onto() the
    allowed ones): on three nodes, {4} is node 1."""
    return tuple(sorted({allowed[n % len(allowed)] for n in nodes}))


def make_policy(mode, nodes, nr_nodes: int) -> Mempolicy:
    """mpol_new() then mpol_set_nodemask(), as do_set_mempolicy() and do_mbind()
    call them (Linux 6.1). mpol_new(): default takes no node (its flags are
    dropped with it: no policy is made); local takes no node and neither
    STATIC nor RELATIVE; preferred with none is local, but EINVAL with STATIC
    or RELATIVE; every other mode needs a node. mpol_set_nodemask(): the
    nodes allowed are the online ones (a cpuset allows them all here); with
    RELATIVE the caller's nodes are folded onto them
    (mpol_relative_nodemask()), else (STATIC too) intersected with them;
    EINVAL if none is left; preferred keeps the first (mpol_ops[]'s create)."""
    mode, flags = parse_mode(mode)
    ns = get_nodes(nodes)
    if mode == MPOL_DEFAULT:
        if ns:
            raise OSError(errno.EINVAL, "mempolicy nodes: must be empty for default and local")
        return Mempolicy()
    if mode == MPOL_PREFERRED and not ns:
        if flags & MPOL_USER_NODEMASK:
            raise OSError(errno.EINVAL, "mempolicy nodes: preferred with no node (local) takes neither "
                                        "MPOL_F_STATIC_NODES nor MPOL_F_RELATIVE_NODES")
        mode = MPOL_LOCAL
    elif mode == MPOL_LOCAL:
        if ns:
            raise OSError(errno.EINVAL, "mempolicy nodes: must be empty for default and local")
        if flags & MPOL_USER_NODEMASK:
            raise OSError(errno.EINVAL, "mempolicy mode: local takes neither MPOL_F_STATIC_NODES nor "
                                        "MPOL_F_RELATIVE_NODES")
    elif not ns:
        raise OSError(errno.EINVAL, "mempolicy nodes: bind, interleave and preferred_many need at least one node")
    if mode == MPOL_LOCAL:
        return Mempolicy(MPOL_LOCAL)
    allowed = tuple(range(nr_nodes))
    if flags & MPOL_F_RELATIVE_NODES:
        got = mpol_relative_nodemask(ns, allowed)
    else:
        got = tuple(n for n in ns if n < nr_nodes)
    if not got:
        raise OSError(errno.EINVAL, f"mempolicy nodes: {list(ns)} names no online node (0..{nr_nodes - 1})")
    return Mempolicy(mode, got[:1] if mode == MPOL_PREFERRED else got, flags,
                     ns if flags & MPOL_KEEPS_USER_NODES else ())


# -- shared policy: a shared memory object's (mm/mempolicy.c, mm/shmem.c) --
def shared_policy_replace(av: AnonVMA, start: int, end: int, pol: Mempolicy | None) -> None:
    """shared_policy_replace(): offsets [start, end) of the object get pol
    (None: none, each task's own applies there again); a range it overlaps
    keeps its policy outside [start, end), cut in two if it spans it. Ranges
    are not merged, as 6.1's sp_nodes are not."""
    out = []
    for s, e, p in av.policy:
        if s < start:
            out.append((s, min(e, start), p))
        if e > end:
            out.append((max(s, end), e, p))
    if pol is not None:
        out.append((start, end, pol))
    av.policy = sorted(out, key=lambda r: r[0])


def merged_span(vma: VMA, pol: Mempolicy | None) -> tuple[int, int]:
    """The vpns [start, end) of the vma that 6.1's mbind_range() gives pol
    when it gives it to vma: vma_merge() first merges the range with the vma
    before it and the one after it where they touch it, map the same object
    at the next offsets and have a policy of their own equal to pol
    (mpol_equal(); NULL with NULL too), and vma_replace_policy() then sets
    the merged vma. The model keeps vmas apart, so a run of touching vmas of
    one object with equal policies stands for the one vma that 6.1 would
    have merged them into (only mbind changes a vma's policy here, and it
    merges each time): the span covers the run on either side."""
    vmas = vma.mm.vmas
    lo = hi = next(i for i, v in enumerate(vmas) if v is vma)

    def merges(a: VMA, b: VMA, other: VMA) -> bool:        # a ends where b starts; other: not vma
        return a.end == b.start and other.shared and other.anon_vma is vma.anon_vma and other.policy == pol
    while lo > 0 and merges(vmas[lo - 1], vmas[lo], vmas[lo - 1]):
        lo -= 1
    while hi + 1 < len(vmas) and merges(vmas[hi], vmas[hi + 1], vmas[hi + 1]):
        hi += 1
    return vmas[lo].start, vmas[hi].end


def vma_replace_policy(vma: VMA, pol: Mempolicy | None) -> None:
    """vma_replace_policy() of mbind_range(), the vma cut to the range first: a
    shared mapping's set_policy (shmem_set_policy(), mpol_set_shared_policy())
    gives the object's pages under the vma the policy, for every process
    mapping it, over the whole vma that vma_merge() made of it and its
    neighbours (merged_span()): where such a neighbour's offsets have
    another policy, set by another mapper, that goes too; the vma keeps it
    too (what fork copies, and what mpol_equal() compares), though no fault
    on it looks at it."""
    if vma.shared:
        av = vma.anon_vma
        start, end = merged_span(vma, pol)
        shared_policy_replace(av, start - av.base, end - av.base, pol)
    vma.policy = pol
