"""``numaemu explore`` and ``numaemu replay``: the race explorer on the command line.

Exit codes: 0 the budget ended with no violation (or the replay ran clean);
1 a violation (printed with its step trace, preemptions and replay token);
2 bad input (scenario file, bug name, token).
"""
from __future__ import annotations

import sys
import time

import click

from emulator import BUGS
from emulator import explore as X
from emulator.races import ScenarioError, load

from .metrics import MetricsError, metrics_options


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Progress:
    """A status line on a terminal; a line every few seconds otherwise."""

    def __init__(self, enabled: bool, dfs: bool):
        self.enabled, self.dfs = enabled, dfs
        self.tty = sys.stderr.isatty()
        self.last = time.perf_counter()
        self.printed = False
        self.metrics = None  # the metrics' ExploreState, which keeps the latest Stats

    def __call__(self, st: X.Stats) -> None:
        if self.metrics is not None:
            self.metrics.stats = st
        now = time.perf_counter()
        if not self.enabled or now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last, self.printed = now, True
        seen = f"pruned {st.pruned:,}  distinct states {st.states:,}  " if self.dfs else ""
        line = f"schedules {st.schedules:,}  {seen}{st.rate:,.0f}/s  {st.elapsed:.1f}s"
        if self.tty:
            click.echo("\r" + line + "\x1b[K", err=True, nl=False)
        else:
            click.echo(line, err=True)

    def end(self) -> None:
        if self.enabled and self.tty and self.printed:
            click.echo("", err=True)


def report_violation(sc, bugs, out: X.Outcome) -> None:
    click.echo(f"VIOLATION of invariant {out.violation}")
    click.echo(f"  {out.detail}")
    click.echo(f"  scenario {sc.path}, bugs: {', '.join(bugs) or 'none'}, "
               f"{out.preemptions} preemption(s), {len(out.trace)} steps")
    click.echo("step trace (task | operation | step -> what it saw):")
    for i, s in enumerate(out.trace):
        click.echo(f"  {i:3} {s}")
    click.echo(f"replay: numaemu replay {X.make_token(sc, bugs, out.schedule)}")


@click.command("explore")
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--bug", "bugs", multiple=True, metavar="NAME", help="turn a bug injection on (repeatable)")
@click.option("--list-bugs", is_flag=True, help="print the bug injections, one per line, and exit")
@click.option("--mode", type=click.Choice(["dfs", "random", "pct"]), default="dfs", show_default=True,
              help="systematic (preemption-bounded) or seeded random schedules")
@click.option("--bound", type=click.IntRange(0, 16), default=2, show_default=True,
              help="dfs: the most preemptions in a schedule")
@click.option("--depth", type=click.IntRange(1, 16), default=3, show_default=True,
              help="pct: d, the number of priority change points + 1")
@click.option("--seed", type=int, default=0, show_default=True, help="random/pct: the seed")
@click.option("--schedules", type=click.IntRange(1), default=None, help="budget: schedules to run")
@click.option("--seconds", type=click.FloatRange(0, min_open=True), default=None, help="budget: seconds")
@click.option("--quiet", is_flag=True, help="no progress line")
@metrics_options
def explore_cmd(scenario, bugs, list_bugs, mode, bound, depth, seed, schedules, seconds, quiet,
                metrics_port, metrics_bind, hold, run_label, sd_dir) -> None:
    """Explore interleavings of SCENARIO's tasks for invariant violations."""
    if list_bugs:
        for name in BUGS:
            click.echo(name)
        return
    if scenario is None:
        _fail("explore: a SCENARIO file is required (or --list-bugs)")
    for b in bugs:
        if b not in BUGS:
            _fail(f"--bug {b}: unknown bug injection (known: {', '.join(BUGS)})")
    try:
        sc = load(scenario)
    except ScenarioError as e:
        _fail(str(e))
    ran_with = sorted(set(getattr(sc, "bugs", ())) - set(bugs))
    if ran_with:
        click.echo(f"note: the run that wrote this dump had {', '.join(ran_with)} on; "
                   f"add {' '.join('--bug ' + b for b in ran_with)} to explore with it", err=True)
    if mode != "dfs" and schedules is None and seconds is None:
        seconds = 10.0
    prog = _Progress(not quiet, mode == "dfs")
    state = None
    if metrics_port or hold:  # the endpoint lives until the command's context closes
        from .metrics import start_explore_endpoint
        try:
            state = prog.metrics = start_explore_endpoint(
                sc, scenario, mode, bugs, port=metrics_port, bind=metrics_bind, hold=hold,
                run_label=run_label, sd_dir=sd_dir)
        except MetricsError as e:
            _fail(str(e))
    if mode == "dfs":
        out, st = X.explore_dfs(sc, bugs, bound=bound, max_schedules=schedules, seconds=seconds, progress=prog)
    else:
        out, st = X.explore_random(sc, bugs, seed=seed, pct_depth=depth if mode == "pct" else 0,
                                   max_schedules=schedules, seconds=seconds, progress=prog)
    prog.end()
    if state is not None:
        state.finish(out, st)  # final values; --hold serves them a while longer
    what = f"dfs, preemption bound {bound}" if mode == "dfs" else f"{mode}, seed {seed}"
    # only dfs keeps the states it has seen (to cut schedules at them)
    seen = f" ({st.pruned:,} cut at known states, {st.states:,} distinct states)" if mode == "dfs" else ""
    click.echo(f"explored {st.schedules:,} schedules{seen} in {st.elapsed:.2f}s, {st.rate:,.0f}/s; {what}")
    if out is None:
        complete = mode == "dfs" and not (schedules and st.schedules >= schedules) and \
            not (seconds and st.elapsed >= seconds)
        click.echo("no violation" + (" (search complete within the bound)" if complete else " within the budget"))
        return
    out = X.minimize(sc, bugs, out)
    report_violation(sc, bugs, out)
    sys.exit(1)


@click.command("replay")
@click.argument("token")
@click.option("--scenario", default=None, metavar="FILE",
              help="the scenario file (or DUMP#N) to replay on, where the token's own path, relative to "
                   "where explore ran, does not reach it; it must be the same scenario")
def replay_cmd(token: str, scenario: str | None) -> None:
    """Re-run the schedule a replay TOKEN names, exactly, and print its trace."""
    try:
        sc, bugs, out = X.replay_token(token, scenario)
    except ScenarioError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(str(e))
    if out.violation is None:
        click.echo(f"replayed {len(out.trace)} steps of {sc.path}: no violation")
        for i, s in enumerate(out.trace):
            click.echo(f"  {i:3} {s}")
        return
    report_violation(sc, bugs, out)
    sys.exit(1)
