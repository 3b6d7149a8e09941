"""Snapshots of a whole machine as msgpack (never pickle), with a checksum.

Layout: MAGIC, then the SHA-256 of the body, then the msgpack body. Arrays
travel as {dtype, shape, data} with a whitelist of plain numeric dtypes, so a
snapshot can never carry code. A restored machine is checked by the oracle
before it is handed out: a snapshot that decodes but describes an impossible
state is refused like a corrupted one, with ValueError.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np

from . import pte as P
from .invariants import InvariantViolation, check
from .mm import (MAX_NUMNODES, MM, MPOL_BIND, MPOL_DEFAULT, MPOL_F_NUMA_BALANCING, MPOL_F_RELATIVE_NODES,
                 MPOL_F_STATIC_NODES, MPOL_KEEPS_USER_NODES, MPOL_LOCAL, MPOL_MODE_FLAGS, MPOL_NAMES, MPOL_PREFERRED,
                 VMA, AnonVMA, Mempolicy, is_int, make_policy, shared_policy_replace)
from .topology import Topology

MAGIC = b"NUMAEMU\x01"
DTYPES = {"int64", "int32", "uint32", "uint16", "uint8", "uint64"}
NODE_ARRAYS = ("refcount", "mapcount", "flags", "private", "anon_vma", "index", "lru_tick", "data")


def _arr(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: ``snapshot: <field>: <problem>``."""


INT64_MAX = (1 << 63) - 1


def _get(d: Any, key: str, what: str) -> Any:
    """d[key]; ``what`` names d in the error when d is no map or has no key."""
    if not isinstance(d, dict):
        raise SnapshotError(f"snapshot: {what}: not a map")
    if key not in d:
        raise SnapshotError(f"snapshot: {what + '.' if what else ''}{key}: missing")
    return d[key]


def _int(v: Any, what: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    """An integer in lo..hi."""
    if not is_int(v):
        raise SnapshotError(f"snapshot: {what}: must be an integer, got {v!r}")
    if not lo <= v <= hi:
        span = f"a 64-bit integer >= {lo}" if hi == INT64_MAX else f"in {lo}..{hi}"
        raise SnapshotError(f"snapshot: {what}: must be {span}, got {v}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise SnapshotError(f"snapshot: {what}: must be a list, got {type(v).__name__}")
    return v


def _unarr(d: Any, what: str, dtype: str | None = None, shape: tuple | None = None) -> np.ndarray:
    """An array record, with the dtype and shape the machine's array has when given
    (``-1`` in shape: any length), so nothing later indexes past it or mixes types."""
    try:
        dt, shp, data = d["dtype"], d["shape"], d["data"]
    except (TypeError, KeyError):
        raise SnapshotError(f"snapshot: {what}: not an array record") from None
    if dt not in DTYPES or not isinstance(data, bytes) or not isinstance(shp, list):
        raise SnapshotError(f"snapshot: {what}: unsupported array encoding ({dt!r})")
    if any(not is_int(n) or not 0 <= n < 1 << 62 for n in shp):
        raise SnapshotError(f"snapshot: {what}: shape {shp!r} is not a list of sizes")
    n = int(np.prod(shp, dtype=object)) if shp else 1
    if n * np.dtype(dt).itemsize != len(data):
        raise SnapshotError(f"snapshot: {what}: {len(data)} bytes do not fill shape {shp} of {dt}")
    if dtype is not None and dt != dtype:
        raise SnapshotError(f"snapshot: {what}: dtype {dt}, not {dtype}")
    if shape is not None and (len(shp) != len(shape) or any(w not in (-1, g) for w, g in zip(shape, shp))):
        want = "x".join("N" if w == -1 else str(w) for w in shape)
        raise SnapshotError(f"snapshot: {what}: shape {shp}, not {want}")
    return np.frombuffer(data, dtype=dt).reshape(shp).copy()


def _policy(v: Any, what: str, nr_nodes: int, none: str = "") -> Mempolicy:
    """[mode, nodes] as make_policy() leaves it, the mode with its mode flags
    or'ed in (as get_mempolicy() gives it): a known mode; not both STATIC and
    RELATIVE, NUMA_BALANCING only for bind, no flag for default and local; no
    node for default and local; for bind, interleave and preferred_many at
    least one, for preferred exactly one, online, sorted and distinct
    (allocation indexes by them). With a mode flag, [mode, nodes, nodes
    given], the nodes what make_policy() makes of those given; a bind with
    NUMA_BALANCING alone may be [mode, nodes], as written before it kept
    the nodes given: they are taken as given. ``none``: where a policy is
    a vma's own or a shared memory object's, what stands for none there:
    mpol_new() makes no policy for default (NULL), so default is never one."""
    if not isinstance(v, list) or len(v) not in (2, 3) or not all(isinstance(x, list) for x in v[1:]):
        raise SnapshotError(f"snapshot: {what}: must be [mode, [nodes]], got {v!r}")
    mode = v[0]
    if not is_int(mode) or mode & ~MPOL_MODE_FLAGS not in MPOL_NAMES.values():
        raise SnapshotError(f"snapshot: {what}: mode {mode!r} is not a mempolicy mode "
                            f"({', '.join(f'{n} {m}' for m, n in MPOL_NAMES.items())}, with flags "
                            f"{MPOL_F_STATIC_NODES:#x} static, {MPOL_F_RELATIVE_NODES:#x} relative, "
                            f"{MPOL_F_NUMA_BALANCING:#x} numa_balancing)")
    mode, flags = int(mode) & ~MPOL_MODE_FLAGS, int(mode) & MPOL_MODE_FLAGS
    if flags & MPOL_F_STATIC_NODES and flags & MPOL_F_RELATIVE_NODES:
        raise SnapshotError(f"snapshot: {what}: mode {v[0]:#x} has both MPOL_F_STATIC_NODES and "
                            f"MPOL_F_RELATIVE_NODES")
    if flags & MPOL_F_NUMA_BALANCING and mode != MPOL_BIND:
        raise SnapshotError(f"snapshot: {what}: mode {v[0]:#x} has MPOL_F_NUMA_BALANCING, which is for bind "
                            f"({MPOL_BIND}) only")
    if none and mode == MPOL_DEFAULT:
        raise SnapshotError(f"snapshot: {what}: mode {MPOL_DEFAULT} (default) is no policy here: {none}")
    nodes = tuple(_int(n, f"{what} nodes", 0, nr_nodes - 1) for n in v[1])
    if mode in (MPOL_DEFAULT, MPOL_LOCAL):
        if flags:
            raise SnapshotError(f"snapshot: {what}: mode {mode} takes no mode flags, got {flags:#x}")
        if nodes:
            raise SnapshotError(f"snapshot: {what}: mode {mode} takes no nodes, got {list(nodes)}")
    elif not nodes or (mode == MPOL_PREFERRED and len(nodes) != 1):
        raise SnapshotError(f"snapshot: {what}: mode {mode} needs {'one node' if mode == MPOL_PREFERRED else 'nodes'}, "
                            f"got {list(nodes)}")
    elif list(nodes) != sorted(set(nodes)):
        raise SnapshotError(f"snapshot: {what}: nodes {list(nodes)} are not sorted and distinct")
    keeps = bool(flags & MPOL_KEEPS_USER_NODES)
    if (len(v) == 3) != keeps and not (len(v) == 2 and flags == MPOL_F_NUMA_BALANCING):
        raise SnapshotError(f"snapshot: {what}: mode {v[0]:#x} " + ("keeps the nodes given: must be [mode, [nodes], "
                                                                    "[nodes given]]" if len(v) == 2 else
                                                                    "keeps no nodes given: must be [mode, [nodes]]"))
    if len(v) == 2:
        return Mempolicy(mode, nodes, flags, nodes if keeps else ())
    given = tuple(_int(n, f"{what} nodes given", 0, MAX_NUMNODES - 1) for n in v[2])
    if list(given) != sorted(set(given)):
        raise SnapshotError(f"snapshot: {what}: nodes given {list(given)} are not sorted and distinct")
    pol = Mempolicy(mode, nodes, flags, given)
    try:
        made = make_policy(mode | flags, given, nr_nodes)
    except OSError as e:
        raise SnapshotError(f"snapshot: {what}: nodes given {list(given)}: {e.strerror}") from None
    if made != pol:
        raise SnapshotError(f"snapshot: {what}: nodes {list(nodes)} are not what mode {v[0]:#x} makes of the nodes "
                            f"given {list(given)}: {list(made.nodes)}")
    return pol


def _policy_record(pol: Mempolicy) -> list:
    """What _policy() reads back: [mode | mode flags, nodes(, nodes given)]."""
    rec = [pol.mode | pol.flags, list(pol.nodes)]
    return rec + [list(pol.user_nodes)] if pol.flags & MPOL_KEEPS_USER_NODES else rec


def _shared_policy(v: Any, what: str, nr_nodes: int) -> list:
    """A shared memory object's policy: [[start, end, policy], ...], offsets
    apart and in order, each range non-empty."""
    out, end = [], 0
    for i, r in enumerate(_list(v, what)):
        if not isinstance(r, list) or len(r) != 3:
            raise SnapshotError(f"snapshot: {what}[{i}]: must be [start, end, policy], got {r!r}")
        s = _int(r[0], f"{what}[{i}] start", end)
        e = _int(r[1], f"{what}[{i}] end", s + 1)
        out.append((s, e, _policy(r[2], f"{what}[{i}].policy", nr_nodes, "an offset with none is in no range")))
        end = e
    return out


def dump(machine) -> bytes:
    k = machine.k
    if k.inflight:
        raise RuntimeError("snapshot: an operation is in flight")
    shadows: dict[int, int] = {}
    bases: list[dict] = []

    def shadow_ref(vma: VMA) -> list:
        base = vma.shadow.base if vma.shadow.base is not None else vma.shadow
        key = id(base)
        if key not in shadows:
            shadows[key] = len(bases)
            bases.append(_arr(base))
        off = (vma.shadow.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 8
        return [shadows[key], int(off)]

    mms = []
    for pid, mm in sorted(k.mms.items()):
        vmas = []
        for v in mm.vmas:
            vmas.append({"start": v.start, "npages": v.npages, "shared": v.shared, "av": v.anon_vma.id,
                         "pte": _arr(v.pte), "shadow": shadow_ref(v),
                         "policy": None if v.policy is None else _policy_record(v.policy)})
        mms.append({"pid": pid, "node": mm.node, "policy": _policy_record(mm.policy),
                    "next_vpn": mm.next_vpn, "rss": mm.rss, "vmas": vmas})
    avs = []
    for av in k.anon_vmas.values():
        order = []
        for v in av.vmas:
            order.append([v.mm.pid, next(i for i, x in enumerate(v.mm.vmas) if x is v)])
        avs.append({"id": av.id, "vmas": order, "base": av.base,
                    "policy": [[a, b, _policy_record(p)] for a, b, p in av.policy]})
    nodes = []
    for fr in k.nodes:
        d = {name: _arr(getattr(fr, name)) for name in NODE_ARRAYS}
        d.update(tick=fr.tick, free=_arr(fr.free_stack[:fr.nr_free]))
        nodes.append(d)
    sw = k.swap
    body = {
        "version": 1, "topology": k.topo.to_config(), "bugs": sorted(k.bugs),
        "nodes": nodes,
        "swap": {"swap_map": _arr(sw.swap_map), "cache_page": _arr(sw.cache_page),
                 "free": _arr(sw.free_stack[:sw.nr_free]), "on": sw.on, "store": _arr(sw.store)},
        "migcache": {"counter": _arr(k.migcache.counter), "page": _arr(k.migcache.page),
                     "next_id": k.migcache.next_id, "free_ids": list(k.migcache.free_ids),
                     "nr_entries": k.migcache.nr_entries},
        "mms": mms, "anon_vmas": avs, "shadows": bases,
        "stat": _arr(k.stat.counts), "next_pid": k.next_pid, "next_av": k.next_av,
        "token_seq": k.token_seq,
    }
    packed = msgpack.packb(body, use_bin_type=True)
    return MAGIC + hashlib.sha256(packed).digest() + packed


def load(cls, blob: bytes, checked: bool = True):
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"snapshot: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < len(MAGIC) + 32 or not blob.startswith(MAGIC):
        raise ValueError("snapshot: not a numaemu snapshot (bad magic or too short)")
    digest, packed = blob[len(MAGIC):len(MAGIC) + 32], blob[len(MAGIC) + 32:]
    if hashlib.sha256(packed).digest() != digest:
        raise ValueError("snapshot: checksum mismatch: the snapshot is truncated or corrupted")
    try:
        body = msgpack.unpackb(packed, raw=False, strict_map_key=False)
        return _build(cls, body, checked)
    except SnapshotError:
        raise
    except InvariantViolation as e:
        raise ValueError(f"snapshot: inconsistent state: {e}") from None
    except Exception as e:  # what no check above names (a ValueError of numpy's too): still prefixed
        raise ValueError(f"snapshot: malformed body: {type(e).__name__}: {e}") from None


def _build(cls, body: dict, checked: bool = True):
    """The machine a body describes, every field checked before it is used:
    the oracle checks the state's consistency, but it (and every call after a
    restore) takes for granted what is checked here: array shapes and dtypes,
    ids in range and never handed out again, nodes online, policies valid."""
    if _get(body, "version", "") != 1:
        raise SnapshotError(f"snapshot: version: unsupported version {body.get('version')!r}")
    try:
        topo = Topology.from_config(_get(body, "topology", ""))
    except SnapshotError:
        raise
    except ValueError as e:
        raise SnapshotError(f"snapshot: topology: {e}") from None
    bugs = _list(_get(body, "bugs", ""), "bugs")
    if not all(isinstance(b, str) for b in bugs):
        raise SnapshotError(f"snapshot: bugs: must be a list of bug injection names, got {bugs!r}")
    try:
        m = cls(topo, bugs=bugs)
    except ValueError as e:
        raise SnapshotError(f"snapshot: {e}") from None
    k = m.k
    nr = topo.nr_nodes
    nodes = _list(_get(body, "nodes", ""), "nodes")
    if len(nodes) != nr:
        raise SnapshotError(f"snapshot: nodes: {len(nodes)} nodes, the topology has {nr}")
    for i, (fr, d) in enumerate(zip(k.nodes, nodes)):
        for name in NODE_ARRAYS:
            cur = getattr(fr, name)
            setattr(fr, name, _unarr(_get(d, name, f"nodes[{i}]"), f"nodes[{i}].{name}", cur.dtype.name, cur.shape))
        free = _unarr(_get(d, "free", f"nodes[{i}]"), f"nodes[{i}].free", fr.free_stack.dtype.name, (-1,))
        if len(free) > fr.nframes or (len(free) and not (0 <= free.min() and free.max() < fr.nframes)):
            raise SnapshotError(f"snapshot: nodes[{i}].free: not a stack of the node's {fr.nframes} frames")
        fr.free_stack[:len(free)] = free
        fr.nr_free = len(free)
        fr.tick = _int(_get(d, "tick", f"nodes[{i}]"), f"nodes[{i}].tick")
    sw, s = k.swap, _get(body, "swap", "")
    for name in ("swap_map", "cache_page", "store"):
        cur = getattr(sw, name)
        setattr(sw, name, _unarr(_get(s, name, "swap"), f"swap.{name}", cur.dtype.name, cur.shape))
    free = _unarr(_get(s, "free", "swap"), "swap.free", sw.free_stack.dtype.name, (-1,))
    if len(free) > sw.nslots or (len(free) and not (1 <= free.min() and free.max() <= sw.nslots)):
        raise SnapshotError(f"snapshot: swap.free: not a stack of the device's slots 1..{sw.nslots}")
    sw.free_stack[:len(free)] = free
    sw.nr_free = len(free)
    on = _get(s, "on", "swap")
    if not isinstance(on, bool):
        raise SnapshotError(f"snapshot: swap.on: must be true or false, got {on!r}")
    if on and not sw.nslots:
        raise SnapshotError("snapshot: swap.on: true, but the topology has no swap device (swap_pages = 0)")
    sw.on = on
    _migcache(k, _get(body, "migcache", ""))
    bases = [_unarr(b, f"shadows[{i}]", "int64", (-1,)) for i, b in enumerate(_list(_get(body, "shadows", ""),
                                                                                     "shadows"))]
    avs: dict[int, AnonVMA] = {}
    for i, a in enumerate(_list(_get(body, "anon_vmas", ""), "anon_vmas")):
        av = _int(_get(a, "id", f"anon_vmas[{i}]"), f"anon_vmas[{i}].id", 1)
        if av in avs:
            raise SnapshotError(f"snapshot: anon_vmas[{i}].id: anon_vma {av} twice")
        avs[av] = AnonVMA(av, base=_int(a.get("base", 0), f"anon_vmas[{i}].base"),
                          policy=_shared_policy(a.get("policy", []), f"anon_vmas[{i}].policy", nr))
    k.anon_vmas = avs
    for i, d in enumerate(_list(_get(body, "mms", ""), "mms")):
        mm = _mm(d, f"mms[{i}]", nr, avs, bases)
        if mm.pid in k.mms:
            raise SnapshotError(f"snapshot: mms[{i}].pid: process {mm.pid} twice")
        k.mms[mm.pid] = mm
    on_list: set[int] = set()
    for i, a in enumerate(body["anon_vmas"]):
        av = avs[a["id"]]
        for j, ref in enumerate(_list(_get(a, "vmas", f"anon_vmas[{i}]"), f"anon_vmas[{i}].vmas")):
            what = f"anon_vmas[{i}].vmas[{j}]"
            if not isinstance(ref, list) or len(ref) != 2:
                raise SnapshotError(f"snapshot: {what}: must be [pid, vma index], got {ref!r}")
            mm = k.mms.get(ref[0]) if is_int(ref[0]) else None
            if mm is None or not is_int(ref[1]) or not 0 <= ref[1] < len(mm.vmas):
                raise SnapshotError(f"snapshot: {what}: {ref!r} names no vma")
            v = mm.vmas[ref[1]]
            if v.anon_vma is not av or id(v) in on_list:
                raise SnapshotError(f"snapshot: {what}: pid {mm.pid}'s vma at {v.start:#x} hangs on anon_vma "
                                    f"{v.anon_vma.id}" + (", and is listed once already" if id(v) in on_list else ""))
            on_list.add(id(v))
            av.vmas.append(v)
    for mm in k.mms.values():       # an rmap walk finds a page's ptes through these lists only
        for v in mm.vmas:
            if id(v) not in on_list:
                raise SnapshotError(f"snapshot: anon_vmas: pid {mm.pid}'s vma at {v.start:#x} is on no list "
                                    f"(of anon_vma {v.anon_vma.id})")
            av = v.anon_vma
            if not v.shared and (av.base or av.policy):     # a private mapping's offsets are its vpns
                raise SnapshotError(f"snapshot: anon_vmas: anon_vma {av.id} of pid {mm.pid}'s private vma at "
                                    f"{v.start:#x} has a shared memory object's base or policy")
            if v.start < av.base:
                raise SnapshotError(f"snapshot: anon_vmas: pid {mm.pid}'s vma at {v.start:#x} starts before "
                                    f"its shared memory object (anon_vma {av.id}, base {av.base:#x})")
    for a in body["anon_vmas"]:
        if "policy" not in a:
            # written before shared memory objects had a policy: each shared mapping allocated by its
            # vma's own; the object takes those, in the order of its list (a later one's where they overlap)
            av = avs[a["id"]]
            for v in av.vmas:
                if v.shared and v.policy is not None:
                    shared_policy_replace(av, v.start - av.base, v.end - av.base, v.policy)
    stat = _unarr(_get(body, "stat", ""), "stat", "int64")
    want = k.stat.counts.shape
    if stat.ndim != 2 or stat.shape[0] != want[0] or stat.shape[1] > want[1]:
        raise SnapshotError("snapshot: stat: vmstat counters do not match this version's counters")
    # counters only ever join at the end: an older snapshot has never counted the new ones
    k.stat.counts[:, :stat.shape[1]] = stat
    # ids are never handed out twice: spawn, fork and mmap take the next ones as new
    k.next_pid = _next_id(body, "next_pid", k.mms, "pid")
    k.next_av = _next_id(body, "next_av", avs, "anon_vma id")
    k.token_seq = _int(_get(body, "token_seq", ""), "token_seq")
    if checked:
        check(k)
    return m


def _next_id(body: dict, key: str, taken: dict[int, Any], what: str) -> int:
    """A counter past every id in use: spawn, fork and mmap take it as a new id
    (next_pid = 1 beside a process 1: the next spawn replaced it)."""
    v = _int(_get(body, key, ""), key, 1)
    top = max(taken, default=0)
    if v <= top:
        raise SnapshotError(f"snapshot: {key}: {v}, but {what} {top} exists (the next one must be new)")
    return v


def _migcache(k, c: Any) -> None:
    """The migration cache's index: its two arrays alike, long enough for every id
    handed out, the free ids among those, and every entry's page a frame."""
    mc = k.migcache
    mc.counter = _unarr(_get(c, "counter", "migcache"), "migcache.counter", "int64", (-1,))
    mc.page = _unarr(_get(c, "page", "migcache"), "migcache.page", "int64", (len(mc.counter),))
    mc.next_id = _int(_get(c, "next_id", "migcache"), "migcache.next_id", 1, len(mc.page))
    free = _list(_get(c, "free_ids", "migcache"), "migcache.free_ids")
    bad = next((i for i in free if not is_int(i) or not 0 < i < mc.next_id), None)
    if bad is not None:
        raise SnapshotError(f"snapshot: migcache.free_ids: {bad!r} is no id handed out (1..next_id - 1 = "
                            f"1..{mc.next_id - 1})")
    mc.free_ids = sorted(set(free))
    if len(mc.free_ids) != len(free):
        raise SnapshotError("snapshot: migcache.free_ids: an id is free twice")
    mc.nr_entries = _int(_get(c, "nr_entries", "migcache"), "migcache.nr_entries")
    live = mc.page[mc.page >= 0]
    nd, pfn = live >> P.NODE_SHIFT, live & P.PFN_MASK
    sizes = np.array([fr.nframes for fr in k.nodes])
    if (mc.page < -1).any() or (nd >= len(sizes)).any() or (pfn >= sizes[np.minimum(nd, len(sizes) - 1)]).any():
        raise SnapshotError("snapshot: migcache.page: an entry names no frame")


def _mm(d: Any, what: str, nr: int, avs: dict[int, AnonVMA], bases: list[np.ndarray]) -> MM:
    """A process: its home node online, valid policies, and vmas in order, apart,
    below next_vpn (where its next mmap goes), each on a listed anon_vma."""
    pid = _int(_get(d, "pid", what), f"{what}.pid", 1)
    mm = MM(pid, _int(_get(d, "node", what), f"{what}.node", 0, nr - 1),
            policy=_policy(_get(d, "policy", what), f"{what}.policy", nr),
            next_vpn=_int(_get(d, "next_vpn", what), f"{what}.next_vpn"),
            rss=_int(_get(d, "rss", what), f"{what}.rss"))
    end = 0
    for j, v in enumerate(_list(_get(d, "vmas", what), f"{what}.vmas")):
        vw = f"{what}.vmas[{j}]"
        start = _int(_get(v, "start", vw), f"{vw}.start")
        if start < end:             # find_vma bisects: in order, apart
            raise SnapshotError(f"snapshot: {vw}.start: {start:#x} is not past the vma before it (ends at {end:#x})")
        npages = _int(_get(v, "npages", vw), f"{vw}.npages", 1)
        end = start + npages
        if end > mm.next_vpn:       # the next mmap would map over it
            raise SnapshotError(f"snapshot: {vw}: ends at page {end:#x}, past {what}.next_vpn {mm.next_vpn:#x}")
        shared = _get(v, "shared", vw)
        if not isinstance(shared, bool):
            raise SnapshotError(f"snapshot: {vw}.shared: must be true or false, got {shared!r}")
        av = _get(v, "av", vw)
        av = avs.get(av) if is_int(av) else None
        if av is None:
            raise SnapshotError(f"snapshot: {vw}.av: {v['av']!r} is no anon_vma of the snapshot")
        ref = _get(v, "shadow", vw)
        if not isinstance(ref, list) or len(ref) != 2:
            raise SnapshotError(f"snapshot: {vw}.shadow: must be [base, offset], got {ref!r}")
        b = _int(ref[0], f"{vw}.shadow base", 0, len(bases) - 1)
        off = _int(ref[1], f"{vw}.shadow offset", 0, len(bases[b]) - npages)
        shadow = bases[b][off:off + npages]
        if not shared:
            shadow = shadow.copy()
        pol = _get(v, "policy", vw)
        pol = None if pol is None else _policy(pol, f"{vw}.policy", nr, "a vma with none has null")
        pte = _unarr(_get(v, "pte", vw), f"{vw}.pte", "int64", (npages,))
        mm.vmas.append(VMA(mm, start, npages, shared, av, pte, shadow, pol))
    return mm
