"""The swap device: swap_map, slot allocation, backing store, swap cache index.

Rules (mm/swapfile.c, mm/swap_state.c):
- swap_map[slot] = number of swap ptes (and other holders) naming the slot,
  plus HAS_CACHE exactly while a page sits in the swap cache for it.
- A slot is free only when its count and HAS_CACHE are both zero; it then
  goes back to the free stack. Slot 0 is the header: never handed out.
- cache_page[slot] is the gpfn of the swap-cache page for the slot, or -1;
  it is set exactly when HAS_CACHE is.
- `on` is swapon/swapoff: while off, no slot is handed out.
The backing store holds the payload of written-out pages (pswpout) and is
read back on a swap-cache miss (pswpin).
"""
from __future__ import annotations

import numpy as np

HAS_CACHE = 1 << 30
COUNT_MASK = HAS_CACHE - 1


def add_at(a: np.ndarray, idx: np.ndarray, v: int) -> bool:
    """a[idx] += v counting repeats; True when idx had none (the usual batch:
    ascending, distinct), which takes one fancy-indexed add instead of ufunc.at."""
    if len(idx) < 2 or (np.diff(idx) > 0).all():
        a[idx] += v
        return True
    np.add.at(a, idx, v)
    return False


def ascending_unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a), without its sort when a is ascending and distinct already."""
    if len(a) < 2 or (np.diff(a) > 0).all():
        return a
    return np.unique(a)


class SwapDevice:
    def __init__(self, nslots: int, page_size: int, payload: str):
        self.nslots = nslots
        self.on = nslots > 0
        size = nslots + 1
        self.swap_map = np.zeros(size, dtype=np.int32)
        self.cache_page = np.full(size, -1, dtype=np.int64)
        self.free_stack = np.arange(nslots, 0, -1, dtype=np.int64)  # pops ascending from 1
        self.nr_free = nslots
        if payload == "token":
            self.store = np.zeros(size, dtype=np.int64)
        else:
            self.store = np.zeros((size, page_size), dtype=np.uint8)  # calloc: lazily backed

    @property
    def used(self) -> int:
        return self.nslots - self.nr_free

    def full(self) -> bool:
        """vm_swap_full(): more than half the slots in use."""
        return self.used * 2 > self.nslots

    def get_slots(self, n: int) -> np.ndarray:
        """get_swap_pages(): up to n slots, each born with HAS_CACHE."""
        if not self.on:
            return np.zeros(0, dtype=np.int64)
        n = min(n, self.nr_free)
        top = self.nr_free
        slots = self.free_stack[top - n:top][::-1].copy()
        self.nr_free = top - n
        self.swap_map[slots] = HAS_CACHE
        return slots

    def _release(self, slots: np.ndarray) -> None:
        dead = slots[self.swap_map[slots] == 0]
        if len(dead):
            dead = ascending_unique(dead)
            top = self.nr_free
            self.free_stack[top:top + len(dead)] = dead[::-1]
            self.nr_free = top + len(dead)

    def duplicate(self, slots: np.ndarray) -> None:
        """swap_duplicate(): one more holder per occurrence."""
        add_at(self.swap_map, slots, 1)

    def free_entries(self, slots: np.ndarray) -> None:
        """swap_free(): one holder fewer per occurrence; a slot with nothing left is free."""
        add_at(self.swap_map, slots, -1)
        self._release(slots)

    def clear_cache(self, slots: np.ndarray) -> None:
        """swapcache_free(): the cache lets go of the slot."""
        self.swap_map[slots] &= COUNT_MASK
        self.cache_page[slots] = -1
        self._release(slots)

    def count(self, slots):
        return self.swap_map[slots] & COUNT_MASK
