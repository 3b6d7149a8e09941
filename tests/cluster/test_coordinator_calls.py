"""The coordinator's call surface without Ray: get_mempolicy is a call the
proxy (CoordMachine) forwards by name, logged as mutating (MPOL_F_NODE |
MPOL_F_ADDR faults), and run by the threaded driver as in-process."""
from __future__ import annotations

import errno

import pytest

from cluster import channel
from cluster.concurrent import ConcurrentMachine
from cluster.coordinator import CALLS, MUTATING, RESHAPE, CoordMachine
from emulator import MPOL_F_ADDR, MPOL_F_NODE, MPOL_INTERLEAVE


def test_get_mempolicy_is_a_mutating_call_that_reshapes_nothing():
    assert "get_mempolicy" in CALLS and "get_mempolicy" in MUTATING
    assert "get_mempolicy" not in RESHAPE


def test_the_threaded_driver_faults_a_page_in_for_get_mempolicy():
    m = ConcurrentMachine(nodes=3, frames_per_node=64, swap_pages=0)
    with m.cond:
        p = m.spawn(0)
        a = m.mmap(p, 4, shared=True)
        m.mbind(p, a, 4, "interleave", [1, 2])
        steps = m.steps
        assert m.get_mempolicy(p, a + m.page_size, MPOL_F_NODE | MPOL_F_ADDR) == (2, [1, 2])
        assert m.steps > steps
        assert m.vmstat()["pgfault"] == 1
        m.check()


@pytest.mark.skipif(not channel.available(), reason="abstract Unix sockets are Linux's")
def test_the_proxy_forwards_get_mempolicy_by_name_and_hands_back_a_tuple():
    """Through the same-host channel (msgpack, which has no tuple), with the
    coordinator's answer shapes: (True, result, steps) or (False, (class, errno,
    message), steps)."""
    m = ConcurrentMachine(nodes=2, frames_per_node=64, swap_pages=0)

    def coordinator(name, *args, _caller="", **kw):
        assert name in CALLS
        with m.cond:
            try:
                return True, getattr(m, name)(*args, **kw), 0
            except OSError as e:
                return False, (type(e).__name__, e.errno, e.strerror), 0

    server = channel.Server(coordinator)
    try:
        proxy = CoordMachine.__new__(CoordMachine)
        proxy.channel, proxy.caller = channel.Client(server.name), "test"
        p = proxy.spawn(0)
        proxy.set_mempolicy(p, "interleave", [0, 1])
        assert proxy.get_mempolicy(p) == (MPOL_INTERLEAVE, [0, 1])
        assert proxy.get_mempolicy(p, flags=MPOL_F_NODE) == (0, [0, 1])
        with pytest.raises(OSError) as ei:
            proxy.get_mempolicy(p, 4096, MPOL_F_ADDR)
        assert ei.value.errno == errno.EFAULT
    finally:
        server.close()
