"""The in-process backend: run a scenario on one ``emulator.Machine``.

1. spawn every workload's processes on their node and map their memory
   (a shared workload maps once and forks, so its processes share the pages);
2. run ``[run] operations`` batch accesses (see :mod:`cluster.workload`),
   recording every token written in a shadow copy;
3. every ``[migration] every`` operations, migrate one process (processes
   take turns, whatever their threads): ``move_pages`` of a random batch of
   its pages, or of its hottest pages not on the target yet (``hot``), or
   ``migrate_pages`` of all of it; to the next node round-robin, or to
   ``[migration] target`` (from every other node, for migrate_pages);
   every ``[reclaim] every`` operations reclaim a node; every ``[swapoff]
   every`` operations swapoff and swapon; with ``[run] stress``, every
   ``check_every`` operations verify every page and run the oracle;
4. at the end, read every page back with ``read_tokens`` and compare with the
   shadow, run the invariant oracle ``check()``, and summarise per node.

Every touch (a fault batch) and migration call is timed in wall seconds
(``time.perf_counter``) into a :class:`cluster.timeline.LatencyRecorder`,
and the machine is sampled about 200 times into a
:class:`cluster.timeline.Timeline`; the summary gets both (``"latency"``,
``"timeline"``). With a :class:`cluster.metrics.RunState` (``numaemu run
--metrics-port``), every operation runs under its lock (so a scrape sees the
machine between two operations) and the timings also count emulated steps
(:mod:`cluster.stepcount`) and go to the run's histograms.
"""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections import Counter
from contextlib import nullcontext
from typing import Callable

import numpy as np

from .scenario import Scenario
from .summary import collect_summary
from .timeline import LatencyRecorder, Timeline
from .workload import AccessPattern, Proc, Shadow, fork_cycle, thread_slices

ProgressFn = Callable[[int], None]

# How many mismatches are described in the summary (all are counted).
MAX_DETAILS = 20


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class LocalRun:
    """One run of a scenario on an in-process Machine."""

    def __init__(self, scenario: Scenario, machine=None, metrics=None,
                 latency: LatencyRecorder | None = None):
        import emulator

        self.scenario = scenario
        self.m = machine if machine is not None else scenario.take_machine()
        self.emulator = emulator
        self.rng = np.random.default_rng(scenario.run.seed)
        self.nr_nodes = int(self.m.nr_nodes)
        self.page_size = int(self.m.page_size)
        self.move_max = int(getattr(emulator, "MOVE_PAGES_MAX", 16384))
        self.procs: list[Proc] = []
        self.movers: list[Proc] = []      # one per process, its whole mapping: what migrations take turns over
        self.patterns: list[AccessPattern] = []
        self.not_moved = 0          # migrate_pages' return values, summed
        self.errors: Counter[str] = Counter()
        self.details: list[str] = []
        self.migration_events = 0
        self.reclaim_events = 0
        self.forks = 0
        self.tlb_hits: dict[int, int] = {}   # node -> accesses its node actor ran alone (Ray only)
        self.tlb_walks: dict[int, int] = {}  # node -> of those, the ones its page walk resolved
        self.local_faults: dict[int, int] = {}   # node -> writes its node actor faulted in itself
        self.swapoff_events = 0
        self.verified_pages = 0     # pages the last verification read back
        self.fork_bad = 0           # fork cycles' mismatches (violations)
        # every touch and migration call is timed (wall seconds) into this
        self.latency = latency if latency is not None else LatencyRecorder()
        self.timeline: Timeline | None = None  # made when the run starts
        # metrics: a cluster.metrics.RunState, or None (then no step counting)
        self.metrics = metrics
        self.lock = metrics.lock if metrics is not None else nullcontext()
        self.steps = None
        if metrics is not None:
            from .stepcount import attach

            self.steps = attach(self.m)
            metrics.attach(self)

    # -- setup ------------------------------------------------------------

    def setup(self) -> None:
        em = self.emulator
        for w, spec in enumerate(self.scenario.workload):
            self.patterns.append(AccessPattern(spec))
            flags = em.MPOL_MF_MOVE_ALL if spec.shared and spec.processes > 1 else em.MPOL_MF_MOVE
            slices = thread_slices(spec.pages, spec.threads)

            def add(pid: int, addr: int, whole: Shadow, parts: list[Shadow]) -> None:
                for t, ((lo, hi), sh) in enumerate(zip(slices, parts)):
                    self.procs.append(Proc(pid, w, spec.node, addr + lo * self.page_size, hi - lo, sh,
                                           flags, thread=t))
                # migrations move a process, whatever its threads
                self.movers.append(Proc(pid, w, spec.node, addr, spec.pages, whole, flags))

            def cut(shadow: Shadow) -> list[Shadow]:   # views: one shadow per mapping
                return [Shadow(shadow.tokens[lo:hi], shadow.known[lo:hi]) for lo, hi in slices]

            if spec.shared:
                pid = self.m.spawn(node=spec.node)
                addr = self.m.mmap(pid, spec.pages, shared=True)
                whole = Shadow.zeros(spec.pages)
                parts = cut(whole)
                pids = [pid] + [self.m.fork(pid) for _ in range(spec.processes - 1)]
                for p in pids:
                    add(p, addr, whole, parts)
            else:
                for _ in range(spec.processes):
                    pid = self.m.spawn(node=spec.node)
                    addr = self.m.mmap(pid, spec.pages, shared=False)
                    whole = Shadow.zeros(spec.pages)
                    add(pid, addr, whole, cut(whole))

    # -- operations -------------------------------------------------------

    def access(self, proc: Proc) -> None:
        acc = self.patterns[proc.workload].next(self.rng, proc.cursor, proc.pages)
        proc.cursor = acc.start + acc.npages
        addr = proc.addr + acc.start * self.page_size
        try:
            tokens = self._timed_touch(proc, addr, acc.npages, acc.write)
        except OSError as exc:
            self.errors[f"touch:{_errname(exc)}"] += 1
            if acc.write:
                proc.shadow.forget(acc.start, acc.npages)
            return
        if acc.write:
            proc.shadow.record(acc.start, np.asarray(tokens, dtype=np.int64))
        spec = self.scenario.workload[proc.workload]
        if proc.fork_due(spec.fork_every):
            self.forks += 1
            try:
                res = fork_cycle(self.m, proc, acc, self.page_size, spec.shared)
            except OSError as exc:
                self.errors[f"fork:{_errname(exc)}"] += 1
                return
            self.fork_bad += len(res.bad)
            self.details.extend(res.bad[: max(0, MAX_DETAILS - len(self.details))])

    def _timed_touch(self, proc: Proc, addr: int, npages: int, write: bool):
        if self.steps is None:
            t0 = time.perf_counter()
            try:
                return self.m.touch(proc.pid, addr, npages, write=write)
            finally:
                self.latency.record("fault", time.perf_counter() - t0, node=proc.home)
        t0, s0 = time.perf_counter(), self.steps.steps
        try:
            return self.m.touch(proc.pid, addr, npages, write=write)
        finally:
            seconds, steps = time.perf_counter() - t0, self.steps.steps - s0
            self.latency.record("fault", seconds, steps, node=proc.home)
            self.metrics.observe_fault(proc.home, seconds, steps)

    def _migration_call(self, call: str, dst: int, fn, *args):
        if self.steps is None:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.latency.record("migration", time.perf_counter() - t0)
        t0, s0 = time.perf_counter(), self.steps.steps
        try:
            return fn(*args)
        finally:
            seconds, steps = time.perf_counter() - t0, self.steps.steps - s0
            self.latency.record("migration", seconds, steps)
            self.metrics.observe_migration(call, dst, seconds, steps)

    def migrate(self) -> None:
        if self.nr_nodes < 2 or not self.movers:
            return
        proc = self.movers[self.migration_events % len(self.movers)]
        self.migration_events += 1
        mig = self.scenario.migration
        mode = mig.mode
        if mig.target is None:
            src, dst = proc.next_target(self.nr_nodes)
            old = [src]
        else:   # from wherever its pages are
            dst = mig.target
            old = [n for n in range(self.nr_nodes) if n != dst]
        try:
            if mode == "hot":   # the most recently touched pages not yet on the target
                batch = min(self.patterns[proc.workload].batch, proc.pages, self.move_max)
                addrs = self.m.hot_pages(proc.pid, batch, dst)
                if not addrs:
                    return
                self._migration_call("move_pages", dst, self.m.move_pages,
                                     proc.pid, addrs, [dst] * len(addrs), proc.flags)
            elif mode == "move_pages":
                batch = min(self.patterns[proc.workload].batch, proc.pages, self.move_max)
                idx = np.sort(self.rng.choice(proc.pages, size=batch, replace=False))
                self._migration_call("move_pages", dst, self.m.move_pages, proc.pid,
                                     proc.page_addrs(idx, self.page_size), [dst] * batch, proc.flags)
            else:
                left = self._migration_call("migrate_pages", dst, self.m.migrate_pages,
                                            proc.pid, old, [dst])
                self.not_moved += int(left)
        except OSError as exc:
            # a call that fails may have moved pages first (ENOMEM: the lists migrated before the
            # one that found no memory): the summary's migrations are the model's counts
            self.errors[f"{mode}:{_errname(exc)}"] += 1

    def reclaim(self) -> None:
        """Reclaim pressure: ``[reclaim] pages`` from one node (nodes take turns
        unless ``[reclaim] node`` names one)."""
        rc = self.scenario.reclaim
        node = rc.node if rc.node is not None else self.reclaim_events % self.nr_nodes
        self.reclaim_events += 1
        try:
            self.m.reclaim(node, rc.pages)
        except OSError as exc:
            self.errors[f"reclaim:{_errname(exc)}"] += 1

    def swapoff_cycle(self) -> None:
        """swapoff (every swapped page comes back into memory, racing the
        workloads' faults on the Ray backend), then swapon again. ENOMEM
        leaves the device on (mm/swapfile.c): counted, and no swapon."""
        self.swapoff_events += 1
        try:
            self.m.swapoff()
        except OSError as exc:
            self.errors[f"swapoff:{_errname(exc)}"] += 1
            if exc.errno != errno.EINVAL:    # EINVAL: already off (an earlier swapon failed): try again
                return
        try:
            self.m.swapon()
        except OSError as exc:
            self.errors[f"swapon:{_errname(exc)}"] += 1

    # -- verification -----------------------------------------------------

    def verify(self) -> int:
        bad = 0
        self.verified_pages = 0
        for proc in self.procs:
            observed = self.m.read_tokens(proc.pid, proc.addr, proc.pages)
            self.verified_pages += int(proc.shadow.known.sum())    # as the node actors count (Ray)
            wrong = proc.shadow.mismatches(observed)
            bad += len(wrong)
            for i in wrong[: max(0, MAX_DETAILS - len(self.details))]:
                self.details.append(
                    f"data: pid {proc.pid} page {int(i)} (addr {proc.addr + int(i) * self.page_size:#x}): "
                    f"expected token {int(proc.shadow.tokens[i])}, read {int(observed[i])}")
        try:
            self.m.check()
        except self.emulator.InvariantViolation as exc:
            bad += 1
            self.details.append(f"invariant: {exc}")
        return bad

    # -- the whole run ----------------------------------------------------

    def run(self, progress: ProgressFn | None = None, *, stress: bool = False,
            check_every: int = 0) -> dict:
        """Run the scenario. ``stress``: every ``check_every`` operations (each
        point between two operations is quiescent here) run the whole oracle
        and compare every page with the shadows; stop at the first violation."""
        t0 = time.perf_counter()
        spec = self.scenario.run
        ops = spec.operations
        deadline = t0 + spec.seconds if spec.seconds else None
        timeline = self.timeline = Timeline(ops, start=t0, seconds=spec.seconds or 0.0)
        lock = self.lock
        with lock:
            self.setup()
            timeline.sample(self.m, 0)
        every = self.scenario.migration.every
        reclaim_every = self.scenario.reclaim.every
        swapoff_every = self.scenario.swapoff.every
        step = max(1, ops // 200)
        next_tick = t0
        nprocs = len(self.procs)
        state = self.metrics
        done = checks = violations = found = 0
        interrupted = _Interrupt()
        with interrupted:
            for op in range(1, ops + 1):
                if interrupted:
                    break
                with lock:  # a scrape sees the machine between two operations
                    self.access(self.procs[(op - 1) % nprocs])
                    if every and op % every == 0:
                        self.migrate()
                    if reclaim_every and op % reclaim_every == 0:
                        self.reclaim()
                    if swapoff_every and op % swapoff_every == 0:
                        self.swapoff_cycle()
                    if timeline.due(op):
                        timeline.sample(self.m, op)
                    if stress and check_every and op % check_every == 0 and op < ops:
                        checks += 1
                        found = self.verify()
                    violations = found + self.fork_bad
                done = op
                if state is not None:
                    state.operations = op
                if progress is not None and (op % step == 0 or op == ops or time.perf_counter() >= next_tick):
                    progress(op)
                    next_tick = time.perf_counter() + 0.5      # a long run still shows it moves
                if (stress and violations) or (deadline is not None and time.perf_counter() >= deadline):
                    break
        with lock:
            if not found:
                found = self.verify()
            violations = found + self.fork_bad
            timeline.sample(self.m, done)  # the machine the summary describes
        elapsed = time.perf_counter() - t0
        summary = collect_summary(
            self.m,
            scenario=self.scenario,
            backend="local",
            not_moved=self.not_moved,
            errors=dict(self.errors),
            violations=violations,
            details=self.details,
            processes=sorted({p.pid for p in self.procs}),
            migration_events=self.migration_events,
            elapsed=elapsed,
            latency=self.latency.summary(),
            timeline=timeline.to_list(),
        )
        summary["operations_done"] = done
        summary["verified_pages"] = self.verified_pages
        if interrupted:     # even during the last operation: the caller stops too (compare's next design)
            summary["interrupted"] = True
        summary["reclaim_events"] = self.reclaim_events
        summary["forks"] = self.forks
        summary["swapoff_events"] = self.swapoff_events
        summary["schedule_late_ops"] = 0      # every event runs at its operation here
        if stress:
            summary["quiescent_checks"] = checks
        return summary


class _Interrupt:
    """Ctrl-C asks the run to stop between two operations (an operation cut
    short would leave the model's state half changed), as the Ray runner's
    drivers stop; true once asked. Only the main thread gets SIGINT."""

    def __init__(self):
        self.asked, self.installed, self.old = False, False, None

    def __bool__(self) -> bool:
        return self.asked

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._ask)
            self.installed = True
        return self

    def _ask(self, signum, frame) -> None:
        if self.asked:                  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc) -> None:
        if self.installed:      # None: a handler not set from Python; the default is the nearest
            signal.signal(signal.SIGINT, self.old if self.old is not None else signal.SIG_DFL)


def run_local(scenario: Scenario, progress: ProgressFn | None = None, machine=None,
              metrics=None, latency: LatencyRecorder | None = None, *, stress: bool = False,
              check_every: int = 0, bugs: tuple[str, ...] = ()) -> dict:
    """Run ``scenario`` in-process and return the summary dict. ``metrics``:
    a :class:`cluster.metrics.RunState` to record into, or None; ``latency``:
    a LatencyRecorder to time the calls into (to keep every duration, e.g.
    for ``write_report``), or None for a fresh one."""
    if bugs:
        machine = machine if machine is not None else scenario.take_machine()
        machine.k.bugs = frozenset(bugs)      # the injections are read at each step
    summary = LocalRun(scenario, machine, metrics, latency).run(progress, stress=stress, check_every=check_every)
    if bugs:
        summary["bugs"] = sorted(bugs)
    return summary
