"""The node actor: one emulated NUMA node's frames, and the workload driver of
the processes whose CPUs are on it.

- It owns its frames' payload: a shared-memory array it creates, which the
  coordinator on the same host maps (one memcpy per migration), or reaches
  through :meth:`rows_get` / :meth:`rows_set` from another host.
- Its workload driver is a thread that runs the processes' accesses and
  records every token written in the shadow copy. An access whose pages the
  node's TLB holds runs here, on the payload (cluster/tlb.py); any other goes
  to the coordinator as a fault batch, and its ptes come back to be cached.
  Several node actors drive at once, so faults on different nodes interleave
  with each other and with migrations for real.
- The driver stops only between two operations: :meth:`pause` returns once
  it is idle, which is what lets the runner check the oracle at a quiescent
  point. The shadows stay here; :meth:`verify` reads the pages back through
  the coordinator and compares.
- The runner's schedule (migrate every K operations, reclaim, swapoff) is
  kept by a gate: the drivers may run at most one period past the next
  event the runner has not fired yet (:meth:`progress`'s ``allowed``), and
  wait there. So an event fires within a period of its operation however
  slow the runner is, and it still races with the accesses after it.
"""
from __future__ import annotations

import errno
import shutil
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from emulator.sched import Deadlock

from .dataplane import attach_payload, create_payload, payload_shape, shm_dir, shm_huge, unlink
from .tlb import NodeTLB
from .workload import AccessPattern, Proc, fork_cycle

MAX_DETAILS = 20


class NodeActor:
    def __init__(self, node: int, nframes: int, page_size: int, payload: str, run_id: str, shm: str = ""):
        """``shm``: the directory for its shared files (cluster.dataplane.shm_dir)."""
        import ray

        self.node = node
        self.host = ray.get_runtime_context().get_node_id()
        self.shape, self.dtype = payload_shape(nframes, page_size, payload)
        self.path = shm_dir(shm) / f"numaemu-{run_id}-node{node}"
        self.data = create_payload(self.path, self.shape, self.dtype)
        self.page_size = page_size
        self.reach: dict[int, np.ndarray] = {node: self.data}   # payloads this node's CPUs access
        self.tlb: NodeTLB | None = None
        # the workload drivers
        self.drivers: list[_Driver] = []
        self.cv = threading.Condition()     # drivers park on it: paused, at a checkpoint, at the gate
        self.paused = False
        self.stopping = False
        self.allowed: int | None = None     # the gate: ops the drivers may do before the runner's next event
        self.wake: int | None = None        # progress() answers at once from this many ops on
        self.woken = threading.Event()      # a driver parked, finished or passed ``wake``
        self.tally = threading.Lock()       # the drivers' counts below, kept by every thread
        self.errors: Counter[str] = Counter()
        self.latency_s: list[float] = []    # per fault batch: wall seconds, through the coordinator
        self.latency_steps: list[int] = []  # and emulated steps
        self.procs: list[Proc] = []
        self.forks = 0
        self.fork_bad = 0                   # fork cycles' mismatches
        self.fork_details: list[str] = []
        self.fork_child = 0                 # the first child that saw one

    # -- the payload ---------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return {"host": self.host, "path": str(self.path), "shape": list(self.shape),
                "dtype": self.dtype.str, "handle": None,
                "bytes": int(self.data.nbytes), "shm_free": shutil.disk_usage(self.path.parent).free,
                "huge": shm_huge(self.path.parent)}

    def rows_get(self, key, view=None) -> np.ndarray:
        a = self.data if view is None else self.data.view(view)
        return np.array(a[key])

    def rows_set(self, key, value, view=None) -> None:
        a = self.data if view is None else self.data.view(view)
        a[key] = value

    def rows_pull(self, src, src_key, key, src_view=None, view=None) -> None:
        """Copy rows of another node actor's payload into this one's: a
        migration between two hosts the coordinator is not on."""
        import ray
        rows = ray.get(src.rows_get.remote(src_key, src_view))
        self.rows_set(key, rows, view)

    def peers(self, descs: list[dict[str, Any]]) -> None:
        """Map the payloads of the other nodes on this host, so that an access
        to their pages through the TLB is a load or a store here too."""
        for i, d in enumerate(descs):
            if i != self.node and d["host"] == self.host:
                self.reach[i] = attach_payload(d["path"], tuple(d["shape"]), np.dtype(d["dtype"]))

    def tlb_flush(self, pid: int, vpns: np.ndarray, wrprotect: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if self.tlb is None:
            z = np.zeros(len(vpns), dtype=bool)
            return z, z
        return self.tlb.flush(pid, np.asarray(vpns), wrprotect)

    def tlb_harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return {} if self.tlb is None else self.tlb.harvest()

    def tlb_take_young(self) -> dict[int, np.ndarray]:
        return {} if self.tlb is None else self.tlb.take_young()

    def forget_path(self) -> None:
        """Once the coordinator has mapped the payload, its name can go: the
        mappings live on, and nothing is left in the shared directory if a process dies."""
        unlink(self.path)

    def close(self) -> None:
        self.stop()
        for d in self.drivers:      # out of the TLB before its files close (a call in flight ends by WAIT_TIMEOUT)
            d.thread.join(5.0)
        unlink(self.path)
        if self.tlb is not None and not any(d.thread.is_alive() for d in self.drivers):
            self.tlb.close()

    # -- the workload drivers --------------------------------------------------------
    def start(self, coord, info: dict, procs: list[Proc], specs: list, operations: int, seed: int,
              pause_every: int = 0, allowed: int | None = None) -> None:
        """Drive ``procs`` for ``operations`` accesses in all: one thread per
        thread index of the workloads (``procs`` holds one entry per process
        and thread, each on its own slice of the mapping), round-robin within a
        thread. With ``pause_every``, each thread stops after every that many
        of its accesses until resumed (a checkpoint); ``allowed`` is the
        first gate (see :meth:`progress`)."""
        import ray
        from .coordinator import CoordMachine

        own: dict[int, Any] = {}
        for p in procs:   # Ray hands arrays over read-only; a shared mapping's processes share a shadow
            sh = p.shadow
            if id(sh) not in own:
                sh.tokens, sh.known = sh.tokens.copy(), sh.known.copy()
                own[id(sh)] = sh
        self.procs = procs
        self.allowed = allowed
        slices = [(p.pid, p.addr, p.pages) for p in procs]
        self.tlb = NodeTLB(self.node, self.page_size.bit_length() - 1, self.reach, slices,
                           self.path.with_name(self.path.name + "-tlb"),
                           *((info.get("steps"), info.get("frames")) if info.get("host") == self.host else ()))
        ray.get(coord.tlb_register.remote(self.node, slices, self.tlb.shared()))
        unlink(self.tlb.path)           # mapped by the coordinator if it is on this host: the name can go
        patterns = {w: AccessPattern(spec) for w, spec in enumerate(specs)}
        groups: dict[int, list[Proc]] = {}
        for p in procs:
            groups.setdefault(p.thread, []).append(p)
        left = operations
        for i, (t, ps) in enumerate(sorted(groups.items())):
            n = operations * len(ps) // len(procs) if i < len(groups) - 1 else left
            left -= n
            d = _Driver(self, t, ps, n, max(1, pause_every * len(ps) // len(procs)) if pause_every else 0)
            rng = np.random.default_rng([seed, self.node, t])
            d.thread = threading.Thread(target=d.run, name=f"workload-node{self.node}-t{t}",
                                        args=(CoordMachine(coord, info, f"node{self.node}-t{t}"), patterns, rng),
                                        daemon=True)
            self.drivers.append(d)
        for d in self.drivers:
            d.thread.start()

    @property
    def ops_done(self) -> int:
        return sum(d.ops for d in self.drivers)

    def progress(self, since: int = -1, allowed: int | None = None, wake: int | None = None,
                 wait_s: float = 0.0) -> dict[str, Any]:
        """Ops done; with ``since`` >= 0, the fault latencies recorded after that many.

        ``allowed`` moves the gate; then, for up to ``wait_s``, the answer
        waits for something the runner acts on: ``wake`` ops done (its next
        event is due), a driver parked or finished, a fork's mismatch."""
        if allowed is not None:
            self.allow(allowed)
        self.woken.clear()
        self.wake = wake
        if wait_s and not self._due():
            self.woken.wait(wait_s)
        running = [d for d in self.drivers if d.thread.is_alive()]
        # parked first: a driver parked at its checkpoint has counted its last fork cycle already
        parked = bool(running) and all(d.parked for d in running)
        out = {"ops": self.ops_done, "running": bool(running), **self._forks(),
               "failure": "; ".join(d.failure for d in self.drivers if d.failure) or None,
               "deadlocks": [d.deadlock for d in self.drivers if d.deadlock],
               "parked": parked, "checkpoint": parked and any(d.at_checkpoint for d in running)}
        if since >= 0:
            with self.tally:
                n = len(self.latency_s)
                out["latency"] = (n, self.latency_s[since:n], self.latency_steps[since:n])
        return out

    def _due(self) -> bool:
        """Whether the runner has something to act on now (see progress)."""
        return (self.wake is not None and self.ops_done >= self.wake) or bool(self.fork_bad) or \
            all(d.parked for d in self.drivers if d.thread.is_alive()) or any(d.deadlock for d in self.drivers)

    def allow(self, allowed: int) -> None:
        """Move the gate on (never back: a late call may carry an older one)."""
        with self.cv:
            self.allowed = allowed if self.allowed is None else max(self.allowed, allowed)
            self.cv.notify_all()

    def _forks(self) -> dict[str, Any]:
        """Fork cycles so far, and the mismatches their children saw; the TLB's counts."""
        return {"forks": self.forks, "fork_bad": self.fork_bad, "fork_details": list(self.fork_details),
                "fork_child": self.fork_child, **(self.tlb.stats() if self.tlb else {})}

    def pause(self) -> int:
        """Stop every thread between two operations; returns once all are idle
        (a driver decides to run its next operation under ``cv``, so once
        ``paused`` is set there, an idle driver stays parked)."""
        with self.cv:
            self.paused = True
        for d in self.drivers:
            while d.thread.is_alive() and not d.idle.wait(0.05):
                pass
        return self.ops_done

    def resume(self) -> None:
        with self.cv:
            for d in self.drivers:
                d.at_checkpoint = False
            self.paused = False
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()

    def join(self, timeout: float | None = None) -> dict[str, Any]:
        for d in self.drivers:
            d.thread.join(timeout)
        return {"ops": self.ops_done, "errors": dict(self.errors), **self._forks(),
                "failure": "; ".join(d.failure for d in self.drivers if d.failure) or None,
                "deadlocks": [d.deadlock for d in self.drivers if d.deadlock],
                "running": any(d.thread.is_alive() for d in self.drivers),
                "latency_s": np.asarray(self.latency_s, dtype=np.float64),
                "latency_steps": np.asarray(self.latency_steps, dtype=np.int64)}

    def verify(self, coord, info: dict, lost: list[int] = ()) -> dict[str, Any]:
        """Read every page of this node's processes back and compare with the
        shadows. Pages resident on a lost node are counted, not compared."""
        from .coordinator import CoordMachine
        import ray

        m = CoordMachine(coord, info)
        checked = bad = gone = 0
        details: list[str] = []
        for proc in self.procs:
            observed = m.read_tokens(proc.pid, proc.addr, proc.pages)
            ok = np.ones(proc.pages, dtype=bool)
            if lost:
                where = ray.get(coord.resident_nodes.remote(proc.pid, proc.addr, proc.pages))
                ok = ~np.isin(where, list(lost))
                gone += int((~ok).sum())
            wrong = proc.shadow.mismatches(np.where(ok, observed, proc.shadow.tokens))
            checked += int((ok & proc.shadow.known).sum())
            bad += len(wrong)
            for i in wrong[: max(0, MAX_DETAILS - len(details))]:
                details.append(f"data: pid {proc.pid} page {int(i)} (addr {proc.addr + int(i) * self.page_size:#x}): "
                               f"expected token {int(proc.shadow.tokens[i])}, read {int(observed[i])}")
        return {"checked": checked, "bad": bad, "lost": gone, "details": details}


class _Driver:
    """One workload thread of a node actor: its processes' slices, round-robin."""

    def __init__(self, node: NodeActor, index: int, procs: list[Proc], operations: int, pause_every: int):
        self.node, self.index, self.procs = node, index, procs
        self.operations, self.pause_every = operations, pause_every
        self.ops = 0
        self.failure: str | None = None
        self.deadlock: str | None = None    # a call the model deadlocked in: a violation, not a failure
        self.at_checkpoint = False
        self.parked = False     # waiting: paused, at a checkpoint or at the gate
        self.idle = threading.Event()
        self.idle.set()
        self.thread: threading.Thread

    def run(self, m, patterns, rng) -> None:
        node, procs, ps, tlb = self.node, self.procs, self.node.page_size, self.node.tlb
        try:
            for op in range(self.operations):
                if self.pause_every and op and op % self.pause_every == 0:
                    self.at_checkpoint = True        # until the runner resumes every driver
                with node.cv:       # idle goes clear under cv: pause() never sees a driver on its way out
                    if self._must_wait():
                        self.idle.set()
                        self.parked = True
                        node.woken.set()
                        while not node.stopping and self._must_wait():
                            node.cv.wait(1.0)
                        self.parked = False
                    if node.stopping:
                        break
                    self.idle.clear()
                proc = procs[op % len(procs)]
                acc = patterns[proc.workload].next(rng, proc.cursor, proc.pages)
                proc.cursor = acc.start + acc.npages
                addr = proc.addr + acc.start * ps
                t0 = time.perf_counter()
                done = False
                toks: Any = tlb.access(proc.pid, addr, acc.npages, acc.write, self.index)   # a hit: no fault
                if toks is None:        # a miss: the fault batch, through the coordinator
                    try:
                        toks, fill = m.touch_fill(proc.pid, addr, acc.npages, acc.write, node.node)
                        tlb.install(proc.pid, fill)
                    except OSError as exc:
                        toks = exc
                    with node.tally:
                        node.latency_s.append(time.perf_counter() - t0)
                        node.latency_steps.append(m.last_steps)
                if isinstance(toks, OSError):
                    with node.tally:
                        node.errors[f"touch:{errno.errorcode.get(toks.errno or 0, toks.errno)}"] += 1
                    if acc.write:
                        proc.shadow.forget(acc.start, acc.npages)
                else:
                    if acc.write:
                        proc.shadow.record(acc.start, np.asarray(toks, dtype=np.int64))
                    done = True
                spec = patterns[proc.workload].spec
                if done and proc.fork_due(spec.fork_every):     # as the local backend
                    self.fork(m, proc, acc, spec.shared)
                self.ops += 1
                if node.wake is not None and node.ops_done >= node.wake:
                    node.woken.set()
        except Deadlock as exc:
            self.deadlock = f"node {node.node} thread {self.index}: {exc}"
        except Exception as exc:  # the coordinator died, or a bug: say so, don't hang
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.idle.set()
            node.woken.set()

    def _must_wait(self) -> bool:
        node = self.node
        return self.at_checkpoint or node.paused or (node.allowed is not None and node.ops_done >= node.allowed)

    def fork(self, m, proc: Proc, acc, shared: bool) -> None:
        node = self.node
        with node.tally:
            node.forks += 1
        try:
            res = fork_cycle(m, proc, acc, node.page_size, shared)
        except OSError as exc:
            with node.tally:
                node.errors[f"fork:{errno.errorcode.get(exc.errno or 0, exc.errno)}"] += 1
            return
        if not res.bad:
            return
        with node.tally:
            # the description and the child first: progress() may read between these lines
            node.fork_details.extend(res.bad[: max(0, MAX_DETAILS - len(node.fork_details))])
            if not node.fork_bad:
                node.fork_child = res.child
            node.fork_bad += len(res.bad)
        node.woken.set()

