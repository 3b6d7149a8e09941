"""One node's physical frames: struct page fields as numpy arrays.

Rules this table keeps:
- A frame is free exactly when PG_buddy is set; a free frame has refcount 0,
  mapcount 0, no other flag, and sits once on the free stack.
- refcount counts every holder: each pte mapping it, the swap or migration
  cache (one), a migrator (PG_isolated, one) and transient pins of operations
  in flight; when it reaches 0 the frame goes back to the free stack.
- PG_lru is set on in-use pages that reclaim may scan; an isolated page is off
  the LRU. lru_tick orders the LRU: reclaim takes the oldest ticks first.
- anon_vma and index are the rmap: the anon_vma whose vmas may map the page,
  and the virtual page number at which they do.
Watermarks follow the kernel's shape: allocations stay above `low` on a
preferred node before falling back, dip to `min` in the slow path, and
reclaim restores `high`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

PG_locked = np.uint16(1 << 0)
PG_swapcache = np.uint16(1 << 1)
PG_dirty = np.uint16(1 << 2)
PG_lru = np.uint16(1 << 3)
PG_isolated = np.uint16(1 << 4)
PG_anon = np.uint16(1 << 5)
PG_buddy = np.uint16(1 << 6)

FLAG_NAMES = {PG_locked: "locked", PG_swapcache: "swapcache", PG_dirty: "dirty", PG_lru: "lru",
              PG_isolated: "isolated", PG_anon: "anon", PG_buddy: "buddy"}


def flag_names(f: int) -> str:
    return "|".join(n for b, n in FLAG_NAMES.items() if f & b) or "0"


def span(a: np.ndarray) -> slice | np.ndarray:
    """``a`` as a slice when it is a run of consecutive ascending indices (the
    usual batch: frames allocated together), which numpy reads and writes
    several times faster than an index array; else ``a`` itself. A read
    through a slice is a view: a caller keeps no such read across a write
    of the same array."""
    n = len(a)
    if n > 8 and a[n - 1] - a[0] == n - 1 and (a[1:] - a[:-1] == 1).all():
        lo = int(a[0])
        return slice(lo, lo + n)
    return a


class Frames:
    """Frame table of one node; steps on it are the node owner's steps."""

    # A driver whose copies may still be running after their operation ended
    # (cluster/concurrent.py) sets this: every look at the payload waits for
    # them first, so that none sees a frame before its contents land.
    landing: Callable[[], None] | None = None

    def __init__(self, node: int, nframes: int, page_size: int, payload: str):
        self.node = node
        self.nframes = nframes
        self.page_size = page_size
        self.payload = payload
        self.refcount = np.zeros(nframes, dtype=np.int32)
        self.mapcount = np.zeros(nframes, dtype=np.int32)
        self.flags = np.full(nframes, PG_buddy, dtype=np.uint16)
        self.private = np.zeros(nframes, dtype=np.int64)
        self.anon_vma = np.full(nframes, -1, dtype=np.int32)
        self.index = np.zeros(nframes, dtype=np.int32)
        self.lru_tick = np.zeros(nframes, dtype=np.uint32)
        # nr_free and tick: in an array like every other field, so that the
        # whole table can live in memory another process maps (cluster/frames_shm.py)
        self.counters = np.array([nframes, 0], dtype=np.int64)
        # free stack: the top is at nr_free-1; pops come out in ascending pfn order
        self.free_stack = np.arange(nframes - 1, -1, -1, dtype=np.int32)
        if payload == "token":
            self.data = np.zeros(nframes, dtype=np.int64)
        else:
            self.data = np.zeros((nframes, page_size), dtype=np.uint8)
        self.wmark_min = nframes // 128
        self.wmark_low = nframes // 64
        self.wmark_high = (nframes * 3) // 128

    @property
    def data(self) -> np.ndarray:
        """The payload: a token (int64) or the bytes of each frame."""
        if self.landing is not None:
            self.landing()
        return self._data

    @data.setter
    def data(self, a: np.ndarray) -> None:
        self._data = a

    @property
    def nr_free(self) -> int:
        return int(self.counters[0])

    @nr_free.setter
    def nr_free(self, n: int) -> None:
        self.counters[0] = n

    @property
    def tick(self) -> int:
        """The LRU clock: an access stamps its pages' lru_tick with it."""
        return int(self.counters[1])

    @tick.setter
    def tick(self, t: int) -> None:
        self.counters[1] = t

    # -- allocation -------------------------------------------------------
    def alloc(self, n: int, floor: int = 0, zero: bool = True) -> np.ndarray:
        """Pop up to n frames while staying above `floor` free; one reference each.
        A migration target is not zeroed: it is about to be copied over."""
        n = max(0, min(n, self.nr_free - floor))
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        top = self.nr_free
        pfns = self.free_stack[top - n:top][::-1].astype(np.int64)
        self.nr_free = top - n
        at = span(pfns)
        self.refcount[at] = 1
        self.flags[at] = PG_anon
        self.mapcount[at] = 0
        self.private[at] = 0
        self.lru_tick[at] = self.tick
        if zero:
            self.data[at] = 0       # a run of frames: one memset
        return pfns

    def free(self, pfns: np.ndarray, at: slice | np.ndarray | None = None) -> None:
        """Return frames whose last reference is gone to the free stack.
        ``at``: pfns as span() gives them, if the caller has it."""
        if len(pfns) == 0:
            return
        at = span(pfns) if at is None else at
        self.flags[at] = PG_buddy
        self.refcount[at] = 0
        self.mapcount[at] = 0
        self.private[at] = 0
        self.anon_vma[at] = -1
        top = self.nr_free
        self.free_stack[top:top + len(pfns)] = pfns[::-1]
        self.nr_free = top + len(pfns)

    def put(self, pfns: np.ndarray, at: slice | np.ndarray | None = None) -> np.ndarray:
        """Drop one reference from each page (put_page); free those that reach 0.
        Callers pass distinct pages: one pte, one cache slot, one isolation each."""
        if len(pfns) == 0:
            return pfns
        at = span(pfns) if at is None else at
        rc = self.refcount[at] - 1
        self.refcount[at] = rc
        gone = rc == 0
        if gone.all():
            self.free(pfns, at)
            return pfns
        dead = pfns[gone]
        self.free(dead)
        return dead

    # -- payload ----------------------------------------------------------
    def tokens(self, pfns: np.ndarray) -> np.ndarray:
        if self.payload == "token":
            return self.data[pfns]
        return self.data.view(np.int64)[pfns, 0] if len(pfns) else np.zeros(0, np.int64)

    def set_tokens(self, pfns: np.ndarray, toks: np.ndarray) -> None:
        store_tokens(self.data, pfns, toks)

    def used(self) -> int:
        return self.nframes - self.nr_free


def store_tokens(data: np.ndarray, pfns: np.ndarray, toks: np.ndarray) -> None:
    """A write of one token per page: the page itself (token mode) or its
    first word (bytes mode), whoever holds the payload array."""
    if data.ndim == 1:
        data[pfns] = toks
    else:
        data.view(np.int64)[pfns, 0] = toks


def copy_rows(src: np.ndarray, si: np.ndarray, dst: np.ndarray, di: np.ndarray) -> None:
    """dst[di] = src[si], one memcpy per contiguous run instead of a gather and a scatter."""
    n = len(si)
    if n == 0:
        return
    if src.ndim == 1 or n < 8 or not (isinstance(src, np.ndarray) and isinstance(dst, np.ndarray)):
        dst[di] = src[si]       # tokens, a few rows, or a payload on another host: one batch
        return
    # break points where either index run stops being consecutive
    brk = np.flatnonzero((np.diff(si) != 1) | (np.diff(di) != 1)) + 1
    if len(brk) > n // 16:
        dst[di] = src[si]
        return
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [n]))
    for a, b in zip(starts.tolist(), ends.tolist()):
        s0, d0 = int(si[a]), int(di[a])
        dst[d0:d0 + (b - a)] = src[s0:s0 + (b - a)]
