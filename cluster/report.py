"""Human-readable rendering of a run summary (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .scenario import with_overrides

# (summary field, column header)
COLUMNS = (
    ("frames", "frames"),
    ("used", "used"),
    ("free", "free"),
    ("migrations_in", "migrated in"),
    ("migrations_out", "migrated out"),
    ("pgmigrate_success", "pgmigrate_success"),
    ("pgmigrate_fail", "pgmigrate_fail"),
    ("pgmigrate_fallback_swap", "fallback"),
    ("pswpin", "pswpin"),
    ("pswpout", "pswpout"),
    ("pgfault", "pgfault"),
    ("pgmajfault", "pgmajfault"),
    ("numa_hit", "numa_hit"),
    ("numa_miss", "numa_miss"),
    ("fault_p50_us", "fault p50 (us)"),
    ("fault_p99_us", "fault p99 (us)"),
)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def node_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """The per-node table's rows: a label, a value per node, the total; on Ray
    also the accesses each node actor ran on its own."""
    nodes, totals = summary["nodes"], summary["totals"]
    rows = [[header, *(entry.get(field) for entry in nodes), totals.get(field)] for field, header in COLUMNS]
    tlb = summary.get("tlb")
    if tlb:
        for label, by_node, total in (("TLB hits", "hits_by_node", "hits"), ("page walks", "walks_by_node", "walks"),
                                      ("local faults", "local_faults_by_node", "local_faults")):
            rows.append([label, *(tlb.get(by_node, {}).get(str(e["node"]), 0) for e in nodes), tlb.get(total, 0)])
    return rows


def node_table(summary: dict[str, Any]) -> Table:
    """One row per counter, one column per node, and a total column."""
    table = Table(title_justify="left")
    table.add_column("", justify="left", style="bold")
    for entry in summary["nodes"]:
        table.add_column(f"node {entry['node']}", justify="right")
    table.add_column("all", justify="right", style="bold")
    for label, *cells in node_rows(summary):
        table.add_row(label, *(_cell(c) for c in cells))
    return table


# (latency summary key, label, unit, what a count counts)
LATENCIES = (
    ("fault_us", "fault latency (us)", "us", "touch calls"),
    ("migration_us", "migration latency (us)", "us", "calls"),
    ("fault_steps", "fault steps", "steps", "touch calls"),
    ("migration_steps", "migration steps", "steps", "calls"),
)


def _num(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "steps" and float(v).is_integer():
        return str(int(v))
    return f"{float(v):.1f}"


def latency_lines(summary: dict[str, Any]) -> list[str]:
    """One line per timed kind, e.g. ``fault latency (us): p50 28.0  p90 101.6
    p99 156.5  max 251.0  (2000 touch calls)``."""
    lines = []
    latency = summary.get("latency") or {}
    for key, label, unit, what in LATENCIES:
        st = latency.get(key)
        if st is None:
            continue
        if key.startswith("fault") and summary.get("tlb") is not None:     # Ray
            what += " through the coordinator"
        if not st.get("count"):
            lines.append(f"{label}: no {what}")
            continue
        stats = "  ".join(f"{name} {_num(st.get(name), unit)}" for name in ("p50", "p90", "p99", "max"))
        lines.append(f"{label}: {stats}  ({st['count']} {what})")
    return lines


def _ops_done(summary: dict[str, Any]) -> str:
    """The operations that ran, "of" the scenario's when a time limit, a
    violation or Ctrl-C stopped the run short."""
    done, planned = summary.get("operations_done", summary["operations"]), summary["operations"]
    return f"{done}" if done == planned else f"{done} of {planned}"


def run_name(summary: dict[str, Any]) -> str:
    """The scenario as the run took it: its file, then any --set and --bug."""
    bugs = "".join(f" --bug {b}" for b in summary.get("bugs", []))
    return with_overrides(summary.get("scenario", "?"), summary.get("overrides", [])) + bugs


def payload_dirs(summary: dict[str, Any]) -> str:
    """Where a Ray run's payloads lived, and whether their tmpfs gave them huge
    pages (a migration's copy is faster with them): "" for an in-process run."""
    seen: dict[tuple[str, str], list[str]] = {}
    for h in summary.get("hosts", []):
        if "dir" in h:
            seen.setdefault((h["dir"], h["huge"]), []).append(str(h["node"]))
    pages = {"": "not a tmpfs", "never": "tmpfs, huge=never: 4 KiB pages",
             "deny": "tmpfs, shmem_enabled=deny: 4 KiB pages", "force": "tmpfs, shmem_enabled=force: huge pages"}
    parts = [f"{d} ({pages.get(huge, f'tmpfs, huge={huge}')})" for d, huge in seen]
    if len(parts) > 1:
        parts = [f"node{'s' * (len(nodes) > 1)} {', '.join(nodes)} in {p}" for p, nodes in zip(parts, seen.values())]
    return "; ".join(parts)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    console.print(f"{run_name(summary)}: policy {summary['policy']}, payload {summary['payload']}, "
                  f"{_ops_done(summary)} operations, {summary['processes']} processes, "
                  f"{summary['migration_events']} migrations, {summary['elapsed_s']:.2f}s", markup=False, soft_wrap=True)
    for line in summary.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {line}", soft_wrap=True)
    console.print(node_table(summary))
    swap = summary.get("swap", {})
    if swap:
        console.print(f"swap: {swap.get('used', 0)}/{swap.get('slots', 0)} slots used, "
                      f"{'on' if swap.get('on') else 'off'}, {swap.get('swapcached', 0)} in swap cache")
    tlb = summary.get("tlb")
    if tlb and tlb["hits"] + tlb["walks"] + tlb.get("local_faults", 0) + tlb["misses"]:
        console.print(f"node-local accesses: {tlb['hits']} TLB hits, {tlb['walks']} page walks, "
                      f"{tlb.get('local_faults', 0)} local faults; "
                      f"{tlb['misses']} misses (faulted through the coordinator; "
                      f"{tlb.get('walks_refused', 0)} of them neither walked nor faulted on the node because it was busy "
                      f"in the model); {tlb['shootdowns']} TLB shootdowns, "
                      f"{tlb.get('shootdown_s', 0):.2f} s waiting for them")
    where = payload_dirs(summary)
    if where:
        console.print(f"payloads: {where}", soft_wrap=True)
    via = summary.get("coordinator_calls")
    if via and via["channel"] + via["actor"]:
        console.print(f"coordinator calls: {via['channel']} over the same-host channel, "
                      f"{via['actor']} as Ray actor calls (callers on other hosts)")
    if summary.get("answered_before_copy"):
        console.print(f"migrations: {summary['answered_before_copy']} answered while their copy still ran "
                      "(its tail not in their latency; what looks at those pages waits for it)")
    if summary.get("schedule_late_ops"):
        console.print(f"schedule: events fired up to {summary['schedule_late_ops']} operations after theirs "
                      "(the drivers run on while the runner catches up: one period at most, "
                      "plus one operation per node actor)")
    if summary.get("forks"):
        console.print(f"forks: {summary['forks']} (each child read and wrote its parent's pages, then exited)")
    if summary.get("swapoff_events"):
        console.print(f"swapoff: {summary['swapoff_events']} cycles (swapoff, then swapon after each that worked)")
    if "quiescent_checks" in summary:
        console.print(f"stress: {summary['quiescent_checks']} quiescent checks (the whole oracle, every page)")
    for line in latency_lines(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    for name, count in summary.get("errors", {}).items():
        console.print(f"[yellow]{name}[/yellow]: {count} failed calls")
    violations = summary["violations"]
    if violations:
        console.print(f"[bold red]violations: {violations}[/bold red]")
        for line in summary.get("violation_details", []):
            console.print(f"  {line}", markup=False)
    else:
        console.print("[green]violations: 0[/green] (data read back as written; invariants hold)")


def _lat(summary: dict[str, Any], kind: str, stat: str) -> Any:
    return ((summary.get("latency") or {}).get(kind) or {}).get(stat)


# (row label, what it reads from a summary): numaemu compare's rows
COMPARED = (
    ("operations", _ops_done),
    ("elapsed (s)", lambda s: f"{s['elapsed_s']:.2f}"),
    ("operations/s", lambda s: round(s.get("operations_done", s["operations"]) / s["elapsed_s"])
     if s["elapsed_s"] else None),
    ("migration calls", lambda s: s["migration_events"]),
    ("pgmigrate_success", lambda s: s["totals"]["pgmigrate_success"]),
    ("pgmigrate_fail", lambda s: s["totals"]["pgmigrate_fail"]),
    ("fallback to swap", lambda s: s["totals"]["pgmigrate_fallback_swap"]),
    ("migrate_pages not moved", lambda s: s["totals"].get("migrate_pages_not_moved")),
    ("pswpout", lambda s: s["totals"]["pswpout"]),
    ("pswpin", lambda s: s["totals"]["pswpin"]),
    ("pgfault", lambda s: s["totals"]["pgfault"]),
    ("pgmajfault", lambda s: s["totals"]["pgmajfault"]),
    ("numa_miss", lambda s: s["totals"]["numa_miss"]),
    ("swap slots used at the end", lambda s: s.get("swap", {}).get("used")),
    ("migration p50 (us)", lambda s: _lat(s, "migration_us", "p50")),
    ("migration p99 (us)", lambda s: _lat(s, "migration_us", "p99")),
    ("fault p50 (us)", lambda s: _lat(s, "fault_us", "p50")),
    ("fault p99 (us)", lambda s: _lat(s, "fault_us", "p99")),
    ("failed calls", lambda s: sum(s.get("errors", {}).values())),
    ("violations", lambda s: s["violations"]),
)


def comparison_table(runs: dict[str, dict[str, Any]]) -> Table:
    """One row per quantity, one column per design."""
    table = Table(title_justify="left")
    table.add_column("", justify="left", style="bold")
    for policy in runs:
        table.add_column(policy, justify="right")
    for label, read in COMPARED:
        table.add_row(label, *(_cell(read(s)) for s in runs.values()))
    return table


def print_comparison(scenario: str, sets: list[str], runs: dict[str, dict[str, Any]], console: Console) -> None:
    """numaemu compare's output: what ran, then the designs side by side."""
    first = next(iter(runs.values()), None)
    if first is None:
        return
    console.print(f"{with_overrides(scenario, sets)}: payload {first['payload']}, backend {first['backend']}, "
                  f"seed {first['seed']}, the same for every design", markup=False, soft_wrap=True)
    console.print(comparison_table(runs))
