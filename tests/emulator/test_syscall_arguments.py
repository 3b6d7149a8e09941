"""Arguments of the syscall-shaped API that no C caller could pass: the wrong
Python type (a float, a string, a bool where an int goes, a truthy "no"), a
numpy integer or array where a list of ints goes, values beyond 64 bits. Each
is either taken as the integer it is or refused with OSError(EINVAL) (EFAULT
for an address a read or write would fault on), never converted into
something else, and a refused call leaves the machine exactly as it was
(the snapshot's bytes)."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from emu_support import make


@pytest.fixture
def setup():
    m = make(nodes=2, frames=64)
    pid = m.spawn(0)
    a = m.mmap(pid, 4)
    m.touch(pid, a, 4)
    return m, pid, a


REFUSED = {
    "set_mempolicy: a nodemask of strings": lambda m, pid, a: m.set_mempolicy(pid, "bind", ["1"]),
    "set_mempolicy: a nodemask of floats": lambda m, pid, a: m.set_mempolicy(pid, "bind", [1.9]),
    "set_mempolicy: a nodemask of bools": lambda m, pid, a: m.set_mempolicy(pid, "bind", [True]),
    "set_mempolicy: a nodemask that is a string": lambda m, pid, a: m.set_mempolicy(pid, "bind", "01"),
    "set_mempolicy: a bare int for a nodemask": lambda m, pid, a: m.set_mempolicy(pid, "bind", 1),
    "set_mempolicy: local with a numpy mask": lambda m, pid, a: m.set_mempolicy(pid, "local", np.array([0])),
    "mbind: a float address": lambda m, pid, a: m.mbind(pid, float(a), 1, "bind", [1]),
    "mbind: a string address": lambda m, pid, a: m.mbind(pid, str(a), 1, "bind", [1]),
    "mmap: shared='no'": lambda m, pid, a: m.mmap(pid, 2, shared="no"),
    "munmap: a float address": lambda m, pid, a: m.munmap(pid, float(a), 1),
    "munmap: None for an address": lambda m, pid, a: m.munmap(pid, None, 1),
    "munmap: a negative address": lambda m, pid, a: m.munmap(pid, -m.page_size, 1),
    "munmap: 1.5 pages": lambda m, pid, a: m.munmap(pid, a, 1.5),
    "munmap: True pages": lambda m, pid, a: m.munmap(pid, a, True),
    "touch: write='no'": lambda m, pid, a: m.touch(pid, a, 1, write="no"),
    "touch: float tokens": lambda m, pid, a: m.touch(pid, a, 1, tokens=[1.5]),
    "touch: string tokens": lambda m, pid, a: m.touch(pid, a, 1, tokens=["7"]),
    "touch: too few tokens": lambda m, pid, a: m.touch(pid, a, 2, tokens=[7]),
    "write: an int for data": lambda m, pid, a: m.write(pid, a, m.page_size),
    "move_pages: float addresses": lambda m, pid, a: m.move_pages(pid, [float(a)], [1]),
    "move_pages: string nodes": lambda m, pid, a: m.move_pages(pid, [a], ["1"]),
    "move_pages: a 2-D nodes array": lambda m, pid, a: m.move_pages(pid, [a], [[1]]),
    "move_pages: pages that are no list": lambda m, pid, a: m.move_pages(pid, iter([a]), [1]),
    "migrate_pages: old_nodes beyond a nodemask": lambda m, pid, a: m.migrate_pages(pid, [5000], [1]),
    "migrate_pages: a negative old node": lambda m, pid, a: m.migrate_pages(pid, [-1], [1]),
    "migrate_pages: no new node": lambda m, pid, a: m.migrate_pages(pid, [0], []),
    "migrate_pages: a string old node": lambda m, pid, a: m.migrate_pages(pid, ["0"], [1]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_argument_is_einval_and_changes_nothing(setup, case):
    m, pid, a = setup
    before = m.snapshot()
    with pytest.raises(OSError) as ei:
        REFUSED[case](m, pid, a)
    assert ei.value.errno == errno.EINVAL, ei.value
    assert m.snapshot() == before
    m.check()


def test_migrate_pages_reads_both_nodemasks_before_it_looks_for_the_task(setup):
    """kernel_migrate_pages(): get_nodes() of both masks, then find_task_by_vpid()."""
    m, _, _ = setup
    for old, new in (([5000], [1]), ([0], [5000])):
        with pytest.raises(OSError) as ei:
            m.migrate_pages(99, old, new)
        assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        m.migrate_pages(99, [0], [1])
    assert ei.value.errno == errno.ESRCH


def test_numpy_integers_and_arrays_are_the_integers_they_hold(setup):
    m, pid, a = setup
    ps = m.page_size
    assert m.mmap(np.int64(pid), np.int32(2)) > 0
    # a one-node numpy nodemask: preferred node 1, not an empty mask (local)
    p = m.spawn(0)
    b = m.mmap(p, 2)
    m.set_mempolicy(np.int64(p), "preferred", np.array([1]))
    m.touch(p, b, 2)
    assert m.move_pages(p, [b, b + ps]) == [1, 1]
    m.set_mempolicy(p, "bind", np.array([0, 1]))
    m.mbind(p, b, 2, "bind", np.array([0]), np.int64(2))      # MPOL_MF_MOVE
    assert m.move_pages(p, np.array([b, b + ps])) == [0, 0]
    assert m.move_pages(pid, np.array([a], dtype=np.uint64), np.array([1], dtype=np.uint8),
                        flags=np.int64(2)) == [1]
    assert m.migrate_pages(pid, np.array([0]), np.array([1])) == 0
    assert m.move_pages(pid, [a + i * ps for i in range(4)]) == [1, 1, 1, 1]
    assert m.reclaim(1, np.int64(0)) == 0
    m.check()


def test_addresses_beyond_64_bits_signed_are_efault_not_overflow(setup):
    m, pid, a = setup
    huge = [1 << 63, (1 << 64) - 1, 1 << 70]
    assert m.move_pages(pid, huge + [a]) == [-errno.EFAULT] * 3 + [0]
    assert m.move_pages(pid, np.array(huge[:2], dtype=np.uint64)) == [-errno.EFAULT] * 2
    # a target node beyond 64 bits signed is no node: the call ends with ENODEV
    with pytest.raises(OSError) as ei:
        m.move_pages(pid, [a], np.array([(1 << 64) - 1], dtype=np.uint64))
    assert ei.value.errno == errno.ENODEV


def test_tokens_are_64_bit_contents_whatever_their_integer_type(setup):
    m, pid, a = setup
    top = (1 << 64) - 1
    m.touch(pid, a, 2, tokens=np.array([top, 5], dtype=np.uint64))
    assert m.read_tokens(pid, a, 2).tolist() == [-1, 5]          # the same 64 bits
    m.touch(pid, a, 1, tokens=[top])
    assert m.read_tokens(pid, a, 1).tolist() == [-1]
    m.check()
