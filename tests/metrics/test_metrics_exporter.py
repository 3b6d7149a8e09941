"""The exporter in-process: what the collector reads, its freshness, the step
counter, the registry per run, and the metrics options of the CLI."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import prometheus_client
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from cluster.cli import main
from cluster.metrics import ExploreState, RunState, make_registry
from cluster.runner_local import LocalRun, run_local
from cluster.scenario import load_scenario
from emulator.vmstat import EVENTS, GAUGES
from metrics_support import REPO, free_port, sample_names, samples, value, write_scenario


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    return write_scenario(tmp_path / "pressure.toml", operations=400)


def test_collector_reads_the_machine_and_the_run(scenario):
    spec = load_scenario(str(scenario))
    state = RunState("cmp", str(scenario), "local", spec.run.operations)
    registry = make_registry(run=state)
    run = LocalRun(spec, metrics=state)
    summary = run.run()
    state.finish(summary)
    text = generate_latest(registry).decode()
    m = run.m
    for n in range(m.nr_nodes):
        vm = m.vmstat(node=n)
        for name in EVENTS:
            assert value(text, f"numaemu_{name}_total", run="cmp", policy="migcache", node=str(n)) == vm[name]
        for name in set(GAUGES) - {"nr_swap_used"}:
            assert value(text, f"numaemu_{name}", node=str(n)) == vm[name]
        info = m.node_info()[n]
        assert value(text, "numaemu_node_present_pages", node=str(n)) == info["frames"]
        assert value(text, "numaemu_node_used_pages", node=str(n)) == info["used"]
    assert value(text, "numaemu_nr_swap_used") == m.swap_info()["used"] == summary["swap"]["used"]
    assert value(text, "numaemu_swap_size_pages") == 4096
    assert value(text, "numaemu_run_operations_total") == 400
    assert value(text, "numaemu_run_planned_operations") == 400
    assert value(text, "numaemu_run_migrations_total") == summary["migration_events"] == 80
    assert value(text, "numaemu_run_done") == 1
    assert value(text, "numaemu_run_violations") == 0
    assert value(text, "numaemu_run_info", run="cmp", backend="local", payload="token") == 1
    assert summary["totals"]["pswpout"] > 0 and summary["totals"]["pgmigrate_success"] > 0
    # one fault observation per access, one migration observation per move_pages
    s = samples(text)
    faults = sum(v for (name, _), v in s.items() if name == "numaemu_fault_latency_seconds_count")
    steps = sum(v for (name, _), v in s.items() if name == "numaemu_fault_latency_steps_count")
    moves = sum(v for (name, ls), v in s.items()
                if name == "numaemu_migration_latency_steps_count" and dict(ls)["call"] == "move_pages")
    assert faults == steps == 400
    assert moves == 80
    # a migration batch runs several steps; +Inf holds every observation
    step_sum = sum(v for (name, _), v in s.items() if name == "numaemu_migration_latency_steps_sum")
    assert step_sum >= 80
    for (name, ls), v in s.items():
        if name.endswith("_bucket") and dict(ls)["le"] == "+Inf":
            count = s[(name[:-len("_bucket")] + "_count", tuple(kv for kv in ls if kv[0] != "le"))]
            assert v == count


def test_every_sample_has_run_and_policy_labels(scenario):
    spec = load_scenario(str(scenario))
    state = RunState("lbl", str(scenario), "local", spec.run.operations)
    registry = make_registry(run=state)
    run_local(spec, metrics=state)
    for (name, ls), _ in samples(generate_latest(registry).decode()).items():
        if name.startswith("numaemu_"):
            labels = dict(ls)
            assert labels["run"] == "lbl" and labels["policy"] == "migcache", name


def test_nothing_is_exported_before_the_runner_attaches():
    state = RunState("early", "x.toml", "local", 10)
    text = generate_latest(make_registry(run=state)).decode()
    assert not [n for n in sample_names(text) if n.startswith("numaemu_")]


def test_scrapes_during_a_run_see_it_progress(tmp_path):
    """Scrapes on another thread get in between operations (the run loop hands
    its lock over), and what they read only moves forward."""
    spec = load_scenario(str(write_scenario(tmp_path / "long.toml", operations=1500)))
    state = RunState("live", "long.toml", "local", spec.run.operations)
    registry = make_registry(run=state)
    seen: list[tuple[float, float]] = []
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            text = generate_latest(registry).decode()
            if "numaemu_run_operations_total" in text:
                seen.append((value(text, "numaemu_run_operations_total"),
                             value(text, "numaemu_pgfault_total", node="0")))

    t = threading.Thread(target=scraper, daemon=True)
    t.start()
    try:
        run_local(spec, metrics=state)
    finally:
        stop.set()
        t.join(10)
    during = [ops for ops, _ in seen if 0 < ops < 1500]
    assert len(set(during)) >= 2, f"scrapes during the run saw operations {sorted(set(during))}"
    assert [o for o, _ in seen] == sorted(o for o, _ in seen)
    assert [f for _, f in seen] == sorted(f for _, f in seen)


def test_step_counting_changes_nothing_in_the_model(scenario):
    spec = load_scenario(str(scenario))
    plain = run_local(spec)
    spec = load_scenario(str(scenario))
    counted = run_local(spec, metrics=RunState("s", "s", "local", spec.run.operations))
    from cluster.summary import TIMED_FIELDS

    def counts(s):      # the per-node fault latencies are wall-clock timings
        return ([{k: v for k, v in e.items() if k not in TIMED_FIELDS} for e in s["nodes"]],
                {k: v for k, v in s["totals"].items() if k not in TIMED_FIELDS})
    assert counts(plain) == counts(counted)
    for key in ("swap", "errors", "violations"):
        assert plain[key] == counted[key], key


def test_step_counter_counts_the_steps_of_each_call():
    from emulator import Machine
    from cluster.stepcount import attach

    m = Machine.from_config({"nodes": 2, "frames_per_node": 64})
    c = attach(m)
    pid = m.spawn(node=0)
    addr = m.mmap(pid, 8)
    m.touch(pid, addr, 8, write=True)
    after_touch = c.steps
    assert after_touch >= 1
    pages = [addr + i * m.page_size for i in range(8)]
    m.move_pages(pid, pages, None)  # a query runs no operation
    assert c.steps == after_touch
    assert m.move_pages(pid, pages, [1] * 8, 2) == [1] * 8
    assert c.steps > after_touch
    m.check()


def test_a_registry_per_run_and_the_global_one_untouched(scenario):
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    spec = load_scenario(str(scenario))
    a, b = RunState("a", "s", "local", 400), RunState("b", "s", "local", 400)
    ra, rb = make_registry(run=a), make_registry(run=b)
    run_local(spec, metrics=a)
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before
    assert value(generate_latest(ra).decode(), "numaemu_run_operations_total") == 400
    assert "numaemu_run_operations_total" not in generate_latest(rb).decode()  # b never ran
    assert "numaemu_" not in generate_latest(prometheus_client.REGISTRY).decode()


def test_explore_state_exports_progress_and_violations():
    from emulator import explore as X
    from emulator.races import load

    sc = load(str(REPO / "examples/races/r1-no-pte-recheck.toml"))
    state = ExploreState("r1", sc.path, "migentry", "dfs", ["r1-no-pte-recheck"])
    registry = make_registry(explore=state)
    text = generate_latest(registry).decode()
    assert value(text, "numaemu_explore_schedules_total") == 0
    assert value(text, "numaemu_explore_done") == 0
    calls = []

    def progress(st):
        state.stats = st
        calls.append(value(generate_latest(registry).decode(), "numaemu_explore_schedules_total"))

    out, st = X.explore_dfs(sc, ["r1-no-pte-recheck"], bound=2, progress=progress)
    assert out is not None and out.violation
    assert calls == list(range(1, st.schedules + 1))  # fresh at every schedule
    state.finish(out, st)
    text = generate_latest(registry).decode()
    assert value(text, "numaemu_explore_schedules_total", run="r1", mode="dfs") == st.schedules
    assert value(text, "numaemu_explore_distinct_states") == st.states > 0
    assert value(text, "numaemu_explore_violations_total") == 1
    assert value(text, "numaemu_explore_done") == 1
    assert value(text, "numaemu_explore_info", bugs="r1-no-pte-recheck") == 1
    elapsed = value(text, "numaemu_explore_elapsed_seconds")
    assert value(generate_latest(registry).decode(), "numaemu_explore_elapsed_seconds") == elapsed  # frozen


# -- the command line --------------------------------------------------------------

def test_run_with_metrics_serves_registers_and_cleans_up(scenario, tmp_path):
    sd = tmp_path / "targets"
    sd.mkdir()
    port = free_port()
    res = runner().invoke(main, ["run", str(scenario), "--metrics-port", str(port), "--sd-dir", str(sd),
                                 "--run-label", "cli"])
    assert res.exit_code == 0, res.output + res.stderr
    assert f"metrics: serving http://127.0.0.1:{port}/metrics (run 'cli'), target file {sd}" in res.stderr
    assert list(sd.iterdir()) == []  # the target file is gone at exit
    with socket.socket() as s:  # and the port is free again
        s.bind(("127.0.0.1", port))


def test_explore_with_metrics_runs(tmp_path):
    port = free_port()
    res = runner().invoke(main, ["explore", str(REPO / "examples/races/r1-no-pte-recheck.toml"),
                                 "--bug", "r1-no-pte-recheck", "--quiet", "--metrics-port", str(port),
                                 "--sd-dir", ""])
    assert res.exit_code == 1  # the violation, as without metrics
    assert "VIOLATION" in res.output
    assert f"metrics: serving http://127.0.0.1:{port}/metrics (run 'r1-no-pte-recheck')" in res.stderr


@pytest.mark.parametrize("command", ["run", "explore"])
def test_hold_needs_a_metrics_port(command, scenario):
    target = str(scenario) if command == "run" else str(REPO / "examples/races/r1-no-pte-recheck.toml")
    res = runner().invoke(main, [command, target, "--hold", "5"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --hold: needs --metrics-port"


@pytest.mark.parametrize("command", ["run", "explore"])
@pytest.mark.parametrize("hold", ["inf", "1e309", "nan", "-1", "86400.5"])
def test_hold_is_finite_and_at_most_a_day(command, scenario, hold):
    """A hold past a day is refused before the run (an endless one used to
    crash after it: OverflowError from time.sleep)."""
    target = str(scenario) if command == "run" else str(REPO / "examples/races/r1-no-pte-recheck.toml")
    port = free_port()
    res = runner().invoke(main, [command, target, "--metrics-port", str(port), "--hold", hold, "--sd-dir", ""])
    assert res.exit_code == 2
    shown = {"1e309": "inf", "86400.5": "86400.5"}.get(hold, hold)
    assert f"Invalid value for '--hold': must be 0..86400 seconds (a day), got {shown}" in res.stderr
    assert res.stdout == "" and "metrics: serving" not in res.stderr


def test_a_hold_of_a_day_is_served_until_sigterm(tmp_path):
    """The longest hold allowed runs (and SIGTERM ends it: the run's own exit status)."""
    import signal
    import subprocess

    from metrics_support import numaemu_cmd, scrape, wait_for

    port = free_port()
    proc = subprocess.Popen(numaemu_cmd() + ["run", str(write_scenario(tmp_path / "s.toml", operations=50)),
                                             "--backend", "local", "--metrics-port", str(port), "--hold", "86400",
                                             "--sd-dir", ""], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if "metrics: holding" in line:
                break
        assert f"metrics: holding http://127.0.0.1:{port}/metrics for 86400 s (Ctrl-C ends it)" in line
        wait_for("the held endpoint", lambda: value(scrape(port), "numaemu_run_done") == 1.0, timeout=30)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_bad_sd_dir_is_bad_input(scenario, tmp_path):
    res = runner().invoke(main, ["run", str(scenario), "--metrics-port", str(free_port()),
                                 "--sd-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: --sd-dir {tmp_path / 'nope'}: not a directory"


def test_a_port_in_use_is_bad_input(scenario):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = runner().invoke(main, ["run", str(scenario), "--metrics-port", str(port), "--sd-dir", ""])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: --metrics-port {port}: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in res.stderr


def test_metrics_port_out_of_range_is_a_usage_error(scenario):
    res = runner().invoke(main, ["run", str(scenario), "--metrics-port", "70000"])
    assert res.exit_code == 2


def test_without_metrics_port_nothing_listens_and_the_runner_is_untimed(scenario):
    run = LocalRun(load_scenario(str(scenario)))
    assert run.metrics is None and run.steps is None
    assert "_run" not in vars(run.m)  # the Machine keeps the class's driver
    assert isinstance(run.run()["nodes"], list)
    np.testing.assert_equal(run.m.vmstat()["pgfault"] > 0, True)


def test_failed_calls_are_counted_by_call_and_errno(tmp_path):
    p = tmp_path / "oom.toml"
    p.write_text("[machine]\nnodes = 1\nframes_per_node = 64\n\n"
                 "[[workload]]\nnode = 0\npages = 200\nbatch = 16\n\n[run]\noperations = 50\n")
    spec = load_scenario(str(p))
    state = RunState("oom", str(p), "local", 50)
    registry = make_registry(run=state)
    summary = run_local(spec, metrics=state)
    assert summary["errors"].get("touch:ENOMEM", 0) > 0
    text = generate_latest(registry).decode()
    for key, n in summary["errors"].items():
        call, errno_name = key.split(":")
        assert value(text, "numaemu_run_errors_total", call=call, errno=errno_name) == n
    assert value(text, "numaemu_run_failed_calls_total") == sum(summary["errors"].values())
    # failed touches are timed too
    assert sum(v for (n, _), v in samples(text).items() if n == "numaemu_fault_latency_seconds_count") == 50


def test_forks_and_swapoffs_are_counted(tmp_path):
    p = tmp_path / "forks.toml"
    p.write_text("[machine]\nnodes = 2\nframes_per_node = 128\nswap_pages = 512\n\n"
                 "[[workload]]\nnode = 0\npages = 96\nbatch = 16\nfork_every = 4\n\n"
                 "[reclaim]\nevery = 10\npages = 32\n\n[swapoff]\nevery = 30\n\n[run]\noperations = 120\n")
    spec = load_scenario(str(p))
    state = RunState("forks", str(p), "local", 120)
    registry = make_registry(run=state)
    summary = run_local(spec, metrics=state)
    text = generate_latest(registry).decode()
    assert value(text, "numaemu_run_forks_total") == summary["forks"] == 30
    assert value(text, "numaemu_run_swapoffs_total") == summary["swapoff_events"] == 4
