"""The race explorer: the model's own operation coroutines, driven through chosen
interleavings, with the invariant oracle after every step.

Rules:
- A schedule is the list of task indexes chosen at each scheduling point; it
  determines the run completely (the model is deterministic), so a schedule
  plus the scenario and the bug switches is a replay.
- At each point the enabled tasks are those whose next request is a step,
  or a wait whose condition holds. Choosing a task other than the one that
  ran last, while that one is still enabled, is a preemption.
- After every step the oracle runs (with operations in flight); after the
  last, the full oracle including quiescence. An operation that raises an
  error the scenario does not allow is a violation; so is a deadlock.
Strategies: `random` (uniform), `pct` (priorities with d change points) and
`dfs` (systematic, preemption-bounded, pruning states already explored with
no more preemptions; a state is the model plus each task's history of step
results, which determines its coroutine).
"""
from __future__ import annotations

import base64
import os
from hashlib import blake2b as _blake2b
import random as _random
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np

from . import invariants
from .kernel import BUGS
from .races import Scenario, World, load
from .sched import Call, Wait


@dataclass
class Step:
    task: str
    op: str
    what: str
    saw: str

    def __str__(self) -> str:
        return f"{self.task:>12} | {self.op:<34} | {self.what:<32} -> {self.saw}"


@dataclass
class Outcome:
    schedule: list[int]
    trace: list[Step]
    violation: str | None = None       # the invariant (or failure) broken
    detail: str = ""
    preemptions: int = 0
    pruned: bool = False
    # per depth of a systematic run, the history of the task that stepped there
    hists: list = field(default_factory=list, repr=False, compare=False)


def _short(v: Any) -> str:
    if isinstance(v, np.ndarray):
        s = str(v[:6].tolist())
        return s if len(v) <= 6 else s[:-1] + ", ...]"
    if isinstance(v, tuple):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(str(x) for x in v) + "}"
    r = repr(v)
    return r if len(r) < 40 else r[:37] + "..."


def _digest(h, v: Any) -> None:
    """Feed a step result into a task's history hash."""
    if isinstance(v, np.ndarray):
        h.update(v.tobytes())
    elif isinstance(v, (tuple, list)):
        for x in v:
            _digest(h, x)
    elif isinstance(v, dict):
        for x in v:
            _digest(h, x)
    elif hasattr(v, "pfns"):
        h.update(v.pfns.tobytes())
        h.update(str(v.node).encode())
    elif hasattr(v, "start") and hasattr(v, "mm"):
        h.update(f"vma{v.mm.pid}:{v.start}".encode())
    elif hasattr(v, "pid"):
        h.update(f"mm{v.pid}".encode())
    else:
        h.update(repr(v).encode())


_HEADS: dict[int, Any] = {}


def state_hash(k) -> bytes:
    """A digest of everything that decides the model's future and the oracle's
    verdict (not its counters): 128 bits of blake2b over a header of int64s
    (scalars, counts and the structure of processes, vmas and anon_vmas), then
    the arrays. The header parses on its own (counts come before what they
    count) and, with the machine's fixed sizes, gives the length of every
    array, so two different states never feed the digest the same bytes."""
    sw, mc = k.swap, k.migcache
    ints = [sw.nr_free, sw.on, len(mc.page), mc.nr_entries, len(k.mms), len(k.anon_vmas), len(k.pins)]
    parts = [b""]
    for fr in k.nodes:
        ints += (fr.nr_free, fr.tick)
        parts += (fr.refcount.tobytes(), fr.mapcount.tobytes(), fr.flags.tobytes(), fr.private.tobytes(),
                  fr.anon_vma.tobytes(), fr.index.tobytes(), fr.lru_tick.tobytes(), fr.data.tobytes(),
                  fr.free_stack[:fr.nr_free].tobytes())
    parts += (sw.swap_map.tobytes(), sw.cache_page.tobytes(), sw.store.tobytes(),
              sw.free_stack[:sw.nr_free].tobytes(), mc.counter.tobytes(), mc.page.tobytes())
    for pid, mm in k.mms.items():
        ints += (pid, mm.rss, len(mm.vmas), mm.users, mm.exited, mm.forking)
        for v in mm.vmas:
            ints += (v.start, v.npages, v.handed)
            parts += (v.pte.tobytes(), v.shadow.tobytes())
    for av in k.anon_vmas.values():
        ints += (av.id, av.pins, len(av.vmas))
        for v in av.vmas:
            ints += (v.mm.pid, v.start)
    if k.pins:
        for g, c in sorted(k.pins.items()):
            ints += (g, c)
    if k.tlb is not None:           # the TLBs, and what the kernel knows of them
        sd = k.tlb
        for pid, (n, lo, maybe) in sd.procs.items():
            ints += (pid, n, lo, len(maybe), sd.epoch.get(pid, 0))
            parts.append(maybe.tobytes())
        for port in sd.ports:
            ints += (port.flushes, len(port.procs))
            for pid, e in port.procs.items():
                ints += (pid, e.lo, len(e.ent), int(e.gen[0]))
                parts += (e.ent.tobytes(), e.young.tobytes(), e.dirty.tobytes())
    head = _HEADS.get(len(ints))
    if head is None:
        head = _HEADS[len(ints)] = struct.Struct("<%dq" % len(ints))
    parts[0] = head.pack(*ints)
    return _blake2b(b"".join(parts), digest_size=16).digest()


_BYTE = [bytes([i]) for i in range(256)]


class _TaskRun:
    __slots__ = ("world", "spec", "opi", "coro", "req", "done", "hist", "error", "_label", "_sig")

    def __init__(self, world: World, spec):
        self.world, self.spec = world, spec
        self.opi = -1
        self.coro = None
        self.req: Call | Wait | None = None
        self.done = False
        self.hist = _blake2b(digest_size=16)
        self.error: BaseException | None = None
        self._label = (-1, "")
        self._sig: bytes | None = None

    def sig(self) -> bytes:
        """This task's part of a DFS state: its history digest and operation index."""
        s = self._sig
        if s is None:
            s = self._sig = self.hist.digest() + _BYTE[self.opi & 255]
        return s

    def _next_op(self) -> None:
        self._sig = None
        while True:
            self.opi += 1
            if self.opi >= len(self.spec.ops):
                self.done, self.req = True, None
                return
            self.coro = self.world.start(self.spec.ops[self.opi])
            if self._advance(None, None):
                return

    def start(self) -> None:
        """The first operation: one that fails at once (its process exited in
        the setup, say) fails as a later one does."""
        try:
            self._next_op()
        except Exception as e:
            self.error = e
            self.done, self.req = True, None

    def _advance(self, value, exc) -> bool:
        """Resume the coroutine; True if it stopped at a new request."""
        try:
            self.req = self.coro.throw(exc) if exc is not None else self.coro.send(value)
            return True
        except StopIteration:
            return False

    def enabled(self) -> bool:
        return not self.done and (self.req.__class__ is Call or self.req.pred())

    @property
    def op_label(self) -> str:
        if self.done:
            return "-"
        if self._label[0] != self.opi:
            self._label = (self.opi, self.spec.ops[self.opi].label())
        return self._label[1]

    def step(self) -> tuple[str, str]:
        """Run the pending request; returns (what, saw)."""
        req = self.req
        if req.__class__ is Call:
            what = f"{req.owner}:{req.fn.__name__}"
            try:
                value, exc = req.fn(*req.args), None
            except Exception as e:  # the operation sees the error, as from the kernel
                value, exc = None, e
            saw = _short(value) if exc is None else f"raised {exc!r}"
        else:
            what, value, exc, saw = f"{req.owner}:wait({req.what})", None, None, "woke"
        self._record(what, value, exc)
        try:
            if not self._advance(value, exc):
                self._next_op()
        except Exception as e:
            self.error = e
            self.done, self.req = True, None
            saw += f"; operation failed: {e!r}"
        return what, saw

    def step_quiet(self, record: bool = True) -> None:
        """step() without describing the step for a trace: the same model work.
        Without `record` the history is left behind, for the caller to restore."""
        req = self.req
        if req.__class__ is Call:
            try:
                value, exc = req.fn(*req.args), None
            except Exception as e:
                value, exc = None, e
            if record:
                self._record(f"{req.owner}:{req.fn.__name__}", value, exc)
        elif record:
            self._record(f"{req.owner}:wait({req.what})", None, None)
            value = exc = None
        else:
            value = exc = None
        try:
            if not self._advance(value, exc):
                self._next_op()
        except Exception as e:
            self.error = e
            self.done, self.req = True, None

    def _record(self, what: str, value, exc) -> None:
        self._sig = None
        h = self.hist
        h.update(what.encode())
        if exc is not None:     # a step that raised is not one that returned None
            h.update(b"!" + repr(exc).encode())
        _digest(h, value)


def run_schedule(sc: Scenario, bugs, choose: Callable[[int, list[int], int | None], int],
                 visited: dict | None = None, prune_from: int = 0,
                 checked: set | None = None, bound: int = 0,
                 known: tuple[Outcome, list] | None = None, trace: bool = True) -> tuple[Outcome, list]:
    """One execution. choose(depth, enabled, last) -> task index. Returns the outcome
    and, per depth, (enabled, chosen, preemptions-before, last) for the DFS.
    `checked` remembers model states the oracle has passed already: the verdict is
    a function of the state alone, so each distinct state is checked once (and the
    final, quiescent verdict of each distinct final state once).
    Depths below prune_from replay a prefix an earlier run has checked already;
    `known`, that run's (outcome, points), makes this run's choices below
    prune_from - 1 (choose is not asked there): those steps reuse its enabled
    sets, the tasks' histories it kept (with `visited`) and its trace lines.
    Without `trace` the outcome's trace stays empty: replaying its schedule
    (the model is deterministic) describes the run when it is wanted."""
    w = sc.fresh(bugs)
    k = w.m.k
    k.inflight = 1
    tasks = [_TaskRun(w, t) for t in sc.tasks]
    for t in tasks:
        t.start()
    out = Outcome([], [])
    for t in tasks:     # a first operation that failed before its first step
        if t.error is not None and getattr(t.error, "errno", None) not in sc.may_fail:
            out.violation = "operation failed"
            out.detail = f"{t.spec.name}: {t.spec.ops[t.opi].label()}: {t.error}"
            return out, []
    schedule, steps = out.schedule, out.trace
    points = []
    last: int | None = None
    pre = 0
    depth = 0
    h = None
    hashing = checked is not None or visited is not None
    keep_hists = visited is not None
    if known is not None and prune_from > 1 and (not trace or len(known[0].trace) >= prune_from - 1):
        kout, kpoints = known
        n = prune_from - 1
        khists = kout.hists if len(kout.hists) >= n else None
        for depth in range(n):
            en, c, kpre, klast = p = kpoints[depth]
            if klast != last:
                raise AssertionError(f"run_schedule: the known run chose differently at depth {depth}")
            points.append(p)
            schedule.append(c)
            if trace:
                steps.append(kout.trace[depth])
            t = tasks[c]
            t.step_quiet(khists is None)
            if t.error is not None and getattr(t.error, "errno", None) not in sc.may_fail:
                raise AssertionError(f"run_schedule: the known run went on past a failure at depth {depth}")
            last = c
        if khists is not None:
            # each task's history as the known run left it after its last step here
            for i, t in enumerate(tasks):
                for d in range(n - 1, -1, -1):
                    if schedule[d] == i:
                        t.hist, t._sig = khists[d].copy(), None
                        break
            if keep_hists:
                out.hists = kout.hists[:n]
        else:
            keep_hists = False      # the known run kept none: later runs record again
        pre = kpoints[n][2]
        depth = n
    while True:
        en = [i for i, t in enumerate(tasks) if not t.done and (t.req.__class__ is Call or t.req.pred())]
        if not en:
            live = [i for i, t in enumerate(tasks) if not t.done]
            if live:
                out.violation = "deadlock"
                out.detail = "; ".join(f"{tasks[i].spec.name} waits in {tasks[i].req!r}" for i in live)
            break
        c = choose(depth, en, last)
        is_pre = last is not None and c != last and last in en
        points.append((en, c, pre, last))
        pre += is_pre
        schedule.append(c)
        t = tasks[c]
        opi = t.opi
        if trace:
            op = t.op_label
            what, saw = t.step()
            steps.append(Step(t.spec.name, op, what, saw))
        else:
            t.step_quiet()
        if keep_hists:
            out.hists.append(t.hist.copy())
        last, depth = c, depth + 1
        if t.error is not None:
            err = getattr(t.error, "errno", None)
            if err not in sc.may_fail:
                out.violation = "operation failed"
                out.detail = f"{t.spec.name}: {t.spec.ops[opi].label()}: {t.error}"
                break
        if depth < prune_from:
            continue        # replaying a prefix an earlier run has checked already
        if hashing:
            h = state_hash(k)
        if checked is None or h not in checked:
            try:
                invariants.check(k)
            except invariants.InvariantViolation as e:
                out.violation, out.detail = e.invariant, str(e)
                break
            if checked is not None:
                checked.add(h)
        if visited is not None and depth > prune_from:
            sig = b"".join([h, *[x.sig() for x in tasks], _BYTE[last]])
            left = bound - pre
            seen = visited.get(sig)
            if seen is not None and seen >= left:
                out.pruned = True
                break
            visited[sig] = left
    out.preemptions = pre
    if out.violation is None and not out.pruned:
        k.inflight = 0
        # the quiescent verdict is a function of the final state too
        key = h + b"quiescent" if checked is not None and h is not None else None
        if key is None or key not in checked:
            try:
                invariants.check(k)
            except invariants.InvariantViolation as e:
                out.violation, out.detail = e.invariant, str(e)
            else:
                if key is not None:
                    checked.add(key)
    return out, points


def _traced(sc: Scenario, bugs, out: Outcome) -> Outcome:
    """The same run, replayed with its trace (a search runs without one)."""
    again = replay(sc, bugs, out.schedule)
    if (again.schedule, again.violation, again.detail, again.preemptions) != \
            (out.schedule, out.violation, out.detail, out.preemptions):
        raise RuntimeError(f"explore: replaying schedule {out.schedule} of {sc.path} gave "
                           f"{again.violation!r} ({again.detail}), not {out.violation!r} ({out.detail}): "
                           "the model is not deterministic")
    return again


# -- strategies -------------------------------------------------------------
def _continue_or_first(depth, en, last):
    return last if last in en else en[0]


@dataclass
class Stats:
    schedules: int = 0
    pruned: int = 0
    states: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.schedules / max(self.elapsed, 1e-9)


def explore_dfs(sc: Scenario, bugs=(), bound: int = 2, max_schedules: int | None = None,
                seconds: float | None = None, progress: Callable[[Stats], None] | None = None,
                stats: Stats | None = None, seed: int | None = None) -> tuple[Outcome | None, Stats]:
    """Systematic search with a preemption bound; iterative over bounds 0..bound so
    the first violation found has the fewest preemptions. A seed shuffles the order
    in which tasks start and alternatives are tried (the search stays exhaustive)."""
    stats = stats or Stats()
    order = list(range(len(sc.tasks)))
    if seed is not None:
        _random.Random(seed).shuffle(order)
    rank = {t: i for i, t in enumerate(order)}
    visited: dict = {}          # state -> preemption budget it was explored with
    checked: set = set()        # states the oracle passed
    for b in range(bound + 1):
        prefix: list[int] = []
        known = None
        stack: list[tuple[list[int], set[int], int, int | None]] = []
        while True:
            def choose(depth, en, last, prefix=prefix):
                if depth < len(prefix):
                    return prefix[depth]
                return last if last in en else min(en, key=rank.__getitem__)
            out, points = run_schedule(sc, bugs, choose, visited, len(prefix), checked, b, known, trace=False)
            known = (out, points)
            stats.schedules += 1
            stats.pruned += out.pruned
            stats.states = len(visited)
            if progress:
                progress(stats)
            if out.violation:
                return _traced(sc, bugs, out), stats
            for d in range(len(prefix), len(points)):
                en, c, pre, last = points[d]
                stack.append((en, {c}, pre, last))
            # backtrack to the deepest point with an untried choice within the bound
            while stack:
                en, tried, pre, last = stack[-1]
                best = None
                for c in en:
                    if c in tried or pre + (last is not None and c != last and last in en) > b:
                        continue
                    if best is None or rank[c] < rank[best]:
                        best = c
                if best is not None:
                    tried.add(best)
                    prefix[:] = out.schedule[:len(stack) - 1]
                    prefix.append(best)
                    break
                stack.pop()
            else:
                break
            if (max_schedules and stats.schedules >= max_schedules) or (seconds and stats.elapsed >= seconds):
                return None, stats
    return None, stats


def explore_random(sc: Scenario, bugs=(), seed: int = 0, pct_depth: int = 0, max_schedules: int | None = None,
                   seconds: float | None = None, progress=None) -> tuple[Outcome | None, Stats]:
    """Seeded random schedules: uniform, or PCT with pct_depth-1 priority change points."""
    stats = Stats()
    rng = _random.Random(seed)
    est = 64
    checked: set = set()        # states the oracle passed
    while True:
        if pct_depth:
            prio = list(range(len(sc.tasks)))
            rng.shuffle(prio)
            prio = [p + pct_depth for p in prio]
            changes = {rng.randrange(est): i for i in range(1, pct_depth)}

            def choose(depth, en, last, prio=prio, changes=changes):
                c = max(en, key=lambda i: prio[i])
                if depth in changes:
                    prio[c] = pct_depth - changes[depth]
                    c = max(en, key=lambda i: prio[i])
                return c
        else:
            def choose(depth, en, last):
                return rng.choice(en)
        out, _ = run_schedule(sc, bugs, choose, checked=checked, trace=False)
        est = max(est, len(out.schedule))
        stats.schedules += 1
        if progress:
            progress(stats)
        if out.violation:
            return _traced(sc, bugs, out), stats
        if (max_schedules and stats.schedules >= max_schedules) or (seconds and stats.elapsed >= seconds):
            return None, stats


def replay(sc: Scenario, bugs, schedule: list[int]) -> Outcome:
    def choose(depth, en, last):
        if depth < len(schedule) and schedule[depth] in en:
            return schedule[depth]
        return _continue_or_first(depth, en, last)
    out, _ = run_schedule(sc, bugs, choose)
    return out


def minimize(sc: Scenario, bugs, out: Outcome) -> Outcome:
    """Fewer preemptions: repeatedly let the running task go on at a preemption point,
    keeping the change while the same invariant still breaks."""
    best = out
    improved = True
    while improved and best.preemptions:
        improved = False
        last = None
        for d, c in enumerate(best.schedule):
            if last is not None and c != last:
                trial = replay(sc, bugs, best.schedule[:d] + [last])
                if trial.violation == best.violation and trial.preemptions < best.preemptions:
                    best, improved = trial, True
                    break
            last = c
    return best


# -- replay tokens ---------------------------------------------------------
def make_token(sc: Scenario, bugs, schedule: list[int]) -> str:
    body = msgpack.packb([1, sc.path, sc.digest, sorted(bugs), bytes(schedule)], use_bin_type=True)
    return "nx1-" + base64.urlsafe_b64encode(zlib.compress(body, 9)).decode().rstrip("=")


def read_token(token: str) -> tuple[str, str, list[str], list[int]]:
    """(path, digest, bugs, schedule) of a token, each field's type checked: a
    token is input (pasted, or made by hand), and a field of the wrong type
    would fail far from here (a path that is no str, a bug name that is a list)."""
    if not isinstance(token, str) or not token.startswith("nx1-"):
        raise ValueError("replay token: not a numaemu replay token (they start with nx1-)")
    try:
        raw = token[4:]
        body = msgpack.unpackb(zlib.decompress(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))), raw=False)
    except Exception:
        raise ValueError("replay token: corrupted (it does not decode)") from None
    if not isinstance(body, list) or len(body) != 5 or type(body[0]) is not int or body[0] != 1:
        raise ValueError("replay token: corrupted (not [1, path, digest, bugs, schedule])")
    _, path, digest, bugs, sched = body
    for name, v, ok, want in (
            ("path", path, isinstance(path, str) and bool(path), "a string (the scenario file)"),
            ("digest", digest, isinstance(digest, str), "a string"),
            ("bugs", bugs, isinstance(bugs, list) and all(isinstance(b, str) for b in bugs),
             "a list of bug injection names"),
            ("schedule", sched, isinstance(sched, bytes), "bytes (a task index per step)")):
        if not ok:
            raise ValueError(f"replay token: corrupted: {name} must be {want}, got {_short(v)}")
    unknown = [b for b in bugs if b not in BUGS]
    if unknown:
        raise ValueError(f"replay token: bugs: unknown bug injection {unknown[0]!r} (known: {', '.join(BUGS)})")
    return path, digest, list(bugs), list(sched)


def _file_of(path: str) -> str:
    """The file a scenario path names: a dump's, without its #N."""
    base = path.partition("#")[0]
    return base if base.endswith(".msgpack") else path


def replay_token(token: str, scenario: str | None = None) -> tuple[Scenario, list[str], Outcome]:
    """Replay a token's schedule on the scenario it names (as explore was given
    it: a relative path is from where explore ran) or on ``scenario``, which
    must be the same file's contents."""
    path, digest, bugs, sched = read_token(token)
    if scenario is None and not os.path.exists(_file_of(path)):
        raise ValueError(f"replay token: it names {path}, not found from {os.getcwd()} (a relative path is "
                         "from where explore ran: replay there, or give the file with --scenario)")
    sc = load(scenario if scenario is not None else path)
    if sc.digest != digest:
        raise ValueError(f"replay token: {scenario or path} is not the scenario the token was made on "
                         "(it has changed since, or it is another file)")
    return sc, bugs, replay(sc, bugs, sched)
