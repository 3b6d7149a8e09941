"""The model's TLBs (emulator/tlb.py), as the explorer runs them: the epoch rule per process."""
from __future__ import annotations

from emulator import Machine
from emulator.tlb import tlbs_on


def test_a_fill_stays_good_across_a_flush_of_another_process_and_not_of_its_own():
    m = Machine(nodes=2, frames_per_node=16, swap_pages=0)
    a, b = m.spawn(0), m.spawn(0)
    xa, xb = m.mmap(a, 2), m.mmap(b, 2)
    m.touch(a, xa, 2)
    m.touch(b, xb, 2)
    tlbs_on(m.k)
    sd, tlb, shift, ps = m.k.tlb, m.k.tlb.ports[0], m.k.page_shift, m.page_size

    def fill(pid, x):
        mm = m._mm(pid)
        return sd.fill(mm, m._range(mm, x, 2), 0, x >> shift)

    assert tlb.install(b, fill(b, xb))
    fa = fill(a, xa)
    m.move_pages(b, [xb, xb + ps], [1, 1])          # flushes b's entries only
    assert tlb.install(a, fa)                       # a's fill is still the truth
    m.check()                                       # invariant 11 included
    fa = fill(a, xa)
    m.move_pages(a, [xa, xa + ps], [1, 1])          # now a's own entries are flushed
    assert not tlb.install(a, fa) and tlb.stale_fills == 1
    m.check()
