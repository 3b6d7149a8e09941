"""Speed and memory of the in-process model (issue 2's targets), as rates and ratios
measured in one run. Usage: python benchmarks/core.py [--quick] [--profile]

- first-touch faults through touch() on 4096-page batches (token mode)
- cross-node move_pages() of 262,144 private pages (token mode)
- bytes mode: move_pages() of 65,536 pages against a plain numpy copy of the same bytes
- emulator memory per emulated page (frame + pte + record), 16M pages
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # measure this checkout's emulator, not an installed one
from emulator import Machine  # noqa: E402

BATCH = 4096


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_touch(npages: int) -> float:
    m = Machine(nodes=2, frames_per_node=npages + npages // 32 + BATCH, payload="token")
    pid = m.spawn(0)
    addr = m.mmap(pid, npages)
    t = time.perf_counter()
    for off in range(0, npages, BATCH):
        m.touch(pid, addr + off * m.page_size, BATCH)
    dt = time.perf_counter() - t
    assert m.vmstat(0)["numa_hit"] == npages
    return npages / dt


def bench_move(npages: int, payload: str, warm: bool = True) -> float:
    m = Machine(nodes=2, frames_per_node=npages + npages // 32 + BATCH, payload=payload)
    pid = m.spawn(0)
    addr = m.mmap(pid, npages)
    for off in range(0, npages, 65536):
        m.touch(pid, addr + off * m.page_size, min(65536, npages - off))
    pages = addr + np.arange(npages, dtype=np.int64) * m.page_size
    nodes = np.ones(npages, dtype=np.int64)
    if warm:
        # steady state: the host has backed node 1's frames once, as the baseline's buffers are
        m.move_pages(pid, pages, nodes)
        m.move_pages(pid, pages, nodes * 0)
    t = time.perf_counter()
    st = m.move_pages(pid, pages, nodes)
    dt = time.perf_counter() - t
    assert st.count(1) == npages, "not every page moved"
    return npages / dt


def bench_copy(npages: int, page_size: int = 4096) -> float:
    src = np.ones((npages, page_size), dtype=np.uint8)
    dst = np.zeros_like(src)
    np.copyto(dst, src)  # fault both in
    t = time.perf_counter()
    np.copyto(dst, src)
    return npages / (time.perf_counter() - t)


def bench_memory(npages: int) -> float:
    gc.collect()
    before = rss_bytes()
    m = Machine(nodes=1, frames_per_node=npages + npages // 32, payload="token")
    pid = m.spawn(0)
    addr = m.mmap(pid, npages)
    for off in range(0, npages, 1 << 20):
        m.touch(pid, addr + off * m.page_size, min(1 << 20, npages - off))
    gc.collect()
    return (rss_bytes() - before) / npages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not the targets)")
    ap.add_argument("--profile", action="store_true", help="cProfile the move_pages run")
    a = ap.parse_args()
    q = 8 if a.quick else 1
    if a.profile:
        import cProfile
        cProfile.run("bench_move(262144 // q, 'token')", sort="cumtime")
        return
    touch = bench_touch(1048576 // q)
    print(f"first-touch touch(), 4096-page batches: {touch:,.0f} pages/s (target 2,000,000) "
          f"ratio {touch / 2e6:.2f}")
    move = max(bench_move(262144 // q, "token") for _ in range(2))
    print(f"move_pages, 262,144 pages, token:     {move:,.0f} pages/s (target 1,000,000) "
          f"ratio {move / 1e6:.2f}")
    n = 65536 // q
    mb = max(bench_move(n, "bytes") for _ in range(2))
    cp = max(bench_copy(n) for _ in range(2))
    print(f"move_pages, {n:,} pages, bytes:       {mb:,.0f} pages/s; numpy copy {cp:,.0f} pages/s; "
          f"ratio {mb / cp:.2f} (target 0.50)")
    mem = bench_memory((16 << 20) // q)
    print(f"memory per emulated page (16M pages, token): {mem:.1f} bytes (target <= 64)")


if __name__ == "__main__":
    main()
