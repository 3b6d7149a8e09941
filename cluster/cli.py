"""The ``numaemu`` command line.

    numaemu run SCENARIO [--backend local|ray] [--json PATH] [--metrics-port N ...]
    numaemu explore SCENARIO [--bug NAME] [--mode dfs|random|pct] [--bound N] ...
    numaemu explore --list-bugs
    numaemu replay TOKEN
    numaemu dashboards export DIR | push --url URL
    numaemu --version

Exit codes: 0 success; 1 the run found violations (data read back wrong or
an invariant broken) or failed; 2 bad input (scenario file, options).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .metrics import MetricsError, metrics_options
from .scenario import ScenarioError, load_scenario

BACKENDS = ("local", "ray")


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="numaemu", message="%(prog)s %(version)s")
def main() -> None:
    """numaemu: an emulator of Linux NUMA memory management."""


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=str))
@click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
              help="where the machine runs: 'local' in this process (ray: not available yet)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              metavar="PATH", help="also write the summary (per node, vmstat, totals, violations) as JSON")
@click.option("--report", "report_dir", type=click.Path(path_type=str), default=None, metavar="DIR",
              help="also write PNG plots (memory, migrations, swap, latency) and an index.html into DIR")
@metrics_options
def run(scenario: str, backend: str, json_path: str | None, report_dir: str | None, metrics_port: int,
        metrics_bind: str, hold: float, run_label: str | None, sd_dir: str | None) -> None:
    """Run the scenario file SCENARIO and print a per-node summary."""
    if backend == "ray":
        _fail("the Ray backend is not available yet (issue 4); use --backend local", 2)
    if json_path is not None:
        parent = Path(json_path).parent
        if not parent.is_dir():
            _fail(f"--json {json_path}: directory {str(parent)!r} does not exist", 2)
        if Path(json_path).is_dir():
            _fail(f"--json {json_path}: is a directory", 2)
    try:
        spec = load_scenario(scenario)
    except ScenarioError as exc:
        _fail(str(exc), 2)
    if report_dir is not None:
        from .plots import ReportError, prepare_report_dir
        try:
            prepare_report_dir(report_dir)
        except ReportError as exc:
            _fail(f"--report {report_dir}: {exc}", 2)

    from .runner_local import run_local

    state = None
    if metrics_port or hold:  # the endpoint lives until the command's context closes
        from .metrics import start_run_endpoint
        try:
            state = start_run_endpoint(scenario, backend, spec.run.operations, port=metrics_port,
                                       bind=metrics_bind, hold=hold, run_label=run_label, sd_dir=sd_dir)
        except MetricsError as exc:
            _fail(str(exc), 2)

    out = Console()
    err = Console(stderr=True)
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
            task = progress.add_task(Path(scenario).name, total=ops)
            on = {} if state is None else {"metrics": state}
            if report_dir is not None:  # keep every duration for the latency plot
                from .timeline import LatencyRecorder
                on["latency"] = LatencyRecorder()
            summary = run_local(spec, lambda done: progress.update(task, completed=done), **on)
    except OSError as exc:
        _fail(f"{scenario}: the run failed: {exc}", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)

    from .report import print_summary

    print_summary(summary, out)
    if json_path is not None:
        tmp = f"{json_path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, indent=2, sort_keys=False)
                fh.write("\n")
            os.replace(tmp, json_path)
        except OSError as exc:
            _fail(f"--json {json_path}: cannot write: {exc.strerror or exc}", 2)
    if report_dir is not None:
        from .plots import write_report
        try:
            write_report(Path(report_dir), summary, summary.get("timeline"), on["latency"].arrays())
        except OSError as exc:
            _fail(f"--report {report_dir}: cannot write: {exc.strerror or exc}", 2)
        err.print(f"report: {Path(report_dir) / 'index.html'}", markup=False, highlight=False, soft_wrap=True)
    if state is not None:
        state.finish(summary)  # final values; --hold serves them a while longer
    sys.exit(1 if summary["violations"] > 0 else 0)


from .dashboards_cli import dashboards_cmd  # noqa: E402
from .explore_cli import explore_cmd, replay_cmd  # noqa: E402

main.add_command(explore_cmd)
main.add_command(replay_cmd)
main.add_command(dashboards_cmd)

if __name__ == "__main__":  # python -m cluster.cli
    main()
