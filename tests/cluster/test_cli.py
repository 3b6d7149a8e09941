"""The numaemu command line: exit codes, messages, and an end-to-end run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cluster
from cluster.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = "examples/quickstart.toml"


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart


def numaemu_cmd() -> list[str]:
    """The installed console script (next to this interpreter)."""
    script = Path(sys.executable).with_name("numaemu")
    assert script.exists(), f"numaemu is not installed next to {sys.executable}: pip install -e '.[test]'"
    return [str(script)]


def long_quickstart(tmp_path: Path) -> Path:
    """The quickstart with 10^7 operations: a run that is still going when signalled."""
    text = (REPO / QUICKSTART).read_text().replace("operations = 2000", "operations = 10000000")
    assert "operations = 10000000" in text
    scenario = tmp_path / "long.toml"
    scenario.write_text(text)
    return scenario


def signal_once_running(args: list[str], sig: str) -> tuple[subprocess.Popen, str, str]:
    """numaemu ARGS, sent signal ``sig`` once it announces its operations run:
    the process, its stdout and its stderr."""
    import signal
    proc = subprocess.Popen(numaemu_cmd() + args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:
            if "running" in line:
                break
        proc.send_signal(getattr(signal, sig))
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc, stdout, stderr


def run_numaemu(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(numaemu_cmd() + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_console_script_entry_point():
    (ep,) = metadata.entry_points(group="console_scripts", name="numaemu")
    assert ep.value == "cluster.cli:main"


def test_version():
    result = runner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"numaemu {cluster.__version__}"
    assert metadata.version("numaemu") == cluster.__version__


def test_unknown_backend_is_a_usage_error():
    result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "mpi"])
    assert result.exit_code == 2
    assert "Invalid value for '--backend'" in result.stderr


@pytest.mark.parametrize(
    "edit, expected",
    [
        (('policy = "migcache"', 'policy = "lru"'),
         "machine.policy: must be one of swapcache, migcache, migentry"),
        (("every = 50", "every = 50\nbatch = 8"), "migration.batch: unknown key"),
        (("operations = 2000", 'operations = "lots"'),
         "run.operations: must be an integer, not a string ('lots')"),
        (("batch = 64", "batch = 64 64"), "line "),
    ],
    ids=["bad-policy", "unknown-key", "wrong-type", "toml-syntax"],
)
def test_bad_scenario_exits_2_with_one_clear_line(tmp_path, edit, expected):
    text = (REPO / QUICKSTART).read_text()
    assert edit[0] in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    result = runner().invoke(main, ["run", str(path), "--backend", "local"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: {expected}")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_scenario_in_a_real_process_has_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    text = (REPO / QUICKSTART).read_text()
    line = text.splitlines().index("[machine]") + 1
    path.write_text(text.replace("[machine]", "[machine\n"))
    proc = run_numaemu("run", str(path), "--backend", "local")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}: line {line}, column ")
    assert "invalid TOML" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_missing_scenario_file(tmp_path):
    result = runner().invoke(main, ["run", str(tmp_path / "none.toml")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'none.toml'}: cannot read the file")


def test_json_into_a_missing_directory_creates_it(tmp_path):
    out = tmp_path / "no" / "such" / "out.json"
    result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", "--json", str(out)])
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["violations"] == 0


def test_set_overrides_the_scenario_and_the_summary_says_so(tmp_path):
    out = tmp_path / "out.json"
    result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", "--json", str(out),
                                    "--set", "machine.policy=swapcache", "--set", "run.operations=150",
                                    "--report", str(tmp_path / "report")])
    assert result.exit_code == 0, result.stderr
    assert "--set machine.policy=swapcache --set run.operations=150</h1>" in (tmp_path / "report" / "index.html").read_text()
    s = json.loads(out.read_text())
    assert (s["policy"], s["operations"], s["overrides"]) == ("swapcache", 150,
                                                              ["machine.policy=swapcache", "run.operations=150"])
    assert result.stdout.startswith(f"{REPO / QUICKSTART} --set machine.policy=swapcache --set run.operations=150: "
                                    "policy swapcache")
    bad = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", "--set", "machine.nodes=0"])
    assert bad.exit_code == 2 and "(with --set machine.nodes=0)" in bad.stderr and bad.stdout == ""


def test_json_under_a_file_is_refused_before_running(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "out.json"
    result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", "--json", str(out)])
    assert result.exit_code == 2
    assert result.stderr == f"error: --json {out}: {out.parent}: exists and is not a directory\n"


def test_an_empty_output_path_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """Path("") is the current directory: --report '' would write index.html
    and the PNGs there, --json '' fail late."""
    monkeypatch.chdir(tmp_path)
    for args, expected in ((["--report", ""], "error: --report: must not be empty (name a directory, "
                                              "e.g. --report out/report)\n"),
                           (["--json", ""], "error: --json: must not be empty (name a file, "
                                            "e.g. --json out/summary.json)\n")):
        result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", *args])
        assert (result.exit_code, result.stderr, result.stdout) == (2, expected, "")
        assert list(tmp_path.iterdir()) == []
    result = runner().invoke(main, ["compare", str(REPO / QUICKSTART), "--backend", "local", "--json", ""])
    assert result.exit_code == 2 and result.stderr.startswith("error: --json: must not be empty")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_negative_run_seed_is_bad_input(command):
    result = runner().invoke(main, [command, str(REPO / QUICKSTART), "--backend", "local", "--set", "run.seed=-1"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {REPO / QUICKSTART}: run.seed: must be >= 0 (got -1) (with --set run.seed=-1)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("sets, key, names", [
    (["machine.swap_pages=1099511627776"], "machine.swap_pages",
     "machine.swap_pages = 1099511627776 (28 bytes a slot with the 'token' payload): 28672.0 GiB"),
    (["machine.payload=bytes", "machine.nodes=4", "machine.frames_per_node=2147483648"], "machine.frames_per_node",
     "machine.nodes = 4 x machine.frames_per_node = 2147483648 (4130 bytes a frame with the 'bytes' payload "
     "of 4096-byte pages): 33040.0 GiB"),
    (["workload.0.processes=1000", "workload.0.pages=2147418111"], "workload[0].pages",
     "workload[0].pages = 2147418111 x workload[0].processes = 1000 (17016 bytes a page): 34031.0 GiB"),
])
def test_a_scenario_larger_than_the_hosts_memory_is_bad_input_naming_its_keys(sets, key, names):
    """Refused before anything is allocated (a MemoryError traceback, or the
    OOM killer, otherwise), in a real process: the keys that make it large,
    what each takes, and the --set that changed them."""
    args = [a for s in sets for a in ("--set", s)]
    for command in ("run", "compare"):
        proc = run_numaemu(command, QUICKSTART, "--backend", "local", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: {QUICKSTART}: {key}: the scenario needs about "), proc.stderr
        assert " GiB of memory, more than this host's " in proc.stderr and names in proc.stderr
        assert proc.stderr.endswith(f" (with {' '.join(f'--set {s}' for s in sets)})\n")
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1 and proc.stdout == ""


def test_a_machine_that_fits_the_host_but_not_the_process_is_bad_input(tmp_path):
    """The last resort: a MemoryError while the machine is allocated (here an
    address-space limit below what it needs) is reported as the up-front
    check's error is."""
    import os
    import resource

    from cluster.scenario import host_memory

    if (host_memory() or 0) < 6 << 30:
        pytest.skip("needs a host of 6 GiB or more, so that only the process limit refuses the machine")
    path = tmp_path / "big.toml"
    path.write_text("[machine]\nframes_per_node = 80000000\n\n[[workload]]\nnode = 0\npages = 64\n\n"
                    "[run]\noperations = 10\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    proc = subprocess.run(numaemu_cmd() + ["run", str(path), "--backend", "local"], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: {path}: machine.frames_per_node: out of memory allocating the machine's arrays "
                           "(about 3.1 GiB): machine.nodes = 1 x machine.frames_per_node = 80000000 "
                           "(42 bytes a frame with the 'token' payload): 3.1 GiB\n")


def test_running_out_of_memory_during_a_run_is_an_error_not_a_traceback(monkeypatch):
    """Other processes may take the memory a scenario that fits the host needs."""
    import cluster.runner_local as rl

    def out_of_memory(*args, **kw):
        raise MemoryError()

    monkeypatch.setattr(rl, "run_local", out_of_memory)
    for command in ("run", "compare"):
        result = runner().invoke(main, [command, QUICKSTART, "--backend", "local"])
        assert result.exit_code == 1
        assert result.stderr.strip().endswith(": the run failed: out of memory"), result.stderr
        assert result.stderr.startswith(f"error: {QUICKSTART}")


def test_violations_give_exit_1(tmp_path, monkeypatch):
    import cluster.runner_local as rl

    real = rl.run_local

    def corrupted(scenario, progress=None, machine=None, **kw):
        summary = real(scenario, progress, machine, **kw)
        summary["violations"] = 3
        summary["violation_details"] = ["data: pid 1 page 0: expected token 1, read 2"]
        return summary

    monkeypatch.setattr(rl, "run_local", corrupted)
    out = tmp_path / "v.json"
    result = runner().invoke(main, ["run", str(REPO / QUICKSTART), "--backend", "local", "--json", str(out)])
    assert result.exit_code == 1
    assert "violations: 3" in result.stdout
    assert json.loads(out.read_text())["violations"] == 3


@pytest.mark.parametrize("sig, code, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_ctrl_c_stops_a_local_run_between_operations_and_writes_the_partial_summary(tmp_path, sig, code, word):
    """Ctrl-C, and SIGTERM (a stopped job, a deleted pod) the same way."""
    out = tmp_path / "partial.json"
    proc, stdout, stderr = signal_once_running(["run", str(long_quickstart(tmp_path)), "--backend", "local",
                                                "--json", str(out)], sig)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and f"{word}: the summary above is partial" in stderr
    summary = json.loads(out.read_text())
    assert summary["interrupted"] is True and summary["violations"] == 0
    assert 0 < summary["operations_done"] < 10_000_000
    assert summary["verified_pages"] == 5 * 1024
    assert f"{summary['operations_done']} of 10000000 operations" in stdout


# -- end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "out.json"
    proc = run_numaemu("run", QUICKSTART, "--backend", "local", "--json", str(out))
    return proc, out


def test_quickstart_end_to_end(quickstart_run):
    proc, out = quickstart_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    # the per-node table
    assert "pgmigrate_success" in proc.stdout
    assert "violations: 0" in proc.stdout

    summary = json.loads(out.read_text())
    assert summary["violations"] == 0 and summary["violation_details"] == []
    assert summary["backend"] == "local"
    assert (summary["policy"], summary["payload"]) == ("migcache", "token")
    assert summary["operations"] == 2000
    assert summary["processes"] == 5          # 3 on node 0, 2 on node 1
    assert summary["migration_events"] == 2000 // 50
    assert summary["errors"] == {}
    # every page of every process read back at the end (quickstart.toml: 5 processes of 1024 pages)
    assert summary["verified_pages"] == 5 * 1024

    nodes = summary["nodes"]
    assert [n["node"] for n in nodes] == [0, 1]
    for n in nodes:
        assert n["frames"] == 4096
        assert n["used"] + n["free"] == n["frames"]
        assert n["used"] > 0
        vm = n["vmstat"]
        for key in ("pgmigrate_success", "pgmigrate_fail", "pswpin", "pswpout", "pgmajfault",
                    "pgfault", "numa_hit", "numa_miss", "nr_free_pages", "pgmigrate_fallback_swap"):
            assert isinstance(vm[key], int), key
        assert n["pgmigrate_success"] == vm["pgmigrate_success"]
        assert n["free"] == vm["nr_free_pages"]
        # pages moved both ways: each node received and gave away pages
        assert n["migrations_in"] > 0 and n["migrations_out"] > 0

    totals = summary["totals"]
    assert totals["used"] == sum(n["used"] for n in nodes)
    assert totals["frames"] == 8192
    assert totals["pgmigrate_success"] > 0
    assert totals["vmstat"]["pgmigrate_success"] == totals["pgmigrate_success"]
    # every page the runner saw move is one the kernel counted, and vice versa
    assert totals["migrations_in"] == totals["migrations_out"] == totals["pgmigrate_success"]
    # nothing is left in the migration cache once the run is over
    assert totals["vmstat"]["nr_migcache_entries"] == 0


def test_json_matches_an_in_process_run_and_node_info(quickstart_run):
    """The CLI's numbers are the model's: rerun in-process with the same seed
    and compare with node_info() and with what the processes map."""
    from cluster.runner_local import LocalRun
    from cluster.scenario import load_scenario
    from cluster.summary import TIMED_FIELDS

    proc, out = quickstart_run
    cli = json.loads(out.read_text())

    run = LocalRun(load_scenario(REPO / QUICKSTART))
    local = run.run()
    for s in (cli, local):
        s.pop("elapsed_s")
        s.pop("scenario")
        s.pop("latency", None)   # wall-clock timings (see test_report_plots.py)
        s.pop("timeline", None)
        for entry in s["nodes"] + [s["totals"]]:
            for f in TIMED_FIELDS:
                entry.pop(f)
    assert cli == local, "same scenario and seed must give the same summary"

    info = run.m.node_info()
    assert [row["used"] for row in info] == [n["used"] for n in local["nodes"]]
    assert sum(row["used"] for row in info) == local["totals"]["used"]

    # With no swap activity, every used frame is a resident page of some
    # mapping: count them through move_pages queries (a shared mapping once).
    assert local["totals"]["pswpout"] == 0 and run.m.swap_info()["swapcached"] == 0
    resident = [0] * run.nr_nodes
    seen_shared = set()
    for p in run.procs:
        if run.scenario.workload[p.workload].shared:
            if p.workload in seen_shared:
                continue
            seen_shared.add(p.workload)
        status = np.asarray(run.m.move_pages(p.pid, p.page_addrs(range(p.pages), run.page_size), None))
        for node in status[status >= 0]:
            resident[int(node)] += 1
    assert resident == [row["used"] for row in info]


# -- numaemu compare ----------------------------------------------------------

def test_compare_runs_each_design_as_run_does_and_sets_them_side_by_side(tmp_path):
    """Each column is the run `numaemu run --set machine.policy=P` gives for
    the same file and seeds (the local backend is deterministic): its counters
    in the table and in the JSON."""
    args = ["--backend", "local", "--set", "run.operations=300"]
    out = tmp_path / "cmp.json"
    result = runner().invoke(main, ["compare", "examples/pressure.toml", "--policy", "swapcache",
                                    "--policy", "migentry", "--json", str(out), *args])
    assert result.exit_code == 0, result.stderr
    cmp = json.loads(out.read_text())
    assert cmp["policies"] == ["swapcache", "migentry"] and cmp["overrides"] == ["run.operations=300"]
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in result.stdout.splitlines()
            if line.count("│") == 4}
    for col, policy in enumerate(cmp["policies"]):
        alone = tmp_path / f"{policy}.json"
        one = runner().invoke(main, ["run", "examples/pressure.toml", "--set", f"machine.policy={policy}",
                                     "--json", str(alone), *args])
        assert one.exit_code == 0, one.stderr
        want, got = json.loads(alone.read_text()), cmp["runs"][policy]
        assert got["policy"] == policy
        for field in ("pgmigrate_success", "pswpout", "pswpin", "pgmajfault", "pgfault", "numa_miss"):
            assert got["totals"][field] == want["totals"][field], (policy, field)
            assert int(rows[field][col]) == want["totals"][field], (policy, field)
        assert int(rows["fallback to swap"][col]) == want["totals"]["pgmigrate_fallback_swap"]
    assert cmp["runs"]["migentry"]["totals"]["pswpout"] > 0       # the file's pressure: the designs' swap use differs


def test_compare_refuses_bad_input_before_running(tmp_path):
    bad = runner().invoke(main, ["compare", QUICKSTART, "--backend", "local", "--set", "machine.policy=migcache"])
    assert bad.exit_code == 2 and "use --policy" in bad.stderr and bad.stdout == ""
    bad = runner().invoke(main, ["compare", QUICKSTART, "--backend", "local", "--policy", "lru"])
    assert bad.exit_code == 2 and "Invalid value for '--policy'" in bad.stderr
    bad = runner().invoke(main, ["compare", QUICKSTART, "--backend", "local", "--set", "machine.nodes=0"])
    assert bad.exit_code == 2 and bad.stderr.strip().endswith("(with --set machine.nodes=0)"), bad.stderr
    assert "machine.policy" not in bad.stderr and bad.stdout == ""


def test_ctrl_c_stops_a_comparison_and_prints_the_designs_done(tmp_path):
    out = tmp_path / "partial.json"
    proc, stdout, stderr = signal_once_running(["compare", str(long_quickstart(tmp_path)), "--backend", "local",
                                                "--json", str(out)], "SIGINT")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: the comparison above is partial" in stderr
    cmp = json.loads(out.read_text())
    assert cmp["policies"] == ["migentry"] and cmp["runs"]["migentry"]["interrupted"] is True
    assert "migentry" in stdout and "migcache" not in stdout


def test_a_bug_injection_is_named_on_the_summarys_first_line():
    result = runner().invoke(main, ["run", QUICKSTART, "--backend", "local", "--set", "run.operations=100",
                                    "--bug", "r1-no-pte-recheck"])
    assert result.exit_code in (0, 1), result.stderr
    assert result.stdout.startswith(f"{QUICKSTART} --set run.operations=100 --bug r1-no-pte-recheck: policy ")


SIGNAL_IN_RAY_INIT = """
import os, signal, sys
import ray
from cluster.runner_ray import ensure_ray

class Stop(Exception):
    pass

def stop(signum, frame):
    raise Stop(signum)

signal.signal(signal.SIGTERM, stop)
sig = getattr(signal, sys.argv[1])
real_init, started = ray.init, []

def init(*args, **kw):          # the signal arrives as ray.init begins
    os.kill(os.getpid(), sig)
    out = real_init(*args, **kw)
    started.extend(p.process.pid for ps in ray._private.worker._global_node.all_processes.values() for p in ps)
    return out

ray.init = init
try:
    ensure_ray(None)
    print("no signal came out")
except (KeyboardInterrupt, Stop) as exc:
    print("raised", type(exc).__name__, "ray up:", ray.is_initialized(), "processes:", len(started))
    alive = []
    for pid in started:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    print("alive after:", alive)
"""


@pytest.mark.parametrize("sig, raised", [("SIGINT", "KeyboardInterrupt"), ("SIGTERM", "Stop")])
def test_a_signal_during_ray_init_waits_for_it_then_stops_ray(tmp_path, sig, raised):
    """Interrupted halfway, ray.init left Ray's agents running after the
    command had exited (and at times the exit crashed): the signal now waits
    until Ray is up, Ray is stopped, and the caller's handler then runs.
    ray.init's own SIGTERM handler (sys.exit mid-init) stays out."""
    script = tmp_path / "init.py"
    script.write_text(SIGNAL_IN_RAY_INIT)
    proc = subprocess.run([sys.executable, str(script), sig], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0].startswith(f"raised {raised} ray up: False processes: "), proc.stdout
    assert int(lines[0].rsplit(" ", 1)[1]) > 0
    assert lines[1] == "alive after: []", proc.stdout


@pytest.mark.parametrize("stop, code, message", [
    (KeyboardInterrupt, 130, "error: interrupted (the comparison above has migentry)"),
    (lambda: RuntimeError("a workload driver failed: node 0: boom"), 1,
     "a workload driver failed: node 0: boom (the comparison above has migentry)"),
])
def test_compare_keeps_the_designs_done_when_one_stops_before_its_summary(tmp_path, monkeypatch, stop, code,
                                                                          message):
    """Ctrl-C between two designs (Ray's teardown and start-up take seconds)
    or a design that fails: the table and the JSON keep the ones done."""
    import cluster.runner_local as rl

    real, calls = rl.run_local, []

    def second_stops(scenario, progress=None, machine=None, **kw):
        calls.append(scenario.machine.policy)
        if len(calls) == 2:
            raise stop()
        return real(scenario, progress, machine, **kw)

    monkeypatch.setattr(rl, "run_local", second_stops)
    out = tmp_path / "cmp.json"
    result = runner().invoke(main, ["compare", QUICKSTART, "--backend", "local", "--set", "run.operations=100",
                                    "--json", str(out)])
    assert result.exit_code == code
    assert calls == ["migentry", "migcache"]
    assert message in result.stderr
    assert "migentry" in result.stdout and "migcache" not in result.stdout
    assert json.loads(out.read_text())["policies"] == ["migentry"]


def test_run_works_from_a_thread_other_than_the_main_one():
    """Signal handlers are the main thread's to set: elsewhere a run goes without them."""
    import threading
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("r", runner().invoke(
        main, ["run", QUICKSTART, "--backend", "local", "--set", "run.operations=50"])))
    t.start()
    t.join(120)
    assert got["r"].exit_code == 0, (got["r"].stderr, got["r"].exception)


def test_sigterm_skips_the_metrics_hold(tmp_path):
    """--hold keeps the endpoint for a last scrape after a run; SIGTERM asks the
    process to go (a pod being deleted): the partial summary, then exit 143 at once."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, stdout, stderr = signal_once_running(["run", str(long_quickstart(tmp_path)), "--backend", "local",
                                                "--metrics-port", str(port), "--hold", "600", "--sd-dir", ""],
                                               "SIGTERM")      # answered at once, not after the 600 s hold
    assert proc.returncode == 143, stderr
    assert "terminated: the summary above is partial" in stderr and "metrics: holding" not in stderr


def test_ctrl_c_is_not_held_back_while_joining_a_cluster_that_does_not_answer(tmp_path):
    """ray.init against an address that accepts connections but is no Ray
    retries for minutes: only an embedded Ray's start is waited for."""
    import signal
    import socket
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)           # never answered

    threading.Thread(target=accept, daemon=True).start()
    seen = []
    try:
        proc = subprocess.Popen(numaemu_cmd() + ["run", QUICKSTART, "--address", f"127.0.0.1:{port}"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:    # Ray's GCS client complaining: ray.init is retrying
                seen.append(line)
                if "GCS" in line:
                    break
            assert any("GCS" in line for line in seen), seen
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            proc.kill()
    finally:
        server.close()
        for c in held:
            c.close()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("error: interrupted")


def test_bench_runs_the_checkouts_benchmark_scripts():
    """DESIGN.md's `numaemu bench`: the scripts of benchmarks/, arguments passed on."""
    quick = run_numaemu("bench", "core", "--quick")
    assert quick.returncode == 0, quick.stderr
    assert re.search(r"^first-touch touch\(\), 4096-page batches: [\d,]+ pages/s .* ratio [\d.]+$", quick.stdout,
                     flags=re.M), quick.stdout
    usage = run_numaemu("bench", "explore", "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: explore.py")
    assert "--quick" in usage.stdout        # every script takes the --quick the README offers
    bad = run_numaemu("bench", "nope")
    assert bad.returncode == 2 and "'nope' is not one of 'core', 'cluster', 'explore'" in bad.stderr


def test_ctrl_c_during_a_designs_last_operation_stops_the_comparison(tmp_path, monkeypatch):
    """A Ctrl-C that lands in the last operation of a design cuts nothing
    short, but the user asked to stop: the run says interrupted, and the
    next design does not start."""
    import signal

    import cluster.runner_local as rl

    real, seen = rl.LocalRun.access, []

    def last_one_signalled(self, proc):
        seen.append(self.scenario.machine.policy)
        real(self, proc)
        if len(seen) == 100:
            signal.raise_signal(signal.SIGINT)      # the runner's handler: asked, no KeyboardInterrupt

    monkeypatch.setattr(rl.LocalRun, "access", last_one_signalled)
    out = tmp_path / "cmp.json"
    result = runner().invoke(main, ["compare", QUICKSTART, "--backend", "local", "--set", "run.operations=100",
                                    "--set", "migration.every=1000", "--json", str(out)])
    assert result.exit_code == 130, result.stderr
    assert set(seen) == {"migentry"} and len(seen) == 100
    assert "interrupted: the comparison above is partial" in result.stderr
    run = json.loads(out.read_text())["runs"]["migentry"]
    assert run["interrupted"] is True and run["operations_done"] == 100


@pytest.mark.parametrize("args, message", [
    (["--backend", "local", "--address", "auto"], "--address needs --backend ray"),
    (["--hosts", "3"], "--hosts needs --address: an embedded Ray has one host"),
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_ray_only_options_that_cannot_apply_are_refused_before_anything_starts(command, args, message):
    proc = run_numaemu(command, QUICKSTART, *args)
    assert proc.returncode == 2 and f"error: {message}" in proc.stderr and "Traceback" not in proc.stderr
