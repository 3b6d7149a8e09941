"""The threaded driver: the model's operations from many threads, one lock."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cluster.concurrent as C
from cluster.concurrent import ConcurrentMachine


@pytest.mark.parametrize("policy", ["migcache", "migentry"])
def test_a_read_that_does_not_fault_waits_for_a_migration_copy_in_flight(monkeypatch, policy):
    """A migration's copy runs with the lock dropped, after the step that
    moved the page's cache slot to the new frame. read_tokens must not look
    at the new frame before the copy lands (a fork cycle's read-back on Ray
    saw stale data this way): here the copy is held until the reader has
    had every chance to run."""
    m = ConcurrentMachine(nodes=2, frames_per_node=64, swap_pages=0, policy=policy)
    n = 16
    with m.cond:
        pid = m.spawn(0)
        addr = m.mmap(pid, n)
        written = m.touch(pid, addr, n)
    in_copy, go = threading.Event(), threading.Event()
    real = C.copy_batch

    def held_copy(*args, **kw):
        in_copy.set()
        assert go.wait(30), "the copy was never let go"
        real(*args, **kw)

    monkeypatch.setattr(C, "copy_batch", held_copy)
    out: dict[str, object] = {}

    def migrate():
        with m.cond:
            out["status"] = m.move_pages(pid, [addr + i * m.page_size for i in range(n)], [1] * n)

    def read():
        with m.cond:
            out["read"] = m.read_tokens(pid, addr, n)

    a = threading.Thread(target=migrate)
    a.start()
    assert in_copy.wait(30)
    b = threading.Thread(target=read)
    b.start()
    b.join(2.0)                 # without the wait, the read is done by now, and stale
    go.set()
    a.join(30)
    b.join(30)
    assert out["status"] == [1] * n
    assert np.array_equal(out["read"], written)
    with m.cond:
        m.check()


def test_a_copy_that_fails_leaves_no_reader_waiting(monkeypatch):
    """A remote payload can vanish mid-copy (its node actor died): the error
    reaches the caller, with the lock held again, and reads do not wait for
    a copy that will never finish."""
    m = ConcurrentMachine(nodes=2, frames_per_node=64, swap_pages=0, policy="migcache")
    with m.cond:
        pid = m.spawn(0)
        addr = m.mmap(pid, 8)
        m.touch(pid, addr, 8)

    def gone(*args, **kw):
        raise ConnectionError("the node actor holding the payload died")

    monkeypatch.setattr(C, "copy_batch", gone)
    with m.cond:
        with pytest.raises(ConnectionError):
            m.move_pages(pid, [addr + i * m.page_size for i in range(8)], [1] * 8)
        assert m.copying == 0
        m.read_tokens(pid, addr, 8)      # returns, without waiting WAIT_TIMEOUT


@pytest.mark.parametrize("shape", ["runs", "scattered"])
def test_a_large_migration_copy_split_over_threads_copies_every_row(shape):
    """copy_batch splits a copy of PARALLEL_MIN_BYTES or more over COPY_THREADS:
    every row lands where the gather/scatter would put it, none elsewhere."""
    from cluster.dataplane import PARALLEL_MIN_BYTES, copy_batch
    page = 4096
    n = PARALLEL_MIN_BYTES // page + 300
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, (2 * n, page), dtype=np.uint8)
    dst = np.zeros((2 * n + 10, page), dtype=np.uint8)
    if shape == "runs":     # a few long runs on both sides, as migration's usual batches
        si = np.concatenate((np.arange(5, 5 + n // 2), np.arange(n + 40, n + 40 + n - n // 2)))
        di = np.concatenate((np.arange(n + 3, n + 3 + n - n // 3), np.arange(2, 2 + n // 3)))
    else:
        si = rng.permutation(2 * n)[:n]
        di = rng.permutation(2 * n + 10)[:n]
    want = np.zeros_like(dst)
    want[di] = src[si]
    copy_batch(src, si, dst, di)
    np.testing.assert_array_equal(dst, want)


def test_payloads_larger_than_the_hosts_free_shared_memory_are_named():
    from cluster.dataplane import overcommitted
    gib = 1 << 30
    descs = [{"host": "a" * 40, "bytes": 6 * gib, "shm_free": 10 * gib},
             {"host": "b" * 40, "bytes": 6 * gib, "shm_free": 20 * gib},
             {"host": "a" * 40, "bytes": 6 * gib, "shm_free": 9 * gib}]     # host a: 12 GiB in 9 GiB
    (warning,) = overcommitted(descs)
    assert warning.startswith("host aaaaaaaaaaaa: the payloads of nodes 0, 2 take 12.0 GiB, with 9.0 GiB free")
    assert overcommitted(descs[1:2]) == []
