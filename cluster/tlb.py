"""Node-local accesses on Ray: each node actor's TLB, reached by the coordinator.

The protocol is the model's (emulator/tlb.py: the TLB, the shootdowns, the
epoch rule), so the explorer searches the same code the runtime runs. What
this module adds is what only a real node actor has:
- ``NodeTLB``: the TLB shared by the node's workload threads (one lock, as
  a TLB is one piece of hardware), the stores of a hit on the payload arrays
  in shared memory (its own and those of other nodes on its host), and the
  tokens it writes: node n's start at (n + 1) << 44, unique across writers.
  The writer's record of a hit is the coordinator's to take, at the next
  flush or harvest (the node has no shadow of the model's).
- The TLB itself lives in shared memory (a file in shm_dir(), /dev/shm by
  default), as a real TLB is hardware the kernel reaches directly: a
  coordinator on the node's host maps it (``ShmPort``) and flushes or
  harvests it in place, under a lock both processes take (a thread lock in
  the node, then ``flock`` on the file; the kernel drops a dead holder's),
  in microseconds instead of an actor call. A node that holds that lock for
  ``ANSWER_S`` (hung) is lost (``NodeGone``).
- The page tables of the processes a node runs live in the same file, the
  node's memory: the coordinator's model reads and writes them there
  (``ShmPort.adopt``), and the node walks them on a TLB miss, as an MMU
  does, only while no coordinator thread is inside the model (``StepsLock``).
  A miss the walk resolves costs the coordinator nothing; so does a first
  write to untouched pages, which the node faults in itself
  (cluster/local_fault.py); the rest fault through the coordinator. A node
  on another host neither walks nor holds page tables.
- ``RayPort``: the coordinator's handle on the TLB of a node on another
  host: a flush, a harvest or a look at the accessed bits is an actor call
  made inside the step and waited for; a node that does not answer within
  ``ANSWER_S`` (the runner gives up on a silent node as soon) is lost.
- Accessed bits only order the LRU: the coordinator takes them when it
  scans it (reclaim, hot pages), as it takes the dirty bits at a flush.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from emulator import pte as P
from emulator.fault import reads_zero_page
from emulator.frames import store_tokens
from emulator.kernel import split_nodes
from emulator.mm import MM
from emulator.tlb import TLB, NodeGone, spans

from .dataplane import unlink
from .local_fault import FaultRing, OwnShootdown, eligible, fault_in

ANSWER_S = 30.0           # a node that does not answer a flush this long is lost
WALK_TRIES = 8            # a miss tries to walk this many times while the coordinator is in the model,
WALK_WAIT_S = 50e-6       # first this long apart, then twice as long each time (6.35 ms in all), then
                          # faults: a fault would wait for the same lock, in the coordinator's time
TOKEN_BASE = 1 << 44


def regions(procs: list[tuple[int, int, int]], page_shift: int) -> dict[int, tuple[int, int]]:
    """pid -> (first vpn, pages): the span of each process's slices (pid, addr, npages)."""
    return spans((pid, addr >> page_shift, n) for pid, addr, n in procs)


def _layout(regs: dict[int, tuple[int, int]]) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """The shared file's size and, per pid, (first vpn, pages, offset): the
    two counters first, then for each process its flush count, entries and
    page table (int64s), the ids that say where it may fault locally
    (int32s: local_fault.eligible), and its accessed, dirty and maybe bits
    (a byte each), 8-byte aligned."""
    off, out = 16, {}
    for pid, (lo, n) in sorted(regs.items()):
        out[pid] = (lo, n, off)
        off += 8 + 16 * n + ((7 * n + 7) & ~7)
    return off, out


class Table(NamedTuple):
    """A process's page table in a node's file, its maybe bits (the kernel's
    record of what the node's TLB may hold) and its local-fault ids."""
    pt: np.ndarray
    maybe: np.ndarray
    ids: np.ndarray


def _views(path: str, layout: dict[int, tuple[int, int, int]], size: int) \
        -> tuple[TLB, np.memmap, dict[int, Table]]:
    """The TLB over the file, the file, and per pid its Table."""
    buf = np.memmap(path, dtype=np.uint8, mode="r+", shape=(size,))
    tlb = TLB(buf[:16].view(np.int64))
    tables = {}
    for pid, (lo, n, off) in layout.items():
        ent = off + 8
        pt = ent + 8 * n
        ids = pt + 8 * n
        bits = ids + 4 * n
        tlb.adopt(pid, lo, buf[off:ent].view(np.int64), buf[ent:pt].view(np.int64),
                  buf[bits:bits + n].view(bool), buf[bits + n:bits + 2 * n].view(bool))
        tables[pid] = Table(buf[pt:ids].view(np.int64), buf[bits + 2 * n:bits + 3 * n].view(bool),
                            buf[ids:bits].view(np.int32))
    return tlb, buf, tables


def _flock_within(fd: int, op: int, timeout: float, who: str) -> None:
    """flock(fd, op), giving up after ``timeout`` seconds (NodeGone)."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(0)
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise NodeGone(f"{who} for {timeout:.0f} s") from None


class _FileLock:
    """flock() on the TLB's file: excludes the other process, not other threads."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR)

    def acquire(self, timeout: float | None = None) -> None:
        if timeout is None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        else:
            _flock_within(self.fd, fcntl.LOCK_EX, timeout, "a node held its TLB")

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


class _NodeLock:
    """The node's side of the TLB lock: its threads, then the coordinator."""

    def __init__(self, path: str):
        self.threads = threading.Lock()
        self.file = _FileLock(path)

    def __enter__(self):
        self.threads.acquire()
        self.file.acquire()

    def __exit__(self, *exc):
        self.file.release()
        self.threads.release()


class StepsLock:
    """The coordinator's machine lock, seen from the node actors on its host.

    A coordinator thread holds it whenever it is inside the model (in a step,
    or anything else under ``machine.cond``): a threading lock for its
    threads, then ``flock(LOCK_EX)`` on a shared file. A node's page walk
    takes ``LOCK_SH`` without waiting, so it reads the page tables only
    between steps, as a fill does; while a step runs it lets go of the TLB
    and tries again (``WALK_TRIES`` times, ``WALK_WAIT_S`` apart and
    doubling), then faults as without walks. A walk holds it for microseconds and
    never waits while holding it; a node that holds it for ``ANSWER_S``
    (hung) ends the run with an error rather than a hang. A node's local
    fault (cluster/local_fault.py) takes it exclusively, as a step would,
    without waiting either: it lets go of the TLB and tries again as a walk does.
    ``drain`` runs each time a coordinator thread has taken it: the
    accounting of the local faults since (their ring is in the same file).
    A migration copy that lands after its operation ended keeps the node
    actors out until it has landed (``pin``), while the coordinator's threads
    go on: the flock is held while a thread holds the lock or a copy is
    pinned. Usable as the lock of a ``threading.Condition``.
    """

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.lock = threading.Lock()
        self.owner: int | None = None
        self.meta = threading.Lock()    # held, pins and flocked, which a copier thread changes too
        self.held = False
        self.pins = 0
        self.flocked = False
        self.ring = FaultRing(path)
        self.drain: Callable[[np.ndarray], None] | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.lock.acquire(blocking, timeout):
            return False
        try:
            with self.meta:
                if not self.flocked:
                    _flock_within(self.fd, fcntl.LOCK_EX, ANSWER_S, "a node actor held the page-walk lock")
                    self.flocked = True
                self.held = True
        except BaseException:
            self.lock.release()
            raise
        self.owner = threading.get_ident()
        if self.drain is not None and self.ring.count[0]:
            try:
                self.drain(self.ring.take())
            except BaseException:
                self.release()
                raise
        return True

    def release(self) -> None:
        self.owner = None
        with self.meta:
            self.held = False
            self._unflock()
        self.lock.release()

    def pin(self) -> None:
        """Keep the node actors out after the lock is let go, until ``unpin``
        (a copy still landing). Called holding the lock."""
        with self.meta:
            self.pins += 1

    def unpin(self) -> None:
        """From any thread (the copier's)."""
        with self.meta:
            self.pins -= 1
            self._unflock()

    def _unflock(self) -> None:
        if self.flocked and not self.held and not self.pins:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.flocked = False

    def _is_owned(self) -> bool:
        return self.owner == threading.get_ident()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()


class NodeTLB:
    """A node actor's TLB, shared by its workload threads, in shared memory,
    with the page tables of the processes it runs (the coordinator's model
    keeps them there when it is on this host: see ShmPort.adopt)."""

    def __init__(self, node: int, page_shift: int, data: dict[int, np.ndarray],
                 procs: list[tuple[int, int, int]], path: Path, steps: str | None = None,
                 frames: dict[str, Any] | None = None):
        """``data``: the payload arrays of the nodes whose pages may be cached;
        ``procs``: (pid, addr, npages) of the slices the node's threads access;
        ``steps``: the coordinator's StepsLock file, and ``frames``: its
        shared frame tables (cluster/frames_shm.py), when it is on this host
        (without them, no page walks and no local faults: every miss faults
        through the coordinator)."""
        from .frames_shm import SharedKernel
        self.node = node
        self.page_shift = page_shift
        self.size, self.layout = _layout(regions(procs, page_shift))
        self.path = str(path)
        with open(self.path, "xb") as fh:
            fh.truncate(self.size)
        self.tlb, self.buf, self.tables = _views(self.path, self.layout, self.size)
        self.lock = _NodeLock(self.path)
        self.steps = os.open(steps, os.O_RDONLY) if steps else None
        self.ring = FaultRing(steps) if steps and frames else None
        self.kern = SharedKernel(frames, data) if steps and frames else None
        if self.kern is not None:
            self.kern.tlb = OwnShootdown(self.tlb, self.tables)
        self.data = data
        self.near = np.zeros(max(data) + 1, dtype=bool)    # [node]: its payload is mapped here
        self.near[list(data)] = True
        self.next_token = (node + 1) * TOKEN_BASE
        self.hits = self.misses = self.walks = 0
        self.refused = 0    # misses neither walked nor faulted here: a coordinator thread stayed inside the model
        self.local_faults = 0   # misses the node faulted in itself (cluster/local_fault.py)

    def close(self) -> None:
        unlink(self.path)
        self.lock.file.close()
        if self.steps is not None:
            os.close(self.steps)
        self.ring = self.kern = None     # their mappings go with the last view of them

    @contextlib.contextmanager
    def _holding(self, op: int) -> Iterator[bool]:
        """The steps lock, taken without waiting (``LOCK_SH`` for a walk,
        ``LOCK_EX`` for a local fault): whether it was."""
        try:
            fcntl.flock(self.steps, op | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self.steps, fcntl.LOCK_UN)

    def _walk(self, pid: int, vpn: int, npages: int, write: bool) -> bool | None:
        """The page walk on a miss: True if it cached every page (or a read
        finds them all untouched: the zero page), False if a pte does not
        allow the access (a fault), None if a coordinator thread is inside
        the model right now (try again)."""
        table = self.tables.get(pid)
        if self.steps is None or table is None:
            return False
        with self._holding(fcntl.LOCK_SH) as held:
            if not held:
                return None
            lo = self.tlb.procs[pid].lo
            ptes = table.pt[vpn - lo:vpn - lo + npages]
            zero = reads_zero_page(ptes, write, False)
            if not zero.any() or not (table.ids[vpn - lo:vpn - lo + npages] >= 0).all():
                return self.tlb.walk(pid, vpn, ptes, table.maybe, write, self.near)
            # a read in a private mapping: untouched pages read the zero page, the others are walked
            edges = np.flatnonzero(np.diff(np.concatenate(([True], zero, [True])).astype(np.int8)))
            return all(self.tlb.walk(pid, vpn + a, ptes[a:b], table.maybe, write, self.near)
                       for a, b in zip(edges[::2], edges[1::2]))

    def _fault(self, pid: int, vpn: int, npages: int, thread: int) -> bool | None:
        """A write the walk could not resolve: fault its pages in here if
        cluster/local_fault.py's rules allow, and cache the access's ptes as
        the walk would. False: the coordinator's to fault; None: a
        coordinator thread is inside the model right now (try again)."""
        if self.kern is None:
            return False
        with self._holding(fcntl.LOCK_EX) as held:
            if not held:
                return None
            table, lo = self.tables[pid], self.tlb.procs[pid].lo
            if not fault_in(self.kern, self.ring, self.node, thread, pid, lo, table, vpn, npages, self.page_shift):
                return False
            self.local_faults += 1
            return self.tlb.walk(pid, vpn, table.pt[vpn - lo:vpn - lo + npages], table.maybe, True, self.near)

    def shared(self) -> dict[str, Any]:
        """What a coordinator on this host needs to map it (ShmPort)."""
        return {"path": self.path, "size": self.size, "layout": self.layout}

    def access(self, pid: int, addr: int, npages: int, write: bool, thread: int = 0) -> np.ndarray | None:
        """The access, if every page hits with the permission it needs, or
        the page walk finds every pte allowing it, or the node faults it in
        itself: the tokens written (empty for a read). None: a miss for the
        coordinator. ``thread``: the workload thread's index, which a local
        fault's log names."""
        vpn = addr >> self.page_shift
        refused = True      # unless a try ends the loop: every try found a coordinator thread in the model
        for attempt in range(WALK_TRIES):
            if attempt:     # the coordinator was inside the model: let it step out, the TLB not held
                time.sleep(WALK_WAIT_S * (1 << (attempt - 1)))
            with self.lock:
                gp = self.tlb.lookup(pid, vpn, npages, write)
                if gp is not None:
                    self.hits += 1
                    return self._store(gp, npages, write)
                walked = self._walk(pid, vpn, npages, write)
                if walked:
                    self.walks += 1
                    return self._store(self.tlb.lookup(pid, vpn, npages, write), npages, write)
                if walked is False:
                    faulted = self._fault(pid, vpn, npages, thread) if write else False
                    if faulted:
                        return self._store(self.tlb.lookup(pid, vpn, npages, write), npages, write)
                    if faulted is False:
                        refused = False
                        break
        with self.lock:
            self.refused += refused
            self.misses += 1
        return None

    def _store(self, gp: np.ndarray, npages: int, write: bool) -> np.ndarray:
        """A hit's stores, under the TLB's lock: the tokens written (none for a read)."""
        toks = np.zeros(0, dtype=np.int64)
        if write:
            toks = np.arange(self.next_token, self.next_token + npages, dtype=np.int64)
            self.next_token += npages
            for node, sel in split_nodes(gp):
                store_tokens(self.data[node], gp[sel] & P.PFN_MASK, toks[sel])
        return toks

    def install(self, pid: int, fill: tuple[int, int, np.ndarray] | None) -> None:
        """Cache the ptes a coordinator call returned (a page whose payload is
        not mapped here is never cached), unless a flush came since."""
        if fill is None:
            return
        epoch, vpn, ptes = fill
        nodes = P.pte_node(ptes)
        far = nodes >= len(self.near)
        far[~far] = ~self.near[nodes[~far]]
        with self.lock:
            self.tlb.install(pid, (epoch, vpn, np.where(far, 0, ptes)))

    def take_young(self) -> dict[int, np.ndarray]:
        with self.lock:
            return self.tlb.take_young()

    def flush(self, pid: int, vpns: np.ndarray, wrprotect: bool = False) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.tlb.flush(pid, vpns, wrprotect)

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        with self.lock:
            return self.tlb.harvest()

    def stats(self) -> dict[str, int]:
        return {"tlb_hits": self.hits, "tlb_walks": self.walks, "tlb_misses": self.misses,
                "tlb_walks_refused": self.refused, "local_faults": self.local_faults,
                "tlb_flushes": self.tlb.flushes,
                "tlb_stale_fills": self.tlb.stale_fills}


class ShmPort:
    """The TLB of a node on the coordinator's host, flushed in place."""

    def __init__(self, shared: dict[str, Any]):
        layout = {int(pid): tuple(v) for pid, v in shared["layout"].items()}
        self.tlb, self.buf, self.tables = _views(shared["path"], layout, shared["size"])
        self.lock = _FileLock(shared["path"])

    def adopt(self, mm: MM, node: int) -> int:
        """Move the page tables of mm's vmas inside its span into the node's
        shared memory, where its page walks read them; the model goes on
        writing them there (vma.pte is a view). Publishes where node
        ``node`` may fault locally (again after a change of mappings or
        policy: local_fault.eligible). Returns the pages moved."""
        table = self.tables.get(mm.pid)
        if table is None:
            return 0
        lo, pt = self.tlb.procs[mm.pid].lo, table.pt
        table.ids[:] = eligible(mm, node, lo, len(pt))
        moved = 0
        for vma in mm.vmas:
            a, b = vma.start - lo, vma.end - lo
            if a >= 0 and b <= len(pt):
                pt[a:b] = vma.pte
                vma.pte = pt[a:b]
                moved += vma.npages
        return moved

    def revoke(self, k) -> None:
        """The node is lost: its page tables come back to the coordinator's
        memory, and its copy and its TLB entries are cleared, so a node that
        was only hung finds nothing to hit or walk when it wakes and faults
        instead (no walk is in progress: the coordinator holds the steps
        lock; an access it was in the middle of ends as it began)."""
        for pid, (pt, _, ids) in self.tables.items():
            mm = k.mms.get(pid)
            for vma in mm.vmas if mm is not None else ():
                if np.shares_memory(vma.pte, pt):
                    vma.pte = vma.pte.copy()
            ids[:] = -1
            pt[:] = 0
            self.tlb.procs[pid].ent[:] = 0

    def flush(self, pid: int, vpns: np.ndarray, wrprotect: bool = False) -> tuple[np.ndarray, np.ndarray]:
        self.lock.acquire(ANSWER_S)
        try:
            return self.tlb.flush(pid, vpns, wrprotect)
        finally:
            self.lock.release()

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.lock.acquire(ANSWER_S)
        try:
            return self.tlb.harvest()
        finally:
            self.lock.release()

    def take_young(self) -> dict[int, np.ndarray]:
        self.lock.acquire(ANSWER_S)
        try:
            return self.tlb.take_young()
        finally:
            self.lock.release()


class RayPort:
    """A node actor's TLB, reached with actor calls."""

    def __init__(self, handle: Any):
        self.handle = handle

    def flush(self, pid: int, vpns: np.ndarray, wrprotect: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self._get(self.handle.tlb_flush.remote(pid, vpns, wrprotect))

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return self._get(self.handle.tlb_harvest.remote())

    def take_young(self) -> dict[int, np.ndarray]:
        return self._get(self.handle.tlb_take_young.remote())

    def revoke(self, k) -> None:
        """A node on another host never walks: nothing to take back."""

    @staticmethod
    def _get(ref):
        import ray
        try:
            return ray.get(ref, timeout=ANSWER_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise NodeGone(str(exc)) from exc
