"""Node-local accesses on Ray: each node actor's TLB, reached by the coordinator.

The protocol is the model's (emulator/tlb.py: the TLB, the shootdowns, the
epoch rule), so the explorer searches the same code the runtime runs. What
this module adds is what only a real node actor has:
- ``NodeTLB``: the TLB shared by the node's workload threads (one lock, as
  a TLB is one piece of hardware), the stores of a hit on the payload arrays
  in shared memory (its own and those of other nodes on its host), and the
  tokens it writes: node n's start at (n + 1) << 44, unique across writers.
  The writer's record of a hit is the coordinator's to take, at the next
  flush or harvest (the node has no shadow of the model's).
- ``RayPort``: the coordinator's handle on a node's TLB. A flush or a
  harvest is an actor call made inside the step and waited for; a node that
  does not answer within ``ANSWER_S`` (the runner gives up on a silent node
  as soon) is lost (``NodeGone``).
- Accessed bits only order the LRU, so the driver hands them over every
  ``YOUNG_EVERY`` hits: late or misplaced, they cost reclaim some accuracy,
  never data.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from emulator import pte as P
from emulator.frames import store_tokens
from emulator.kernel import split_nodes
from emulator.tlb import TLB, NodeGone

YOUNG_EVERY = 32          # hits between two hand-overs of the accessed bits
ANSWER_S = 30.0           # a node that does not answer a flush this long is lost
TOKEN_BASE = 1 << 44


class NodeTLB:
    """A node actor's TLB, shared by its workload threads."""

    def __init__(self, node: int, page_shift: int, data: dict[int, np.ndarray]):
        """``data``: the payload arrays of the nodes whose pages may be cached."""
        self.tlb = TLB()
        self.page_shift = page_shift
        self.data = data
        self.near = np.zeros(max(data) + 1, dtype=bool)    # [node]: its payload is mapped here
        self.near[list(data)] = True
        self.lock = threading.Lock()
        self.next_token = (node + 1) * TOKEN_BASE
        self.hits = self.misses = 0
        self.hits_since_young = 0

    def add(self, pid: int, addr: int, npages: int) -> None:
        self.tlb.add(pid, addr >> self.page_shift, npages)

    def access(self, pid: int, addr: int, npages: int, write: bool) -> np.ndarray | None:
        """The access, if every page hits with the permission it needs: the
        tokens written (empty for a read). None: a miss, for the coordinator."""
        with self.lock:
            gp = self.tlb.lookup(pid, addr >> self.page_shift, npages, write)
            if gp is None:
                self.misses += 1
                return None
            toks = np.zeros(0, dtype=np.int64)
            if write:
                toks = np.arange(self.next_token, self.next_token + npages, dtype=np.int64)
                self.next_token += npages
                for node, sel in split_nodes(gp):
                    store_tokens(self.data[node], gp[sel] & P.PFN_MASK, toks[sel])
            self.hits += 1
            self.hits_since_young += 1
        return toks

    def install(self, pid: int, fill: tuple[int, int, np.ndarray] | None) -> None:
        """Cache the ptes a coordinator call returned (a page whose payload is
        not mapped here is never cached), unless a flush came since."""
        if fill is None:
            return
        epoch, vpn, ptes = fill
        nodes = P.pte_node(ptes)
        far = nodes >= len(self.near)
        far[~far] = ~self.near[nodes[~far]]
        with self.lock:
            self.tlb.install(pid, (epoch, vpn, np.where(far, 0, ptes)))

    def take_young(self) -> dict[int, np.ndarray]:
        with self.lock:
            self.hits_since_young = 0
            return self.tlb.take_young()

    def flush(self, pid: int, vpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.tlb.flush(pid, vpns)

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        with self.lock:
            return self.tlb.harvest()

    def stats(self) -> dict[str, int]:
        return {"tlb_hits": self.hits, "tlb_misses": self.misses, "tlb_flushes": self.tlb.flushes,
                "tlb_stale_fills": self.tlb.stale_fills}


class RayPort:
    """A node actor's TLB, reached with actor calls."""

    def __init__(self, handle: Any):
        self.handle = handle

    def flush(self, pid: int, vpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._get(self.handle.tlb_flush.remote(pid, vpns))

    def harvest(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return self._get(self.handle.tlb_harvest.remote())

    @staticmethod
    def _get(ref):
        import ray
        try:
            return ray.get(ref, timeout=ANSWER_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            raise NodeGone(str(exc)) from exc
