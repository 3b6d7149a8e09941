"""Counting the emulated steps an operation runs.

An operation is a coroutine of owner-local steps (emulator/sched.py); the
inline driver ``emulator.sched.run_inline`` runs it to completion. The
runner's latency histograms count the steps a syscall took: this module
wraps the coroutine that ``Machine._run`` hands to the inline driver in a
proxy that counts the step requests (``Call``) it yields. The driver itself
is unchanged and the model is not edited: :func:`attach` sets a wrapper on
one Machine instance only.
"""
from __future__ import annotations

from typing import Any

from emulator.sched import Call


class _CountingCoroutine:
    """A coroutine proxy for run_inline: send/throw/close, counting steps."""

    __slots__ = ("_coro", "_counter")

    def __init__(self, coro, counter: "StepCounter"):
        self._coro = coro
        self._counter = counter

    def _seen(self, req: Any) -> Any:
        if req.__class__ is Call:
            self._counter.steps += 1
        return req

    def send(self, value: Any) -> Any:
        return self._seen(self._coro.send(value))

    def throw(self, exc: BaseException) -> Any:
        return self._seen(self._coro.throw(exc))

    def close(self) -> None:
        self._coro.close()


class StepCounter:
    """``steps``: the steps run so far by every operation of one Machine."""

    def __init__(self) -> None:
        self.steps = 0

    def wrap(self, coro) -> _CountingCoroutine:
        return _CountingCoroutine(coro, self)


def attach(machine) -> StepCounter:
    """Count the steps of every operation ``machine`` runs from now on.

    ``Machine._run(coro)`` runs an operation with the inline driver; the
    instance gets a ``_run`` that passes it the counting proxy instead.
    """
    counter = StepCounter()
    run = machine._run  # the bound method of the class

    def counted_run(coro):
        return run(counter.wrap(coro))

    machine._run = counted_run
    return counter
