"""Ray runtime speed (issue 4's targets), measured in one run on an embedded Ray.
Usage: python benchmarks/cluster.py [--quick] [--shm-dir DIR]

The shared files (payloads, frame tables) go where numaemu run puts them:
$NUMAEMU_SHM_DIR, else /dev/shm. With ``--shm-dir DIR``, the migration
figures are measured in DIR too, in the same run, alternating with the
default's: a tmpfs mounted with huge=always gives the payloads huge pages,
which /dev/shm does not by default, and a migration's copy is then about as
fast as the baseline's. The first line says where each directory is and its
huge page setting.

- cross-node migration, 2 node actors, bytes mode, 4096-page batches, as a
  ratio of a plain numpy copy of the same bytes in one process (target >=
  0.50), under each migration design (upstream migration entries, the
  scenarios' default, with one and two callers; the migration cache; the
  swap cache): sustained rates, every copy counted. A caller has its
  answer before its copy's tail is done (the contents land after it, and
  whatever looks at them waits until they have), so a round is 8
  migrations back to back and a read that waits for the last copy; each
  round is followed by as many numpy copies, and the medians are compared, so both see the same machine and no copy runs
  beside another. The benchmark is the coordinator's caller on its host, so its
  calls take the same-host channel (cluster/channel.py). Then where a
  one-caller migration's time goes: the same move_pages in this process on
  payloads in the same shared files (the model's steps alone, and what the copy adds to
  them: it runs beside the steps after it), and the difference, via the
  actor less here: the crossing to the coordinator and back, less what the
  next call saves by taking its steps beside the tail of the last one's
  copy, which runs on after the coordinator answers, and helping it; and a
  plain numpy copy between the two shared payloads, next to the baseline's (/dev/shm gives
  shared memory no huge pages by default, the baseline's anonymous memory
  has them);
- faults resolved through the coordinator, 4096-page batches: first touch
  and swap-in (do_swap_page), pages/s (target >= 200,000);
- a workload run (quickstart-like, token mode, a move_pages every 50 or
  every 500 operations) with 1, 2, 4 and 8 node actors, under the migration
  cache and upstream migration entries: operations/s and pages accessed/s in the
  steady part of the run and over the whole run, to show how throughput
  scales, and the share of accesses the node actors ran on their own (TLB
  hits; page walks: a migrated page's pte is present again under
  migration entries, a cache entry that faults under the migration cache;
  local faults: first touches and copies on write, cluster/local_fault.py);
  every other access is a fault batch through the one coordinator). The
  runner keeps the schedule (the drivers wait rather than run more than
  one period past a migration not fired yet), so every 50 operations the
  runner's migrations bound the rate; every 500, the node actors do. A
  migration takes longer with more node actors: its random batch holds
  pages of more source nodes, each node's pages a batch of their own (about
  65 steps with 8, as 6.1 migrates the list in order), and the 2 cores are
  shared by more processes;
- a TLB shootdown of 256 pages: in place in shared memory (a node on the
  coordinator's host) against an actor call (a node on another host).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 4096
PAGE = 4096


def start(nodes: int, frames: int, swap: int, payload: str, policy: str = "migcache", shm: str = ""):
    """Node actors and a coordinator, as the runner places them, their shared
    files in ``shm`` (cluster.dataplane.shm_dir)."""
    import uuid

    import ray

    from cluster.coordinator import Coordinator, CoordMachine
    from cluster.node import NodeActor

    run_id = uuid.uuid4().hex[:8]
    Node = ray.remote(NodeActor)
    actors = [Node.options(num_cpus=0, max_concurrency=4).remote(i, frames, PAGE, payload, run_id, shm)
              for i in range(nodes)]
    descs = ray.get([a.payload.remote() for a in actors])
    for d, a in zip(descs, actors):
        d["handle"] = a
    cfg = {"nodes": nodes, "frames_per_node": frames, "swap_pages": swap, "page_size": PAGE,
           "policy": policy, "payload": payload}
    coord = ray.remote(Coordinator).options(num_cpus=0, max_concurrency=16).remote(cfg, descs, shm=shm)
    try:
        m = CoordMachine(coord)                 # waits for the coordinator to map the payloads
    except BaseException:
        ray.get([a.close.remote() for a in actors])     # their payload files go with them
        raise
    ray.get([a.forget_path.remote() for a in actors])
    return actors, coord, m


def stop(actors, coord) -> None:
    import ray
    ray.get([a.close.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    ray.get(coord.forget_paths.remote())
    ray.kill(coord)


class NumpyCopy:
    """The baseline: a plain numpy copy of one 4096-page batch between two
    arrays in this process."""

    def __init__(self):
        self.src = np.ones((BATCH * 2, PAGE), dtype=np.uint8)
        self.dst = np.ones((BATCH * 2, PAGE), dtype=np.uint8)
        self.i = 0

    def once(self) -> float:
        a = (self.i % 2) * BATCH
        self.i += 1
        t0 = time.perf_counter()
        self.dst[a:a + BATCH] = self.src[a:a + BATCH]
        return time.perf_counter() - t0


# migrations back to back per round: a migration's caller has its answer before the copy's tail
# is done (a look at the contents waits until they land), so the rate counts every copy only over
# calls that follow one another, and the round ends with a read that waits for the last copy
BACK_TO_BACK = 8


def landed(m, work) -> None:
    """A read of a page each caller moved: it waits for the last copy to land."""
    for pid, addrs in work:
        m.read_tokens(pid, int(addrs[0]), 1)


def migration(rounds: int, streams: int, policy: str, shm: str = "") -> tuple[float, float]:
    """Sustained pages/s of move_pages of 4096-page batches between the two
    nodes, with ``streams`` callers at once (each moving its own process's
    pages back and forth, BACK_TO_BACK calls a round, then one call that
    waits for the last copy), and of the numpy copy (as many copies a
    round, after the migrations', so that no copy runs beside another):
    rounds of the two alternate, so both see the same machine; the medians
    over the rounds are compared."""
    from concurrent.futures import ThreadPoolExecutor

    frames = BATCH * 2 * streams + 512
    actors, coord, m = start(2, frames, BATCH * 2 * streams, "bytes", policy, shm)
    copy = NumpyCopy()
    try:
        work = []
        for _ in range(streams):
            pid = m.spawn(0)
            addr = m.mmap(pid, BATCH)
            m.touch(pid, addr, BATCH)
            work.append((pid, addr + np.arange(BATCH, dtype=np.int64) * PAGE))
        to = [np.full(BATCH, n, dtype=np.int64) for n in (0, 1)]

        def moves(w, n: int) -> None:
            pid, addrs = w
            for j in range(n):
                st = m.move_pages(pid, addrs, to[1 - j % 2])
                assert st.count(1 - j % 2) == len(st), "move_pages did not move every page"

        mig, cp = [], []
        with ThreadPoolExecutor(streams) as ex:
            # warm up: a round trip, so that the host has backed every frame the timed rounds use
            list(ex.map(lambda w: moves(w, 2), work))
            landed(m, work)
            for r in range(rounds):
                t0 = time.perf_counter()
                list(ex.map(lambda w: moves(w, BACK_TO_BACK), work))
                landed(m, work)
                mig.append((time.perf_counter() - t0) / BACK_TO_BACK)
                cp.append(statistics.median(copy.once() for _ in range(BACK_TO_BACK)))
    finally:
        stop(actors, coord)
    return BATCH * streams / statistics.median(mig), BATCH / statistics.median(cp)


def in_process(rounds: int, policy: str, shm: str = "") -> tuple[float, float, float]:
    """The same move_pages as migration()'s, in this process, on payloads in
    shared files as the node actors' are: the median seconds per move, and per
    move without its copy (the model's steps alone), rounds of the two
    alternating. The copy runs beside the steps after it
    (cluster.dataplane.CopyInFlight), so the difference is the part of the
    copy those steps do not hide. Third: a plain numpy copy of one batch
    between the two shared payloads, the memory a migration copies
    between (4 KiB pages on a tmpfs mounted without huge pages, /dev/shm's
    default, against the baseline's anonymous memory, which numpy asks
    huge pages for)."""
    import uuid

    import cluster.concurrent as cc
    from cluster.concurrent import ConcurrentMachine
    from cluster.dataplane import create_payload, shm_dir, unlink

    m = ConcurrentMachine.from_config({"nodes": 2, "frames_per_node": BATCH * 2 + 512, "swap_pages": BATCH * 2,
                                       "page_size": PAGE, "policy": policy, "payload": "bytes"})
    paths = [shm_dir(shm) / f"numaemu-bench-{uuid.uuid4().hex}" for _ in m.k.nodes]
    for fr, path in zip(m.k.nodes, paths):
        fr.data = create_payload(path, fr.data.shape, fr.data.dtype)
    real = cc.CopyInFlight
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        with m.cond:
            pid = m.spawn(0)
            addr = m.mmap(pid, BATCH)
            m.touch(pid, addr, BATCH)
            addrs = addr + np.arange(BATCH, dtype=np.int64) * PAGE
            to = [np.full(BATCH, n, dtype=np.int64) for n in (0, 1)]
            for r in range(2):      # warm up, as migration() does
                m.move_pages(pid, addrs, to[1 - r % 2])
            for r in range(2 * rounds):
                copying = r % 4 < 2             # a round trip each way, then the same without copies
                cc.CopyInFlight = real if copying else _NoCopy
                t0 = time.perf_counter()
                m.move_pages(pid, addrs, to[1 - r % 2])
                times[copying].append(time.perf_counter() - t0)
        src, dst = (fr.data for fr in m.k.nodes)
        shm = []
        for r in range(2 * rounds):
            a = (r % 2) * BATCH
            t0 = time.perf_counter()
            dst[a:a + BATCH] = src[a:a + BATCH]
            shm.append(time.perf_counter() - t0)
    finally:
        cc.CopyInFlight = real
        for path in paths:
            unlink(path)
    return statistics.median(times[True]), statistics.median(times[False]), statistics.median(shm)


class _NoCopy:
    """In place of CopyInFlight: the copy skipped, to time the steps alone."""

    def __init__(self, copies):
        pass

    fits = staticmethod(lambda copies: True)
    done = staticmethod(lambda: True)
    wait = staticmethod(lambda: None)
    error = None


def faults(rounds: int) -> tuple[float, float]:
    frames = BATCH * (rounds + 2)
    actors, coord, m = start(2, frames, BATCH * (rounds + 2), "token")
    try:
        pid = m.spawn(0)
        addr = m.mmap(pid, BATCH * rounds)
        t0 = time.perf_counter()
        for r in range(rounds):
            m.touch(pid, addr + r * BATCH * PAGE, BATCH)
        first = BATCH * rounds / (time.perf_counter() - t0)
        m.reclaim(0, BATCH * rounds)                       # everything to swap
        t0 = time.perf_counter()
        for r in range(rounds):
            m.touch(pid, addr + r * BATCH * PAGE, BATCH, write=False)
        swapin = BATCH * rounds / (time.perf_counter() - t0)
        assert m.vmstat()["pswpin"] > 0
    finally:
        stop(actors, coord)
    return first, swapin


def scaling(nodes: int, operations: int, policy: str, every: int) -> tuple[float, float, float, float, float, float]:
    from cluster.runner_ray import RayRun
    from cluster.scenario import parse_scenario
    import tomllib

    text = textwrap.dedent(f"""
        [machine]
        nodes = {nodes}
        frames_per_node = 8192
        swap_pages = 0
        policy = "{policy}"
        payload = "token"
        [migration]
        every = {every}
        [run]
        operations = {operations}
        seed = 1
        """) + "".join(textwrap.dedent(f"""
        [[workload]]
        node = {n}
        processes = 2
        pages = 2048
        pattern = "uniform"
        batch = 256
        """) for n in range(nodes))
    run = RayRun(parse_scenario(tomllib.loads(text), "<bench>"))
    try:
        s = run.run()
    finally:
        run.close()
    assert s["violations"] == 0
    el = s["elapsed_s"]
    t = s["tlb"]
    n = max(1, t["hits"] + t["walks"] + t["local_faults"] + t["misses"])
    return (steady_rate(s["timeline"], s["operations_done"]), s["operations_done"] / el, el, t["hits"] / n,
            t["walks"] / n, t["local_faults"] / n)


def steady_rate(timeline: list[dict], operations: int) -> float:
    """Operations/s between the samples at 10% and 90% of the run: without
    the start of the drivers and the final read-back of every page."""
    mid = [x for x in timeline if 0.1 * operations <= x["operations"] <= 0.9 * operations]
    if len(mid) < 2 or mid[-1]["t"] <= mid[0]["t"]:
        mid = [timeline[0], timeline[-1]]
    return (mid[-1]["operations"] - mid[0]["operations"]) / (mid[-1]["t"] - mid[0]["t"])


def shootdown(rounds: int) -> tuple[float, float]:
    """Median seconds of one flush of 256 cached pages: through the shared
    TLB (ShmPort), and through an actor call to a node actor (RayPort)."""
    import tempfile
    import uuid

    import ray

    from cluster.node import NodeActor
    from cluster.tlb import NodeTLB, RayPort, ShmPort

    n, pid, vpns = 256, 1, np.arange(16, 16 + 256, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeTLB(0, 12, {0: np.zeros(n, dtype=np.int64)}, [(pid, 16 << 12, n)], Path(tmp) / "tlb")
        port = ShmPort(node.shared())
        shm = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            port.flush(pid, vpns)
            shm.append(time.perf_counter() - t0)
    actor = ray.remote(NodeActor).options(num_cpus=0, max_concurrency=8).remote(0, 16, PAGE, "token",
                                                                                uuid.uuid4().hex[:8])
    try:
        rp = RayPort(actor)
        rp.flush(pid, vpns)
        calls = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            rp.flush(pid, vpns)
            calls.append(time.perf_counter() - t0)
    finally:
        ray.get(actor.close.remote())
        ray.kill(actor)
    return statistics.median(shm), statistics.median(calls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--shm-dir", metavar="DIR", default="",
                    help="where the shared files go (default: $NUMAEMU_SHM_DIR, else /dev/shm)")
    args = ap.parse_args()
    import ray

    from cluster.dataplane import shm_dir, shm_huge
    try:
        dirs = list(dict.fromkeys([str(shm_dir()), *([str(shm_dir(args.shm_dir))] if args.shm_dir else [])]))
    except ValueError as exc:
        ap.error(str(exc))
    print("shared files in " + "; ".join(f"{d} ({f'tmpfs, huge={h}' if (h := shm_huge(Path(d))) else 'not a tmpfs'})"
                                         for d in dirs))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rounds = 6 if args.quick else 40
    width = max(len(d) for d in dirs)
    print(f"cross-node migration, bytes, {BATCH}-page batches, against a numpy copy (target >= 0.50):")
    print(f"{'policy':>10} {'callers':>8} {'shared files':<{width}} {'pages/s':>12} {'numpy copy':>12} {'ratio':>6}")
    one = {}
    for policy, streams in (("migentry", 1), ("migentry", 2), ("migcache", 1), ("swapcache", 1)):
        for d in dirs:      # one after the other, so that each directory's rounds see the same machine
            mig, cp = migration(rounds, streams, policy, d)
            print(f"{policy:>10} {streams:>8} {d:<{width}} {mig:>12,.0f} {cp:>12,.0f} {mig / cp:>6.2f}")
            if streams == 1:
                one[policy, d] = (BATCH / mig, BATCH / cp)
    print(f"where one caller's migration goes, ms per {BATCH}-page move_pages "
          "(via actor: sustained, as above; here: the same call in this process on payloads in shared files: the "
          "model's steps, and what the copy adds to them, running beside the steps after it; via - here: the "
          "crossing to the coordinator actor and back, less what the next call saves by stepping beside the last "
          "one's copy; numpy copy: the baseline; shm copy: the same numpy copy between the two shared payloads):")
    print(f"{'policy':>10} {'shared files':<{width}} {'via actor':>10} {'here':>6} {'copy':>6} {'steps':>6} "
          f"{'via-here':>9} {'numpy copy':>11} {'shm copy':>9}")
    for (policy, d), (via, numpy_copy) in one.items():
        here, steps, shm = in_process(rounds, policy, d)
        print(f"{policy:>10} {d:<{width}} {via * 1e3:>10.2f} {here * 1e3:>6.2f} {(here - steps) * 1e3:>6.2f} "
              f"{steps * 1e3:>6.2f} {(via - here) * 1e3:>9.2f} {numpy_copy * 1e3:>11.2f} {shm * 1e3:>9.2f}")
    first, swapin = faults(4 if args.quick else 16)
    print(f"faults through the coordinator, {BATCH}-page batches: first touch {first:,.0f} pages/s, "
          f"swap-in {swapin:,.0f} pages/s (target >= 200,000)")
    ops = 800 if args.quick else 8000
    print(f"scaling, {ops} operations of 256 pages per run, 2 processes per node actor "
          "(steady: between 10% and 90% of the operations; run: start to summary):")
    print(f"{'policy':>10} {'every':>6} {'node actors':>12} {'ops/s steady':>13} {'pages/s':>12} "
          f"{'ops/s run':>10} {'elapsed s':>10} {'TLB hits':>9} {'walks':>6} {'local faults':>13}")
    for every in (50, 500):
        for policy in ("migcache", "migentry"):
            for n in (1, 2, 4, 8):
                steady, whole, el, hits, walks, local = scaling(n, ops, policy, every)
                print(f"{policy:>10} {every:>6} {n:>12} {steady:>13,.0f} {steady * 256:>12,.0f} {whole:>10,.0f} "
                      f"{el:>10.2f} {hits:>9.0%} {walks:>6.0%} {local:>13.0%}")
    shm, call = shootdown(50 if args.quick else 500)
    print(f"TLB shootdown of 256 pages, median: {shm * 1e6:,.1f} us in shared memory, "
          f"{call * 1e6:,.1f} us by an actor call (ratio {call / shm:,.0f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
