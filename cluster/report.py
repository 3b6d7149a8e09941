"""Human-readable rendering of a run summary (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

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
)


def node_table(summary: dict[str, Any]) -> Table:
    """One row per counter, one column per node, and a total column."""
    table = Table(title_justify="left")
    table.add_column("", justify="left", style="bold")
    for entry in summary["nodes"]:
        table.add_column(f"node {entry['node']}", justify="right")
    table.add_column("all", justify="right", style="bold")
    totals = summary["totals"]
    for field, header in COLUMNS:
        table.add_row(header, *(str(entry[field]) for entry in summary["nodes"]), str(totals[field]))
    return table


def print_summary(summary: dict[str, Any], console: Console) -> None:
    console.print(f"{summary['scenario']}: policy {summary['policy']}, payload {summary['payload']}, "
                  f"{summary['operations']} operations, {summary['processes']} processes, "
                  f"{summary['migration_events']} migrations, {summary['elapsed_s']:.2f}s", markup=False, soft_wrap=True)
    console.print(node_table(summary))
    swap = summary.get("swap", {})
    if swap:
        console.print(f"swap: {swap.get('used', 0)}/{swap.get('slots', 0)} slots used, "
                      f"{'on' if swap.get('on') else 'off'}, {swap.get('swapcached', 0)} in swap cache")
    for name, count in summary.get("errors", {}).items():
        console.print(f"[yellow]{name}[/yellow]: {count} failed calls")
    violations = summary["violations"]
    if violations:
        console.print(f"[bold red]violations: {violations}[/bold red]")
        for line in summary.get("violation_details", []):
            console.print(f"  {line}", markup=False)
    else:
        console.print("[green]violations: 0[/green] (data read back as written; invariants hold)")
