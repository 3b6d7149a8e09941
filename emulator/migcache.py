"""The V8 migration cache (linux-mm RFC, 2006): a pseudo swap type indexed by an idr.

Rules the cache keeps (KERNEL.md, "V8 details that matter"):
- Offsets come from an idr, lowest free id first, starting at 1
  (idr_get_new_above(..., 1, ...)).
- Each live entry names one page and has a counter of the migration-cache
  ptes naming it: 0 when the page is added, +1 per swap_duplicate, -1 per
  swap_free.
- While in the cache the page has PG_swapcache, private = the entry, and the
  cache holds one page reference. When the counter drops to 0 the idr entry
  and the slot go, PG_swapcache and private are cleared and that reference is
  dropped: nothing lingers once no pte refers to the entry.
This module holds only the index; what happens to the page is done by the
callers in rmap/migrate, which own the frames.
"""
from __future__ import annotations

import bisect

import numpy as np


class MigCache:
    def __init__(self) -> None:
        self.counter = np.zeros(64, dtype=np.int64)
        self.page = np.full(64, -1, dtype=np.int64)   # gpfn, -1 = no entry
        self.next_id = 1          # every id >= next_id is free
        self.free_ids: list[int] = []  # freed ids below next_id, ascending
        self.nr_entries = 0

    def _grow(self, need: int) -> None:
        if need > len(self.page):
            size = max(need, 2 * len(self.page))
            self.counter = np.concatenate((self.counter, np.zeros(size - len(self.counter), np.int64)))
            self.page = np.concatenate((self.page, np.full(size - len(self.page), -1, np.int64)))

    def alloc_ids(self, n: int) -> np.ndarray:
        """idr_get_new_above(1): the n lowest free ids."""
        free = self.free_ids
        ids = free[:n]
        del free[:n]
        rest = n - len(ids)
        out = np.concatenate((np.array(ids, dtype=np.int64),
                              np.arange(self.next_id, self.next_id + rest, dtype=np.int64)))
        self.next_id += rest
        self._grow(self.next_id)
        self.nr_entries += n
        return out

    def insert(self, ids: np.ndarray, gpfns: np.ndarray) -> None:
        self.page[ids] = gpfns
        self.counter[ids] = 0

    def remove(self, ids: np.ndarray) -> None:
        """idr_remove(): the ids become free again."""
        self.page[ids] = -1
        self.counter[ids] = 0
        self.nr_entries -= len(ids)
        free = self.free_ids
        if len(ids) > 16:
            n = len(ids)
            if not free and int(ids[0]) == self.next_id - n and int(ids[-1]) == self.next_id - 1 \
                    and (np.diff(ids) > 0).all():
                self.next_id -= n                         # the top run of ids: the usual batch
                return
            if not free and (np.diff(ids) > 0).all():
                arr = np.asarray(ids, dtype=np.int64)    # ascending and distinct already
            else:
                arr = np.union1d(np.asarray(free, dtype=np.int64), ids)
            # a free run ending just below next_id joins the free range above it
            n = len(arr)
            run = arr == self.next_id - n + np.arange(n)
            cut = int(np.flatnonzero(~run)[-1]) + 1 if not run.all() else 0
            if cut < n:
                self.next_id = int(arr[cut])
            free[:] = arr[:cut].tolist()
            return
        for i in ids.tolist():
            bisect.insort(free, i)
        while free and free[-1] == self.next_id - 1:
            free.pop()
            self.next_id -= 1

    def live(self, ids):
        if len(ids) and ids.min() > 0 and ids.max() < len(self.page):
            return self.page[ids] >= 0
        ok = (ids > 0) & (ids < len(self.page))
        out = np.zeros(len(ids), dtype=bool)
        out[ok] = self.page[ids[ok]] >= 0
        return out
