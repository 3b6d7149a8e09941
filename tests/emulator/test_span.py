"""frames.span: a run of consecutive frames indexed as a slice is only a
faster way to index, never a different result."""

from __future__ import annotations

import random

import numpy as np
import pytest

import emulator.fault
import emulator.frames
import emulator.kernel
import emulator.migrate
import emulator.rmap
import emulator.swap_state
from emulator import Machine
from emulator.frames import span

# every module that indexes frame tables through span
USERS = (emulator.frames, emulator.fault, emulator.kernel, emulator.migrate, emulator.rmap, emulator.swap_state)


def test_a_run_of_consecutive_indices_is_a_slice_and_anything_else_is_itself():
    run = np.arange(100, 164, dtype=np.int64)
    assert span(run) == slice(100, 164)
    for a in (run[::-1], np.r_[run[:10], run[11:]], np.r_[run[:5], run[4:10]], run[:8],
              np.zeros(0, np.int64), np.array([5, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15], np.int64)):
        assert span(a) is a
    table = np.arange(1000) * 3
    np.testing.assert_array_equal(table[span(run)], table[run])


def _ops(seed: int, policy: str, payload: str):
    """A seeded run of the Machine API with large batches: first touches (runs
    of fresh frames), forks (shared pages a migration's freeze refuses),
    migrations back and forth, reclaim (swap-cache pages among the moved
    ones), swapoff, munmap and exit (frames reused out of order)."""
    rng = random.Random(seed)
    m = Machine.from_config({"nodes": 3, "frames_per_node": 700, "swap_pages": 900, "page_size": 64,
                             "policy": policy, "payload": payload})
    procs: list[tuple[int, int, int]] = []
    for _ in range(60):
        op = rng.choice(["spawn", "touch", "touch", "fork", "move", "move", "move", "migrate", "reclaim",
                         "swapoff", "munmap", "exit"] if procs else ["spawn"])
        try:
            if op == "spawn" or (op == "fork" and len(procs) > 5):
                pid = m.spawn(rng.randrange(3))
                n = rng.randrange(40, 200)
                addr = m.mmap(pid, n)
                out = m.touch(pid, addr, n)
                procs.append((pid, addr, n))
            elif op == "touch":
                pid, addr, n = rng.choice(procs)
                lo = rng.randrange(n)
                out = m.touch(pid, addr + lo * 64, rng.randrange(1, n - lo + 1), write=rng.random() < 0.7)
            elif op == "fork":
                pid, addr, n = rng.choice(procs)
                child = m.fork(pid)
                procs.append((child, addr, n))
                out = child
            elif op == "move":
                pid, addr, n = rng.choice(procs)
                lo = rng.randrange(n)
                k = rng.randrange(1, n - lo + 1)
                pages = addr + (lo + np.arange(k, dtype=np.int64)) * 64
                out = m.move_pages(pid, pages, np.full(k, rng.randrange(3), dtype=np.int64))
            elif op == "migrate":
                pid, _, _ = rng.choice(procs)
                out = m.migrate_pages(pid, [0, 1, 2], [rng.randrange(3)])
            elif op == "reclaim":
                out = m.reclaim(rng.randrange(3), rng.randrange(20, 300))
            elif op == "swapoff":
                m.swapoff()
                out = m.swapon()
            elif op == "munmap":
                pid, addr, n = procs.pop(rng.randrange(len(procs)))
                out = m.munmap(pid, addr, n)
                m.exit(pid)
            else:
                pid, _, _ = procs.pop(rng.randrange(len(procs)))
                out = m.exit(pid)
        except OSError as exc:
            out = ("OSError", exc.errno)
        m.check()       # the whole oracle, after every operation
        yield op, out, m


@pytest.mark.parametrize("policy", ["migentry", "migcache", "swapcache"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_the_model_with_spans_does_exactly_what_it_does_without(monkeypatch, policy, seed):
    slices = []

    def counting(a):
        s = span(a)
        slices.append(isinstance(s, slice))
        return s

    for mod in USERS:
        monkeypatch.setattr(mod, "span", counting)
    with_spans = [(op, repr(out), m.snapshot()) for op, out, m in _ops(seed, policy, "bytes")]
    for mod in USERS:
        monkeypatch.setattr(mod, "span", lambda a: a)
    without = [(op, repr(out), m.snapshot()) for op, out, m in _ops(seed, policy, "bytes")]
    assert sum(slices) > 20 and not all(slices)      # both ways of indexing were taken, many times
    for i, (a, b) in enumerate(zip(with_spans, without)):
        assert a[:2] == b[:2], f"operation {i} ({a[0]}) returned differently"
        assert a[2] == b[2], f"operation {i} ({a[0]}) left a different machine"
    assert len(with_spans) == len(without) == 60
