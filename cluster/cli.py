"""The ``numaemu`` command line.

    numaemu run SCENARIO [--backend local|ray] [--set KEY=VALUE ...] [--json PATH] [--metrics-port N ...]
    numaemu compare SCENARIO [--policy NAME ...] [--backend local|ray] [--set KEY=VALUE ...] [--json PATH]
    numaemu explore SCENARIO [--bug NAME] [--mode dfs|random|pct] [--bound N] ...
    numaemu explore --list-bugs
    numaemu replay TOKEN
    numaemu bench core|cluster|explore [ARGS ...]
    numaemu dashboards export DIR | push --url URL
    numaemu --version

Exit codes: 0 success; 1 the run found violations (data read back wrong or
an invariant broken) or failed; 2 bad input (scenario file, options);
130 interrupted (the partial summary is still printed and written), 143
terminated (SIGTERM, handled as Ctrl-C is: the partial summary too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .metrics import MetricsError, metrics_options
from .scenario import POLICIES, ScenarioError, load_scenario

BACKENDS = ("local", "ray")


_signalled: list[int] = []      # the signal that stopped the run, if one did


def _on_sigterm(signum: int, _frame: Any) -> None:
    """SIGTERM (a job stopped, a pod deleted) is handled as Ctrl-C is, by
    whichever SIGINT handler the run has (the local runner's stops between
    two operations)."""
    _signalled.append(signum)
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)
    else:           # SIGINT ignored (a background job of a shell) or not Python's
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """SIGTERM while the run runs: it stops and writes its partial summary
    (after it, the handler before: --hold's ends the hold). Only the main
    thread sets handlers; an ignored SIGTERM stays ignored."""
    _signalled.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def _interrupted_code() -> int:
    """130 for Ctrl-C, 128 + the signal for SIGTERM, as a shell reports them."""
    return 128 + _signalled[-1] if _signalled else 130


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load(scenario: str, sets: tuple[str, ...], bugs: tuple[str, ...]):
    from emulator import BUGS
    for b in bugs:
        if b not in BUGS:
            _fail(f"--bug {b}: unknown bug injection (known: {', '.join(BUGS)})", 2)
    try:
        return load_scenario(scenario, overrides=sets)
    except ScenarioError as exc:
        _fail(str(exc), 2)


def _check_json_path(json_path: str | None) -> None:
    """--json's directory, created if missing, before any run."""
    from .plots import ReportError, prepare_dir
    if json_path is None:
        return
    if not json_path:               # Path("") is the current directory
        _fail("--json: must not be empty (name a file, e.g. --json out/summary.json)", 2)
    if Path(json_path).is_dir():
        _fail(f"--json {json_path}: is a directory", 2)
    try:
        prepare_dir(Path(json_path).parent)
    except ReportError as exc:
        _fail(f"--json {json_path}: {Path(json_path).parent}: {exc}", 2)


def _write_json(json_path: str | None, obj: Any) -> None:
    if json_path is None:
        return
    tmp = f"{json_path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, json_path)
    except OSError as exc:
        _fail(f"--json {json_path}: cannot write: {exc.strerror or exc}", 2)


class _Stopped(Exception):
    """A run ended without a summary: the one-line message and the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


def _execute(spec, scenario: str, title: str, backend: str, ray_opts: dict[str, Any], stress: bool,
             check_every: int | None, bugs: tuple[str, ...], json_path: str | None, on: dict,
             err: Console) -> dict[str, Any]:
    """One run with a progress bar titled ``title``: its summary. ``ray_opts``:
    run_ray's address, min_hosts and shm (_ray_opts). Raises
    _Stopped: a failure (1, naming ``scenario``), or Ctrl-C before the runner
    has a summary (130; 143 for SIGTERM)."""
    from .runner_local import run_local

    ops = spec.run.operations
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=not err.is_terminal,
        disable=not err.is_terminal,
    )
    try:
        with progress:
            task = progress.add_task(title, total=ops)
            announced: list[int] = []

            def tick(done: int) -> None:
                progress.update(task, completed=done)
                if not announced and not err.is_terminal:
                    announced.append(done)   # one line, so a log (or a test) sees the run is under way
                    where = "on Ray" if backend == "ray" else "in-process"
                    limit = f" (or {spec.run.seconds:g} s)" if spec.run.seconds else ""
                    click.echo(f"numaemu: {scenario}: running {ops} operations{limit} {where}", err=True)

            stress = stress or spec.run.stress
            every = check_every or spec.run.check_every or max(1, ops // 20)
            if backend == "ray":
                from .runner_ray import run_ray
                return run_ray(spec, tick, stress=stress, check_every=every, bugs=bugs,
                               dump_dir=str(Path(json_path).parent) if json_path else None, **ray_opts, **on)
            return run_local(spec, tick, stress=stress, check_every=every, bugs=bugs, **on)
    except OSError as exc:
        raise _Stopped(f"{scenario}: the run failed: {exc}", 1) from None
    except MemoryError:     # load_scenario refused what cannot fit the host; other processes took the rest
        raise _Stopped(f"{scenario}: the run failed: out of memory", 1) from None
    except RuntimeError as exc:   # the Ray runtime: cannot start, a driver failed
        raise _Stopped(f"{scenario}: {exc}", 1) from None
    except KeyboardInterrupt:
        raise _Stopped("terminated" if _signalled else "interrupted", _interrupted_code()) from None


hosts_option = click.option(
    "--hosts", "min_hosts", type=click.IntRange(min=1), default=None, metavar="N",
    help="with --address: wait (up to 15 minutes) until the Ray cluster has N hosts before placing the "
         "node actors, as for a cluster still starting (`ray up` brings its workers up after the head)")


shm_option = click.option(
    "--shm-dir", "shm", default=None, metavar="DIR",
    help="where the node actors' payloads and the other shared files go, the same path on every host "
         "[default: $NUMAEMU_SHM_DIR as each host's Ray workers see it, else /dev/shm]: a tmpfs mounted "
         "with huge=always (or huge=advise) gives the payloads huge pages, which /dev/shm has not, and "
         "migrations copy faster")


def _ray_opts(backend: str, address: str | None, min_hosts: int | None, shm: str | None) -> dict[str, Any]:
    """The Ray options checked (exit 2 naming the one that is wrong), as run_ray takes them."""
    if backend == "local" and address:
        _fail("--address needs --backend ray", 2)
    if min_hosts is not None and min_hosts > 1 and not address:
        _fail("--hosts needs --address: an embedded Ray has one host", 2)
    if backend == "local" and shm:
        _fail("--shm-dir needs --backend ray: the in-process model keeps its frames in its own memory", 2)
    if backend == "ray" and not address:    # the embedded Ray runs on this host: its directory must be here
        from .dataplane import SHM_DIR_ENV, shm_dir
        try:
            shm_dir(shm or "")
        except ValueError as exc:
            _fail(f"{'--shm-dir' if shm else SHM_DIR_ENV}: {exc}", 2)
    # absolute: the actors' working directories are not this one's on other hosts
    return {"address": address, "min_hosts": min_hosts or 0, "shm": os.path.abspath(shm) if shm else ""}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="numaemu", message="%(prog)s %(version)s")
def main() -> None:
    """numaemu: an emulator of Linux NUMA memory management."""


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=str))
@click.option("--backend", type=click.Choice(BACKENDS), default="ray", show_default=True,
              help="'ray': node actors and a coordinator on Ray (an embedded local Ray unless "
                   "--address); 'local': the in-process model")
@click.option("--address", default=None, metavar="ADDR",
              help="join the running Ray cluster at ADDR (host:port, 'auto', or ray://host:port "
                   "through its Ray Client server) instead of starting one")
@click.option("--stress", is_flag=True, default=False,
              help="stop at quiescent points to run the whole invariant oracle and compare every page "
                   "with the workloads' shadows (also [run] stress = true)")
@click.option("--check-every", type=click.IntRange(min=1), default=None, metavar="N",
              help="with --stress: operations between two quiescent checks "
                   "[default: [run] check_every, else operations/20]")
@click.option("--bug", "bugs", multiple=True, metavar="NAME",
              help="turn a bug injection on in the model (repeatable; numaemu explore --list-bugs names them)")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a value of the scenario file (repeatable): a dotted key, a TOML value "
                   "(machine.policy=migentry, run.operations=20000, workload.0.pages=512)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="PATH", help="also write the summary (per node, vmstat, totals, violations) as JSON")
@click.option("--report", "report_dir", type=click.Path(path_type=str), default=None, metavar="DIR",
              help="also write PNG plots (memory, migrations, swap, latency) and an index.html into DIR")
@hosts_option
@shm_option
@metrics_options
def run(scenario: str, backend: str, address: str | None, stress: bool, check_every: int | None,
        bugs: tuple[str, ...], sets: tuple[str, ...], json_path: str | None, report_dir: str | None,
        min_hosts: int | None, shm: str | None, metrics_port: int, metrics_bind: str, hold: float,
        run_label: str | None, sd_dir: str | None) -> None:
    """Run the scenario file SCENARIO and print a per-node summary."""
    ray_opts = _ray_opts(backend, address, min_hosts, shm)
    spec = _load(scenario, sets, bugs)
    if check_every and not (stress or spec.run.stress):
        _fail("--check-every needs --stress (or [run] stress = true)", 2)
    # the output directories, created if missing (with their parents), before the run
    from .plots import ReportError, prepare_dir
    _check_json_path(json_path)
    if report_dir is not None:
        if not report_dir:          # Path("") is the current directory: index.html and PNGs would land there
            _fail("--report: must not be empty (name a directory, e.g. --report out/report)", 2)
        try:
            prepare_dir(report_dir)
        except ReportError as exc:
            _fail(f"--report {report_dir}: {exc}", 2)

    state = None
    if run_label is None and sets:     # runs of one file told apart by what they set
        run_label = " ".join([Path(scenario).stem, *sets])
    if metrics_port or hold:  # the endpoint lives until the command's context closes
        from .metrics import start_run_endpoint
        try:
            state = start_run_endpoint(scenario, backend, spec.run.operations, port=metrics_port,
                                       bind=metrics_bind, hold=hold, run_label=run_label, sd_dir=sd_dir)
        except MetricsError as exc:
            _fail(str(exc), 2)

    out = Console()
    err = Console(stderr=True)
    on = {} if state is None else {"metrics": state}
    if report_dir is not None:  # keep every duration for the latency plot
        from .timeline import LatencyRecorder
        on["latency"] = LatencyRecorder()
    try:
        with _sigterm_stops_the_run():
            summary = _execute(spec, scenario, Path(scenario).name, backend, ray_opts, stress, check_every, bugs,
                               json_path, on, err)
    except _Stopped as stop:
        _fail(stop.message, stop.code)

    from .report import print_summary

    print_summary(summary, out)
    _write_json(json_path, summary)
    if report_dir is not None:
        from .plots import write_report
        try:
            write_report(Path(report_dir), summary, summary.get("timeline"), on["latency"].arrays())
        except OSError as exc:
            _fail(f"--report {report_dir}: cannot write: {exc.strerror or exc}", 2)
        err.print(f"report: {Path(report_dir) / 'index.html'}", markup=False, highlight=False, soft_wrap=True)
    if state is not None:      # final values; --hold serves them a while longer, unless SIGTERM said go
        state.finish(summary, hold=not _signalled)
    if summary.get("dump"):
        flags = "".join(f" --bug {b}" for b in summary.get("bugs", []))
        click.echo(f"dump: {summary['dump']} (search it: numaemu explore '{summary['dump']}#4'{flags})", err=True)
    if summary.get("interrupted"):
        click.echo(f"{'terminated' if _signalled else 'interrupted'}: the summary above is partial", err=True)
        sys.exit(_interrupted_code())
    if summary.get("lost"):
        lost = summary["lost"]
        click.echo(f"error: node actor(s) lost: {lost['nodes']}; {lost['pages']} pages were resident there; "
                   f"{lost['verified_intact']['pages']} pages verified intact", err=True)
        sys.exit(1)
    sys.exit(1 if summary["violations"] > 0 else 0)



@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=str))
@click.option("--policy", "policies", multiple=True, type=click.Choice(POLICIES),
              help="a migration design to run (repeatable, in this order) [default: migentry, migcache, swapcache]")
@click.option("--backend", type=click.Choice(BACKENDS), default="ray", show_default=True,
              help="'ray': node actors and a coordinator on Ray (an embedded local Ray for each run "
                   "unless --address); 'local': the in-process model")
@click.option("--address", default=None, metavar="ADDR", help="join the running Ray cluster at ADDR")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a value of the scenario file for every run (repeatable), as numaemu run's")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="PATH", help="also write every run's summary, by design, as JSON")
@hosts_option
@shm_option
def compare(scenario: str, policies: tuple[str, ...], backend: str, address: str | None, sets: tuple[str, ...],
            json_path: str | None, min_hosts: int | None, shm: str | None) -> None:
    """Run SCENARIO once under each migration design, with the same seeds, and
    print the designs side by side."""
    ray_opts = _ray_opts(backend, address, min_hosts, shm)
    if any(s.split("=", 1)[0].strip() == "machine.policy" for s in sets):
        _fail("--set machine.policy: compare sets the policy itself (use --policy)", 2)
    policies = tuple(dict.fromkeys(policies)) or ("migentry", "migcache", "swapcache")
    _load(scenario, sets, ())           # the file and the --set values as given: errors name only those
    specs = {p: _load(scenario, (*sets, f"machine.policy={p}"), ()) for p in policies}
    _check_json_path(json_path)
    from .report import print_comparison

    out, err = Console(), Console(stderr=True)
    runs: dict[str, dict[str, Any]] = {}
    stopped = None
    with _sigterm_stops_the_run():
        for p, spec in specs.items():
            try:
                runs[p] = _execute(spec, f"{scenario} (policy {p})", f"{Path(scenario).name} [{p}]", backend,
                                   ray_opts, False, None, (), None, {}, err)
            except _Stopped as stop:        # between two designs, or one failed: keep the ones done
                stopped = stop
                break
            if runs[p].get("interrupted") or runs[p].get("lost"):
                break
    print_comparison(scenario, list(sets), runs, out)
    _write_json(json_path, {"scenario": scenario, "overrides": list(sets), "backend": backend,
                            "policies": list(runs), "runs": runs})
    if stopped is not None:
        _fail(stopped.message + (f" (the comparison above has {', '.join(runs)})" if runs else ""), stopped.code)
    if any(r.get("interrupted") for r in runs.values()):
        click.echo(f"{'terminated' if _signalled else 'interrupted'}: the comparison above is partial", err=True)
        sys.exit(_interrupted_code())
    for p, r in runs.items():
        if r.get("lost"):
            click.echo(f"error: policy {p}: node actor(s) lost: {r['lost']['nodes']}; the comparison above "
                       "stops there", err=True)
            sys.exit(1)
    sys.exit(1 if any(r["violations"] for r in runs.values()) else 0)


BENCHMARKS = ("core", "cluster", "explore")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", type=click.Choice(BENCHMARKS))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run benchmarks/NAME.py of this checkout with ARGS (e.g. --quick, --help):
    core (the model), cluster (the Ray runtime), explore (the race explorer).
    They print rates and ratios measured in one run."""
    import subprocess
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not script.is_file():
        _fail(f"bench {name}: {script} not found: the benchmarks are a checkout's (benchmarks/), "
              "not an installed package's", 2)
    try:
        code = subprocess.call([sys.executable, str(script), *args])
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

from .dashboards_cli import dashboards_cmd  # noqa: E402
from .explore_cli import explore_cmd, replay_cmd  # noqa: E402

main.add_command(explore_cmd)
main.add_command(replay_cmd)
main.add_command(dashboards_cmd)

if __name__ == "__main__":  # python -m cluster.cli
    main()
