"""TLB shootdown: what a pte change owes the CPUs that may cache the old pte.

Rules this module keeps:
- In-process there is no TLB. An access is access_step, which reads the pte
  itself, so every pte change is seen at once and ``flush_tlb`` does nothing
  (``k.tlb`` is None).
- A driver whose CPUs access present pages without the pte's owner (the Ray
  runtime's node actors, cluster/tlb.py) sets ``k.tlb``. Then every step that
  clears a present pte, points it at another page or write-protects it calls
  ``flush_tlb`` first, while the old pte is still in place, as
  ptep_clear_flush() does. The CPUs drop those entries and report what they
  did through them; ``pte_bits_to_page`` lands that on the page within the
  same step, before the step goes on (try_to_unmap_one's folio_mark_dirty).
- What the CPUs report is the pte's accessed and dirty bits: accessed moves
  the page to the LRU's young end (the LRU tick), dirty sets PG_dirty (so
  pageout writes the page rather than dropping a clean swap-cache copy) and
  takes the page's contents as the writer's record (the oracle's shadow).
- A pte that gains a mapping or a permission needs no flush: a CPU that still
  caches the old one faults, and the fault finds the new pte.
"""
from __future__ import annotations

import numpy as np

from . import pte as P
from .frames import PG_dirty
from .kernel import split_nodes
from .mm import VMA


def flush_tlb(k, vma: VMA, idx) -> None:
    """flush_tlb_page() for pages idx (an index array or a slice) of vma."""
    if k.tlb is not None:
        k.tlb.flush(k, vma, idx)


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
