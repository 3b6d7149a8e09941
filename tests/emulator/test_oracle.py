"""The invariant oracle: check() passes on healthy machines; InvariantViolation carries
invariant / where / seen."""
from __future__ import annotations

import pytest

from emu_support import PAYLOADS, POLICIES, fill, make, pages_of, pattern


def test_invariant_violation_is_importable_with_fields():
    from emulator import InvariantViolation
    assert issubclass(InvariantViolation, Exception)
    e = InvariantViolation("mapcount", "node 0 pfn 3", {"mapcount": 2, "present_ptes": 1})
    assert e.invariant == "mapcount"
    assert e.where == "node 0 pfn 3"
    assert e.seen == {"mapcount": 2, "present_ptes": 1}
    assert "mapcount" in str(e)
    with pytest.raises(InvariantViolation):
        raise e


def test_invariant_violation_is_not_an_oserror_or_valueerror():
    """Callers that treat OSError/ValueError as legal outcomes must never swallow it."""
    from emulator import InvariantViolation
    assert not issubclass(InvariantViolation, (OSError, ValueError))


def test_constants_have_the_kernel_values():
    import emulator
    assert emulator.MPOL_MF_MOVE == 2 and emulator.MPOL_MF_MOVE_ALL == 4
    assert (emulator.MPOL_DEFAULT, emulator.MPOL_PREFERRED, emulator.MPOL_BIND,
            emulator.MPOL_INTERLEAVE, emulator.MPOL_LOCAL) == (0, 1, 2, 3, 4)
    assert isinstance(emulator.MOVE_PAGES_MAX, int) and emulator.MOVE_PAGES_MAX > 0


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("policy", POLICIES)
def test_check_passes_on_healthy_machines(policy, payload):
    from emulator import MPOL_MF_MOVE_ALL
    m = make(policy=policy, payload=payload, nodes=2, frames=16, swap=16)
    assert m.check() is None
    p = m.spawn(node=0)
    m.check()
    a = m.mmap(p, 6)
    s = m.mmap(p, 2, shared=True)
    m.check()
    fill(m, p, a, 6)
    fill(m, p, s, 2)
    m.check()
    c = m.fork(p)
    m.check()
    m.write(c, a, pattern(m, 1))
    m.check()
    m.move_pages(p, pages_of(m, a, 6) + pages_of(m, s, 2), [1] * 8, flags=MPOL_MF_MOVE_ALL)
    m.check()
    m.reclaim(1, 4)
    m.check()
    m.read(p, a, 6 * m.page_size)
    m.check()
    m.swapoff()
    m.check()
    m.swapon()
    m.exit(c)
    m.check()
    m.munmap(p, a, 3)
    m.check()
    m.exit(p)
    m.check()


def test_check_is_pure():
    """check() observes: it changes no counter and no placement."""
    m = make(policy="migcache", nodes=2, frames=16, swap=16)
    p = m.spawn(node=0)
    a = m.mmap(p, 4)
    fill(m, p, a, 4)
    m.reclaim(0, 2)
    before = (m.vmstat(), m.node_info(), m.swap_info())
    for _ in range(3):
        m.check()
    assert (m.vmstat(), m.node_info(), m.swap_info()) == before
