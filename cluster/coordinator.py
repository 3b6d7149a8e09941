"""The coordinator actor: the swap device, the swap cache, the migration cache
and the operations that cross nodes.

It holds the machine's metadata (a :class:`cluster.concurrent.ConcurrentMachine`)
and runs every operation coroutine of the model, many at once on its threads
(one per concurrent caller): fault batches from the node actors' workload
drivers, migrations and reclaim from the runner. Steps are atomic and
interleave at the model's preemption points. The frames' payload is the node
actors': mapped from shared memory when the node actor is on this host,
reached with actor calls (Ray objects) when it is not. So are the page
tables of the processes a node actor on this host runs: they live in its
shared memory, where the node walks them on a TLB miss while no thread here
is inside the model (the machine's lock is a ``StepsLock``: cluster/tlb.py).
The frame tables and vmstat counters live in shared memory too
(cluster/frames_shm.py), so that such a node faults untouched pages in
itself (cluster/local_fault.py); this actor accounts for those faults the
next time it takes the lock, before any step.

A migration call (move_pages, migrate_pages) may answer while its last
copy still runs on the copier thread (cluster/concurrent.py): its statuses
are final by then. Its pages' contents are not: every look at a payload
here waits for the copy to land (Frames.data), and the node actors, which
read payloads without us, stay out of the page tables and their local
faults until it has (StepsLock.pin). Calls that look at no contents go on
meanwhile: the next migration finds, locks, unmaps and allocates its pages
beside the copy, and waits for it only to copy. The caller's latency is
the call's, without the tail of that copy.

Calls go through :meth:`call` by name. Errors the syscall surface raises
(OSError with an errno, ValueError) come back as values, so the caller can
re-raise them with their errno intact; so does a deadlock of the model (an
operation that waited WAIT_TIMEOUT for a page lock or a copy that never came:
a bug of the model, which a stress run reports as a violation, with a dump);
anything else is a bug and propagates.
"""
from __future__ import annotations

import collections
import threading
import time
import uuid
from typing import Any

import numpy as np

from emulator.sched import Deadlock
from emulator.tlb import Shootdown

from . import channel, frames_shm
from .concurrent import ConcurrentMachine
from .dataplane import CopyInFlight, RemoteRows, attach_payload, shm_dir, unlink
from .local_fault import account
from .tlb import RayPort, ShmPort, StepsLock, regions

# What callers may ask of the machine through call().
CALLS = frozenset({
    "spawn", "mmap", "munmap", "fork", "exit", "set_mempolicy", "mbind", "get_mempolicy",
    "touch", "read_tokens", "read", "write", "move_pages", "migrate_pages",
    "reclaim", "swapoff", "swapon", "vmstat", "node_info", "swap_info", "processes", "hot_pages",
})
# calls answered with an array, which travels as one buffer; the proxy hands its caller a list
AS_ARRAY = {"move_pages": "move_pages_status"}
# calls answered with a tuple, which the same-host channel (msgpack) carries as a list
AS_TUPLE = frozenset({"get_mempolicy"})
# calls that may answer while their migration's last copy runs (ConcurrentMachine.flight):
# nothing after their one operation reads a payload; every look at one here waits for the copy
# to land, and the node actors stay out until it has
POSTED = frozenset({"move_pages", "migrate_pages"})
# get_mempolicy is one: MPOL_F_NODE | MPOL_F_ADDR faults the page in
MUTATING = CALLS - {"read_tokens", "read", "vmstat", "node_info", "swap_info", "processes", "hot_pages"}
# calls that change a process's mappings or policy: where its node may fault locally is published again
RESHAPE = frozenset({"mmap", "munmap", "fork", "exit", "set_mempolicy", "mbind"})
EVENT_LOG = 10_000


class Coordinator:
    def __init__(self, config: dict[str, Any], nodes: list[dict[str, Any]], bugs: tuple[str, ...] = (),
                 record: bool = False, run_id: str = "", shm: str = ""):
        """``nodes[i]``: node actor i's payload: {"host", "path", "shape", "dtype", "handle"}.
        ``record``: log every mutating call for dumps (stress mode); off, calls cost nothing extra.
        ``run_id``: in the names of its shared files (shm_dir), as in the node actors' (numaemu-<run_id>-*),
        so that whoever started the run can remove them all, whatever died when.
        ``shm``: the directory of those files (cluster.dataplane.shm_dir)."""
        import ray

        self.host = ray.get_runtime_context().get_node_id()
        self.m = ConcurrentMachine.from_config(config, bugs=bugs)
        # the node actors on this host walk page tables only while no thread of ours is in the model
        run = run_id or uuid.uuid4().hex
        self.steps = StepsLock(str(shm_dir(shm) / f"numaemu-{run}-steps"))
        self.steps.drain = self._local_faults
        self.cond = self.m.cond = threading.Condition(self.steps)
        # the frame tables and counters, where the node actors on this host fault locally
        self.frames = frames_shm.share(self.m.k, str(shm_dir(shm) / f"numaemu-{run}-frames"))
        self.local_faults = collections.Counter()   # by node
        self.reshaping: collections.Counter = collections.Counter()   # pid -> its RESHAPE calls in flight
        self.remote_nodes: list[int] = []
        for i, d in enumerate(nodes):
            fr = self.m.k.nodes[i]
            if d["host"] == self.host:
                fr.data = attach_payload(d["path"], tuple(d["shape"]), np.dtype(d["dtype"]))
            else:
                fr.data = RemoteRows(d["handle"], tuple(d["shape"]), np.dtype(d["dtype"]), node=i)
                fr.data.state["on_lost"] = self._payload_lost
                self.remote_nodes.append(i)
        self.lost: set[int] = set()
        # a node actor found dead by a payload call, before the runner says so: node -> why
        self.payload_lost: dict[int, str] = {}
        # the pages whose contents were on it then, by identity (anon_vma, index): lost with it,
        # wherever a migration, a swap-out and -in or a copy on write takes them after
        self.lost_ids: dict[int, np.ndarray] = {}
        # the node actors' TLBs: every step that takes a cached mapping away flushes them
        self.tlb = self.m.k.tlb = Shootdown([RayPort(d["handle"]) for d in nodes], [d["host"] for d in nodes])
        self.calls = collections.Counter()
        self.transport = collections.Counter()   # calls by how they came: "channel" or "actor"
        self.record = record
        self.copy_failed: str | None = None     # see _landed
        self.answered_before_copy = 0           # migration calls that answered while their copy still ran
        self.events: collections.deque = collections.deque(maxlen=EVENT_LOG)
        self.checkpoint: dict[str, Any] | None = None   # the last state the oracle passed
        self.seq = 0
        self.t0 = time.time()
        # callers on this host skip Ray's per-call cost (cluster/channel.py)
        self.channel = channel.Server(lambda *a, **kw: self.call(*a, _channel=True, **kw)) \
            if channel.available() else None

    # -- the syscall surface ---------------------------------------------------
    def call(self, name: str, *args: Any, _caller: str = "", _fill: int = -1, _channel: bool = False,
             **kw: Any) -> tuple[bool, Any, int]:
        """(True, result, steps) or (False, (exception class name, errno, message), steps):
        steps is how many emulated steps the call ran. ``_caller`` names the
        thread that made the call (its calls happen one after another), for dumps.
        ``_fill``: a touch by node actor _fill's driver, whose result is then
        (tokens, the ptes its TLB may cache: see cluster.tlb). ``_channel``: it
        came through the same-host channel (cluster/channel.py), not Ray."""
        if name not in CALLS:
            return False, ("ValueError", None, f"coordinator: no call named {name!r}"), 0
        self.cond.acquire()
        self.m.mine.handed = None
        try:
            if self.copy_failed is not None:
                raise RuntimeError(self.copy_failed)
            self.m.post_copies = name in POSTED
            self.transport["channel" if _channel else "actor"] += 1
            self.m.mine.steps = 0
            self.seq += 1
            seq = self.seq
            # no local fault of the process while its mappings or policy change: the call drops
            # this lock between its steps (as faults wait on mmap_lock held for write)
            reshaping = args[0] if name in RESHAPE and args and isinstance(args[0], int) else None
            if reshaping is not None:
                self.reshaping[reshaping] += 1
                self._publish(reshaping)
            try:
                out = getattr(self.m, AS_ARRAY.get(name, name))(*args, **kw)
            except (OSError, ValueError, KeyError) as exc:
                self._log(seq, _caller, name, args, kw, f"{type(exc).__name__}: {exc}")
                msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                return False, (type(exc).__name__, getattr(exc, "errno", None), msg), self.m.mine.steps
            except Deadlock as exc:
                self._log(seq, _caller, name, args, kw, f"Deadlock: {exc}")
                return False, ("Deadlock", None, str(exc)), self.m.mine.steps
            finally:
                if reshaping is not None:
                    self.reshaping[reshaping] -= 1
                    self._publish(reshaping)
            self.calls[name] += 1
            if name in MUTATING:
                self._log(seq, _caller, name, args, kw, "ok", out if name == "fork" else None)
            if _fill >= 0 and name == "touch":
                pid, addr, npages = args[:3]
                mm = self.m._mm(pid)
                self.m._land()          # the node reads and writes what its TLB caches without us
                out = out, self.tlb.fill(mm, self.m._range(mm, addr, npages), _fill, addr >> self.m.k.page_shift)
            return True, out, self.m.mine.steps
        finally:
            self.m.post_copies = False
            # the call's own migration left its copy running (not one that another call's
            # left while this one waited with the lock dropped: that call pins it)
            flight, self.m.mine.handed = self.m.mine.handed, None
            if flight is not None:
                self.steps.pin()
                self.answered_before_copy += 1
                flight.post(lambda: self._landed(flight))
            self.cond.release()

    def _landed(self, flight: CopyInFlight) -> None:
        """On the thread that copied a posted copy's last chunk: the node
        actors may come in. A chunk that failed (a bug: the call has
        answered) fails every call after."""
        try:
            if flight.error is not None:
                self.copy_failed = flight.failure()
        finally:
            self.steps.unpin()

    def _log(self, seq: int, caller: str, name: str, args: tuple, kw: dict, outcome: str,
             result: Any = None) -> None:
        """Every mutating call, with its arguments in full (plain lists), so that
        the calls since the last checkpoint can be replayed and explored; a
        fork's result, the child's pid, names the process later calls act on."""
        if not self.record:
            return
        ev = {"seq": seq, "t": round(time.time() - self.t0, 6),
              "caller": caller, "op": name,
              "args": [_plain(a) for a in args], "kw": {k: _plain(v) for k, v in kw.items()},
              "outcome": outcome}
        if result is not None:
            ev["result"] = _plain(result)
        self.events.append(ev)

    def lost_payloads(self) -> dict[int, str]:
        """The nodes payload calls found gone (the runner ends the run with them lost)."""
        return dict(self.payload_lost)

    def _payload_lost(self, node: int, why: str) -> None:
        """A payload call found node actor ``node`` gone (RemoteRows): its frames
        read as zeros from now on; the runner learns of the death from its own
        polls and ends the run. No call read them since it died (the first
        that tried is this one), so the pages whose contents went with it are
        the ones on its frames now: their identities are kept (a read of the
        frame table, with or without the lock: a frame that changes hands
        meanwhile is being freed, or allocated and not written yet)."""
        fr = self.m.k.nodes[node]
        used = (fr.refcount > 0) & (fr.anon_vma >= 0)
        self.lost_ids.setdefault(node, np.unique(_identity(fr.anon_vma[used], fr.index[used])))
        self.payload_lost.setdefault(node, why)

    def _local_faults(self, rows: np.ndarray) -> None:
        """The node actors' local faults since this actor last held the steps
        lock (cluster/local_fault.py): into their processes' rss, and into
        the log as the touches they stand for."""
        for node, thread, pid, addr, npages, write in account(self.m.k, rows):
            self.local_faults[node] += 1
            self.seq += 1
            self._log(self.seq, f"node{node}-t{thread}", "touch", (pid, addr, npages), {"write": write}, "ok")

    def _publish(self, pid: int) -> None:
        """Where pid's node actor may fault locally: nowhere while a call
        changes its mappings or policy, and again once none does (its page
        tables, in the node's file, are views)."""
        mm = self.m.k.mms.get(pid)
        for node, port in enumerate(self.tlb.ports):
            if isinstance(port, ShmPort) and pid in port.tables and node not in self.tlb.dead:
                if mm is None or not mm.findable or self.reshaping[pid]:
                    port.tables[pid].ids[:] = -1
                else:
                    port.adopt(mm, node)

    # -- the node actors' TLBs ----------------------------------------------------
    def tlb_register(self, node: int, procs: list[tuple[int, int, int]], shared: dict[str, Any]) -> None:
        """Node ``node``'s driver caches the ptes of these (pid, addr, npages),
        in the shared TLB ``shared`` (mapped here when the node is on this host)."""
        with self.cond:
            port = None if node in self.remote_nodes else ShmPort(shared)
            for pid, (lo, n) in regions(procs, self.m.k.page_shift).items():
                self.tlb.register(node, pid, lo, n, None if port is None else port.tables[pid].maybe)
                if port is not None:    # its page tables move into the node's memory, where it walks them
                    port.adopt(self.m._mm(pid), node)
            if port is not None:
                self.tlb.ports[node] = port

    # -- observation -----------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.m
        return {"nr_nodes": m.nr_nodes, "page_size": m.page_size, "policy": m.policy,
                "payload": m.payload, "host": self.host, "remote_nodes": self.remote_nodes,
                "channel": self.channel.name if self.channel is not None else None,
                "steps": self.steps.path, "frames": self.frames}

    def forget_paths(self) -> None:
        """The shared files' names go, once the node actors have opened them."""
        unlink(self.steps.path)
        unlink(self.frames["path"])

    def stats(self) -> dict[str, Any]:
        """One consistent view: per-node info and vmstat, swap."""
        with self.cond:
            m = self.m
            return {"node_info": m.node_info(), "vmstat": [m.vmstat(node=n) for n in range(m.nr_nodes)],
                    "vmstat_total": m.vmstat(), "swap_info": m.swap_info(), "calls": dict(self.calls),
                    "steps": m.steps, "tlb_shootdowns": self.tlb.flush_calls,
                    "tlb_shootdown_s": round(self.tlb.flush_s, 3),
                    "local_faults": {str(n): c for n, c in sorted(self.local_faults.items())},
                    "transport": dict(self.transport), "answered_before_copy": self.answered_before_copy}

    def check(self) -> tuple[str, str, dict] | None:
        """The whole oracle: None, or the violation (invariant, where, seen).
        Call it quiescent: with an operation in flight only invariants that hold
        between steps are checked."""
        from emulator import InvariantViolation
        with self.cond:
            if self.copy_failed is not None:
                raise RuntimeError(self.copy_failed)
            self.m._settled()          # no new frame looked at before its copy lands
            if self.copy_failed is not None:
                raise RuntimeError(self.copy_failed)
            self.tlb.harvest(self.m.k)  # the writes made through the TLBs, into the record
            try:
                self.m.check()
            except InvariantViolation as exc:
                return exc.invariant, exc.where, {k: _plain(v) for k, v in exc.seen.items()}
        return None

    def keep_checkpoint(self) -> None:
        """This (quiescent, verified) state is where a later dump starts from."""
        with self.cond:
            self.tlb.harvest(self.m.k)
            self.checkpoint = {"seq": self.seq, "snapshot": self.m.snapshot()}

    def dump(self, violations: list[str], scenario: str, until_exit: int | None = None) -> dict[str, Any]:
        """What a violation leaves behind (msgpack-able): the last checkpoint
        that passed, every mutating call since (in the order they returned),
        and the state now. ``until_exit``: a pid whose exit ends the story;
        calls started after that exit started are left out."""
        with self.cond:
            self.tlb.harvest(self.m.k)
            since = self.checkpoint["seq"] if self.checkpoint else 0
            until = next((e["seq"] for e in self.events if e["op"] == "exit" and e["args"][:1] == [until_exit]),
                         None) if until_exit else None
            return {"format": "numaemu-dump/1", "scenario": scenario,
                    "checkpoint": self.checkpoint,
                    "events": [e for e in self.events if e["seq"] > since and (until is None or e["seq"] <= until)],
                    "snapshot": self.m.snapshot(), "violations": list(violations),
                    "bugs": sorted(self.m.k.bugs)}

    # -- a node actor lost ---------------------------------------------------------
    def node_lost(self, node: int) -> dict[int, int]:
        """The node's frames are gone with their owner: stop reaching them, and
        say how many pages each process had there (resident, or with contents
        that were there when a payload call found it gone: ``lost_ids``)."""
        from emulator import pte as P
        with self.cond:
            fr = self.m.k.nodes[node]
            self.lost.add(node)
            shape = (fr.nframes,) if self.m.payload == "token" else (fr.nframes, self.m.page_size)
            fr.data = np.zeros(shape, dtype=np.int64 if self.m.payload == "token" else np.uint8)
            self.tlb.node_lost(self.m.k, node)
            out: dict[int, int] = {}
            ids = self.lost_ids.get(node, np.zeros(0, np.int64))
            for pid, mm in self.m.k.mms.items():
                n = 0
                for vma in mm.vmas:
                    p = vma.pte
                    here = ((p & P.PRESENT) != 0) & (((p >> P.OFF_SHIFT) >> P.NODE_SHIFT) == node)
                    gone = (p != 0) & np.isin(_identity(vma.anon_vma.id, vma.start + np.arange(vma.npages)), ids)
                    n += int((here | gone).sum())
                if n:
                    out[int(pid)] = n
            return out

    def resident_nodes(self, pid: int, addr: int, npages: int) -> np.ndarray:
        """Node of each page, or a negative errno (move_pages' query)."""
        ps = self.m.page_size
        with self.cond:
            st = self.m.move_pages_status(pid, addr + np.arange(npages, dtype=np.int64) * ps, None)
            done = 0
            for vma, lo, hi in self.m._range(self.m._mm(pid), addr, npages) if self.lost_ids else ():
                mine = _identity(vma.anon_vma.id, vma.start + np.arange(lo, hi))
                for node, ids in list(self.lost_ids.items()):     # contents lost with a node: there too
                    st[done:done + hi - lo][np.isin(mine, ids)] = node
                done += hi - lo
            return st

def _identity(anon_vma, index) -> np.ndarray:
    """A page's identity across migration, swap and copy on write: its rmap."""
    return (np.asarray(anon_vma, dtype=np.int64) << 32) | np.asarray(index, dtype=np.int64)


def _plain(a: Any) -> Any:
    """Arguments and values as msgpack-able plain data."""
    if isinstance(a, (int, float, str, bool)) or a is None:
        return a
    if isinstance(a, np.ndarray):
        return a.tolist()
    if isinstance(a, np.generic):
        return a.item()
    if isinstance(a, (list, tuple)):
        return [_plain(x) for x in a]
    return repr(a)


def _on_host(host: str) -> bool:
    """Is this process on Ray node ``host``? A Ray Client driver is on none:
    its runtime context speaks for a proxy on the cluster, not for this machine."""
    import ray
    from ray.util.client import ray as client
    return not client.is_connected() and ray.get_runtime_context().get_node_id() == host


class CoordMachine:
    """The Machine surface, forwarded to the coordinator actor: what a runner
    or a workload driver holds instead of a Machine."""

    def __init__(self, coord: Any, info: dict[str, Any] | None = None, caller: str = ""):
        """``caller``: who calls through this proxy, one call at a time (a
        workload thread, the runner), as the coordinator's log names it."""
        import ray
        self.coord = coord
        self.caller = caller
        info = info or ray.get(coord.info.remote())
        self.channel = channel.Client(info["channel"]) if info.get("channel") and _on_host(info["host"]) else None
        self.nr_nodes = info["nr_nodes"]
        self.page_size = info["page_size"]
        self.policy = info["policy"]
        self.payload = info["payload"]

    last_steps = 0   # the steps the last call took
    steps = 0        # the steps of every call made through this proxy

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        import ray
        if self.channel is not None:
            ok, out, self.last_steps = self.channel.call(name, *args, _caller=self.caller, **kw)
        else:
            ok, out, self.last_steps = ray.get(self.coord.call.remote(name, *args, _caller=self.caller, **kw))
        self.steps += self.last_steps
        if ok:
            return out.tolist() if name in AS_ARRAY else tuple(out) if name in AS_TUPLE else out
        cls, err, msg = out
        if cls == "Deadlock":
            raise Deadlock(msg)
        if cls in ("OSError", "FileNotFoundError", "PermissionError") or err is not None:
            raise OSError(err, msg)
        raise (KeyError if cls == "KeyError" else ValueError)(msg)

    def __getattr__(self, name: str):
        if name not in CALLS:
            raise AttributeError(name)
        return lambda *a, **kw: self._call(name, *a, **kw)

    def touch_fill(self, pid: int, addr: int, npages: int, write: bool, node: int):
        """touch() for node actor ``node``'s driver: (tokens, a TLB fill)."""
        return self._call("touch", pid, addr, npages, write=write, _fill=node)

    def check(self) -> None:
        import ray
        from emulator import InvariantViolation
        seen = ray.get(self.coord.check.remote())
        if seen is not None:
            raise InvariantViolation(*seen)


class FrozenMachine:
    """The observation surface of a machine at one moment (a coordinator's
    ``stats()``): what the metrics endpoint serves once the actors are gone."""

    def __init__(self, info: dict[str, Any], stats: dict[str, Any]):
        self.nr_nodes, self.page_size = info["nr_nodes"], info["page_size"]
        self.policy, self.payload = info["policy"], info["payload"]
        self.stats = stats

    def vmstat(self, node: int | None = None) -> dict[str, int]:
        return dict(self.stats["vmstat_total"] if node is None else self.stats["vmstat"][node])

    def node_info(self) -> list[dict[str, int]]:
        return [dict(r) for r in self.stats["node_info"]]

    def swap_info(self) -> dict[str, Any]:
        return dict(self.stats["swap_info"])

