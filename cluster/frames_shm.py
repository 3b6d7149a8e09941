"""The model's frame tables and vmstat counters in shared memory.

The coordinator's model keeps every node's struct page fields (Frames: numpy
arrays, its free stack and counters included) and the vmstat counters in one
file in shared memory (shm_dir: /dev/shm by default), which the node actors
on its host map. A node actor can then run the model's own fault steps on
them (cluster/local_fault.py) while it holds the coordinator's steps lock
exclusively: the same functions, on the same memory, so Principle 1 holds
and nothing is copied back.

Layout: for each node, each field of FIELDS in turn, then the vmstat counts;
every array 8-byte aligned. Arrays are plain ndarrays over an mmap (not
np.memmap, whose every result is a memmap too, at a cost on the model's
small-array hot paths).
"""
from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from emulator.frames import Frames
from emulator.vmstat import Vmstat

FIELDS = ("refcount", "mapcount", "flags", "private", "anon_vma", "index", "lru_tick", "free_stack", "counters")
WMARKS = ("wmark_min", "wmark_low", "wmark_high")


def _map(path: str, size: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:   # the tables are written in full: take the space now (ENOSPC), not SIGBUS later
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                os.unlink(path)
                raise OSError(exc.errno, f"the frame tables need {size / 2**20:.0f} MiB in "
                                         f"{os.path.dirname(path)}: {exc.strerror}") from None
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _view(buf: mmap.mmap, off: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.dtype(dtype), count=int(np.prod(shape)), offset=off).reshape(shape)


def share(k, path: str) -> dict[str, Any]:
    """Move k's frame tables and vmstat counts into a new shared file at
    ``path``: the model goes on using them there. Returns what a node actor
    needs to map them (attach)."""
    fields: list[tuple[int, str, int, str, tuple[int, ...]]] = []
    off = 0
    arrays = [(fr.node, name, getattr(fr, name)) for fr in k.nodes for name in FIELDS] + \
        [(-1, "counts", k.stat.counts)]
    for node, name, a in arrays:
        fields.append((node, name, off, a.dtype.str, tuple(a.shape)))
        off += (a.nbytes + 7) & ~7
    buf = _map(path, max(off, 8), create=True)
    for (node, name, o, dt, shape), (_, _, a) in zip(fields, arrays):
        v = _view(buf, o, dt, shape)
        v[...] = a
        if node < 0:
            k.stat.counts = v
        else:
            setattr(k.nodes[node], name, v)
    nodes = [{"node": fr.node, "nframes": fr.nframes, **{w: int(getattr(fr, w)) for w in WMARKS}}
             for fr in k.nodes]
    return {"path": path, "size": max(off, 8), "fields": fields, "nodes": nodes,
            "zonelists": [list(z) for z in k.zonelists], "page_size": int(k.page_size),
            "payload": str(k.payload)}


class SharedKernel:
    """What the model's fault steps read of the kernel, in a node actor: the
    frame tables and counters the coordinator shares, and the payloads this
    node maps (a node whose payload is not mapped here has none: its frames
    are never allocated here)."""

    def __init__(self, desc: dict[str, Any], data: dict[int, np.ndarray]):
        self.buf = _map(desc["path"], desc["size"], create=False)
        self.page_size, self.payload = desc["page_size"], desc["payload"]
        self.zonelists = [list(z) for z in desc["zonelists"]]
        self.nodes: list[Frames] = []
        for nd in desc["nodes"]:
            fr = Frames.__new__(Frames)
            fr.node, fr.nframes = nd["node"], nd["nframes"]
            fr.page_size, fr.payload = self.page_size, self.payload
            for w in WMARKS:
                setattr(fr, w, nd[w])
            fr.data = data.get(fr.node)
            self.nodes.append(fr)
        self.stat = Vmstat.__new__(Vmstat)
        for node, name, off, dt, shape in desc["fields"]:
            v = _view(self.buf, off, dt, tuple(shape))
            if node < 0:
                self.stat.counts = v
            else:
                setattr(self.nodes[node], name, v)
