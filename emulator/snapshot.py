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

from .invariants import InvariantViolation, check
from .mm import MM, VMA, AnonVMA, Mempolicy
from .topology import Topology

MAGIC = b"NUMAEMU\x01"
DTYPES = {"int64", "int32", "uint32", "uint16", "uint8", "uint64"}
NODE_ARRAYS = ("refcount", "mapcount", "flags", "private", "anon_vma", "index", "lru_tick", "data")


def _arr(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


def _unarr(d: Any, what: str) -> np.ndarray:
    try:
        dtype, shape, data = d["dtype"], d["shape"], d["data"]
    except (TypeError, KeyError):
        raise ValueError(f"snapshot: {what}: not an array record") from None
    if dtype not in DTYPES or not isinstance(data, bytes) or not isinstance(shape, list):
        raise ValueError(f"snapshot: {what}: unsupported array encoding ({dtype!r})")
    n = int(np.prod(shape)) if shape else 1
    if n * np.dtype(dtype).itemsize != len(data):
        raise ValueError(f"snapshot: {what}: {len(data)} bytes do not fill shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


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
                         "policy": None if v.policy is None else [v.policy.mode, list(v.policy.nodes)]})
        mms.append({"pid": pid, "node": mm.node, "policy": [mm.policy.mode, list(mm.policy.nodes)],
                    "next_vpn": mm.next_vpn, "rss": mm.rss, "vmas": vmas})
    avs = []
    for av in k.anon_vmas.values():
        order = []
        for v in av.vmas:
            order.append([v.mm.pid, next(i for i, x in enumerate(v.mm.vmas) if x is v)])
        avs.append({"id": av.id, "vmas": order})
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
    except ValueError:
        raise
    except InvariantViolation as e:
        raise ValueError(f"snapshot: inconsistent state: {e}") from None
    except Exception as e:  # a structurally wrong body: name what was missing
        raise ValueError(f"snapshot: malformed body: {type(e).__name__}: {e}") from None


def _build(cls, body: dict, checked: bool = True):
    if body.get("version") != 1:
        raise ValueError(f"snapshot: unsupported version {body.get('version')!r}")
    topo = Topology.from_config(body["topology"])
    m = cls(topo, bugs=body["bugs"])
    k = m.k
    if len(body["nodes"]) != topo.nr_nodes:
        raise ValueError("snapshot: node count does not match the topology")
    for i, (fr, d) in enumerate(zip(k.nodes, body["nodes"])):
        for name in NODE_ARRAYS:
            a = _unarr(d[name], f"nodes[{i}].{name}")
            cur = getattr(fr, name)
            if a.shape != cur.shape or a.dtype != cur.dtype:
                raise ValueError(f"snapshot: nodes[{i}].{name}: shape {a.shape} does not match the topology")
            setattr(fr, name, a)
        free = _unarr(d["free"], f"nodes[{i}].free")
        fr.free_stack[:len(free)] = free
        fr.nr_free = len(free)
        fr.tick = int(d["tick"])
    sw, s = k.swap, body["swap"]
    for name in ("swap_map", "cache_page", "store"):
        a = _unarr(s[name], f"swap.{name}")
        if a.shape != getattr(sw, name).shape:
            raise ValueError(f"snapshot: swap.{name}: shape does not match the topology")
        setattr(sw, name, a)
    free = _unarr(s["free"], "swap.free")
    sw.free_stack[:len(free)] = free
    sw.nr_free = len(free)
    sw.on = bool(s["on"])
    mc, c = k.migcache, body["migcache"]
    mc.counter, mc.page = _unarr(c["counter"], "migcache.counter"), _unarr(c["page"], "migcache.page")
    mc.next_id, mc.free_ids, mc.nr_entries = int(c["next_id"]), sorted(int(i) for i in c["free_ids"]), int(c["nr_entries"])
    bases = [_unarr(b, f"shadows[{i}]") for i, b in enumerate(body["shadows"])]
    avs = {a["id"]: AnonVMA(a["id"]) for a in body["anon_vmas"]}
    k.anon_vmas = avs
    for d in body["mms"]:
        mm = MM(d["pid"], d["node"], policy=Mempolicy(d["policy"][0], tuple(d["policy"][1])),
                next_vpn=d["next_vpn"], rss=d["rss"])
        for v in d["vmas"]:
            b, off = v["shadow"]
            shadow = bases[b][off:off + v["npages"]]
            if not v["shared"]:
                shadow = shadow.copy()
            pol = None if v["policy"] is None else Mempolicy(v["policy"][0], tuple(v["policy"][1]))
            pte = _unarr(v["pte"], f"pid {d['pid']} pte")
            if pte.shape != (v["npages"],) or shadow.shape != (v["npages"],):
                raise ValueError(f"snapshot: pid {d['pid']}: vma at {v['start']:#x} has the wrong size")
            mm.vmas.append(VMA(mm, v["start"], v["npages"], v["shared"], avs[v["av"]], pte, shadow, pol))
        k.mms[mm.pid] = mm
    for a in body["anon_vmas"]:
        avs[a["id"]].vmas = [k.mms[pid].vmas[i] for pid, i in a["vmas"]]
    stat = _unarr(body["stat"], "stat")
    want = k.stat.counts.shape
    if stat.ndim != 2 or stat.shape[0] != want[0] or stat.shape[1] > want[1]:
        raise ValueError("snapshot: vmstat counters do not match this version's counters")
    # counters only ever join at the end: an older snapshot has never counted the new ones
    k.stat.counts[:, :stat.shape[1]] = stat
    k.next_pid, k.next_av, k.token_seq = int(body["next_pid"]), int(body["next_av"]), int(body["token_seq"])
    if checked:
        check(k)
    return m
