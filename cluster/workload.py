"""Workload generation: which pages each operation touches, backend-agnostic.

Everything random comes from ``numpy.random.Generator``s seeded from
``[run] seed``. The local backend draws from one, in a fixed order, so a
scenario replays exactly; on Ray each driver thread draws from its own
(seeded with the seed, its node and its thread), so each thread repeats its
accesses while their interleaving across threads is real, and differs.

An *operation* is one batch access by one thread of a process: ``batch``
consecutive pages of its slice of the mapping (clipped at the slice's end),
all reads or all writes. With ``threads = T`` a process's mapping is cut in
T disjoint slices, one per thread. Threads take turns round-robin, in the
order the workloads are listed; on the Ray backend each thread index is a
thread of the node actor, so they fault concurrently.

- ``sequential``: each process walks its mapping from page 0, wrapping around.
- ``uniform``: the batch starts at a page drawn uniformly.
- ``zipf``: the batch starts at page k-1 with probability proportional to
  1/k**zipf_s (k = 1..pages), so the first pages are the hot ones.

With ``fork_every = K``, every K-th operation of a process thread is followed
by a fork cycle (:func:`fork_cycle`) over the same pages; it draws nothing
from the generator, so the accesses stay the same with or without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scenario import WorkloadSpec


@dataclass
class Access:
    start: int   # first page index within the mapping
    npages: int  # >= 1
    write: bool


class AccessPattern:
    """Draws the accesses of one workload's processes."""

    def __init__(self, spec: WorkloadSpec):
        self.spec = spec
        self.pages = spec.pages
        self.batch = min(spec.batch, spec.pages)
        self._cdfs: dict[int, np.ndarray] = {}

    def _cdf(self, pages: int) -> np.ndarray:
        cdf = self._cdfs.get(pages)
        if cdf is None:
            weights = np.arange(1, pages + 1, dtype=np.float64) ** -self.spec.zipf_s
            cdf = np.cumsum(weights)
            cdf = self._cdfs[pages] = cdf / cdf[-1]
        return cdf

    def start(self, rng: np.random.Generator, cursor: int, pages: int | None = None) -> int:
        pages = self.pages if pages is None else pages
        pattern = self.spec.pattern
        if pattern == "sequential":
            return cursor % pages
        if pattern == "uniform":
            return int(rng.integers(0, pages))
        # zipf: inverse-CDF sampling over the page indices
        idx = int(np.searchsorted(self._cdf(pages), rng.random(), side="right"))
        return min(idx, pages - 1)

    def next(self, rng: np.random.Generator, cursor: int, pages: int | None = None) -> Access:
        """The next access over ``pages`` pages (default: the whole mapping;
        a thread's slice otherwise)."""
        pages = self.pages if pages is None else pages
        start = self.start(rng, cursor, pages)
        npages = min(self.batch, pages - start)
        write = bool(rng.random() < self.spec.write_ratio)
        return Access(start, npages, write)


@dataclass
class Shadow:
    """What the writers wrote: one token per page of a mapping, and whether
    it is known (a write that failed part way leaves its pages unknown until
    they are written again)."""

    tokens: np.ndarray
    known: np.ndarray

    @classmethod
    def zeros(cls, pages: int) -> "Shadow":
        return cls(np.zeros(pages, dtype=np.int64), np.ones(pages, dtype=bool))

    def record(self, start: int, tokens: np.ndarray) -> None:
        end = start + len(tokens)
        self.tokens[start:end] = tokens
        self.known[start:end] = True

    def forget(self, start: int, npages: int) -> None:
        self.known[start:start + npages] = False

    def mismatches(self, observed: np.ndarray) -> np.ndarray:
        """Page indices whose observed token differs from the recorded one."""
        observed = np.asarray(observed, dtype=np.int64)
        return np.flatnonzero(self.known & (observed != self.tokens))


def thread_slices(pages: int, threads: int) -> list[tuple[int, int]]:
    """[lo, hi) of each thread's slice of a mapping: disjoint, so every page
    has one writer and its shadow stays exact under concurrency."""
    return [(t * pages // threads, (t + 1) * pages // threads) for t in range(threads)]


@dataclass
class Proc:
    """One emulated process of a workload and its driving state."""

    pid: int
    workload: int        # index in the scenario's [[workload]] list
    home: int            # node its CPU is on
    addr: int            # start of its mapping
    pages: int
    shadow: Shadow       # shared by every process of a shared workload
    flags: int           # move_pages flags for its pages
    cursor: int = 0      # sequential pattern position
    ops: int = 0         # accesses done by this thread of the process
    mig_node: int = field(default=-1)  # node of the last migration target (-1: home)
    thread: int = 0      # which of the process's threads: it works on its own slice

    def fork_due(self, fork_every: int) -> bool:
        """Count an access that worked; True when a fork cycle follows it."""
        self.ops += 1
        return bool(fork_every) and self.ops % fork_every == 0

    def page_addrs(self, page_indices: np.ndarray, page_size: int) -> list[int]:
        return [self.addr + int(i) * page_size for i in page_indices]

    def next_target(self, nr_nodes: int) -> tuple[int, int]:
        """(from, to) for the next migration of this process: round-robin
        over the nodes, starting with the node after its home."""
        src = self.home if self.mig_node < 0 else self.mig_node
        dst = (src + 1) % nr_nodes
        self.mig_node = dst
        return src, dst


@dataclass
class ForkResult:
    """What one fork cycle compared, and what did not match (described)."""

    child: int = 0
    checked: int = 0
    bad: list[str] = field(default_factory=list)

    def compare(self, what: str, proc: Proc, start: int, page_size: int,
                expected: np.ndarray, seen: np.ndarray, known: np.ndarray) -> None:
        self.checked += int(known.sum())
        for i in np.flatnonzero(known & (seen != expected)).tolist():
            page = start + i
            self.bad.append(f"fork: child {self.child} of pid {proc.pid} page {page} "
                            f"(addr {proc.addr + page * page_size:#x}): expected token {int(expected[i])} "
                            f"({what}), read {int(seen[i])}")


def fork_cycle(m, proc: Proc, acc: Access, page_size: int, shared: bool) -> ForkResult:
    """fork() the process right after ``acc``; the child faults the same pages
    in, must read what the parent had written, writes them (breaking
    copy-on-write, or through the shared mapping, which the parent then sees),
    must read its own tokens back, and exits. The calling thread is the only
    writer of these pages, so both checks are exact while other threads,
    migrations and reclaim run. An OSError of the child's faults propagates
    (after the child exits), as a touch's would."""
    child = m.fork(proc.pid)
    start, n = acc.start, acc.npages
    addr = proc.addr + start * page_size
    res = ForkResult(child)
    sh = proc.shadow
    try:
        m.touch(child, addr, n, write=False)
        seen = np.asarray(m.read_tokens(child, addr, n), dtype=np.int64)
        res.compare("the parent's, copied at fork", proc, start, page_size,
                    sh.tokens[start:start + n], seen, sh.known[start:start + n])
        try:
            toks = np.asarray(m.touch(child, addr, n, write=True), dtype=np.int64)
        except OSError:
            if shared:
                sh.forget(start, n)
            raise
        if shared:
            sh.record(start, toks)
        back = np.asarray(m.read_tokens(child, addr, n), dtype=np.int64)
        res.compare("the child's own write", proc, start, page_size, toks, back, np.ones(n, dtype=bool))
    finally:
        m.exit(child)
    return res
