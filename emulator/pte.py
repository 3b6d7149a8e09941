"""Page table entries and swap entries as 64-bit integers.

Rules this encoding keeps:
- 0 is pte_none: never touched (or unmapped).
- A present pte has bit 0 set; bit 1 is the write permission; bits 8.. hold
  the global frame number (node << NODE_SHIFT | pfn).
- A non-present, non-none pte is a swap-format entry: bit 0 clear, bits 2..7
  the type, bits 8.. the offset. Types:
  SWP_SWAP        a real swap slot on the swap device (offset = slot),
  SWP_MIGCACHE    the V8 migration cache (offset = idr id, from 1),
  SWP_MIGRATION_READ / _WRITE  upstream migration entries (offset = gpfn).
The same integer is a page's `private` while it sits in the swap cache or
the migration cache, so "private == entry" is one integer comparison.
"""
from __future__ import annotations

import numpy as np

PRESENT = 1
WRITE = 2
TYPE_SHIFT = 2
TYPE_MASK = 0x3F << TYPE_SHIFT
OFF_SHIFT = 8
NODE_SHIFT = 32
PFN_MASK = (1 << NODE_SHIFT) - 1

SWP_SWAP = 1
SWP_MIGCACHE = 2
SWP_MIGRATION_READ = 3
SWP_MIGRATION_WRITE = 4

TYPE_NAMES = {SWP_SWAP: "swap", SWP_MIGCACHE: "migcache",
              SWP_MIGRATION_READ: "migration-read", SWP_MIGRATION_WRITE: "migration-write"}


def gpfn(node, pfn):
    return (node << NODE_SHIFT) | pfn


def mk_present(node, pfn, write):
    """Works on ints and on int64 arrays alike."""
    return (gpfn(node, pfn) << OFF_SHIFT) | PRESENT | (WRITE * write)


def mk_swp(typ: int, offset):
    return (offset << OFF_SHIFT) | (typ << TYPE_SHIFT)


def is_present(pte):
    return (pte & PRESENT) != 0


def swp_type(pte):
    return (pte & TYPE_MASK) >> TYPE_SHIFT


def pte_offset(pte):
    """Offset of a swap-format entry, or the gpfn of a present pte."""
    return pte >> OFF_SHIFT


def pte_node(pte):
    return (pte >> (OFF_SHIFT + NODE_SHIFT))


def pte_pfn(pte):
    return (pte >> OFF_SHIFT) & PFN_MASK


def is_migration(pte):
    t = swp_type(pte)
    return ((pte & PRESENT) == 0) & ((t == SWP_MIGRATION_READ) | (t == SWP_MIGRATION_WRITE))


def describe(pte: int) -> str:
    pte = int(pte)
    if pte == 0:
        return "none"
    if pte & PRESENT:
        return f"present(node={pte_node(pte)}, pfn={pte_pfn(pte)}, {'rw' if pte & WRITE else 'ro'})"
    t = swp_type(pte)
    off = pte_offset(pte)
    if t in (SWP_MIGRATION_READ, SWP_MIGRATION_WRITE):
        return f"{TYPE_NAMES[t]}(node={off >> NODE_SHIFT}, pfn={off & PFN_MASK})"
    return f"{TYPE_NAMES.get(t, f'type{t}')}({off})"


EMPTY = np.zeros(0, dtype=np.int64)
