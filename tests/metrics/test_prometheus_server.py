"""Against a real Prometheus (Debian's package; .ci/run installs it).

One Prometheus on a free loopback port discovers, through file_sd target
files, a live `numaemu run` and a live `numaemu explore`, both with
--metrics-port and --hold, scraping every second. The tests wait (polling the
HTTP API, with deadlines) until Prometheus has scraped both after they
ended, then compare what it scraped with the run's --json summary, evaluate
every dashboard expression, and check the endpoints with promtool.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import promql_parser
import pytest

from cluster.dashboards import all_dashboards, expressions, variable_queries
from emulator.vmstat import EVENTS, GAUGES
from metrics_support import (REPO, free_port, numaemu_cmd, promql_query, sample_names, scrape, wait_for,
                             write_scenario, http_get)

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)

if PROMETHEUS is None and not os.environ.get("CI"):
    pytest.skip("no prometheus binary (apt-get install prometheus; .ci/run does)", allow_module_level=True)

RUN_LABEL = "e2e-run"
EXPLORE_LABEL = "e2e-explore"
# Prometheus (2.42) applies discovered targets every 5 s: a new endpoint is
# first scraped about 6 s after its target file appears. The run and the
# exploration last longer than that, so that they are scraped while they move.
OPERATIONS = 12000      # on the Ray backend (the default): about 3-4 s after Ray starts, several scrapes
EXPLORE_SECONDS = "9"
HOLD = "120"            # ended early with SIGTERM by the last test
DEADLINE = 90.0


def _substitute(expr: str) -> str:
    """Grafana's variables, as Grafana would expand them."""
    for var, val in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "5m"),
                     ("$run", ".*"), ("$node", ".*"), ("$policy", ".*")):
        expr = expr.replace(var, val)
    assert "$" not in expr, expr
    return expr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prometheus + numaemu run + numaemu explore; killed at the end."""
    tmp = tmp_path_factory.mktemp("prom")
    targets = tmp / "targets"
    targets.mkdir()
    prom_port = free_port()
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: numaemu\n"
        "    file_sd_configs:\n"
        "      - files: ['targets/*.json']\n"
        "        refresh_interval: 1s\n", encoding="utf-8")
    procs: dict[str, subprocess.Popen] = {}
    logs = {}

    def start(name: str, argv: list[str]) -> None:
        logs[name] = open(tmp / f"{name}.log", "w+", encoding="utf-8")
        procs[name] = subprocess.Popen(argv, cwd=tmp, stdout=logs[name], stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)

    prom = f"127.0.0.1:{prom_port}"
    try:
        start("prometheus", [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={prom}",
                             "--log.level=warn"])
        wait_for("Prometheus to be ready", lambda: "Ready" in http_get(f"http://{prom}/-/ready"), DEADLINE)

        scenario = write_scenario(tmp / "pressure.toml", operations=OPERATIONS)
        run_port, explore_port = free_port(), free_port()
        while explore_port == run_port:
            explore_port = free_port()
        summary_path = tmp / "summary.json"
        start("run", numaemu_cmd() + ["run", str(scenario), "--json", str(summary_path),
                                      "--metrics-port", str(run_port), "--hold", HOLD,
                                      "--run-label", RUN_LABEL, "--sd-dir", str(targets)])
        start("explore", numaemu_cmd() + ["explore", str(REPO / "examples/races/mixed-migcache.toml"),
                                          "--mode", "random", "--seconds", EXPLORE_SECONDS, "--quiet",
                                          "--metrics-port", str(explore_port), "--hold", HOLD,
                                          "--run-label", EXPLORE_LABEL, "--sd-dir", str(targets)])

        def ended_and_scraped() -> bool:
            for name in ("run", "explore"):
                if procs[name].poll() is not None:
                    logs[name].seek(0)
                    raise AssertionError(f"numaemu {name} exited early: {logs[name].read()}")
            run_done = promql_query(prom, f'numaemu_run_done{{run="{RUN_LABEL}"}} == 1')
            explore_done = promql_query(prom, f'numaemu_explore_done{{run="{EXPLORE_LABEL}"}} == 1')
            return bool(run_done and explore_done and summary_path.exists())

        wait_for("Prometheus to scrape both after they ended", ended_and_scraped, DEADLINE, interval=0.25)
        yield {
            "prom": prom, "tmp": tmp, "targets": targets, "procs": procs,
            "run_port": run_port, "explore_port": explore_port,
            "summary": json.loads(summary_path.read_text()),
        }
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
            p.wait(10)
        for fh in logs.values():
            fh.close()


def _by_labels(result: list[dict], *keys: str) -> dict:
    return {tuple(r["metric"].get(k) for k in keys): float(r["value"][1]) for r in result}


def test_scraped_counters_equal_the_json_summary(stack):
    prom, summary = stack["prom"], stack["summary"]
    assert summary["violations"] == 0
    assert summary["totals"]["pswpout"] > 0 and summary["totals"]["pgmigrate_success"] > 0
    sel = f'run="{RUN_LABEL}"'
    for name in EVENTS:
        got = _by_labels(promql_query(prom, f"numaemu_{name}_total{{{sel}}}"), "node")
        want = {(str(n["node"]),): float(n["vmstat"][name]) for n in summary["nodes"]}
        assert got == want, name
    for name in set(GAUGES) - {"nr_swap_used"}:
        got = _by_labels(promql_query(prom, f"numaemu_{name}{{{sel}}}"), "node")
        assert got == {(str(n["node"]),): float(n["vmstat"][name]) for n in summary["nodes"]}, name
    # the headline numbers, spelled out
    for n in summary["nodes"]:
        node = f'node="{n["node"]}"'
        for name in ("pgmigrate_success", "pswpout", "numa_hit", "pgmajfault"):
            (r,) = promql_query(prom, f"numaemu_{name}_total{{{sel}, {node}}}")
            assert float(r["value"][1]) == n[name], name
        (r,) = promql_query(prom, f"numaemu_node_used_pages{{{sel}, {node}}}")
        assert float(r["value"][1]) == n["used"]
    (r,) = promql_query(prom, f"numaemu_nr_swap_used{{{sel}}}")
    assert float(r["value"][1]) == summary["swap"]["used"] == summary["totals"]["vmstat"]["nr_swap_used"]
    (r,) = promql_query(prom, f"numaemu_run_operations_total{{{sel}}}")
    assert float(r["value"][1]) == summary["operations"] == OPERATIONS
    # every access ran in its node actor (a TLB hit, a page walk, a local fault) or was a fault batch to the coordinator
    (r,) = promql_query(prom, f"sum(numaemu_fault_latency_seconds_count{{{sel}}})")
    assert float(r["value"][1]) == summary["tlb"]["misses"]
    (r,) = promql_query(prom, f"sum(numaemu_tlb_hits_total{{{sel}}})")
    assert float(r["value"][1]) == summary["tlb"]["hits"]
    (r,) = promql_query(prom, f"sum(numaemu_tlb_walks_total{{{sel}}})")
    assert float(r["value"][1]) == summary["tlb"]["walks"]
    (r,) = promql_query(prom, f"sum(numaemu_local_faults_total{{{sel}}})")
    assert float(r["value"][1]) == summary["tlb"]["local_faults"]
    assert summary["tlb"]["hits"] + summary["tlb"]["walks"] + summary["tlb"]["local_faults"] + \
        summary["tlb"]["misses"] == OPERATIONS
    (r,) = promql_query(prom, f"sum(numaemu_migration_latency_steps_count{{{sel}}})")
    assert float(r["value"][1]) == summary["migration_events"]
    # every series carries the policy
    assert {r["metric"]["policy"] for r in promql_query(prom, f'{{__name__=~"numaemu_.*", {sel}}}')} \
        == {summary["policy"]}


def test_the_run_and_the_exploration_were_scraped_while_they_moved(stack):
    """Prometheus saw them unfinished (done == 0) with progress, then moving on."""
    prom = stack["prom"]
    for metric, done, label in (("numaemu_run_operations_total", "numaemu_run_done", RUN_LABEL),
                                ("numaemu_explore_schedules_total", "numaemu_explore_done", EXPLORE_LABEL)):
        sel = f'{{run="{label}"}}'
        (r,) = promql_query(prom, f"min_over_time({done}{sel}[5m])")
        assert float(r["value"][1]) == 0, f"{label}: never scraped before it ended (raise its length)"
        (r,) = promql_query(prom, f"changes({metric}{sel}[5m])")
        assert float(r["value"][1]) >= 1, label


def test_runs_register_through_file_sd(stack):
    files = sorted(stack["targets"].glob("*.json"))
    assert len(files) == 2
    docs = [json.loads(f.read_text()) for f in files]
    targets = {d[0]["labels"]["numaemu_run"]: d[0]["targets"] for d in docs}
    assert targets == {RUN_LABEL: [f"127.0.0.1:{stack['run_port']}"],
                       EXPLORE_LABEL: [f"127.0.0.1:{stack['explore_port']}"]}
    active = json.loads(http_get(f"http://{stack['prom']}/api/v1/targets"))["data"]["activeTargets"]
    seen = {t["labels"].get("numaemu_run"): t["health"] for t in active}
    assert seen == {RUN_LABEL: "up", EXPLORE_LABEL: "up"}


def test_explorer_progress_reached_prometheus(stack):
    prom = stack["prom"]
    (r,) = promql_query(prom, f'numaemu_explore_schedules_total{{run="{EXPLORE_LABEL}"}}')
    assert float(r["value"][1]) > 0
    assert r["metric"]["policy"] == "migcache" and r["metric"]["mode"] == "random"
    (r,) = promql_query(prom, f'numaemu_explore_violations_total{{run="{EXPLORE_LABEL}"}}')
    assert float(r["value"][1]) == 0


def test_every_dashboard_expression_parses_and_returns_data(stack):
    prom = stack["prom"]
    empty = []
    checked = 0
    for uid, dash in all_dashboards().items():
        for expr in expressions(dash):
            q = _substitute(expr)
            promql_parser.parse(q)
            if not promql_query(prom, q):
                empty.append(f"{uid}: {q}")
            checked += 1
        for var in variable_queries(dash):
            inner = _substitute(var).removeprefix("label_values(").rsplit(",", 1)[0]
            promql_parser.parse(inner)
            if not promql_query(prom, inner):
                empty.append(f"{uid} variable: {var}")
    assert checked > 30
    assert not empty, "no data:\n" + "\n".join(empty)


def test_every_metric_a_dashboard_names_is_exported(stack):
    exported = sample_names(scrape(stack["run_port"])) | sample_names(scrape(stack["explore_port"]))
    used = set()
    for dash in all_dashboards().values():
        for expr in expressions(dash) + [v.removeprefix("label_values(").rsplit(",", 1)[0]
                                        for v in variable_queries(dash)]:
            def visit(node):
                if isinstance(node, promql_parser.VectorSelector) and node.name:
                    used.add(node.name)
                return True
            promql_parser.walk(promql_parser.parse(_substitute(expr)), visit)
    assert used and used <= exported, sorted(used - exported)


@pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="no promtool")
@pytest.mark.parametrize("endpoint", ["run_port", "explore_port"])
def test_promtool_check_metrics_passes_on_a_scrape(stack, endpoint):
    text = scrape(stack[endpoint])
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == "", res.stdout + res.stderr


def test_sigterm_ends_the_hold_keeps_the_status_and_removes_the_target_files(stack):
    """Last: ends the two numaemu processes."""
    for name, status in (("run", 0), ("explore", 0)):
        p = stack["procs"][name]
        assert p.poll() is None  # still holding
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == status, name
    assert list(stack["targets"].glob("*.json")) == []
    for port in (stack["run_port"], stack["explore_port"]):
        with pytest.raises(OSError):
            scrape(port)
