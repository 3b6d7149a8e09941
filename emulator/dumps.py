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
"""
from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Any

import msgpack

from .machine import Machine
from .races import Op, Scenario, ScenarioError, Task, World

FORMAT = "numaemu-dump/1"
DEFAULT_LAST = 4
CALLS = ("touch", "move_pages", "migrate_pages", "reclaim", "fork", "exit", "swapoff", "swapon")


def split_path(path: str) -> tuple[str, int]:
    """``"x.msgpack#6"`` -> (``"x.msgpack"``, 6)."""
    base, sep, n = str(path).partition("#")
    if not sep:
        return base, DEFAULT_LAST
    if not n.isdigit() or int(n) < 1:
        raise ScenarioError(f"{path}: #{n}: the number of calls to explore must be a positive integer")
    return base, int(n)


def read_dump(path: str) -> dict[str, Any]:
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
    if not isinstance(doc.get("events"), list):
        raise ScenarioError(f"{path}: events: must be a list")
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


def _ops(m: Machine, ev: dict[str, Any], where: str, parents: dict[int, int]) -> list[Op]:
    """The race operations one logged Machine call stands for. ``parents``:
    child -> parent of the forks seen so far (this one's is added)."""
    name, a, kw = ev.get("op"), list(ev.get("args", [])), dict(ev.get("kw", {}))
    k = m.k

    def place(pid: int, addr: int) -> tuple[int, int]:
        while pid not in k.mms and pid in parents:     # forked since the checkpoint: its parent's mappings
            pid = parents[pid]
        mm = k.mms.get(pid)
        vpn = addr >> k.page_shift
        for i, v in enumerate(mm.vmas if mm else []):
            if v.start <= vpn < v.end:
                return i, vpn - v.start
        raise ScenarioError(f"{where}: {name}: pid {pid} address {addr:#x} is not mapped at the checkpoint")

    try:
        if name == "touch":
            pid, addr, npages = int(a[0]), int(a[1]), int(a[2])
            write = bool(a[3] if len(a) > 3 else kw.get("write", True))
            mapping, page = place(pid, addr)
            return [Op("fault", {"pid": pid, "mapping": mapping, "page": page, "npages": npages, "write": write})]
        if name == "move_pages":
            pid, addrs = int(a[0]), [int(x) for x in a[1]]
            nodes = a[2] if len(a) > 2 else kw.get("nodes")
            flags = int(a[3] if len(a) > 3 else kw.get("flags", 0))
            if nodes is None or not addrs:
                return []           # a query moves nothing
            by: dict[tuple[int, int], list[int]] = {}
            for addr, node in zip(addrs, nodes):
                mapping, page = place(pid, addr)
                by.setdefault((mapping, int(node)), []).append(page)
            return [Op("move_pages", {"pid": pid, "mapping": mp, "pages": pages, "node": node,
                                      "move_all": bool(flags & 4)}) for (mp, node), pages in by.items()]
        if name == "migrate_pages":
            return [Op("migrate_pages", {"pid": int(a[0]), "from": [int(x) for x in a[1]],
                                         "to": [int(x) for x in a[2]]})]
        if name == "reclaim":
            return [Op("reclaim", {"node": int(a[0]), "pages": int(a[1])})]
        if name == "fork":
            if ev.get("outcome") != "ok":
                return []           # no child: nothing happened
            child = ev.get("result")
            if not isinstance(child, int):
                raise ScenarioError(f"{where}: fork: result: the child's pid is missing")
            parents[child] = int(a[0])
            return [Op("fork", {"pid": int(a[0]), "child": child})]
        if name == "exit":
            return [Op("exit", {"pid": int(a[0])})]
        # the runner's swapoff cycle: swapoff, swapon after it if it worked. Replayed or
        # explored, a swapoff may go otherwise than in the run; either way the cycle
        # leaves the device on, as the run did (a swapon finding it on does nothing)
        if name == "swapoff":       # even one that failed: it may have brought pages back first
            ops = [Op("swapoff", {})]
            return ops if ev.get("outcome") == "ok" else ops + [Op("swapon", {"if_off": True})]
        if name == "swapon":
            return [Op("swapon", {"if_off": True})] if ev.get("outcome") == "ok" else []
    except (IndexError, TypeError, ValueError) as e:
        raise ScenarioError(f"{where}: {name}: arguments {a!r}: {e}") from None
    raise ScenarioError(f"{where}: op {name!r}: cannot be explored (only {', '.join(CALLS)} after a checkpoint)")


def load_dump(path: str) -> DumpScenario:
    """The last N calls since the checkpoint of the dump at ``path[#N]``, as tasks."""
    base, last = split_path(path)
    doc = read_dump(base)
    # ESRCH: a call replayed after an exit that it overlapped in the run (a migration holding
    # the mm returns, and is logged, after the exit it outlived)
    sc = DumpScenario(path, {}, [], [], [], frozenset({errno.ENOMEM, errno.ESRCH}), doc["_digest"] + f"#{last}",
                      "; ".join(doc.get("violations", []))[:500])
    sc.snapshot = doc["checkpoint"]["snapshot"]
    bugs = doc.get("bugs", [])
    if not isinstance(bugs, list) or not all(isinstance(b, str) for b in bugs):
        raise ScenarioError(f"{base}: bugs: must be a list of bug injection names")
    sc.bugs = tuple(bugs)
    start = sc.build().m
    events = doc["events"]
    other = sorted({str(e.get("op")) for e in events} - set(CALLS))
    if other:
        raise ScenarioError(f"{base}: events: {', '.join(other)} since the checkpoint cannot be explored "
                            f"(only {', '.join(CALLS)})")
    if not events:
        raise ScenarioError(f"{base}: events: no call since the checkpoint")
    parents: dict[int, int] = {}
    for ev in events[:-last]:
        sc.setup.extend(_ops(start, ev, f"{base}: events[seq {ev.get('seq')}]", parents))
    by_caller: dict[str, Task] = {}
    for ev in events[-last:]:
        ops = _ops(start, ev, f"{base}: events[seq {ev.get('seq')}]", parents)
        if not ops:
            continue
        caller = ev.get("caller") or f"{ev['op']}#{ev.get('seq')}"
        task = by_caller.get(caller)
        if task is None:
            task = by_caller[caller] = Task(caller, [])
            sc.tasks.append(task)
        task.ops.extend(ops)
    if not sc.tasks:
        raise ScenarioError(f"{base}: events: the last {last} calls change nothing to explore")
    return sc
