"""Helpers shared by the emulator suites (imported as `emu_support`).

Every assertion in tests/emulator goes through the public API of
`emulator` (Machine methods, vmstat, node_info, swap_info, check,
snapshot/restore) and takes its expected values from the kernel semantics in
KERNEL.md, never from what the implementation happens to print.
"""
from __future__ import annotations

import errno

import pytest

POLICIES = ("swapcache", "migcache", "migentry")
PAYLOADS = ("token", "bytes")
PS = 256  # small pages keep bytes-mode tests fast; page_size must be a power of two >= 64


def make(policy="migentry", payload="token", nodes=2, frames=64, swap=0, page_size=PS,
         seed=0, **extra):
    from emulator import Machine
    cfg = {"nodes": nodes, "swap_pages": swap, "page_size": page_size, "policy": policy,
           "payload": payload, "seed": seed}
    if not isinstance(nodes, list):
        cfg["frames_per_node"] = frames
    cfg.update(extra)
    return Machine.from_config(cfg)


def pattern(m, token: int) -> bytes:
    """A page whose content is `token`: its 8 little-endian bytes repeated."""
    return (token & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") * (m.page_size // 8)


def fill(m, pid, addr, npages, base=0x1000):
    """Write page i of the range with the token base+i (valid in both payload modes)."""
    pages = [pattern(m, base + i) for i in range(npages)]
    m.write(pid, addr, b"".join(pages))
    return pages


def pages_of(m, addr, npages):
    return [addr + i * m.page_size for i in range(npages)]


def where(m, pid, addr, npages=1):
    """move_pages query: the node of each page, or a negative errno."""
    return list(m.move_pages(pid, pages_of(m, addr, npages)))


def ev(m, name, node=None) -> int:
    """An event counter: machine-wide (node None) or of one node."""
    return int(m.vmstat(node)[name])


def free(m, node) -> int:
    return int(m.node_info()[node]["free"])


def free_all(m):
    return [int(n["free"]) for n in m.node_info()]


def numa(m):
    keys = ("numa_hit", "numa_miss", "numa_foreign", "numa_local", "numa_other",
            "numa_interleave")
    return [{k: int(m.vmstat(n)[k]) for k in keys} for n in range(m.nr_nodes)]


def numa_delta(after, before):
    return [{k: a[k] - b[k] for k in a} for a, b in zip(after, before)]


def unmapped_addr(m, pid, npages=1):
    """An address guaranteed to lie outside every mapping of `pid`: map, then unmap."""
    a = m.mmap(pid, npages)
    m.munmap(pid, a, npages)
    return a


def raises_errno(code, fn, *args, **kwargs):
    with pytest.raises(OSError) as ei:
        fn(*args, **kwargs)
    assert ei.value.errno == code, (
        f"expected {errno.errorcode[code]}, got errno {ei.value.errno} "
        f"({errno.errorcode.get(ei.value.errno)}): {ei.value}")
    return ei.value


def step_through(coro, after_first=None):
    """Run an operation coroutine to completion, one step at a time (the
    explorer's way); ``after_first`` runs between its first and second step,
    as another operation would."""
    from emulator.sched import Call
    value, first = None, True
    while True:
        try:
            req = coro.send(value)
        except StopIteration as stop:
            return stop.value
        assert isinstance(req, Call), f"unexpected wait: {req!r}"
        value = req.fn(*req.args)
        if first and after_first is not None:
            after_first()
        first = False
