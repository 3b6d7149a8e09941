"""Random operation sequences against a shadow copy of every process's memory.

A hypothesis RuleBasedStateMachine drives spawn / mmap / munmap / write / read / touch /
fork / exit / set_mempolicy / mbind / move_pages / migrate_pages / reclaim / swapoff / swapon on
small machines (2-3 nodes, 16-48 frames, 0-64 swap slots) so that memory pressure,
fallback and ENOMEM happen. After every rule: m.check() (the oracle) and every page's
token compared with the shadow; every read() is compared with the shadow too.

The shadow: per process, per virtual page, a Cell holding the possible contents (a list
of page-sized bytes; one entry when the content is known). fork() copies the cells of
private mappings (COW) and aliases those of shared mappings. A write/touch that failed
with ENOMEM may have been applied to part of its range: each page then holds either its
old or its new content, and the next read narrows it down.

One TestCase per (policy, payload), built by a factory below.
"""
from __future__ import annotations

import errno
import random

import numpy as np
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from emu_support import PAYLOADS, POLICIES, make

PS = 128
ENOMEM = errno.ENOMEM
PAGE_STATUS_ERRORS = {-errno.EFAULT, -errno.ENOENT, -errno.EACCES, -errno.EBUSY,
                      -errno.ENOMEM, -errno.EAGAIN}
MODES = ("default", "local", "bind", "preferred", "interleave", "preferred_many")

SETTINGS = settings(max_examples=30, stateful_step_count=30, deadline=None, database=None,
                    report_multiple_bugs=False,
                    # no explain phase: its line tracing makes a failing run take minutes
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])

tokens = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


def first8(b: bytes) -> int:
    return int.from_bytes(b[:8], "little", signed=True)


def tok_bytes(t: int) -> bytes:
    return (t & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")


def dedupe(xs):
    out = []
    for x in xs:
        if x not in out:
            out.append(x)
    return out


class Cell:
    __slots__ = ("cands",)

    def __init__(self, cands):
        self.cands = cands

    def update(self, fn, applied: bool) -> None:
        new = [fn(c) for c in self.cands]
        self.cands = dedupe(new if applied else self.cands + new)


class Proc:
    def __init__(self, node: int):
        self.node = node
        self.maps: dict[int, tuple[int, bool]] = {}     # addr -> (npages, shared)
        self.cells: dict[int, Cell] = {}               # page address -> Cell


class NumaMachine(RuleBasedStateMachine):
    POLICY = "migentry"
    PAYLOAD = "token"

    def __init__(self):
        super().__init__()
        self.m = None
        self.procs: dict[int, Proc] = {}

    # ------------------------------------------------------------------ helpers
    def pid(self, i):
        return sorted(self.procs)[i % len(self.procs)]

    def mapping(self, pid, j):
        p = self.procs[pid]
        addr = sorted(p.maps)[j % len(p.maps)]
        return addr, p.maps[addr][0]

    def has_maps(self):
        return any(p.maps for p in self.procs.values())

    def pid_with_maps(self, i):
        pids = sorted(pid for pid, p in self.procs.items() if p.maps)
        return pids[i % len(pids)]

    def pattern(self, t):
        return tok_bytes(t) * (PS // 8)

    def swap_on(self):
        return bool(self.m.swap_info()["on"])

    # ------------------------------------------------------------------ setup
    @initialize(nodes=st.integers(2, 3), frames=st.sampled_from([16, 24, 32, 48]),
                swap=st.sampled_from([0, 8, 24, 64]), seed=st.integers(0, 1 << 16),
                prefill=st.integers(0, 64), shared=st.booleans())
    def init(self, nodes, frames, swap, seed, prefill, shared):
        self.m = make(policy=self.POLICY, payload=self.PAYLOAD, nodes=nodes, frames=frames,
                      swap=swap, page_size=PS, seed=seed)
        self.nodes, self.frames, self.swap = nodes, frames, swap
        self.zero = bytes(PS)
        pid = self.m.spawn(node=0)
        self.procs[pid] = Proc(0)
        if prefill:
            # start under memory pressure: one process's mapping already fills a good part
            # of memory (or all of it, and some swap)
            self.mmap(0, prefill, shared)
            self.touch(0, 0, 0, prefill, True,
                       [(seed << 20) + 7 * k + 1 for k in range(prefill)])

    # ------------------------------------------------------------------ processes
    @precondition(lambda self: len(self.procs) < 4)
    @rule(node=st.integers(0, 2))
    def spawn(self, node):
        node %= self.nodes
        pid = self.m.spawn(node=node)
        assert pid not in self.procs
        self.procs[pid] = Proc(node)

    @precondition(lambda self: self.procs and len(self.procs) < 5)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        parent = self.pid(i)
        child = self.m.fork(parent)
        assert child not in self.procs
        pp = self.procs[parent]
        cp = Proc(pp.node)
        cp.maps = dict(pp.maps)
        for addr, (n, shared) in pp.maps.items():
            for k in range(n):
                v = addr + k * PS
                cp.cells[v] = pp.cells[v] if shared else Cell(list(pp.cells[v].cands))
        self.procs[child] = cp

    @precondition(lambda self: self.procs)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        pid = self.pid(i)
        self.m.exit(pid)
        del self.procs[pid]

    @precondition(lambda self: self.procs)
    @rule(i=st.integers(0, 7), mode=st.sampled_from(MODES),
          nodes=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
    def set_mempolicy(self, i, mode, nodes):
        pid = self.pid(i)
        nodes = sorted({n % self.nodes for n in nodes})
        if mode in ("default", "local"):
            self.m.set_mempolicy(pid, mode)
        elif mode == "preferred":
            self.m.set_mempolicy(pid, mode, nodes[:1])
        else:
            self.m.set_mempolicy(pid, mode, nodes)

    @precondition(has_maps)
    @rule(i=st.integers(0, 7), j=st.integers(0, 7), lo=st.integers(0, 23), n=st.integers(1, 24),
          mode=st.sampled_from(MODES), nodes=st.lists(st.integers(0, 3), max_size=3, unique=True),
          flags=st.sampled_from([0, 1, 2, 3, 4, 5]))
    def mbind(self, i, j, lo, n, mode, nodes, flags):
        """flags: MPOL_MF_STRICT 1, MOVE 2, MOVE_ALL 4; nodes may name a node that does not exist."""
        pid = self.pid_with_maps(i)
        addr, size = self.mapping(pid, j)
        lo %= size
        n = min(n, size - lo)
        if mode in ("default", "local"):
            nodes = []
        real = [x for x in nodes if x < self.nodes]
        einval = mode in ("bind", "interleave", "preferred", "preferred_many") and not real \
            and bool(nodes or mode != "preferred")
        try:
            self.m.mbind(pid, addr + lo * PS, n, mode, nodes, flags)
        except OSError as e:
            assert (e.errno == errno.EINVAL) == einval, (e, mode, nodes)
            assert e.errno in (errno.EINVAL, errno.EIO), e
            if e.errno == errno.EIO:
                assert flags & 1 and mode != "default", e
            event(f"mbind: {errno.errorcode[e.errno]}")
            return
        assert not einval, (mode, nodes)
        event(f"mbind: ok, flags {flags}")

    # ------------------------------------------------------------------ mappings
    @precondition(lambda self: self.procs)
    @rule(i=st.integers(0, 7), n=st.integers(1, 24), shared=st.booleans())
    def mmap(self, i, n, shared):
        pid = self.pid(i)
        p = self.procs[pid]
        if len(p.maps) >= 3:
            return
        addr = self.m.mmap(pid, n, shared=shared)
        assert addr > 0 and addr % PS == 0
        for a, (k, _) in p.maps.items():
            assert addr + n * PS <= a or a + k * PS <= addr, "overlapping mappings"
        p.maps[addr] = (n, shared)
        for k in range(n):
            p.cells[addr + k * PS] = Cell([self.zero])

    @precondition(has_maps)
    @rule(i=st.integers(0, 7), j=st.integers(0, 7))
    def munmap(self, i, j):
        pid = self.pid_with_maps(i)
        addr, n = self.mapping(pid, j)
        self.m.munmap(pid, addr, n)
        p = self.procs[pid]
        del p.maps[addr]
        for k in range(n):
            del p.cells[addr + k * PS]

    # ------------------------------------------------------------------ data
    @precondition(has_maps)
    @rule(i=st.integers(0, 7), j=st.integers(0, 7), page=st.integers(0, 23),
          off=st.integers(0, PS - 1), length=st.integers(1, 2 * PS),
          toks=st.lists(tokens, min_size=1, max_size=3), seed=st.integers(0, 1 << 30))
    def write(self, i, j, page, off, length, toks, seed):
        pid = self.pid_with_maps(i)
        addr, n = self.mapping(pid, j)
        page %= n
        cells = self.procs[pid].cells
        if self.PAYLOAD == "token":
            toks = toks[:n - page]
            data = b"".join(self.pattern(t) for t in toks)
            start = addr + page * PS
            edits = [(start + k * PS, 0, PS, self.pattern(t)) for k, t in enumerate(toks)]
        else:
            start = addr + page * PS + off
            end = min(start + length, addr + n * PS)
            data = random.Random(seed).randbytes(end - start)
            edits = []
            v = start - (start % PS)
            while v < end:
                s, e = max(start, v) - v, min(end, v + PS) - v
                edits.append((v, s, e, data[v + s - start:v + e - start]))
                v += PS
        try:
            self.m.write(pid, start, data)
            applied = True
        except OSError as e:
            assert e.errno == ENOMEM, e
            applied = False
            event("write: ENOMEM")
        for v, s, e, chunk in edits:
            cells[v].update(lambda c, s=s, e=e, chunk=chunk: c[:s] + chunk + c[e:], applied)

    @precondition(has_maps)
    @rule(i=st.integers(0, 7), j=st.integers(0, 7), page=st.integers(0, 23),
          off=st.integers(0, PS - 1), length=st.integers(0, 2 * PS))
    def read(self, i, j, page, off, length):
        pid = self.pid_with_maps(i)
        addr, n = self.mapping(pid, j)
        page %= n
        start = addr + page * PS + off
        end = min(start + length, addr + n * PS)
        try:
            got = self.m.read(pid, start, end - start)
        except OSError as e:
            assert e.errno == ENOMEM, e
            return
        assert len(got) == end - start
        cells = self.procs[pid].cells
        v = start - (start % PS)
        while v < end:
            s, e = max(start, v) - v, min(end, v + PS) - v
            seen = got[v + s - start:v + e - start]
            cell = cells[v]
            ok = [c for c in cell.cands if c[s:e] == seen]
            assert ok, (f"pid {pid} page {v:#x}[{s}:{e}] reads {seen[:16].hex()}..., "
                        f"expected one of {[c[s:s + 16].hex() for c in cell.cands]}")
            cell.cands = ok
            v += PS

    @precondition(has_maps)
    @rule(i=st.integers(0, 7), j=st.integers(0, 7), page=st.integers(0, 23),
          count=st.integers(1, 24), write=st.booleans(),
          toks=st.lists(tokens, min_size=24, max_size=24))
    def touch(self, i, j, page, count, write, toks):
        count = min(count, len(toks))
        pid = self.pid_with_maps(i)
        addr, n = self.mapping(pid, j)
        page %= n
        count = min(count, n - page)
        toks = toks[:count]
        start = addr + page * PS
        try:
            out = self.m.touch(pid, start, count, write=write,
                               tokens=np.array(toks, dtype=np.int64) if write else None)
            applied = True
        except OSError as e:
            assert e.errno == ENOMEM, e
            applied = False
            out = None
            event("touch: ENOMEM")
        if not write:
            assert out is None
            return
        if applied:
            assert [int(t) for t in out] == toks
        cells = self.procs[pid].cells
        for k, t in enumerate(toks):
            if self.PAYLOAD == "token":
                fn = (lambda c, t=t: self.pattern(t))
            else:
                fn = (lambda c, t=t: tok_bytes(t) + c[8:])
            cells[start + k * PS].update(fn, applied)

    # ------------------------------------------------------------------ migration
    @precondition(has_maps)
    @rule(i=st.integers(0, 7), picks=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 23),
                                                         st.integers(0, PS - 1),
                                                         st.integers(0, 2)),
                                               min_size=1, max_size=6),
          move_all=st.booleans())
    def move_pages(self, i, picks, move_all):
        from emulator import MPOL_MF_MOVE, MPOL_MF_MOVE_ALL
        pid = self.pid_with_maps(i)
        addrs, targets, pages = [], [], []
        for j, page, off, node in picks:
            addr, n = self.mapping(pid, j)
            v = addr + (page % n) * PS
            pages.append(v)
            addrs.append(v + off)
            targets.append(node % self.nodes)
        flags = MPOL_MF_MOVE_ALL if move_all else MPOL_MF_MOVE
        fb = self.m.vmstat()["pgmigrate_fallback_swap"]
        try:
            status = list(self.m.move_pages(pid, addrs, targets, flags=flags))
        except OSError as e:
            # upstream migration gives up at the first page with no frame on its target;
            # the historical designs fall back to swap page by page instead
            assert e.errno == ENOMEM and self.POLICY == "migentry", e
            event("move_pages: ENOMEM")
            return
        if self.m.vmstat()["pgmigrate_fallback_swap"] > fb:
            event("move_pages: fell back to swap")
        assert len(status) == len(addrs)
        for s in set(status):
            event(f"move_pages: status {errno.errorcode.get(-s, s) if s < 0 else 'node'}")
        cells = self.procs[pid].cells
        for v, t, s in zip(pages, targets, status):
            if s >= 0:
                assert s == t, (v, t, s)
            else:
                assert s in PAGE_STATUS_ERRORS, s
                # migentry: no frame on the target fails the whole call, never one page
                assert not (s == -ENOMEM and self.POLICY == "migentry"), status
            if s == -errno.EBUSY:
                assert pages.count(v) > 1, "-EBUSY for a page named once"
            if s == -errno.EFAULT:
                assert self.zero in cells[v].cands, "-EFAULT for a page that was written"
        once = [k for k, v in enumerate(pages) if pages.count(v) == 1 and status[k] >= 0]
        if once:
            q = self.m.move_pages(pid, [pages[k] for k in once])
            for k, s in zip(once, q):
                assert s in (targets[k], -errno.ENOENT), (pages[k], targets[k], s)

    @precondition(lambda self: self.procs)
    @rule(i=st.integers(0, 7), old=st.integers(0, 2), new=st.integers(0, 2))
    def migrate_pages(self, i, old, new):
        pid = self.pid(i)
        try:
            left = self.m.migrate_pages(pid, [old % self.nodes], [new % self.nodes])
        except OSError as e:
            assert e.errno == ENOMEM and self.POLICY == "migentry", e
            event("migrate_pages: ENOMEM")
            return
        assert isinstance(left, int) and left >= 0
        event(f"migrate_pages: {'some left' if left else 'all moved'}")

    # ------------------------------------------------------------------ reclaim, swap
    @rule(node=st.integers(0, 2), n=st.integers(1, 16))
    def reclaim(self, node, n):
        node %= self.nodes
        on = self.swap_on()
        before = self.m.vmstat()["pswpout"]
        got = self.m.reclaim(node, n)
        assert 0 <= got <= n
        event(f"reclaim: {'some' if got else 'none'}")
        if not on:
            assert got == 0
        assert self.m.vmstat()["pswpout"] - before <= got

    @precondition(lambda self: self.swap and self.swap_on())
    @rule()
    def swapoff(self):
        try:
            self.m.swapoff()
        except OSError as e:
            assert e.errno == ENOMEM, e
            assert self.swap_on()
            event("swapoff: ENOMEM")
            return
        event("swapoff: done")
        sw = self.m.swap_info()
        assert sw["on"] is False and sw["used"] == 0 and sw["swapcached"] == 0
        assert self.m.vmstat()["nr_swapcached"] == 0
        for pid, p in self.procs.items():
            for addr, (n, shared) in p.maps.items():
                pages = [addr + k * PS for k in range(n)]
                if shared:
                    # a shared (shmem) page this process has not faulted in reads -ENOENT in
                    # the kernel too: follow_page() finds no pte and the vma has a fault
                    # handler; the data check below still covers these pages
                    continue
                for v, s in zip(pages, self.m.move_pages(pid, pages)):
                    assert s != -errno.ENOENT, f"page {v:#x} of pid {pid} still swapped out"

    @rule()
    def swapon(self):
        if not self.swap:
            try:
                self.m.swapon()
            except OSError as e:
                assert e.errno == errno.EINVAL
            else:
                raise AssertionError("swapon without a swap device succeeded")
        elif self.swap_on():
            try:
                self.m.swapon()
            except OSError as e:
                assert e.errno == errno.EBUSY
            else:
                raise AssertionError("swapon of an active device succeeded")
        else:
            self.m.swapon()
            assert self.swap_on()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def oracle(self):
        if self.m is None:
            return
        self.m.check()

    @invariant()
    def data_and_accounting(self):
        if self.m is None:
            return
        for pid, p in self.procs.items():
            for addr, (n, _) in p.maps.items():
                toks = [int(t) for t in self.m.read_tokens(pid, addr, n)]
                for k, t in enumerate(toks):
                    cell = p.cells[addr + k * PS]
                    ok = [c for c in cell.cands if first8(c) == t]
                    assert ok, (f"pid {pid} page {addr + k * PS:#x} holds token {t:#x}, "
                                f"expected one of {[hex(first8(c)) for c in cell.cands]}")
                    if self.PAYLOAD == "token":
                        cell.cands = ok
        info = self.m.node_info()
        assert len(info) == self.nodes
        for nd in info:
            assert nd["frames"] == self.frames
            assert 0 <= nd["free"] <= nd["frames"]
            assert nd["free"] + nd["used"] == nd["frames"]
        sw = self.m.swap_info()
        assert 0 <= sw["used"] <= sw["slots"] == self.swap
        if not self.procs:
            assert all(nd["free"] == nd["frames"] for nd in info)
            assert sw["used"] == 0


def _case(policy: str, payload: str):
    machine = type(f"NumaMachine_{policy}_{payload}", (NumaMachine,),
                   {"POLICY": policy, "PAYLOAD": payload})
    case = machine.TestCase
    case.settings = SETTINGS
    case.__name__ = case.__qualname__ = f"TestStateful_{policy}_{payload}"
    return case


for _policy in POLICIES:
    for _payload in PAYLOADS:
        _c = _case(_policy, _payload)
        globals()[_c.__name__] = _c
del _c, _policy, _payload
