"""The threaded driver: the model's own operations, interleaved for real.

Rules this driver keeps (DESIGN.md principle 1, second driver):
- One lock, ``machine.cond``, stands for every owner's locks. Whoever runs a
  Machine method holds it; a step therefore runs atomically, as in-process.
- At every preemption point (each ``await`` of an operation coroutine) the
  driver drops the lock and yields the CPU, so an operation arriving on
  another thread (a fault batch from a workload driver, a migration from the
  runner) may take its next step there: the interleaving is decided by real
  arrival times, not by a scheduler.
- ``await wait(...)`` sleeps on the condition until a step of another
  operation makes the predicate true (every step notifies). A wait that no
  step satisfies within ``WAIT_TIMEOUT`` seconds is a deadlock and raises,
  so a run never hangs on a lost wake-up.
- A migration's payload copy, which the model's step asks for with
  Kernel.copy_payload, runs right after that step with the lock dropped:
  both pages are locked and frozen, so other operations step meanwhile and
  the memcpy overlaps them, as folio_copy() does on another CPU
  (cluster.dataplane.copy_batch). With no other operation in flight to
  want the other core, a large copy instead runs on a copier thread
  (``flight``, cluster.dataplane.CopyInFlight) while this operation takes
  its next steps, with no preemption point until it has landed.
- Every look at a payload (Frames.data: a copy, a fault's fill, a swap-out
  or -in, a read) first waits for the copy in flight to land, helping it
  (``_land``); so copies land in the order they were asked for, and no one
  sees a frame before its contents. A step that needs no contents (the
  remap walk, the unlock, the putback, as in 6.1) runs beside the copy.
- When the operation ends before that copy, and its caller asked for it
  (``post_copies``: the coordinator, for the calls that read no payload
  after their operation), the copy is left in flight: the next operations
  step beside it, and the first to look at a payload waits for it. The
  caller keeps out whoever reads payloads outside the model (the
  coordinator: the node actors, through StepsLock.pin).
- Steps wait on the locked pages as the kernel's do; a look at contents
  that does not fault (read_tokens, read's look after its faults) also
  waits until no copy runs beside other operations (``copying``), or it
  could see the new page before its data.
- No kernel path is written here: the coroutines are the model's.
"""
from __future__ import annotations

import os
import threading
from typing import Any

from emulator import Machine
from emulator.sched import Call, Deadlock

from .dataplane import CopyInFlight, copy_batch

WAIT_TIMEOUT = 60.0


def run_threaded(coro, m: "ConcurrentMachine") -> tuple[Any, int]:
    """Run one operation to completion; the caller holds ``m.cond``.
    Returns its result and the number of steps it took. The payload copies
    its steps leave in ``m.k.deferred`` (Kernel.copy_payload) run with the
    lock dropped, counted in ``m.copying`` meanwhile; or, when no other
    operation is in flight, on a copier thread (``m.flight``) while this one
    takes its next steps, which wait for it only to look at a payload."""
    cond, deferred = m.cond, m.k.deferred
    steps = 0
    send, throw = coro.send, coro.throw
    value: Any = None
    exc: BaseException | None = None
    yield_cpu = os.sched_yield if hasattr(os, "sched_yield") else (lambda: None)
    ahead: CopyInFlight | None = None       # this operation's copy on the copier thread: m.flight
    try:
        while True:
            try:
                req = throw(exc) if exc is not None else send(value)
            except StopIteration as stop:
                if ahead is not None and m.post_copies:
                    # it lands later, this thread's caller keeping the node actors out until then
                    m.mine.handed, ahead = ahead, None
                return stop.value, steps
            exc = None
            if req.__class__ is Call:
                try:
                    value = req.fn(*req.args)
                except Exception as e:  # delivered to the operation, which may undo
                    exc, value = e, None
                steps += 1
                copies = None
                if deferred:
                    copies = list(deferred)
                    deferred.clear()
                    m._land()           # copies land in the order they were asked for
                    if m.k.inflight <= 1 and CopyInFlight.fits(copies):
                        ahead = m.flight = CopyInFlight(copies)
                        copies = None
                if ahead is not None:
                    if m.flight is ahead and not ahead.done():
                        continue    # no preemption point until the copy is done
                    m._land()       # its error, if it had one, reaches the operation's caller
                    ahead = None
                if copies:
                    m.copying += 1
                cond.notify_all()
                cond.release()          # the preemption point
                try:
                    if copies:          # the data plane: memcpy (without the GIL) while others step
                        for args in copies:
                            copy_batch(*args)
                    else:
                        yield_cpu()
                finally:                # a copy that fails (a remote payload gone) must not leave readers waiting
                    cond.acquire()
                    if copies:
                        m.copying -= 1
                        cond.notify_all()
            else:
                if ahead is not None:
                    m._land()
                    ahead = None
                while not req.pred():
                    if not cond.wait(WAIT_TIMEOUT):
                        coro.close()
                        raise Deadlock(f"operation blocked on {req!r} for {WAIT_TIMEOUT:.0f} s")
                value = None
    finally:
        if ahead is not None:
            m._land()


class ConcurrentMachine(Machine):
    """A Machine that many threads may call at once, each call under ``cond``.

    Use ``with machine.cond:`` around every public call (the coordinator
    does); operations then interleave step by step across threads.
    """

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.cond = threading.Condition(threading.Lock())
        self.k.deferred = []                 # payload copies run outside the lock
        self.copying = 0                     # operations whose copy is running now
        self.steps = 0                       # every operation's steps so far
        self.mine = threading.local()        # .steps: this thread's, for its caller's latency;
        # .handed: the copy its operation left in flight (post_copies), for its caller to see to
        self.post_copies = False             # an operation may end before its copy (see flight)
        self.flight: CopyInFlight | None = None   # that copy: every look at a payload waits for it
        for fr in self.k.nodes:
            fr.landing = self._land

    def _run(self, coro):
        k = self.k
        k.inflight += 1
        try:
            value, steps = run_threaded(coro, self)
        finally:
            k.inflight -= 1
        self.steps += steps
        self.mine.steps = getattr(self.mine, "steps", 0) + steps
        return value

    def _land(self) -> None:
        """Frames.landing: wait for the copy in flight, helping it. A chunk
        that failed leaves the pages it moved undefined: an error."""
        flight = self.flight
        if flight is not None:
            flight.wait()
            if self.flight is flight:
                self.flight = None
            if flight.error is not None:
                raise RuntimeError(flight.failure())

    def _settled(self) -> None:
        """Wait until no migration copy is in flight: the one an operation
        left behind, and (the lock dropped) those running beside other
        operations' steps."""
        self._land()
        while self.copying:
            if not self.cond.wait(WAIT_TIMEOUT):
                raise Deadlock(f"a migration copy did not finish in {WAIT_TIMEOUT:.0f} s")
