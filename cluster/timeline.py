"""What a run looked like over time: periodic samples of the machine, and
the wall-clock latency of every fault batch and migration call.

Both recorders are backend-neutral: a :class:`Timeline` samples any object
with the ``Machine`` read API (``node_info()``, ``vmstat(node=i)``,
``swap_info()``), or takes samples built elsewhere (:func:`build_sample`
from those calls' raw results); a :class:`LatencyRecorder` takes one
duration at a time or whole arrays gathered from elsewhere.

A sample is a plain JSON-able dict::

    {"t": 1.25,                # wall seconds since the run started
     "operations": 400,        # operations done when it was taken
     "nodes": [                # one entry per node, index = node id
        {"used": ..., "free": ...,              # frames
         "pgmigrate_success": ..., "pgmigrate_fallback_swap": ...,
         "pswpin": ..., "pswpout": ..., "pgfault": ...}, ...],   # vmstat counters (cumulative)
     "swap_used": ...,         # swap slots in use
     "swapcached": ...,        # swap slots whose page is in the swap cache
     "migcache_entries": ...}  # pages in the migration cache (nr_migcache_entries)

The latency summary (``LatencyRecorder.summary()``, the run summary's
``"latency"``)::

    {"fault_us":     {"count": 2000, "p50": 41.2, "p90": 80.3, "p99": 150.9, "max": 900.0},
     "migration_us": {"count": 40, ...},
     # when emulated steps were counted (on Ray always; locally with --metrics-port):
     "fault_steps":  {"count": 2000, "p50": ..., ...}, "migration_steps": {...}}

A kind with no observations has ``count`` 0 and the other fields ``None``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np

# The per-node fields of a sample: two from node_info(), the rest from vmstat(node=i).
SAMPLE_NODE_INFO = ("used", "free")
SAMPLE_NODE_VMSTAT = ("pgmigrate_success", "pgmigrate_fallback_swap", "pswpin", "pswpout", "pgfault")
SAMPLE_NODE_FIELDS = SAMPLE_NODE_INFO + SAMPLE_NODE_VMSTAT

# Samples per run, besides the first (after setup) and the last (at the end).
SAMPLES_PER_RUN = 200

# The kinds of calls timed, and the percentiles reported for each.
LATENCY_KINDS = ("fault", "migration")
PERCENTILES = (50, 90, 99)


def sample_every(operations: int, samples: int = SAMPLES_PER_RUN) -> int:
    """Sample after every this many operations: about ``samples`` per run."""
    return max(1, int(operations) // max(1, int(samples)))


def build_sample(t: float, operations: int, node_info: list[dict[str, Any]],
                 node_vmstats: list[dict[str, Any]], swap_info: dict[str, Any]) -> dict[str, Any]:
    """One sample from the raw results of ``node_info()``, ``vmstat(node=i)``
    for every node i (in node order) and ``swap_info()``."""
    info = {int(row["node"]): row for row in node_info}
    nodes = []
    migcache = 0
    for n, vm in enumerate(node_vmstats):
        row = info.get(n, {})
        entry = {f: int(row.get(f, 0)) for f in SAMPLE_NODE_INFO}
        for f in SAMPLE_NODE_VMSTAT:
            entry[f] = int(vm.get(f, 0))
        nodes.append(entry)
        migcache += int(vm.get("nr_migcache_entries", 0))
    return {
        "t": round(float(t), 6),
        "operations": int(operations),
        "nodes": nodes,
        "swap_used": int(swap_info.get("used", 0)),
        "swapcached": int(swap_info.get("swapcached", 0)),
        "migcache_entries": migcache,
    }


def machine_sample(m, t: float, operations: int) -> dict[str, Any]:
    """One sample of a machine-like object ``m`` (the Machine read API)."""
    nr = int(m.nr_nodes)
    return build_sample(t, operations, m.node_info(), [m.vmstat(node=n) for n in range(nr)],
                        m.swap_info())


class Timeline:
    """Samples taken during a run, about :data:`SAMPLES_PER_RUN` of them.

    ``Timeline(operations)`` starts the clock; ``due(op)`` says whether
    operation ``op`` (1-based) ends with a sample; ``sample(m, op)`` takes
    one from a machine, ``add(sample)`` appends one built elsewhere. The
    runner takes one at operation 0 (after setup), one whenever due, and a
    last one at the end, so ``t`` and ``operations`` never decrease.
    """

    def __init__(self, operations: int, samples: int = SAMPLES_PER_RUN,
                 clock: Callable[[], float] = time.perf_counter, start: float | None = None,
                 seconds: float = 0.0):
        self.operations = int(operations)
        self.every = sample_every(operations, samples)
        self.clock = clock
        self.start = clock() if start is None else float(start)
        # a run that ``seconds`` may end long before its operations: also a sample per share of those
        self.period = float(seconds) / max(1, int(samples)) if seconds else 0.0
        self.last = self.start
        self.samples: list[dict[str, Any]] = []

    def now(self) -> float:
        """Wall seconds since the start."""
        return self.clock() - self.start

    def due(self, op: int) -> bool:
        """Is a sample due after operation ``op``: every ``every`` operations
        or, with ``seconds``, once that share of them passed since the last?
        (Never after the last one: the end sample is taken by :meth:`sample`
        once the run is over.)"""
        return op < self.operations and (op % self.every == 0 or self.late())

    def late(self) -> bool:
        """A time-limited run's sample is due by the clock."""
        return bool(self.period) and self.clock() - self.last >= self.period

    def sample(self, m, operations: int) -> dict[str, Any]:
        self.last = self.clock()
        s = machine_sample(m, self.last - self.start, operations)
        self.samples.append(s)
        return s

    def add(self, sample: dict[str, Any]) -> None:
        self.samples.append(sample)

    def to_list(self) -> list[dict[str, Any]]:
        return list(self.samples)


def latency_stats(values: Iterable[float] | np.ndarray) -> dict[str, Any]:
    """``{"count", "p50", "p90", "p99", "max"}`` of ``values`` (rounded to
    0.1); the statistics are None when there are no values."""
    a = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {"count": int(a.size)}
    if a.size == 0:
        out.update({f"p{p}": None for p in PERCENTILES})
        out["max"] = None
        return out
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{p}"] = round(float(v), 1)
    out["max"] = round(float(a.max()), 1)
    return out


class LatencyRecorder:
    """Durations of the timed calls, by kind (``"fault"``: one touch call, a
    fault batch; ``"migration"``: one move_pages or migrate_pages call):
    wall seconds always, emulated steps when they were counted."""

    def __init__(self, kinds: Iterable[str] = LATENCY_KINDS):
        self.kinds = tuple(kinds)
        self._seconds: dict[str, list[float]] = {k: [] for k in self.kinds}
        self._steps: dict[str, list[int]] = {k: [] for k in self.kinds}
        self._by_node: dict[str, dict[int, list[float]]] = {k: {} for k in self.kinds}

    def record(self, kind: str, seconds: float, steps: int | None = None, node: int | None = None) -> None:
        """``node``: where the call came from (a fault batch's CPU), for the per-node table."""
        self._seconds[kind].append(seconds)
        if steps is not None:
            self._steps[kind].append(steps)
        if node is not None:
            self._by_node[kind].setdefault(node, []).append(seconds)

    def extend(self, kind: str, seconds: Iterable[float], steps: Iterable[int] | None = None,
               node: int | None = None) -> None:
        """Add many durations at once (e.g. gathered from a remote worker)."""
        secs = [float(s) for s in seconds]
        self._seconds[kind].extend(secs)
        if steps is not None:
            self._steps[kind].extend(int(s) for s in steps)
        if node is not None:
            self._by_node[kind].setdefault(node, []).extend(secs)

    def count(self, kind: str) -> int:
        return len(self._seconds[kind])

    def seconds(self, kind: str) -> np.ndarray:
        return np.asarray(self._seconds[kind], dtype=np.float64)

    def steps(self, kind: str) -> np.ndarray:
        return np.asarray(self._steps[kind], dtype=np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"fault_us": ..., "migration_us": ...}``: every duration in
        microseconds, in the order recorded (what ``write_report`` plots)."""
        return {f"{k}_us": self.seconds(k) * 1e6 for k in self.kinds}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Stats per kind, in microseconds and in steps; ``<kind>_us_by_node``:
        per node (keys are node numbers as strings) where calls named one."""
        out = {f"{k}_us": latency_stats(self.seconds(k) * 1e6) for k in self.kinds}
        for k in self.kinds:
            if self._steps[k]:
                out[f"{k}_steps"] = latency_stats(self.steps(k))
            if self._by_node[k]:
                out[f"{k}_us_by_node"] = {str(n): latency_stats(np.asarray(v) * 1e6)
                                          for n, v in sorted(self._by_node[k].items())}
        return out
