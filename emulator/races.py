"""Race scenarios: a starting state and concurrent tasks, read from TOML.

A scenario file holds:
- ``[machine]``: the same table as experiments (Machine.from_config keys);
- ``[[process]]``: processes in pid order (1, 2, ...), each with ``node`` and
  ``mappings = [{pages = N, shared = false}, ...]``; every page starts touched
  (written once) unless ``touched = false`` on the mapping;
- ``[[setup]]``: operations run to completion, in order, before the race
  (same operation tables as tasks' ops);
- ``[[task]]``: ``name`` and ``ops``, a list of operations run in order by
  that task; tasks run concurrently, interleaved by the explorer;
- ``[expect]``: ``may_fail = ["ENOMEM", ...]``, errors an operation may end
  with without that being a violation.
Operations: ``fault {pid, mapping, page, npages=1, write=false}``,
``access {pid, mapping, page, npages=1, write=false}`` (a CPU of the
process's home node, through its TLB, as the Ray runtime's node actors
access: a scenario with one gives every node a TLB of the processes it
starts with, emulator.tlb),
``gup_write {pid, mapping, page}``, ``move_pages {pid, mapping, pages, node,
move_all=true}``, ``migrate_pages {pid, from, to}``, ``reclaim {node,
pages}``, ``fork {pid}``, ``exit {pid}``, ``munmap {pid, mapping}`` (the
whole mapping, by a thread of the process: a migration of its pages in
flight goes on without them, as exit's teardown waits for it),
``swapoff {}``, ``swapon {if_off=false}``
(``if_off``: only if swap is off, as a dump's swapon after a swapoff that
may go otherwise in the replay than in the run).
A forked child gets the next pid and its parent's mappings.
Every error names the file, the key and the problem. Values are checked as
they are read: integers are not booleans and fit in 64 bits, flags are true
or false; and a race's machine is small (at most MAX_RACE_PAGES frames, swap
slots and mapped pages), as the explorer copies it for every schedule.
"""
from __future__ import annotations

import errno
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import fault, move_pages, process, reclaim, swapfile, tlb
from .kernel import clone
from .machine import Machine
from .mm import ADDRESS_PAGES, is_int
from .sched import call
from .topology import Topology

OPS: dict[str, dict[str, type | tuple]] = {
    "fault": {"pid": int, "mapping": int, "page": int, "npages": int, "write": bool},
    "access": {"pid": int, "mapping": int, "page": int, "npages": int, "write": bool},
    "gup_write": {"pid": int, "mapping": int, "page": int},
    "move_pages": {"pid": int, "mapping": int, "pages": list, "node": int, "move_all": bool},
    "migrate_pages": {"pid": int, "from": list, "to": list},
    "reclaim": {"node": int, "pages": int},
    "fork": {"pid": int},
    "exit": {"pid": int},
    "munmap": {"pid": int, "mapping": int},
    "swapoff": {},
    "swapon": {"if_off": bool},
}
REQUIRED = {"fault": ("pid", "page"), "access": ("pid", "page"), "gup_write": ("pid", "page"), "move_pages": ("pid", "pages", "node"),
            "migrate_pages": ("pid", "from", "to"), "reclaim": ("node", "pages"), "fork": ("pid",),
            "exit": ("pid",), "munmap": ("pid",), "swapoff": (), "swapon": ()}


class ScenarioError(ValueError):
    """A scenario file problem: ``<file>: <key>: <problem>``."""


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# the explorer copies the whole starting state for every schedule it runs: a race
# needs a handful of pages, and a size past these is a typo, not a scenario
MAX_RACE_PAGES = 1 << 20        # frames, swap slots, and mapped pages, each
MAX_RACE_BYTES = 1 << 30        # a bytes-payload machine's page contents


# Shared by races and dumps: TOML and msgpack both have true/false, and Python's
# bool is an int, so each check says what the value must be, bools apart.
def want_int(path: str, key: str, v: Any, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An integer (not a bool) in lo..hi: the model keeps them in int64 arrays."""
    if not is_int(v):
        raise ScenarioError(f"{path}: {key}: must be an integer, got {v!r}")
    if not lo <= v <= hi:
        if hi != INT64_MAX:
            span = f"in {lo}..{hi}"
        else:                       # int64's own bound: 19 digits say less than the words
            span = "a 64-bit integer" + (f" >= {lo}" if lo != INT64_MIN else "")
        raise ScenarioError(f"{path}: {key}: must be {span}, got {v}")
    return v


def want_bool(path: str, key: str, v: Any) -> bool:
    """true or false, not a truthy string ("no" is true)."""
    if not isinstance(v, bool):
        raise ScenarioError(f"{path}: {key}: must be true or false, got {v!r}")
    return v


def want_str(path: str, key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ScenarioError(f"{path}: {key}: must be a string, got {v!r}")
    return v


def want_list(path: str, key: str, v: Any, what: str = "a list") -> list:
    if not isinstance(v, list):
        raise ScenarioError(f"{path}: {key}: must be {what}, got {v!r}")
    return v


def want_table(path: str, key: str, v: Any, what: str = "a table") -> dict:
    if not isinstance(v, dict):
        raise ScenarioError(f"{path}: {key}: must be {what}, got {v!r}")
    return v


def want_ints(path: str, key: str, v: Any, lo: int = INT64_MIN, hi: int = INT64_MAX) -> list[int]:
    """A list of integers, each in lo..hi (named by its index)."""
    for i, x in enumerate(want_list(path, key, v, "a list of integers")):
        want_int(path, f"{key}[{i}]", x, lo, hi)
    return v


def want_strs(path: str, key: str, v: Any, what: str) -> list[str]:
    """A list of strings: ``what`` says which."""
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ScenarioError(f"{path}: {key}: must be a list of {what}, got {v!r}")
    return v


@dataclass
class Op:
    kind: str
    args: dict[str, Any]

    def label(self) -> str:
        a = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.kind}({a})"


@dataclass
class Task:
    name: str
    ops: list[Op]


@dataclass
class Scenario:
    path: str
    machine: dict[str, Any]
    processes: list[dict[str, Any]]
    setup: list[Op]
    tasks: list[Task]
    may_fail: frozenset[int]
    digest: str = ""
    description: str = ""

    def fresh(self, bugs=()) -> "World":
        """The starting state, built once per set of bugs and copied for each run
        (kernel.clone keeps shared shadows shared, whole or as views)."""
        key = tuple(sorted(bugs))
        cache = self.__dict__.setdefault("_built", {})
        if key not in cache:
            cache[key] = self.build(bugs)
        w = cache[key]
        m = Machine.__new__(Machine)
        m.topology, m.k = w.m.topology, clone(w.m.k)
        return World(m, {p: list(a) for p, a in w.maps.items()}, dict(w.alias))

    def build(self, bugs=()) -> "World":
        m = Machine.from_config(self.machine, bugs=bugs)
        w = World(m, {})
        for p in self.processes:
            pid = m.spawn(p.get("node", 0))
            w.maps[pid] = []
            for mp in p.get("mappings", []):
                a = m.mmap(pid, mp["pages"], mp.get("shared", False))
                w.maps[pid].append(a)
                if mp.get("touched", True):
                    m.touch(pid, a, mp["pages"])
        if any(op.kind == "access" for op in self.setup + [o for t in self.tasks for o in t.ops]):
            tlb.tlbs_on(m.k)
        for i, op in enumerate(self.setup):
            try:
                m._run(w.start(op))
            except OSError as e:
                raise ScenarioError(f"{self.path}: setup[{i}]: {op.label()} failed: {e}") from None
        return w


@dataclass
class World:
    """A machine plus the scenario's names for its mappings."""
    m: Machine
    maps: dict[int, list[int]] = field(default_factory=dict)
    # a dump's pids -> this run's: a fork's child is whichever pid this run gave it
    alias: dict[int, int] = field(default_factory=dict)

    def mm(self, pid: int):
        """The process's mm, or ESRCH: it may have exited by the time an operation starts."""
        return self.m._mm(pid)

    def vma_page(self, pid: int, mapping: int, page: int):
        k = self.m.k
        mm = self.mm(pid)
        addr = self.maps[pid][mapping] >> k.page_shift
        vma = mm.find_vma(addr + page)
        if vma is None:
            raise OSError(errno.EFAULT, f"pid {pid} mapping {mapping} page {page} is not mapped")
        return vma, addr + page - vma.start

    def start(self, op: Op):
        """The operation's coroutine, over the model's own kernel paths."""
        k, a = self.m.k, op.args
        pid = self.alias.get(a["pid"], a["pid"]) if "pid" in a else 0
        if op.kind in ("fault", "access"):
            vma, i = self.vma_page(pid, a.get("mapping", 0), a["page"])
            n = a.get("npages", 1)
            write = a.get("write", False)
            run = fault.touch if op.kind == "fault" else tlb.cpu_access
            return run(k, vma, i, i + n, write, k.next_tokens(n) if write else None)
        if op.kind == "gup_write":
            vma, i = self.vma_page(pid, a.get("mapping", 0), a["page"])
            return fault.gup_write(k, vma, i, int(k.next_tokens(1)[0]))
        if op.kind == "move_pages":
            mm = self.mm(pid)
            base = self.maps[pid][a.get("mapping", 0)] >> k.page_shift
            vpns = np.array([base + p for p in a["pages"]], dtype=np.int64)
            nodes = np.full(len(vpns), a["node"], dtype=np.int64)
            flags = move_pages.MPOL_MF_MOVE_ALL if a.get("move_all", True) else move_pages.MPOL_MF_MOVE
            return process.mm_held(k, mm, move_pages.do_pages_move(k, mm, vpns, nodes, flags))
        if op.kind == "migrate_pages":
            mm, mapping, old = self.m.migrate_pages_args(pid, a["from"], a["to"])
            return process.mm_held(k, mm, move_pages.do_migrate_pages(k, mm, mapping, True, old)) if mapping \
                else _value(0)
        if op.kind == "reclaim":
            return reclaim.shrink_node(k, a["node"], a["pages"])
        if op.kind == "fork":
            return self._fork(pid, a.get("child"))
        if op.kind == "exit":
            return process.exit_mm(k, self.mm(pid))
        if op.kind == "munmap":
            mm = self.mm(pid)
            vma = mm.find_vma(self.maps[pid][a.get("mapping", 0)] >> k.page_shift)
            if vma is None:         # gone already: munmap of nothing succeeds
                return _value(None)
            end = max(v.end for v in mm.vmas if v.anon_vma is vma.anon_vma)    # every piece of a split mapping
            return _one_step(k.node_owner(mm.node), process.munmap_step, k, mm, vma.start, end - vma.start)
        if op.kind == "swapoff":
            return swapfile.swapoff(k)
        if op.kind == "swapon":
            return _one_step("coord", _swapon_if_off if a.get("if_off") else swapfile.swapon, k)
        raise AssertionError(op.kind)

    async def _fork(self, pid: int, name: int | None = None) -> int:
        """``name``: the child's pid in a dump, which later ops use."""
        child = await process.fork(self.m.k, self.mm(pid))
        self.maps[child] = list(self.maps[pid])
        if name is not None:
            self.alias[name] = child
        return child


def _swapon_if_off(k) -> None:
    """swapon, unless swap is on already (the swapoff before it failed)."""
    if not k.swap.on:
        swapfile.swapon(k)


async def _value(v):
    """An operation that takes no step (migrate_pages with nothing to remap)."""
    return v


async def _one_step(owner: str, fn: Callable, *args):
    return await call(owner, fn, *args)


def _parse_op(path: str, key: str, d: Any) -> Op:
    if not isinstance(d, dict) or "op" not in d:
        raise ScenarioError(f"{path}: {key}: must be a table with an 'op' key")
    kind = d["op"]
    if not isinstance(kind, str) or kind not in OPS:
        raise ScenarioError(f"{path}: {key}.op: unknown operation {kind!r} (known: {', '.join(OPS)})")
    args = {k: v for k, v in d.items() if k != "op"}
    spec = OPS[kind]
    for name, v in args.items():
        if name not in spec:
            raise ScenarioError(f"{path}: {key}.{name}: not an argument of {kind} (arguments: {', '.join(spec) or 'none'})")
        t = spec[name]
        if t is int:
            want_int(path, f"{key}.{name}", v)
        elif t is bool:
            want_bool(path, f"{key}.{name}", v)
        else:
            want_ints(path, f"{key}.{name}", v)
    for name in REQUIRED[kind]:
        if name not in args:
            raise ScenarioError(f"{path}: {key}.{name}: required for {kind}")
    return Op(kind, args)


def _check_targets(path: str, nodes: int, procs: list, setup: list[Op], tasks: list[Task]) -> None:
    """What an operation names must exist in the scenario: a pid of a process
    or of a child some fork may make (pids are given in order), a mapping and
    pages of it, a node to reclaim (a move_pages target is the syscall's to
    refuse: ENODEV). Whether it still exists when the operation runs is
    the race's business: an operation that starts after the process exited
    fails with ESRCH (which ``may_fail`` can allow). But a process's own
    accesses and forks never race its exit or its munmap (they hold its
    mmap_lock throughout, or are its own threads, which exit stops first), so
    a task may not exit or munmap a process another task accesses or forks;
    nor munmap one another task runs migrate_pages on (do_migrate_pages()
    holds its mmap_lock throughout; move_pages does not)."""
    for i, t in enumerate(tasks):
        for pid, kind in {(op.args["pid"], op.kind) for op in t.ops if op.kind in ("exit", "munmap")}:
            racers = ("fault", "access", "gup_write", "fork") + (("migrate_pages",) if kind == "munmap" else ())
            for j, other in enumerate(tasks):
                hit = next((n for n, op in enumerate(other.ops) if j != i and op.args.get("pid") == pid
                            and op.kind in racers), None)
                if hit is not None:
                    raise ScenarioError(f"{path}: task[{j}].ops[{hit}]: {other.ops[hit].kind} of process {pid}, "
                                        f"which task[{i}] {'exits' if kind == 'exit' else 'unmaps'}: a process's "
                                        f"own accesses, forks and migrate_pages cannot race its {kind} (they hold "
                                        "its mmap_lock, or exit stops them first); make them one task, in order")
    ops = [(f"setup[{i}]", op) for i, op in enumerate(setup)] + \
        [(f"task[{i}].ops[{j}]", op) for i, t in enumerate(tasks) for j, op in enumerate(t.ops)]
    forks = sum(op.kind == "fork" for _, op in ops)
    npids = len(procs) + forks
    # a child's mappings are its parent's: any process's, as far as a load can tell
    widest = max((len(p.get("mappings", [])) for p in procs), default=0)
    largest = max((mp["pages"] for p in procs for mp in p.get("mappings", [])), default=0)
    for key, op in ops:
        a = op.args
        if "pid" in a:
            pid = a["pid"]
            if not 1 <= pid <= npids:
                raise ScenarioError(f"{path}: {key}.pid: no process {pid} (the processes are 1..{len(procs)}"
                                    + (f", and {forks} fork children after them" if forks else "") + ")")
        if op.kind in ("fault", "access", "gup_write", "move_pages", "munmap"):
            maps = procs[pid - 1].get("mappings", []) if pid <= len(procs) else None
            m = a.get("mapping", 0)
            if not 0 <= m < (len(maps) if maps is not None else widest):
                raise ScenarioError(f"{path}: {key}.mapping: process {pid} has no mapping {m}")
            if op.kind == "move_pages":
                # pages past the mapping are a hole, whose status is -EFAULT; but no page is
                # past the address space (the explorer adds them to the mapping's vpn in int64)
                bad = next((p for p in a["pages"] if not 0 <= p < ADDRESS_PAGES), None)
                if bad is not None:
                    raise ScenarioError(f"{path}: {key}.pages: outside mapping {m} of process {pid} and its "
                                        f"address space: page {bad} (pages 0..{ADDRESS_PAGES - 1}; past the "
                                        "mapping is a hole)")
                continue
            if op.kind in ("fault", "access") and a.get("npages", 1) < 1:
                raise ScenarioError(f"{path}: {key}.npages: must be at least 1")
            # a child's mapping is its parent's: no larger than the largest
            limit = maps[m]["pages"] if maps is not None else largest
            first = a.get("page", 0)
            if first < 0 or first + a.get("npages", 1) > limit:
                raise ScenarioError(f"{path}: {key}.page: outside mapping {m} of process {pid} (pages 0..{limit - 1})")
        if op.kind == "reclaim":
            if not 0 <= a["node"] < nodes:
                raise ScenarioError(f"{path}: {key}.node: no node {a['node']} (nodes 0..{nodes - 1})")
            if a["pages"] < 0:
                raise ScenarioError(f"{path}: {key}.pages: must be at least 0, got {a['pages']}")


def load(path: str | Path) -> Scenario:
    path = str(path)
    if path.partition("#")[0].endswith(".msgpack"):   # a stress run's dump (emulator/dumps.py)
        from .dumps import load_dump
        return load_dump(path)
    base, hash_, _ = path.rpartition("#")
    if hash_ and not Path(path).exists() and Path(base).exists():
        raise ScenarioError(f"{path}: #N picks a checkpoint of a stress run's dump (a .msgpack file); "
                            f"{base} is not one")
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    known = {"machine", "process", "setup", "task", "expect", "description"}
    for key in doc:
        if key not in known:
            raise ScenarioError(f"{path}: {key}: unknown key (known: {', '.join(sorted(known))})")
    machine = doc.get("machine", {})
    try:
        topo = Topology.from_config(machine)    # checked before anything is allocated
    except ValueError as e:
        raise ScenarioError(f"{path}: {e}") from None
    _check_size(path, machine, topo)
    nodes = topo.nr_nodes
    procs = want_list(path, "process", doc.get("process", []), "an array of tables ([[process]])")
    mapped = 0
    for i, p in enumerate(procs):
        if not isinstance(p, dict) or set(p) - {"node", "mappings"}:
            raise ScenarioError(f"{path}: process[{i}]: keys are node and mappings")
        want_int(path, f"process[{i}].node", p.get("node", 0), 0, nodes - 1)
        maps = want_list(path, f"process[{i}].mappings", p.get("mappings", []),
                         "a list of tables ({pages = N, shared = false, touched = true})")
        for j, mp in enumerate(maps):
            key = f"process[{i}].mappings[{j}]"
            if not isinstance(mp, dict) or set(mp) - {"pages", "shared", "touched"} or "pages" not in mp:
                raise ScenarioError(f"{path}: {key}: needs pages (a positive integer); optional shared, touched")
            mapped += want_int(path, f"{key}.pages", mp["pages"], 1, MAX_RACE_PAGES)
            for flag in ("shared", "touched"):
                if flag in mp:
                    want_bool(path, f"{key}.{flag}", mp[flag])
    if mapped > MAX_RACE_PAGES:
        raise ScenarioError(f"{path}: process: {mapped} pages mapped in all; a race scenario maps at most "
                            f"{MAX_RACE_PAGES} (the explorer copies them for every schedule)")
    setup = [_parse_op(path, f"setup[{i}]", d)
             for i, d in enumerate(want_list(path, "setup", doc.get("setup", []), "an array of tables ([[setup]])"))]
    tasks = []
    for i, t in enumerate(want_list(path, "task", doc.get("task", []), "an array of tables ([[task]])")):
        if not isinstance(t, dict) or "ops" not in t or not isinstance(t["ops"], list) or not t["ops"]:
            raise ScenarioError(f"{path}: task[{i}]: needs ops, a non-empty list of operations")
        if set(t) - {"name", "ops"}:
            raise ScenarioError(f"{path}: task[{i}]: keys are name and ops")
        tasks.append(Task(want_str(path, f"task[{i}].name", t.get("name", f"task{i}")),
                          [_parse_op(path, f"task[{i}].ops[{j}]", d) for j, d in enumerate(t["ops"])]))
    if not tasks:
        raise ScenarioError(f"{path}: task: a race scenario needs at least one [[task]]")
    _check_targets(path, nodes, procs, setup, tasks)
    expect = doc.get("expect", {})
    if not isinstance(expect, dict) or set(expect) - {"may_fail"}:
        raise ScenarioError(f"{path}: expect: the only key is may_fail (a list of errno names)")
    codes = set()
    for name in want_list(path, "expect.may_fail", expect.get("may_fail", []), "a list of errno names"):
        # errno holds more than codes (errorcode, __name__): only an int attribute is one
        code = getattr(errno, name, None) if isinstance(name, str) else None
        if not isinstance(code, int):
            raise ScenarioError(f"{path}: expect.may_fail: {name!r} is not an errno name")
        codes.add(code)
    description = want_str(path, "description", doc.get("description", ""))
    sc = Scenario(path, machine, procs, setup, tasks, frozenset(codes),
                  hashlib.sha256(raw).hexdigest()[:12], description)
    try:
        sc.build()
    except ScenarioError:
        raise
    except (OSError, IndexError, KeyError) as e:
        raise ScenarioError(f"{path}: setup: the starting state cannot be built: {e}") from None
    except MemoryError:
        raise ScenarioError(f"{path}: machine: the starting state does not fit in memory") from None
    return sc


def _check_size(path: str, machine: dict[str, Any], topo: Topology) -> None:
    """A race scenario's machine is small: the explorer copies it for every
    schedule, and a size that does not fit is better refused by key than met
    as a MemoryError (or the OOM killer) halfway through allocating it."""
    frames = sum(topo.frames)
    if frames > MAX_RACE_PAGES:
        key = "nodes" if isinstance(machine.get("nodes"), list) else "frames_per_node"
        raise ScenarioError(f"{path}: machine.{key}: {frames} frames in all; a race scenario's machine has at "
                            f"most {MAX_RACE_PAGES} (the explorer copies it for every schedule)")
    if topo.swap_pages > MAX_RACE_PAGES:
        raise ScenarioError(f"{path}: machine.swap_pages: {topo.swap_pages}; a race scenario's machine has at "
                            f"most {MAX_RACE_PAGES} swap slots (the explorer copies it for every schedule)")
    if topo.payload == "bytes" and (frames + topo.swap_pages + 1) * topo.page_size > MAX_RACE_BYTES:
        raise ScenarioError(f"{path}: machine.page_size: {frames} frames and {topo.swap_pages} swap slots of "
                            f"{topo.page_size} bytes; a race scenario's pages hold at most {MAX_RACE_BYTES} bytes "
                            "(payload = \"bytes\")")
