"""numaemu's Grafana dashboards, built as Grafana dashboard JSON.

Three dashboards with fixed uids, each with a ``datasource`` template
variable (any Prometheus) and a ``run`` variable (the runs to show):

- ``numaemu-overview``: memory per node, migration and fallback rates, the
  migration cache, swap activity and space, reclaim, faults and fault
  latency quantiles, NUMA allocations, run progress;
- ``numaemu-policies``: runs side by side by their ``run`` and ``policy``
  labels (the same workload under swapcache, migcache and migentry);
- ``numaemu-explorer``: the race explorer's schedules per second, distinct
  states, pruning and violations.

``dashboards/*.json`` in the repository are these, written by
``numaemu dashboards export dashboards`` (a test keeps them equal), and are
what Grafana's provisioning (deploy/grafana/provisioning) loads.
"""
from __future__ import annotations

import json
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
RUN = 'run=~"$run"'
RUN_NODE = 'run=~"$run", node=~"$node"'
RUN_POLICY = 'run=~"$run", policy=~"$policy"'
RATE = "[$__rate_interval]"

UIDS = ("numaemu-overview", "numaemu-policies", "numaemu-explorer")


# -- building blocks ------------------------------------------------------------

def _target(expr: str, legend: str, ref: str, *, instant: bool = False, table: bool = False) -> dict:
    t: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend,
                         "range": not instant, "instant": instant, "editorMode": "code"}
    if table:
        t["format"] = "table"
    return t


def _targets(queries: list[tuple[str, str]], **kw) -> list[dict]:
    return [_target(e, legend, chr(ord("A") + i), **kw) for i, (e, legend) in enumerate(queries)]


def _panel(kind: str, title: str, description: str, queries: list[tuple[str, str]], *,
           unit: str = "short", w: int = 12, h: int = 8, instant: bool = False,
           options: dict | None = None, custom: dict | None = None, thresholds: list | None = None,
           table: bool = False, transformations: list | None = None) -> dict:
    defaults: dict[str, Any] = {"unit": unit}
    if custom is not None:
        defaults["custom"] = custom
    defaults["thresholds"] = {"mode": "absolute",
                              "steps": thresholds or [{"color": "green", "value": None}]}
    p: dict[str, Any] = {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "targets": _targets(queries, instant=instant, table=table),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }
    if transformations:
        p["transformations"] = transformations
    return p


def timeseries(title: str, description: str, queries: list[tuple[str, str]], *, unit: str = "short",
               stack: bool = False, **kw) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0,
              "showPoints": "never", "spanNulls": False,
              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, description, queries, unit=unit, custom=custom, options=options, **kw)


def stat(title: str, description: str, queries: list[tuple[str, str]], *, unit: str = "short",
         thresholds: list | None = None, w: int = 6, h: int = 5, **kw) -> dict:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
               "orientation": "auto", "textMode": "auto"}
    return _panel("stat", title, description, queries, unit=unit, thresholds=thresholds, w=w, h=h,
                  options=options, **kw)


def bargauge(title: str, description: str, queries: list[tuple[str, str]], *, unit: str = "short",
             w: int = 12, h: int = 8, **kw) -> dict:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
               "valueMode": "color", "namePlacement": "auto", "sizing": "auto"}
    return _panel("bargauge", title, description, queries, unit=unit, w=w, h=h, instant=True,
                  options=options, **kw)


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def _layout(panels: list[dict]) -> list[dict]:
    """Ids and positions: panels flow left to right, rows start a new line."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            x, y, line_h = 0, y + line_h, 0
        g["x"], g["y"] = x, y
        line_h = max(line_h, g["h"])
        x += g["w"]
        if p["type"] == "row":
            x, y, line_h = 0, y + 1, 0
    return panels


def _datasource_var() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [],
            "refresh": 1, "regex": "", "skipUrlSync": False}


def _query_var(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery",
                                           "qryType": 1},
            "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True,
            "options": [], "refresh": 2, "regex": "", "sort": 1, "skipUrlSync": False}


def _links() -> list[dict]:
    return [{"title": "numaemu", "type": "dashboards", "tags": ["numaemu"], "asDropdown": True,
             "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
             "url": "", "tooltip": ""}]


def _dashboard(uid: str, title: str, description: str, variables: list[dict], panels: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["numaemu"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": _links(),
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "templating": {"list": [_datasource_var()] + variables},
        "panels": _layout(panels),
    }


def _q(quantile: float, metric: str, by: str, sel: str) -> str:
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{sel}}}{RATE})))")


RED_FROM_1 = [{"color": "green", "value": None}, {"color": "red", "value": 1}]


# -- the dashboards -----------------------------------------------------------------

def overview() -> dict:
    def by_node(metric: str, legend: str, sel: str = RUN_NODE) -> tuple[str, str]:
        return (f"sum by (run, node) ({metric}{{{sel}}})", "{{run}} node {{node}} " + legend)

    def rate_node(name: str, legend: str) -> tuple[str, str]:
        return (f"sum by (run, node) (rate(numaemu_{name}_total{{{RUN_NODE}}}{RATE}))",
                "{{run}} node {{node}} " + legend)

    def rate_run(name: str, legend: str) -> tuple[str, str]:
        return (f"sum by (run) (rate(numaemu_{name}_total{{{RUN}}}{RATE}))", "{{run}} " + legend)

    panels = [
        row("Memory"),
        timeseries("Memory per node", "Frames in use and free on each node (pages).",
                   [by_node("numaemu_node_used_pages", "used"), by_node("numaemu_nr_free_pages", "free")],
                   unit="none"),
        bargauge("Node fill", "Frames in use over frames present, per node.",
                 [(f"sum by (run, node) (numaemu_node_used_pages{{{RUN_NODE}}}) / "
                   f"sum by (run, node) (numaemu_node_present_pages{{{RUN_NODE}}})", "{{run}} node {{node}}")],
                 unit="percentunit"),
        row("Migration"),
        timeseries("Migration rate", "Pages migrated (pgmigrate_success) and failed (pgmigrate_fail) per second, "
                   "by source node.",
                   [rate_node("pgmigrate_success", "migrated"), rate_node("pgmigrate_fail", "failed")],
                   unit="ops"),
        timeseries("Fallback rate", "Pages per second that fell back to swap during migration, were retried "
                   "in a later pass, or moved from the migration cache to the swap cache.",
                   [rate_run("pgmigrate_fallback_swap", "fell back to swap"),
                    rate_run("migrate_retry", "retried"),
                    rate_run("migcache_move_to_swap", "migcache to swap cache")],
                   unit="ops"),
        timeseries("Migration cache and isolation", "Pages in the V8 migration cache and pages isolated "
                   "for migration.",
                   [(f"sum by (run) (numaemu_nr_migcache_entries{{{RUN}}})", "{{run}} migcache entries"),
                    (f"sum by (run) (numaemu_nr_isolated_anon{{{RUN}}})", "{{run}} isolated")],
                   unit="none"),
        timeseries("Migration latency", "Quantiles of the wall time of a migration call "
                   "(move_pages or migrate_pages).",
                   [(_q(0.5, "numaemu_migration_latency_seconds", "run", RUN), "{{run}} p50"),
                    (_q(0.99, "numaemu_migration_latency_seconds", "run", RUN), "{{run}} p99")],
                   unit="s"),
        row("Swap"),
        timeseries("Swap activity", "Pages swapped out (pswpout) and in (pswpin) per second.",
                   [rate_run("pswpout", "swapped out"), rate_run("pswpin", "swapped in")], unit="ops"),
        timeseries("Swap space", "Swap slots in use, in all, and slots whose page is in the swap cache.",
                   [(f"sum by (run) (numaemu_nr_swap_used{{{RUN}}})", "{{run}} slots used"),
                    (f"sum by (run) (numaemu_swap_size_pages{{{RUN}}})", "{{run}} slots"),
                    (f"sum by (run) (numaemu_swap_cache_pages{{{RUN}}})", "{{run}} in swap cache")],
                   unit="none"),
        timeseries("Reclaim", "Pages scanned and reclaimed per second, direct and background.",
                   [(f"sum by (run) (rate(numaemu_pgscan_direct_total{{{RUN}}}{RATE}) + "
                     f"rate(numaemu_pgscan_kswapd_total{{{RUN}}}{RATE}))", "{{run}} scanned"),
                    (f"sum by (run) (rate(numaemu_pgsteal_direct_total{{{RUN}}}{RATE}) + "
                     f"rate(numaemu_pgsteal_kswapd_total{{{RUN}}}{RATE}))", "{{run}} reclaimed")],
                   unit="ops"),
        row("Faults"),
        timeseries("Faults", "Page faults and major faults (read back from swap) per second, per node.",
                   [rate_node("pgfault", "faults"), rate_node("pgmajfault", "major")], unit="ops"),
        timeseries("Fault latency", "Quantiles of the wall time of a fault batch (one touch call).",
                   [(_q(0.5, "numaemu_fault_latency_seconds", "run", RUN), "{{run}} p50"),
                    (_q(0.9, "numaemu_fault_latency_seconds", "run", RUN), "{{run}} p90"),
                    (_q(0.99, "numaemu_fault_latency_seconds", "run", RUN), "{{run}} p99")],
                   unit="s"),
        timeseries("Fault latency in emulated steps", "Quantiles of the emulated steps of a fault batch.",
                   [(_q(0.5, "numaemu_fault_latency_steps", "run", RUN), "{{run}} p50"),
                    (_q(0.99, "numaemu_fault_latency_steps", "run", RUN), "{{run}} p99")],
                   unit="none"),
        timeseries("NUMA allocations", "Allocations on the intended node (numa_hit) or not (numa_miss), "
                   "per second, per node.",
                   [rate_node("numa_hit", "hit"), rate_node("numa_miss", "miss")], unit="ops"),
        timeseries("Node-local accesses", "Batch accesses per second that a node actor ran on its own "
                   "(every page in its TLB, found present by its page walk, or faulted in by the node "
                   "itself), and those that went to the coordinator as fault batches, per node.",
                   [rate_node("tlb_hits", "TLB hits"), rate_node("tlb_walks", "page walks"),
                    rate_node("local_faults", "local faults"),
                    (f"sum by (run, node) (rate(numaemu_fault_latency_seconds_count{{{RUN_NODE}}}{RATE}))",
                     "{{run}} node {{node}} fault batches")], unit="ops"),
        row("Run"),
        stat("Progress", "Batch accesses done over those the scenario asks for.",
             [(f"sum by (run) (numaemu_run_operations_total{{{RUN}}}) / "
               f"sum by (run) (numaemu_run_planned_operations{{{RUN}}})", "{{run}}")],
             unit="percentunit", w=4),
        stat("Violations", "Data read back wrong or invariants broken, checked when the run ends.",
             [(f"sum by (run) (numaemu_run_violations{{{RUN}}})", "{{run}}")], thresholds=RED_FROM_1, w=4),
        stat("Failed calls",
             "Calls that failed with an errno (touch, move_pages, migrate_pages, fork, swapoff, ...).",
             [(f"sum by (run) (numaemu_run_failed_calls_total{{{RUN}}})", "{{run}}")],
             thresholds=RED_FROM_1, w=4),
        stat("Forks", "Fork cycles so far: children forked, faulted and written (checked), then exited.",
             [(f"sum by (run) (numaemu_run_forks_total{{{RUN}}})", "{{run}}")], w=4),
        stat("Swapoffs", "swapoff cycles so far (then swapon); failed ones are under failed calls.",
             [(f"sum by (run) (numaemu_run_swapoffs_total{{{RUN}}})", "{{run}}")], w=4),
        stat("Finished", "1 once the run has ended and the values are final.",
             [(f"max by (run) (numaemu_run_done{{{RUN}}})", "{{run}}")], w=4),
    ]
    return _dashboard(
        "numaemu-overview", "numaemu: overview",
        "Memory per node, migration, fallback, swap and faults of numaemu runs.",
        [_query_var("run", "Run", "label_values(numaemu_run_info, run)"),
         _query_var("node", "Node", 'label_values(numaemu_node_present_pages{run=~"$run"}, node)')],
        panels)


def policies() -> dict:
    legend = "{{run}} ({{policy}})"

    def total(name: str) -> tuple[str, str]:
        return (f"sum by (run, policy) (numaemu_{name}_total{{{RUN_POLICY}}})", legend)

    def rate(name: str) -> tuple[str, str]:
        return (f"sum by (run, policy) (rate(numaemu_{name}_total{{{RUN_POLICY}}}{RATE}))", legend)

    def mean(metric: str) -> tuple[str, str]:
        return (f"sum by (run, policy) ({metric}_sum{{{RUN_POLICY}}}) / "
                f"sum by (run, policy) ({metric}_count{{{RUN_POLICY}}})", legend)

    table_queries = [
        (f"sum by (run, policy) (numaemu_{n}_total{{{RUN_POLICY}}})", n)
        for n in ("pgmigrate_success", "pgmigrate_fail", "pgmigrate_fallback_swap", "migrate_retry",
                  "pswpout", "pswpin", "pgmajfault")
    ]
    panels = [
        row("Totals"),
        bargauge("Pages migrated", "pgmigrate_success, whole run.", [total("pgmigrate_success")], w=8),
        bargauge("Pages that failed to migrate", "pgmigrate_fail, whole run.", [total("pgmigrate_fail")], w=8),
        bargauge("Pages that fell back to swap", "pgmigrate_fallback_swap, whole run.",
                 [total("pgmigrate_fallback_swap")], w=8),
        bargauge("Pages swapped out", "pswpout, whole run.", [total("pswpout")], w=8),
        bargauge("Mean migration call (steps)", "Emulated steps per move_pages / migrate_pages call.",
                 [mean("numaemu_migration_latency_steps")], w=8, unit="none"),
        bargauge("Mean migration call (seconds)", "Wall time per move_pages / migrate_pages call.",
                 [mean("numaemu_migration_latency_seconds")], w=8, unit="s"),
        _panel("table", "Counters per run", "The main counters of each run, side by side.",
               table_queries, unit="none", w=24, h=7, instant=True, table=True,
               options={"showHeader": True, "cellHeight": "sm"},
               transformations=[{"id": "merge", "options": {}},
                                {"id": "organize", "options": {"excludeByName": {"Time": True}}}]),
        row("Over time"),
        timeseries("Migration rate", "Pages migrated per second.", [rate("pgmigrate_success")], unit="ops"),
        timeseries("Fallback rate", "Pages per second that fell back to swap during migration.",
                   [rate("pgmigrate_fallback_swap")], unit="ops"),
        timeseries("Swap-out rate", "Pages swapped out per second.", [rate("pswpout")], unit="ops"),
        timeseries("Swap slots used", "Swap slots in use.",
                   [(f"sum by (run, policy) (numaemu_nr_swap_used{{{RUN_POLICY}}})", legend)], unit="none"),
        timeseries("Migration-cache entries", "Pages in the V8 migration cache (migcache policy only).",
                   [(f"sum by (run, policy) (numaemu_nr_migcache_entries{{{RUN_POLICY}}})", legend)],
                   unit="none"),
        timeseries("Major faults", "Faults that read a page back from swap, per second.",
                   [rate("pgmajfault")], unit="ops"),
        timeseries("Fault latency p99", "99th percentile of a fault batch's wall time.",
                   [(_q(0.99, "numaemu_fault_latency_seconds", "run, policy", RUN_POLICY), legend)], unit="s"),
        timeseries("Migration latency p99", "99th percentile of a migration call's wall time.",
                   [(_q(0.99, "numaemu_migration_latency_seconds", "run, policy", RUN_POLICY), legend)],
                   unit="s"),
        timeseries("Migration latency p99 (steps)", "99th percentile of a migration call's emulated steps.",
                   [(_q(0.99, "numaemu_migration_latency_steps", "run, policy", RUN_POLICY), legend)],
                   unit="none"),
        timeseries("Fault latency p99 (steps)", "99th percentile of a fault batch's emulated steps.",
                   [(_q(0.99, "numaemu_fault_latency_steps", "run, policy", RUN_POLICY), legend)],
                   unit="none"),
    ]
    return _dashboard(
        "numaemu-policies", "numaemu: policy comparison",
        "numaemu runs side by side by their run and policy labels (swapcache, migcache, migentry).",
        [_query_var("run", "Run", "label_values(numaemu_run_info, run)"),
         _query_var("policy", "Policy", 'label_values(numaemu_run_info{run=~"$run"}, policy)')],
        panels)


def explorer() -> dict:
    legend = "{{run}} ({{mode}})"
    panels = [
        stat("Schedules", "Schedules explored.",
             [(f"sum by (run, mode) (numaemu_explore_schedules_total{{{RUN}}})", legend)]),
        stat("Distinct states", "Distinct states seen (dfs).",
             [(f"sum by (run, mode) (numaemu_explore_distinct_states{{{RUN}}})", legend)]),
        stat("Violations", "Invariant violations found (the explorer stops at the first).",
             [(f"sum by (run, mode) (numaemu_explore_violations_total{{{RUN}}})", legend)],
             thresholds=RED_FROM_1),
        stat("Elapsed", "Wall time of the exploration.",
             [(f"max by (run, mode) (numaemu_explore_elapsed_seconds{{{RUN}}})", legend)], unit="s"),
        timeseries("Schedules per second", "Schedules explored per second, now and averaged over the run.",
                   [(f"sum by (run, mode) (rate(numaemu_explore_schedules_total{{{RUN}}}{RATE}))",
                     "{{run}} ({{mode}}) now"),
                    (f"max by (run, mode) (numaemu_explore_schedules_per_second{{{RUN}}})",
                     "{{run}} ({{mode}}) average")],
                   unit="ops"),
        timeseries("Distinct states", "Distinct states seen so far (dfs; random modes keep none).",
                   [(f"max by (run, mode) (numaemu_explore_distinct_states{{{RUN}}})", legend)], unit="none"),
        timeseries("Schedules and pruning", "Schedules explored and those cut at a known state.",
                   [(f"sum by (run, mode) (numaemu_explore_schedules_total{{{RUN}}})", "{{run}} explored"),
                    (f"sum by (run, mode) (numaemu_explore_pruned_total{{{RUN}}})", "{{run}} pruned")],
                   unit="none"),
        timeseries("Pruned fraction", "Schedules cut at a known state over schedules explored.",
                   [(f"sum by (run, mode) (numaemu_explore_pruned_total{{{RUN}}}) / "
                     f"clamp_min(sum by (run, mode) (numaemu_explore_schedules_total{{{RUN}}}), 1)", legend)],
                   unit="percentunit"),
        timeseries("Violations", "Invariant violations found.",
                   [(f"sum by (run, mode) (numaemu_explore_violations_total{{{RUN}}})", legend)], unit="none"),
        timeseries("Finished", "1 once the exploration has ended.",
                   [(f"max by (run, mode) (numaemu_explore_done{{{RUN}}})", legend)], unit="none"),
    ]
    return _dashboard(
        "numaemu-explorer", "numaemu: race explorer",
        "Progress of numaemu explore: schedules per second, distinct states, violations.",
        [_query_var("run", "Run", "label_values(numaemu_explore_info, run)")],
        panels)


def all_dashboards() -> dict[str, dict]:
    """uid -> dashboard JSON model."""
    return {d["uid"]: d for d in (overview(), policies(), explorer())}


def filename(uid: str) -> str:
    return uid.removeprefix("numaemu-") + ".json"


def render(dashboard: dict) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=False) + "\n"


def expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression of a dashboard's panels (rows included)."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(t["expr"])
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def variable_queries(dashboard: dict) -> list[str]:
    """The query of every query-type template variable (label_values(...))."""
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            out.append(q["query"] if isinstance(q, dict) else q)
    return out
