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
def test_a_copy_in_flight_copies_every_row_once_waited_for(shape):
    """CopyInFlight splits its copies in chunks that the copier thread and the
    joining thread share: every row lands where the gather/scatter would put
    it, none elsewhere, whichever copies are in the list."""
    from cluster.dataplane import PARALLEL_MIN_BYTES, CopyInFlight
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
    other = np.zeros((64, page), dtype=np.uint8)
    copies = [(src, si, dst, di), (src, si[:64], other, np.arange(64)[::-1].copy())]
    assert CopyInFlight.fits(copies)
    want, want_other = np.zeros_like(dst), np.zeros_like(other)
    want[di] = src[si]
    want_other[np.arange(64)[::-1]] = src[si[:64]]
    job = CopyInFlight(copies)
    job.wait()
    assert job.done() and job.error is None
    np.testing.assert_array_equal(dst, want)
    np.testing.assert_array_equal(other, want_other)


def test_payloads_larger_than_the_hosts_free_shared_memory_are_named():
    from cluster.dataplane import overcommitted
    gib = 1 << 30
    descs = [{"host": "a" * 40, "bytes": 6 * gib, "shm_free": 10 * gib, "path": "/mnt/huge/numaemu-r-node0"},
             {"host": "b" * 40, "bytes": 6 * gib, "shm_free": 20 * gib, "path": "/dev/shm/numaemu-r-node1"},
             {"host": "a" * 40, "bytes": 6 * gib, "shm_free": 9 * gib, "path": "/mnt/huge/numaemu-r-node2"}]
    (warning,) = overcommitted(descs)       # host a: 12 GiB in 9 GiB, in the directory its files are in
    assert warning.startswith("host aaaaaaaaaaaa: the payloads of nodes 0, 2 take 12.0 GiB, with 9.0 GiB free "
                              "in /mnt/huge: ")
    assert overcommitted(descs[1:2]) == []


@pytest.mark.parametrize("policy", ["migentry", "migcache", "swapcache"])
def test_a_copy_running_ahead_of_the_remap_lands_before_anyone_sees_the_pages(monkeypatch, held_copier, policy):
    """With no other operation in flight, a large migration's copy runs on a
    copier thread while the migration remaps and unlocks (the steps that need
    no contents), and the lock stays held until the copy is done. Here the
    copier is held mid-copy: a reader arriving meanwhile must not get in,
    and once it does it reads every byte as written."""
    import cluster.dataplane as D
    page = 4096
    n = D.PARALLEL_MIN_BYTES // page + 64
    m = ConcurrentMachine.from_config({"nodes": 2, "frames_per_node": n + 256, "swap_pages": n,
                                       "page_size": page, "policy": policy, "payload": "bytes"})
    data = np.random.default_rng(3).integers(0, 256, n * page, dtype=np.uint8).tobytes()
    with m.cond:
        pid = m.spawn(0)
        addr = m.mmap(pid, n)
        m.write(pid, addr, data)
    in_copy, go = held_copier
    real_wait = D.CopyInFlight.wait

    def wait_once_the_copier_copies(self):     # so that the waiting thread takes no chunk first
        assert in_copy.wait(30), "the copy did not run on a copier thread"
        real_wait(self)

    monkeypatch.setattr(D.CopyInFlight, "wait", wait_once_the_copier_copies)
    out: dict[str, object] = {}

    def migrate():
        with m.cond:
            out["status"] = m.move_pages(pid, [addr + i * page for i in range(n)], [1] * n)

    def read():
        with m.cond:
            out["read"] = m.read(pid, addr, n * page)

    a = threading.Thread(target=migrate)
    a.start()
    assert in_copy.wait(30), "the copy did not run on a copier thread"
    b = threading.Thread(target=read)
    b.start()
    b.join(2.0)
    assert "read" not in out, "a reader got in while the copy was still running"
    go.set()
    a.join(30)
    b.join(30)
    assert out["status"] == [1] * n
    assert out["read"] == data
    with m.cond:
        m.check()
        assert m.read(pid, addr, n * page) == data
