"""How operations run: coroutines of owner-local steps (DESIGN.md principle 1).

Rules:
- An operation is an ``async def`` coroutine. It never touches state itself:
  every change happens inside a *step*, a plain synchronous function that it
  asks for with ``await call(owner, fn, *args)``. A step is a critical section:
  nothing else runs while it runs. (One exception: a syscall's reference on
  the mm it works on, counted around its steps: process.mm_held.)
- Every await is a preemption point: the place where the kernel drops a lock
  or sleeps. A driver decides what runs at each of them. The inline driver
  (here) runs one operation to completion; the explorer and the Ray runtime
  interleave many.
- ``await wait(owner, pred, what)`` blocks the operation until ``pred()`` is
  true (a sleeping lock_page, migration_entry_wait). Inline, nothing else can
  release it, so a false predicate there is a deadlock and raises.
"""
from __future__ import annotations

from typing import Any, Callable, Coroutine


class Call:
    __slots__ = ("owner", "fn", "args")

    def __init__(self, owner: str, fn: Callable, args: tuple):
        self.owner, self.fn, self.args = owner, fn, args

    def __await__(self):
        return (yield self)

    def __repr__(self) -> str:
        return f"{self.owner}:{self.fn.__name__}"


class Wait:
    __slots__ = ("owner", "pred", "what")

    def __init__(self, owner: str, pred: Callable[[], bool], what: str):
        self.owner, self.pred, self.what = owner, pred, what

    def __await__(self):
        return (yield self)

    def __repr__(self) -> str:
        return f"{self.owner}:wait({self.what})"


def call(owner: str, fn: Callable, *args: Any) -> Call:
    return Call(owner, fn, args)


def wait(owner: str, pred: Callable[[], bool], what: str) -> Wait:
    return Wait(owner, pred, what)


class Deadlock(RuntimeError):
    """An inline operation waited for something only another operation can do."""


def run_inline(coro: Coroutine) -> Any:
    """Run one operation to completion: every step straight through."""
    send, throw = coro.send, coro.throw
    value: Any = None
    exc: BaseException | None = None
    while True:
        try:
            req = throw(exc) if exc is not None else send(value)
        except StopIteration as stop:
            return stop.value
        exc = None
        if req.__class__ is Call:
            try:
                value = req.fn(*req.args)
            except Exception as e:  # delivered to the operation, which may undo
                exc, value = e, None
        else:
            if not req.pred():
                coro.close()
                raise Deadlock(f"inline operation blocked on {req!r}")
            value = None
