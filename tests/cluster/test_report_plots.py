"""Timeline samples, call latencies, and ``numaemu run --report DIR``."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cluster.cli import main
from cluster.plots import INDEX, PLOTS, PNG_SIZE, write_report
from cluster.scenario import load_scenario
from cluster.timeline import (SAMPLE_NODE_FIELDS, LatencyRecorder, Timeline, latency_stats,
                              machine_sample, sample_every)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Small enough to run in a second, under memory pressure so that pages are
# swapped out and migrations fall back to swap (policy swapcache).
SCENARIO = """\
[machine]
nodes = 3
frames_per_node = 96
swap_pages = 1024
page_size = 256
policy = "{policy}"
payload = "token"

[[workload]]
node = 0
processes = 2
pages = 100
pattern = "uniform"
write_ratio = 0.6
batch = 16

[[workload]]
node = 2
processes = 2
pages = 60
shared = true
pattern = "zipf"
batch = 8

[migration]
every = {every}
mode = "{mode}"

[run]
operations = {ops}
seed = 4
"""


def write_scenario(path: Path, policy="swapcache", mode="move_pages", every=6, ops=600) -> Path:
    path.write_text(textwrap.dedent(SCENARIO.format(policy=policy, mode=mode, every=every, ops=ops)))
    return path


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """One CLI run with --report into a directory that does not exist yet."""
    tmp = tmp_path_factory.mktemp("report")
    scenario = write_scenario(tmp / "pressure.toml")
    out_dir = tmp / "out" / "report"          # parents are created too
    json_path = tmp / "summary.json"
    result = runner().invoke(main, ["run", str(scenario), "--backend", "local", "--report", str(out_dir),
                                    "--json", str(json_path)])
    return result, out_dir, json.loads(json_path.read_text()) if json_path.exists() else None


def test_the_run_with_report_succeeds(report_run):
    result, out_dir, summary = report_run
    assert result.exit_code == 0, result.output + (result.stderr or "")
    assert summary is not None and summary["violations"] == 0
    assert f"report: {out_dir / INDEX}" in result.stderr
    # the scenario really exercised what the plots show
    totals = summary["totals"]
    assert totals["pgmigrate_success"] > 0 and totals["pswpout"] > 0
    assert max(s["swap_used"] for s in summary["timeline"]) > 0


def test_the_pngs_are_valid_images_of_the_expected_size(report_run):
    import matplotlib.image as mpimg

    _, out_dir, _ = report_run
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(PLOTS + (INDEX,))
    for name in PLOTS:
        path = out_dir / name
        data = path.read_bytes()
        assert len(data) > 1000, name
        assert data[:8] == PNG_MAGIC, name
        img = mpimg.imread(path)
        assert img.shape[:2] == (PNG_SIZE[1], PNG_SIZE[0]), name      # rows = height
        assert img.shape[2] in (3, 4)
        assert float(img[..., :3].std()) > 0.01, f"{name} is blank"


def test_index_html_shows_the_plots_and_the_numbers(report_run):
    _, out_dir, summary = report_run
    page = (out_dir / INDEX).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in PLOTS:
        assert f'<img src="{name}"' in page
    assert "pressure.toml" in page
    assert "<b>swapcache</b>" in page and "<b>token</b>" in page
    assert "payloads in" not in page            # in-process: the frames are in the process's own memory
    totals = summary["totals"]
    for field in ("pgmigrate_success", "pswpout", "used", "pgfault"):
        assert f"<td>{totals[field]}</td>" in page, field
    for node in summary["nodes"]:
        assert f"<td>{node['used']}</td>" in page
    lat = summary["latency"]
    assert f"<td>{lat['fault_us']['count']}</td>" in page
    assert f"<td>{lat['fault_us']['p50']:.1f}</td>" in page
    assert f"<td>{lat['migration_us']['p99']:.1f}</td>" in page
    assert "violations: 0" in page


def test_the_timeline_is_monotonic_and_ends_at_the_summary(report_run):
    _, _, summary = report_run
    tl = summary["timeline"]
    ops = summary["operations"]
    every = sample_every(ops)
    assert every == 3
    assert len(tl) == ops // every + 1                 # 0, 3, ..., 597, then the end
    assert [s["operations"] for s in tl] == list(range(0, ops, every)) + [ops]
    t = [s["t"] for s in tl]
    assert t == sorted(t) and t[0] >= 0 and t[-1] <= summary["elapsed_s"] + 1e-3
    for s in tl:
        assert set(s) == {"t", "operations", "nodes", "swap_used", "swapcached", "migcache_entries"}
        assert len(s["nodes"]) == 3
        for row in s["nodes"]:
            assert set(row) == set(SAMPLE_NODE_FIELDS)
            assert row["used"] + row["free"] == 96
    # the first sample is the machine after setup: nothing touched yet
    assert all(row["used"] == 0 and row["pgfault"] == 0 for row in tl[0]["nodes"])
    # cumulative counters never go down
    for field in ("pgmigrate_success", "pgmigrate_fallback_swap", "pswpin", "pswpout", "pgfault"):
        for n in range(3):
            series = [s["nodes"][n][field] for s in tl]
            assert series == sorted(series), (field, n)
    last = tl[-1]
    for n, node in enumerate(summary["nodes"]):
        for field in SAMPLE_NODE_FIELDS:
            assert last["nodes"][n][field] == node[field], (n, field)
    assert last["swap_used"] == summary["swap"]["used"]
    assert last["swapcached"] == summary["swap"]["swapcached"]
    assert last["migcache_entries"] == summary["totals"]["vmstat"]["nr_migcache_entries"]


def test_the_table_has_the_latency_lines(report_run):
    result, _, summary = report_run
    lat = summary["latency"]
    assert set(lat) == {"fault_us", "migration_us", "fault_us_by_node"}   # no steps without --metrics-port
    by_node = lat["fault_us_by_node"]
    assert sum(st["count"] for st in by_node.values()) == lat["fault_us"]["count"]
    for entry in summary["nodes"]:      # the table's per-node rows are those stats
        st = by_node.get(str(entry["node"]))
        assert (entry["fault_p50_us"], entry["fault_p99_us"]) == ((st["p50"], st["p99"]) if st else (None, None))
    assert "fault p50 (us)" in result.stdout and "fault p99 (us)" in result.stdout
    for key in ("fault_us", "migration_us"):
        st = lat[key]
        assert set(st) == {"count", "p50", "p90", "p99", "max"}
        assert 0 < st["p50"] <= st["p90"] <= st["p99"] <= st["max"]
    assert lat["fault_us"]["count"] == summary["operations"]
    assert lat["migration_us"]["count"] == summary["migration_events"] == 100
    assert (f"fault latency (us): p50 {lat['fault_us']['p50']:.1f}  p90 {lat['fault_us']['p90']:.1f}  "
            f"p99 {lat['fault_us']['p99']:.1f}  max {lat['fault_us']['max']:.1f}  (600 touch calls)") in result.stdout
    assert "migration latency (us): p50 " in result.stdout and "(100 calls)" in result.stdout


# -- the latency counts are the calls made ----------------------------------------

class CallCounter:
    """Count the Machine calls the runner makes (move_pages queries apart)."""

    def __init__(self, m):
        self.touch = self.move = self.migrate = 0
        touch, move_pages, migrate_pages = m.touch, m.move_pages, m.migrate_pages

        def counted_touch(*a, **kw):
            self.touch += 1
            return touch(*a, **kw)

        def counted_move_pages(pid, pages, nodes=None, *a, **kw):
            if nodes is not None:
                self.move += 1
            return move_pages(pid, pages, nodes, *a, **kw)

        def counted_migrate_pages(*a, **kw):
            self.migrate += 1
            return migrate_pages(*a, **kw)

        m.touch, m.move_pages, m.migrate_pages = counted_touch, counted_move_pages, counted_migrate_pages


@pytest.mark.parametrize("mode", ["move_pages", "migrate_pages"])
@pytest.mark.parametrize("metrics", [False, True])
def test_latency_counts_are_the_calls(tmp_path, mode, metrics):
    from cluster.runner_local import LocalRun

    spec = load_scenario(write_scenario(tmp_path / "s.toml", policy="migcache", mode=mode, every=7, ops=140))
    state = None
    if metrics:
        from cluster.metrics import RunState
        state = RunState("t", "s", "local", spec.run.operations)
    rec = LatencyRecorder()
    run = LocalRun(spec, metrics=state, latency=rec)
    calls = CallCounter(run.m)
    s = run.run()
    assert s["violations"] == 0, s["violation_details"]
    assert calls.touch == 140 and calls.move + calls.migrate == 20
    lat = s["latency"]
    assert lat["fault_us"]["count"] == rec.count("fault") == calls.touch
    assert lat["migration_us"]["count"] == rec.count("migration") == calls.move + calls.migrate
    arrays = rec.arrays()
    assert arrays["fault_us"].shape == (140,) and (arrays["fault_us"] > 0).all()
    assert lat["fault_us"]["max"] == round(float(arrays["fault_us"].max()), 1)
    if metrics:     # steps are counted only with a RunState
        assert lat["fault_steps"]["count"] == 140 and lat["migration_steps"]["count"] == 20
        assert lat["fault_steps"]["max"] >= 1
    else:
        assert run.steps is None and "_run" not in vars(run.m)
        assert "fault_steps" not in lat and "migration_steps" not in lat


def test_failed_touches_are_timed_too(tmp_path):
    from cluster.runner_local import run_local

    p = tmp_path / "oom.toml"
    p.write_text("[machine]\nnodes = 1\nframes_per_node = 64\n\n"
                 "[[workload]]\nnode = 0\npages = 200\nbatch = 16\n\n[run]\noperations = 50\n")
    s = run_local(load_scenario(p))
    assert s["errors"].get("touch:ENOMEM", 0) > 0
    assert s["latency"]["fault_us"]["count"] == 50
    assert s["latency"]["migration_us"] == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    assert len(s["timeline"]) == 50 + 1     # every operation (50 // 200 -> 1), and the end


def test_timelines_are_deterministic_but_for_wall_time(tmp_path):
    from cluster.runner_local import run_local

    def untimed(path):
        return [{k: v for k, v in s.items() if k != "t"} for s in run_local(load_scenario(path))["timeline"]]

    a = untimed(write_scenario(tmp_path / "a.toml", ops=200))
    b = untimed(write_scenario(tmp_path / "b.toml", ops=200))
    assert a == b and len(a) == 201


# -- the pieces on their own ---------------------------------------------------------

def test_sample_every_and_due():
    assert sample_every(0) == sample_every(1) == sample_every(399) == 1
    assert sample_every(400) == 2 and sample_every(2000) == 10 and sample_every(1_000_000) == 5000
    tl = Timeline(2000, clock=lambda: 5.0)
    due = [op for op in range(1, 2001) if tl.due(op)]
    assert due == list(range(10, 2000, 10)) and len(due) == 199   # + start + end = 201
    assert tl.now() == 0.0
    assert [op for op in range(1, 4) if Timeline(3).due(op)] == [1, 2]


def test_a_time_limited_run_samples_by_the_clock_too():
    """run.seconds may end a run long before its operations: a sample is also
    due once seconds/samples passed since the last one."""
    now = [0.0]
    tl = Timeline(10_000_000, samples=100, clock=lambda: now[0], seconds=10.0)
    assert tl.every == 100_000 and not tl.due(7)
    now[0] = 0.099
    assert not tl.due(8)
    now[0] = 0.1
    assert tl.due(9)
    tl.add({"t": 0.1})
    assert tl.due(10)               # add() is a sample built elsewhere: the clock is sample()'s
    from emulator import Machine
    tl.sample(Machine.from_config({"nodes": 1, "frames_per_node": 8}), 10)
    assert not tl.due(11) and tl.samples[-1]["t"] == 0.1
    now[0] = 0.25
    assert tl.due(12) and not tl.due(10_000_000)
    assert not Timeline(1000, clock=lambda: now[0]).late()     # no seconds: by operations only


def test_index_html_says_what_cut_the_run_short_and_what_it_ran_with(tmp_path):
    summary = {"scenario": "x.toml", "overrides": ["run.seconds=2"], "bugs": ["r1-no-pte-recheck"],
               "backend": "ray", "policy": "migcache", "payload": "token", "operations": 100000,
               "operations_done": 8885, "interrupted": True, "warnings": ["host h: payloads larger than /dev/shm"],
               "processes": 2, "migration_events": 3, "elapsed_s": 5.0,
               "nodes": [{"node": 0, "frames": 8, "used": 2}, {"node": 1, "frames": 8, "used": 3}],
               "totals": {"frames": 16, "used": 5},
               "tlb": {"hits": 7, "walks": 2, "local_faults": 1, "misses": 4,
                       "hits_by_node": {"0": 5, "1": 2}, "walks_by_node": {"1": 2}, "local_faults_by_node": {"0": 1}},
               "violations": 0, "violation_details": [],
               "hosts": [{"node": 0, "host": "h", "dir": "/mnt/huge", "huge": "always"},
                         {"node": 1, "host": "h", "dir": "/mnt/huge", "huge": "always"}]}
    page = write_report(tmp_path / "r", summary, synthetic_timeline(2, 3), {})[-1].read_text()
    assert "x.toml --set run.seconds=2 --bug r1-no-pte-recheck" in page
    assert "<td>payloads in</td><td>/mnt/huge (tmpfs, huge=always)</td>" in page
    assert "8885 of 100000 operations" in page and "100000 operations" not in page.replace("of 100000", "")
    assert "interrupted (Ctrl-C or SIGTERM): this run is partial" in page
    assert "warning: host h: payloads larger than /dev/shm" in page
    assert "<td>TLB hits</td><td>5</td><td>2</td><td>7</td>" in page
    assert "<td>page walks</td><td>0</td><td>2</td><td>2</td>" in page


def test_machine_sample_reads_the_machine():
    from emulator import MPOL_MF_MOVE, Machine

    m = Machine.from_config({"nodes": 2, "frames_per_node": 32, "swap_pages": 64, "policy": "migcache"})
    pid = m.spawn(node=0)
    addr = m.mmap(pid, 8)
    m.touch(pid, addr, 8, write=True)
    assert m.move_pages(pid, [addr + i * m.page_size for i in range(3)], [1] * 3, MPOL_MF_MOVE) == [1] * 3
    m.reclaim(0, 2)
    s = machine_sample(m, 1.5, 7)
    assert s["t"] == 1.5 and s["operations"] == 7
    assert [row["used"] for row in s["nodes"]] == [row["used"] for row in m.node_info()]
    assert s["nodes"][1]["pgmigrate_success"] == m.vmstat(node=1)["pgmigrate_success"]
    assert sum(row["pgmigrate_success"] for row in s["nodes"]) == 3
    assert s["swap_used"] == m.swap_info()["used"] > 0
    assert s["swapcached"] == m.swap_info()["swapcached"]
    assert s["migcache_entries"] == m.vmstat()["nr_migcache_entries"]
    json.dumps(s)  # plain JSON


def test_latency_stats_and_recorder():
    assert latency_stats([]) == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    st = latency_stats(np.arange(1, 101, dtype=float))
    assert st == {"count": 100, "p50": 50.5, "p90": 90.1, "p99": 99.0, "max": 100.0}
    rec = LatencyRecorder()
    rec.record("fault", 2e-6)
    rec.extend("fault", [1e-6, 3e-6])
    rec.extend("migration", [1e-3], steps=[9])
    np.testing.assert_allclose(rec.arrays()["fault_us"], [2.0, 1.0, 3.0])
    out = rec.summary()
    assert out["fault_us"]["count"] == 3 and out["fault_us"]["p50"] == 2.0
    assert out["migration_us"]["max"] == 1000.0
    assert out["migration_steps"] == {"count": 1, "p50": 9.0, "p90": 9.0, "p99": 9.0, "max": 9.0}
    assert "fault_steps" not in out


def synthetic_timeline(nodes: int, samples: int) -> list[dict]:
    return [{"t": 0.01 * j, "operations": 10 * j,
             "nodes": [{"used": j + n, "free": 100 - j - n, "pgmigrate_success": j * n,
                        "pgmigrate_fallback_swap": j // 3, "pswpin": 0, "pswpout": j, "pgfault": 5 * j}
                       for n in range(nodes)],
             "swap_used": j, "swapcached": j // 2, "migcache_entries": j % 3} for j in range(samples)]


@pytest.mark.parametrize("nodes,samples,latencies", [
    (20, 50, {"fault_us": np.geomspace(5, 5000, 300), "migration_us": np.full(7, 40.0)}),  # no legend; equal values
    (2, 1, {}),                                                                         # one sample, no calls
    (1, 0, {"fault_us": np.zeros(3)}),                                                  # no samples; zero latencies
])
def test_write_report_copes_with_odd_inputs(tmp_path, nodes, samples, latencies):
    import matplotlib.image as mpimg

    summary = {"scenario": "x.toml", "backend": "ray", "policy": "migentry", "payload": "bytes",
               "operations": 10 * samples, "processes": 1, "migration_events": 0, "elapsed_s": 0.5,
               "nodes": [{"node": n, "frames": 100, "used": 1} for n in range(nodes)],
               "totals": {"frames": 100 * nodes}, "swap": {"slots": 0, "used": 0, "on": False, "swapcached": 0},
               "errors": {"touch:ENOMEM": 2}, "violations": 1, "violation_details": ["data: <bad> & worse"]}
    written = write_report(tmp_path / "r", summary, synthetic_timeline(nodes, samples), latencies)
    assert [p.name for p in written] == list(PLOTS) + [INDEX]
    for p in written[:-1]:
        assert mpimg.imread(p).shape[:2] == (PNG_SIZE[1], PNG_SIZE[0])
    page = written[-1].read_text()
    assert "<b>migentry</b>" in page and "violations: 1" in page
    assert "data: &lt;bad&gt; &amp; worse" in page and "touch:ENOMEM" in page


# -- the command line -------------------------------------------------------------

def test_report_into_a_file_is_refused_before_running(tmp_path):
    scenario = write_scenario(tmp_path / "s.toml")
    target = tmp_path / "taken"
    target.write_text("not a directory")
    result = runner().invoke(main, ["run", str(scenario), "--backend", "local", "--report", str(target)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --report {target}: exists and is not a directory"
    assert result.stdout == ""
    assert target.read_text() == "not a directory"


def test_report_under_a_file_is_refused_before_running(tmp_path):
    scenario = write_scenario(tmp_path / "s.toml")
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "report"
    result = runner().invoke(main, ["run", str(scenario), "--backend", "local", "--report", str(target)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --report {target}: cannot create the directory")
    assert result.stdout == ""


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere: no read-only directory can be made "
                    "(a --report path that exists as a file is refused in another test)")
def test_report_into_a_read_only_directory_is_refused_before_running(tmp_path):
    scenario = write_scenario(tmp_path / "s.toml")
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        result = runner().invoke(main, ["run", str(scenario), "--backend", "local", "--report", str(target)])
    finally:
        target.chmod(0o755)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --report {target}: cannot write into the directory")
    assert list(target.iterdir()) == []


def test_a_bad_scenario_is_reported_first_and_creates_no_report_dir(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\noperations = -1\n")
    target = tmp_path / "report"
    result = runner().invoke(main, ["run", str(bad), "--backend", "local", "--report", str(target)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}:")
    assert not target.exists()


def test_a_run_with_violations_still_writes_the_report(tmp_path, monkeypatch):
    import cluster.runner_local as rl

    real = rl.run_local

    def corrupted(scenario, progress=None, machine=None, **kw):
        summary = real(scenario, progress, machine, **kw)
        summary["violations"] = 2
        summary["violation_details"] = ["invariant: made up"]
        return summary

    monkeypatch.setattr(rl, "run_local", corrupted)
    scenario = write_scenario(tmp_path / "s.toml", ops=60)
    target = tmp_path / "report"
    result = runner().invoke(main, ["run", str(scenario), "--backend", "local", "--report", str(target)])
    assert result.exit_code == 1
    page = (target / INDEX).read_text()
    assert "violations: 2" in page and "invariant: made up" in page
    assert all((target / name).stat().st_size > 0 for name in PLOTS)


def test_on_ray_the_fault_latency_says_it_times_only_the_coordinators_faults():
    from cluster.report import latency_lines
    st = {"count": 6, "p50": 4388.9, "p90": 5000.0, "p99": 6000.0, "max": 6100.0}
    local = {"latency": {"fault_us": st}}
    ray = {"latency": {"fault_us": st}, "tlb": {"hits": 1598, "walks": 123, "local_faults": 273, "misses": 6}}
    assert latency_lines(local)[0].endswith("(6 touch calls)")
    assert latency_lines(ray)[0].endswith("(6 touch calls through the coordinator)")


@pytest.mark.parametrize("lo, hi", [(1900.0, 41000.0), (3.0, 9.0), (1e-3, 1e6), (250.0, 260.0), (40.0, 40.0)])
def test_latency_axis_labels_are_durations_that_do_not_overlap(lo, hi):
    """The latency histograms' x labels: readable durations at 1-2-5 steps,
    two at least, none drawn over another, whatever the range's width."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cluster.plots import _figure, _histogram, duration

    fig, axes = _figure(1, 2)                       # latency.png's two panels
    ax = axes[0][0]
    _histogram(ax, np.geomspace(lo, hi, 200), "t", "calls", "tab:blue")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    x0, x1 = ax.get_xlim()
    labels = [t for t in ax.get_xticklabels(which="both") if t.get_text() and x0 <= t.get_position()[0] <= x1]
    assert len(labels) >= 2, [t.get_text() for t in labels]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, f"tick labels overlap: {[t.get_text() for t in labels]}"
    for t in labels:
        assert t.get_text() == duration(t.get_position()[0])
    assert (duration(850), duration(5140), duration(2e6), duration(0.5)) == ("850 µs", "5.14 ms", "2 s", "500 ns")


@pytest.mark.parametrize("ops_end", [2000, 10**7])
def test_operations_axis_labels_do_not_overlap_where_the_run_sped_up(ops_end):
    """The top axis counts operations, which advance unevenly in wall time:
    the labels kept are round counts none of which is drawn over another,
    in a half-width panel, and the axis still names the start and the end."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cluster.plots import _figure, _time_axis

    t = np.linspace(0.0, 1.3, 60)
    ops = np.round(ops_end * np.clip((t - 0.4) / 0.9, 0, 1) ** 0.5).astype(np.int64)  # idle, then a burst
    ops[0] = 0
    fig, axes = _figure(1, 2)
    ax = axes[0][0]
    ax.plot(t, ops)
    _time_axis(ax, t, ops)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (top,) = ax.child_axes
    labels = [lb for lb in top.xaxis.get_ticklabels() if lb.get_text() and lb.get_visible()]
    texts = [lb.get_text() for lb in labels]
    assert len(labels) >= 3, texts
    assert texts[0] == "0" and texts[-1] == f"{ops_end:,}", texts
    boxes = sorted((lb.get_window_extent(renderer) for lb in labels), key=lambda b: b.x0)
    for a, b in zip(boxes, boxes[1:]):
        assert a.x1 <= b.x0, f"operation labels overlap: {texts}"
