"""Counters named exactly as /proc/vmstat, per node, plus numaemu's own.

Event counters only ever grow; the nr_* gauges are computed from state when
read, so they can never drift from what the frames and the swap device hold.
"""
from __future__ import annotations

import numpy as np

EVENTS = (
    "pgfault", "pgmajfault", "pswpin", "pswpout", "pgmigrate_success", "pgmigrate_fail",
    "numa_hit", "numa_miss", "numa_foreign", "numa_local", "numa_other", "numa_interleave",
    "pgsteal_kswapd", "pgsteal_direct", "pgscan_kswapd", "pgscan_direct", "pgalloc",
    # numaemu's own: no kernel twin
    "migcache_add", "migcache_remove", "migcache_move_to_swap", "pgmigrate_fallback_swap",
    "migrate_retry", "migrate_in", "migrate_out",
)
GAUGES = ("nr_free_pages", "nr_anon_pages", "nr_swapcached", "nr_isolated_anon",
          "nr_migcache_entries", "nr_swap_used")
_INDEX = {name: i for i, name in enumerate(EVENTS)}


class Vmstat:
    """Event counters as one int64 array per node: batches add whole vectors."""

    def __init__(self, nr_nodes: int):
        self.counts = np.zeros((nr_nodes, len(EVENTS)), dtype=np.int64)

    def add(self, node: int, name: str, n: int = 1) -> None:
        self.counts[node, _INDEX[name]] += n

    def add_per_node(self, name: str, nodes: np.ndarray) -> None:
        """One event for each entry of `nodes` (an array of node ids)."""
        if len(nodes):
            self.counts[:, _INDEX[name]] += np.bincount(nodes, minlength=self.counts.shape[0])

    def get(self, node: int, name: str) -> int:
        return int(self.counts[node, _INDEX[name]])
