"""The result of a run: per-node frames, migrations and vmstat counters.

The summary is a plain JSON-able dict::

    {
      "scenario": "examples/quickstart.toml", "overrides": ["machine.policy=migentry"], "backend": "local",
      "policy": "migcache", "payload": "token", "operations": 2000, "seed": 1,
      "processes": 5, "migration_events": 40, "elapsed_s": 0.8,
      "nodes": [ {"node": 0, "frames": 4096, "used": ..., "free": ...,
                  "migrations_in": ..., "migrations_out": ...,
                  "pgmigrate_success": ..., ..., "fault_p50_us": ..., "fault_p99_us": ...,
                  "vmstat": {<all counters of node 0>}}, ...],
      "totals": {<the per-node fields summed>, "vmstat": {<machine-wide counters>}},
      "swap": {"slots": ..., "used": ..., "on": ..., "swapcached": ...},
      "errors": {"touch:ENOMEM": 3, ...},
      "violations": 0, "violation_details": [...],
      "latency": {"fault_us": {"count", "p50", "p90", "p99", "max"}, "migration_us": {...},
                  "fault_us_by_node": {"0": {...}, ...}},
      "timeline": [<about 200 samples: see cluster.timeline>]
    }

Every per-node field is the model's own count (``m.vmstat(node=i)``;
``migrations_in`` and ``migrations_out`` are ``migrate_in`` and
``migrate_out``: pages that arrived on and left the node), but
the fault batches' latency from that node's CPUs (None without latency).
``latency`` (wall microseconds per touch call and per migration call, see
:meth:`cluster.timeline.LatencyRecorder.summary`) and ``timeline`` (samples
over the run, the last one taken at the end, so it agrees with ``nodes``)
are there when the runner passes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Per-node vmstat counters copied to the top level of each node's entry.
NODE_COUNTERS = (
    "pgmigrate_success",
    "pgmigrate_fail",
    "pgmigrate_fallback_swap",
    "pswpin",
    "pswpout",
    "pgfault",
    "pgmajfault",
    "numa_hit",
    "numa_miss",
)

# Per-node (and total) fields that are wall-clock timings, not counts: the
# fault latency statistic each one is.
TIMED_FIELDS = {"fault_p50_us": "p50", "fault_p99_us": "p99"}

# The per-node fields, in table order.
NODE_FIELDS = ("frames", "used", "free", "migrations_in", "migrations_out") + NODE_COUNTERS


def _ints(d: dict[str, Any]) -> dict[str, Any]:
    return {str(k): (int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v)
            for k, v in d.items()}


def collect_summary(
    m,
    *,
    scenario,
    backend: str,
    not_moved: int,
    errors: dict[str, int],
    violations: int,
    details: list[str],
    processes: list[int],
    migration_events: int,
    elapsed: float,
    latency: dict[str, Any] | None = None,
    timeline: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    info = {int(row["node"]): row for row in m.node_info()}
    nodes = []
    for n in range(int(m.nr_nodes)):
        row = info.get(n, {})
        vm = _ints(m.vmstat(node=n))
        entry: dict[str, Any] = {
            "node": n,
            "frames": int(row.get("frames", 0)),
            "used": int(row.get("used", 0)),
            "free": int(row.get("free", 0)),
            # the model's counts: a status the runner compares before and after races the
            # drivers' faults on Ray (a page swapped in elsewhere meanwhile looks moved)
            "migrations_in": int(vm.get("migrate_in", 0)),
            "migrations_out": int(vm.get("migrate_out", 0)),
        }
        for name in NODE_COUNTERS:
            entry[name] = int(vm.get(name, 0))
        mine = ((latency or {}).get("fault_us_by_node") or {}).get(str(n)) or {}
        entry.update({f: mine.get(stat) for f, stat in TIMED_FIELDS.items()})
        entry["vmstat"] = vm
        nodes.append(entry)
    totals: dict[str, Any] = {f: sum(e[f] for e in nodes) for f in NODE_FIELDS}
    everyone = (latency or {}).get("fault_us") or {}
    totals.update({f: everyone.get(stat) for f, stat in TIMED_FIELDS.items()})
    totals["migrate_pages_not_moved"] = int(not_moved)
    totals["vmstat"] = _ints(m.vmstat())
    summary = {
        "scenario": scenario.path,
        "overrides": list(scenario.overrides),
        "backend": backend,
        "policy": str(m.policy),
        "payload": str(m.payload),
        "operations": scenario.run.operations,
        "seed": scenario.run.seed,
        "processes": len(processes),
        "migration_events": migration_events,
        "elapsed_s": round(elapsed, 3),
        "nodes": nodes,
        "totals": totals,
        "swap": _ints(dict(m.swap_info())),
        "errors": dict(sorted(errors.items())),
        "violations": int(violations),
        "violation_details": list(details),
    }
    if latency is not None:
        summary["latency"] = latency
    if timeline is not None:
        summary["timeline"] = timeline
    return summary
