"""Stress dumps as race scenarios: search, in-process, the state a Ray run broke in.

A dump (written by ``numaemu run --stress`` on a violation) is msgpack:
``{"format": "numaemu-dump/1", "scenario", "checkpoint": {"seq", "snapshot"},
"events": [{"seq", "caller", "op", "args", "kw", "outcome"[, "result"]}, ...], "snapshot",
"violations", "bugs"}``: the last quiescent state that passed the oracle, every
mutating Machine call made since (in the order they returned; ``seq``
numbers them in the order they started), and the state the violation was
seen in.

As a race scenario its starting state is the checkpoint with every call but
the last N replayed in order, and its tasks are those last N calls, one task
per caller (a workload thread, the runner: each made its calls one after
another, so they stay in order), so the explorer tries their interleavings.
A process forked after the checkpoint is named by the pid its fork returned
in the run (the event's ``result``) and has its parent's mappings. The path
names N after a ``#``: ``dump.msgpack#6`` (default :data:`DEFAULT_LAST`), so
that a replay token made from it names the same scenario.

A dump is input like a scenario file: every field is checked as it is read
(a call's arguments bound by name as its Machine method takes them, ids that
exist, ranges mapped at the checkpoint, nodes online), and a malformed one is
a ScenarioError naming the file, the event (``events[seq N]``) and the field,
never a traceback, nor an operation failing in an explored run as if the
model had broken.
"""
from __future__ import annotations

import errno
import hashlib
import inspect
from pathlib import Path
from typing import Any

import msgpack

from .machine import Machine
from .move_pages import MPOL_MF_MOVE_ALL
from .races import (ADDRESS_PAGES, INT64_MAX, Op, Scenario, ScenarioError, Task, World, want_bool, want_int,
                    want_ints, want_list, want_str, want_strs, want_table)

FORMAT = "numaemu-dump/1"
DEFAULT_LAST = 4
CALLS = ("touch", "move_pages", "migrate_pages", "reclaim", "fork", "exit", "swapoff", "swapon")
# each call's arguments, bound by name as the run's Machine call took them
SIGNATURES = {name: inspect.signature(getattr(Machine, name)) for name in CALLS}


def split_path(path: str) -> tuple[str, int]:
    """``"x.msgpack#6"`` -> (``"x.msgpack"``, 6)."""
    base, sep, n = str(path).partition("#")
    if not sep:
        return base, DEFAULT_LAST
    # isdigit() alone takes '²' (int() does not) and any number of digits (int() has a limit)
    if not (n.isascii() and n.isdigit() and len(n) <= 18) or int(n) < 1:
        raise ScenarioError(f"{path}: #{n}: the number of calls to explore must be a positive integer "
                            "(below 10**18)")
    return base, int(n)


def read_dump(path: str) -> dict[str, Any]:
    """The dump's document, its shape checked: every later read may trust the
    types of format, checkpoint, events (tables), violations and bugs."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise ScenarioError(f"{path}: not a numaemu dump (msgpack: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ScenarioError(f"{path}: format: not a {FORMAT} dump")
    cp = doc.get("checkpoint")
    if not isinstance(cp, dict) or not isinstance(cp.get("snapshot"), bytes):
        raise ScenarioError(f"{path}: checkpoint: missing (the run found the violation before any checkpoint)")
    for i, ev in enumerate(want_list(path, "events", doc.get("events"))):
        want_table(path, f"events[{i}]", ev, "a table (one logged call)")
    want_strs(path, "violations", doc.get("violations", []), "strings (what the run saw)")
    want_strs(path, "bugs", doc.get("bugs", []), "bug injection names")
    doc["_digest"] = hashlib.sha256(raw).hexdigest()[:12]
    return doc


class DumpScenario(Scenario):
    """A race scenario whose starting state is a dump's checkpoint."""

    snapshot: bytes = b""
    bugs: tuple[str, ...] = ()     # the run's bug injections: explore takes them only when told

    def build(self, bugs=()) -> World:
        try:
            m = Machine.restore(self.snapshot)
        except ValueError as e:
            raise ScenarioError(f"{self.path}: checkpoint: {e}") from None
        m.k.bugs = frozenset(bugs)
        maps = {pid: [v.start << m.k.page_shift for v in mm.vmas] for pid, mm in m.k.mms.items()}
        w = World(m, maps)
        for op in self.setup:       # the calls before the explored ones, as they ran: one at a time
            try:
                m._run(w.start(op))
            except OSError:
                pass                # it may have failed in the run too (ENOMEM, ...)
        return w


class _Event:
    """One logged call, read for a race: where it is in the dump (for errors)
    and its arguments by name, each checked before an operation is made of it."""

    def __init__(self, base: str, i: int, ev: dict[str, Any]):
        seq = want_int(base, f"events[{i}].seq", ev.get("seq"))
        self.base, self.ev, self.seq, self.name = base, ev, seq, ev.get("op")
        self.where = f"events[seq {seq}]"
        args = want_list(base, f"{self.where}.args", ev.get("args", []))
        kw = want_table(base, f"{self.where}.kw", ev.get("kw", {}))
        bad = next((k for k in kw if not isinstance(k, str)), None)
        if bad is not None:
            raise ScenarioError(f"{base}: {self.where}.kw: {bad!r}: keyword names are strings")
        try:
            bound = SIGNATURES[self.name].bind(None, *args, **kw)
        except TypeError as e:
            raise ScenarioError(f"{base}: {self.where}: {self.name}: arguments {args!r}, {kw!r}: {e}") from None
        bound.apply_defaults()
        self.args = bound.arguments
        caller = ev.get("caller")
        self.caller = want_str(base, f"{self.where}.caller", caller) if caller not in (None, "") \
            else f"{self.name}#{seq}"

    def key(self, field: str) -> str:
        return f"{self.where}: {self.name}: {field}"

    def num(self, field: str, lo: int = 0, hi: int = INT64_MAX) -> int:
        return want_int(self.base, self.key(field), self.args[field], lo, hi)

    def nums(self, field: str, lo: int = 0, hi: int = INT64_MAX) -> list[int]:
        return want_ints(self.base, self.key(field), self.args[field], lo, hi)

    def fail(self, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.base}: {self.where}: {self.name}: {problem}")


def _ops(m: Machine, e: _Event, parents: dict[int, int]) -> list[Op]:
    """The race operations one logged Machine call stands for, its arguments
    checked first (ids that exist, ranges mapped at the checkpoint, nodes
    online), so that a bad dump is an error naming the field, never a
    traceback or a violation of the explored run. ``parents``: child ->
    parent of the forks seen so far (this one's is added)."""
    name, k, nodes = e.name, m.k, m.nr_nodes - 1

    def span(pid: int, addr: int, npages: int, field: str = "addr") -> list[tuple[int, int, int]]:
        """(mapping, first page, pages) of each vma the range crosses, at the checkpoint."""
        mm, who = k.mms.get(pid), pid
        while mm is None and who in parents:     # forked since the checkpoint: its parent's mappings
            who = parents[who]
            mm = k.mms.get(who)
        vpn, end, out = addr >> k.page_shift, (addr >> k.page_shift) + npages, []
        while vpn < end:
            i = next((i for i, v in enumerate(mm.vmas if mm else []) if v.start <= vpn < v.end), None)
            if i is None and not out:
                raise e.fail(f"{field}: pid {pid} address {addr:#x} is not mapped at the checkpoint")
            if i is None:
                raise e.fail(f"npages: {npages} pages from {addr:#x} run past pid {pid}'s mapping at the "
                             f"checkpoint (address {vpn << k.page_shift:#x} is not mapped)")
            n = min(end, mm.vmas[i].end) - vpn
            out.append((i, vpn - mm.vmas[i].start, n))
            vpn += n
        return out

    if name == "touch":
        pid, addr = e.num("pid"), e.num("addr")
        npages, write = e.num("npages", 0, ADDRESS_PAGES), want_bool(e.base, e.key("write"), e.args["write"])
        # a range over vmas split since its mmap: a fault in each, as Machine.touch runs them
        return [Op("fault", {"pid": pid, "mapping": i, "page": page, "npages": n, "write": write})
                for i, page, n in span(pid, addr, npages)]
    if name == "move_pages":
        pid, addrs, flags = e.num("pid"), e.nums("pages"), e.num("flags")
        if e.args["nodes"] is None or not addrs:
            return []           # a query moves nothing
        targets = e.nums("nodes", 0, nodes)
        if len(targets) != len(addrs):
            raise e.fail(f"nodes: {len(targets)} nodes for {len(addrs)} pages")
        by: dict[tuple[int, int], list[int]] = {}
        for j, (addr, node) in enumerate(zip(addrs, targets)):
            (mapping, page, _), = span(pid, addr, 1, f"pages[{j}]")
            by.setdefault((mapping, node), []).append(page)
        return [Op("move_pages", {"pid": pid, "mapping": mp, "pages": pages, "node": node,
                                  "move_all": bool(flags & MPOL_MF_MOVE_ALL)}) for (mp, node), pages in by.items()]
    if name == "migrate_pages":
        # old_nodes is a mask: a bit naming no online node has no pages there
        return [Op("migrate_pages", {"pid": e.num("pid"), "from": e.nums("old_nodes", -INT64_MAX),
                                     "to": e.nums("new_nodes", 0, nodes)})]
    if name == "reclaim":
        return [Op("reclaim", {"node": e.num("node", 0, nodes), "pages": e.num("nr_pages")})]
    if name == "fork":
        pid = e.num("pid")
        if e.ev.get("outcome") != "ok":
            return []           # no child: nothing happened
        child = e.ev.get("result")
        if isinstance(child, bool) or not isinstance(child, int):
            raise e.fail("result: the child's pid is missing")
        if child in k.mms or child in parents or not 0 < child <= INT64_MAX:
            raise e.fail(f"result: {child} cannot be a new process's pid (pids are positive and never reused)")
        parents[child] = pid
        return [Op("fork", {"pid": pid, "child": child})]
    if name == "exit":
        return [Op("exit", {"pid": e.num("pid")})]
    # the runner's swapoff cycle: swapoff, swapon after it if it worked. Replayed or
    # explored, a swapoff may go otherwise than in the run; either way the cycle
    # leaves the device on, as the run did (a swapon finding it on does nothing)
    if name == "swapoff":       # even one that failed: it may have brought pages back first
        ops = [Op("swapoff", {})]
        return ops if e.ev.get("outcome") == "ok" else ops + [Op("swapon", {"if_off": True})]
    if name == "swapon":
        return [Op("swapon", {"if_off": True})] if e.ev.get("outcome") == "ok" else []
    raise AssertionError(name)  # load_dump lets only CALLS through


def load_dump(path: str) -> DumpScenario:
    """The last N calls since the checkpoint of the dump at ``path[#N]``, as tasks."""
    base, last = split_path(path)
    doc = read_dump(base)
    # ESRCH: a call replayed after an exit that it overlapped in the run (a migration holding
    # the mm returns, and is logged, after the exit it outlived)
    sc = DumpScenario(path, {}, [], [], [], frozenset({errno.ENOMEM, errno.ESRCH}), doc["_digest"] + f"#{last}",
                      "; ".join(doc.get("violations", []))[:500])
    sc.snapshot = doc["checkpoint"]["snapshot"]
    sc.bugs = tuple(doc.get("bugs", []))
    start = sc.build().m
    events = doc["events"]
    other = sorted({str(e.get("op")) for e in events} - set(CALLS))
    if other:
        raise ScenarioError(f"{base}: events: {', '.join(other)} since the checkpoint cannot be explored "
                            f"(only {', '.join(CALLS)})")
    if not events:
        raise ScenarioError(f"{base}: events: no call since the checkpoint")
    calls = [_Event(base, i, ev) for i, ev in enumerate(events)]
    parents: dict[int, int] = {}
    for e in calls[:-last]:
        sc.setup.extend(_ops(start, e, parents))
    by_caller: dict[str, Task] = {}
    for e in calls[-last:]:
        ops = _ops(start, e, parents)
        if not ops:
            continue
        task = by_caller.get(e.caller)
        if task is None:
            task = by_caller[e.caller] = Task(e.caller, [])
            sc.tasks.append(task)
        task.ops.extend(ops)
    if not sc.tasks:
        raise ScenarioError(f"{base}: events: the last {last} calls change nothing to explore")
    return sc
