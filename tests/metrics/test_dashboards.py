"""The Grafana dashboards: the committed JSON, its variables and uids, its
PromQL (parsed with promql-parser), the metric names it uses, and
`numaemu dashboards export`."""
from __future__ import annotations

import json
import re

import promql_parser
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from cluster.cli import main
from cluster.dashboards import UIDS, all_dashboards, expressions, filename, render, variable_queries
from cluster.metrics import ExploreState, RunState, make_registry
from cluster.runner_local import run_local
from cluster.scenario import load_scenario
from metrics_support import REPO, sample_names, write_scenario

DASHBOARDS = REPO / "dashboards"
GRAFANA_VARS = (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"))


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Expand Grafana's variables ($name and ${name}) as Grafana would."""
    for var, val in GRAFANA_VARS:
        expr = expr.replace(var, val)
    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], expr)
    return expr


def committed() -> dict[str, dict]:
    return {json.loads(p.read_text())["uid"]: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}


def test_the_committed_json_is_what_numaemu_builds():
    """dashboards/*.json are written by `numaemu dashboards export dashboards`."""
    built = all_dashboards()
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(filename(u) for u in built)
    for uid, dash in built.items():
        assert (DASHBOARDS / filename(uid)).read_text() == render(dash), \
            f"dashboards/{filename(uid)} is stale: run numaemu dashboards export dashboards"


def test_fixed_uids_titles_and_no_id():
    dash = committed()
    assert set(dash) == set(UIDS) == {"numaemu-overview", "numaemu-policies", "numaemu-explorer"}
    for uid, d in dash.items():
        assert d.get("id") is None  # provisionable and pushable as is
        assert d["title"].startswith("numaemu: ")
        assert "numaemu" in d["tags"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids))


def test_datasource_and_run_variables():
    for uid, d in committed().items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        run = variables["run"]
        assert run["type"] == "query" and run["multi"] and run["includeAll"]
        assert run["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert run["query"]["query"].startswith("label_values(numaemu_")
        for panel in d["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for t in panel["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert 'run=~"$run"' in t["expr"], (uid, panel["title"], t["expr"])


def test_panels_fit_the_grid():
    for d in committed().values():
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0


def test_the_overview_has_what_the_issue_asks_for():
    d = committed()["numaemu-overview"]
    titles = {p["title"] for p in d["panels"]}
    assert {"Memory per node", "Migration rate", "Fallback rate", "Swap activity", "Fault latency"} <= titles
    (lat,) = [p for p in d["panels"] if p["title"] == "Fault latency"]
    assert all(t["expr"].startswith("histogram_quantile(") for t in lat["targets"])
    pol = committed()["numaemu-policies"]
    assert all("policy" in t["expr"] for p in pol["panels"] for t in p.get("targets", []))
    exp = committed()["numaemu-explorer"]
    exprs = " ".join(expressions(exp))
    for name in ("numaemu_explore_schedules_total", "numaemu_explore_distinct_states",
                 "numaemu_explore_violations_total"):
        assert name in exprs


def _all_expressions():
    for uid, d in all_dashboards().items():
        for e in expressions(d):
            yield uid, e
        for v in variable_queries(d):
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v)
            assert m, v
            yield uid, m.group(1)


@pytest.mark.parametrize("uid,expr", list(_all_expressions()))
def test_every_expression_parses(uid, expr):
    q = substitute(expr, {"run": ".*", "node": ".*", "policy": ".*", "datasource": "x"})
    promql_parser.parse(q)


def test_a_broken_expression_does_not_parse():
    with pytest.raises(ValueError):
        promql_parser.parse(substitute('sum(rate(numaemu_pswpout_total{run=~"$run"}[$__rate_interval])',
                                       {"run": ".*"}))


def _names(expr: str) -> set[str]:
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(substitute(expr, {"run": ".*", "node": ".*", "policy": ".*"})), visit)
    return names


def test_every_metric_a_dashboard_names_is_exported(tmp_path):
    """Statically, against an in-process run and exploration (the Prometheus
    test checks the same against live endpoints)."""
    spec = load_scenario(str(write_scenario(tmp_path / "s.toml", operations=100)))
    run = RunState("r", "s.toml", "local", 100)
    registry = make_registry(run=run)
    run_local(spec, metrics=run)
    run.finish({"violations": 0})
    from emulator import explore as X
    from emulator.races import load

    sc = load(str(REPO / "examples/races/mixed-migcache.toml"))
    ex = ExploreState("e", sc.path, "migcache", "random", [])
    out, st = X.explore_random(sc, [], max_schedules=3)
    ex.finish(out, st)
    exported = sample_names(generate_latest(registry).decode()) | \
        sample_names(generate_latest(make_registry(explore=ex)).decode())
    used = set().union(*(_names(e) for _, e in _all_expressions()))
    assert len(used) > 20
    assert used <= exported, sorted(used - exported)


def test_export_writes_the_three_dashboards(tmp_path):
    out = tmp_path / "out" / "dash"
    res = CliRunner().invoke(main, ["dashboards", "export", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["explorer.json", "overview.json", "policies.json"]
    for p in out.iterdir():
        assert p.read_text() == (DASHBOARDS / p.name).read_text()
    assert "numaemu-overview" in res.output


def test_export_into_a_file_is_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(main, ["dashboards", "export", str(f)])
    assert res.exit_code == 2
